#!/usr/bin/env bash
# LesionLens installer for Linux: per user, no root. makeself runs this script from the extracted
# archive (the folder that holds LesionLens/ and this file); it can also be run from such a folder
# by hand. Pass options after `--`:   ./LesionLens-<version>-linux-<flavour>.run -- --help
#
# Where things go (XDG base directories; HOME and XDG_DATA_HOME are honoured):
#   $XDG_DATA_HOME/lesionlens/            (default ~/.local/share/lesionlens)
#       app-<version>-<flavour>-<stamp>/  the one-folder build, a fresh folder for every install
#       current -> app-...                the version in use (a symlink, switched atomically)
#       uninstall                         the uninstaller; manifest: the files installed elsewhere
#   ~/.local/bin/lesionlens               the launcher ($XDG_BIN_HOME if set)
#   ~/.local/bin/lesionlens-uninstall     runs the uninstaller
#   $XDG_DATA_HOME/applications/lesionlens.desktop
#   $XDG_DATA_HOME/icons/hicolor/<size>/apps/lesionlens.png, .../scalable/apps/lesionlens.svg
#
# Installing again upgrades in place: the new version is copied into a fresh folder and checked
# (it must start and report its version) before `current` is switched to it; only then is the old
# folder removed, so no stale file of an old version survives and a failed install leaves the old
# one working. The user's settings (~/.config/LesionLens) and reports are never touched.
set -euo pipefail
umask 022

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
SOURCE_APP="$HERE/LesionLens"
PRODUCT="LesionLens"

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<EOF
Install $PRODUCT for this user (no root needed).

  ./LesionLens-<version>-linux-<flavour>.run [-- OPTIONS]

Options:
  --uninstall   remove an installed $PRODUCT (same as running lesionlens-uninstall)
  --help        this text

Installs into \${XDG_DATA_HOME:-~/.local/share}/lesionlens, with the launcher
~/.local/bin/lesionlens, a desktop entry and icons. Running it again upgrades in place.
Your settings (~/.config/LesionLens) and your reports are never touched.
EOF
}

# --- where -------------------------------------------------------------------------------------
xdg_dir() { # $1: the variable's value, $2: the default. XDG says: ignore relative paths.
  case "${1:-}" in /*) printf '%s' "${1%/}" ;; *) printf '%s' "$2" ;; esac
}

[ -n "${HOME:-}" ] || die "HOME is not set."
case "$HOME" in /*) ;; *) die "HOME must be an absolute path (it is '$HOME')." ;; esac
DATA_HOME="$(xdg_dir "${XDG_DATA_HOME:-}" "$HOME/.local/share")"
BIN_DIR="$(xdg_dir "${XDG_BIN_HOME:-}" "$HOME/.local/bin")"
ROOT="$DATA_HOME/lesionlens"
APPS_DIR="$DATA_HOME/applications"
ICON_DIR="$DATA_HOME/icons/hicolor"
for path in "$ROOT" "$BIN_DIR"; do
  case "$path" in *$'\n'*) die "install paths may not contain a line break." ;; esac
done

action=install
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --uninstall) action=uninstall ;;
    *) usage >&2; die "unknown option '$1'." ;;
  esac
  shift
done

if [ "$action" = uninstall ]; then
  [ -x "$ROOT/uninstall" ] || die "$PRODUCT is not installed in $ROOT."
  exec "$ROOT/uninstall"
fi

[ -x "$SOURCE_APP/LesionLens" ] || die "this installer is incomplete: $SOURCE_APP/LesionLens is missing."
VERSION="$(cat "$HERE/VERSION")"
FLAVOUR="$(cat "$HERE/FLAVOUR")"
[ "$(id -u)" != 0 ] || warn "installing as root: $PRODUCT is installed for the root user only."

# --- helpers -----------------------------------------------------------------------------------
shell_quote() { # a single-quoted shell word
  printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

desktop_quote() { # an Exec= argument (Desktop Entry Specification: quoting, then escaping)
  # shellcheck disable=SC2016  # the backquote and dollar are literal here
  printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\\\\\/g' -e 's/"/\\\\"/g' \
    -e 's/`/\\\\`/g' -e 's/\$/\\\\$/g' -e 's/%/%%/g')"
}

NEW_FILES=()   # files this install wrote outside $ROOT (for the manifest)
NEW_DIRS=()    # directories it created (removed by the uninstaller when empty)

make_dir() { # mkdir -p, remembering every directory it creates
  local dir="$1" missing=()
  while [ ! -d "$dir" ]; do missing=("$dir" "${missing[@]}"); dir="$(dirname "$dir")"; done
  for dir in "${missing[@]}"; do mkdir "$dir"; NEW_DIRS+=("$dir"); done
}

put_file() { # put_file SRC DEST MODE: copy atomically (temporary sibling, then rename)
  local src="$1" dest="$2" mode="$3" tmp
  make_dir "$(dirname "$dest")"
  tmp="$(mktemp "$(dirname "$dest")/.lesionlens.XXXXXX")"
  TEMPS+=("$tmp")
  cat "$src" > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  NEW_FILES+=("$dest")
}

put_text() { # put_text DEST MODE, text on stdin
  local text
  text="$(mktemp "${TMPDIR:-/tmp}/lesionlens-text.XXXXXX")"
  TEMPS+=("$text")
  cat > "$text"
  put_file "$text" "$1" "$2"
}

in_use() { # is a process of this user running a program from folder $1?
  local exe
  for exe in /proc/[0-9]*/exe; do
    case "$(readlink "$exe" 2>/dev/null || true)" in "$1"/*) return 0 ;; esac
  done
  return 1
}

TEMPS=()
STAGING=""
cleanup() {
  local t
  for t in "${TEMPS[@]}"; do rm -f -- "$t"; done
  if [ -n "$STAGING" ] && [ -e "$STAGING" ]; then rm -rf -- "$STAGING"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the app, into a fresh folder, checked before anything points to it ---------------------
say "Installing $PRODUCT $VERSION ($FLAVOUR) for $(id -un 2>/dev/null || echo this user) into $ROOT"
make_dir "$ROOT"
ROOT_REAL="$(cd "$ROOT" && pwd -P)"  # as /proc/PID/exe shows it
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ROOT/.lock"
  flock -n 9 || die "another $PRODUCT install or uninstall is running; try again when it is done."
fi
STAMP="$(date +%Y%m%d-%H%M%S)-$$"
APP_NAME="app-$VERSION-$FLAVOUR-$STAMP"
STAGING="$ROOT/.$APP_NAME.partial"
cp -R -- "$SOURCE_APP" "$STAGING" || die "could not copy the app into $ROOT (is the disk full?)."
chmod -R u+rwX,go+rX,go-w "$STAGING"
if ! reported="$("$STAGING/LesionLens" --version 2>&1)"; then
  die "the new version does not start on this computer, so nothing was changed: $reported"
fi
case "$reported" in
  "$PRODUCT $VERSION") ;;
  *) die "the new version reports '$reported' instead of '$PRODUCT $VERSION'; nothing was changed." ;;
esac
mv -- "$STAGING" "$ROOT/$APP_NAME"
STAGING="$ROOT/$APP_NAME"  # removed again by cleanup if a later step fails before the switch

# --- 2. uninstaller, launcher, desktop entry, icons (each written atomically) -------------------
put_file "$HERE/uninstall.sh" "$ROOT/uninstall" 0755

q_root="$(shell_quote "$ROOT")"
put_text "$BIN_DIR/lesionlens" 0755 <<EOF
#!/bin/sh
# $PRODUCT launcher, written by the $PRODUCT installer. \`lesionlens --uninstall\` removes $PRODUCT.
if [ "\${1:-}" = --uninstall ]; then shift; exec $q_root/uninstall "\$@"; fi
exec $q_root/current/LesionLens "\$@"
EOF

put_text "$BIN_DIR/lesionlens-uninstall" 0755 <<EOF
#!/bin/sh
# Removes $PRODUCT (written by the $PRODUCT installer); your settings and reports are kept.
exec $q_root/uninstall "\$@"
EOF

put_text "$APPS_DIR/lesionlens.desktop" 0644 <<EOF
[Desktop Entry]
Type=Application
Version=1.4
Name=$PRODUCT
GenericName=Dermoscopy decision support
Comment=Offline decision support for clinicians reading dermoscopy images (not a diagnosis)
Exec=$(desktop_quote "$BIN_DIR/lesionlens") %f
Icon=lesionlens
Terminal=false
Categories=Science;MedicalSoftware;
MimeType=image/jpeg;image/png;image/tiff;image/bmp;image/webp;
Keywords=dermoscopy;dermatology;skin;lesion;melanoma;
StartupNotify=true
EOF

ICONS="$ROOT/$APP_NAME/_internal/resources/icons"
for size in 16 24 32 48 64 128 256; do
  if [ -f "$ICONS/lesionlens-$size.png" ]; then
    put_file "$ICONS/lesionlens-$size.png" "$ICON_DIR/${size}x${size}/apps/lesionlens.png" 0644
  fi
done
put_file "$ICONS/lesionlens.svg" "$ICON_DIR/scalable/apps/lesionlens.svg" 0644

# The manifest: what the uninstaller removes outside $ROOT. Files an older version installed
# that this one does not are removed now.
OLD_MANIFEST="$ROOT/manifest"
{
  # $ROOT itself is not listed: the uninstaller empties it and removes it.
  for f in "${NEW_FILES[@]}"; do
    case "$f" in "$ROOT"/*) ;; *) printf 'file %s\n' "$f" ;; esac
  done
  for d in "${NEW_DIRS[@]}"; do
    case "$d" in "$ROOT"|"$ROOT"/*) ;; *) printf 'dir %s\n' "$d" ;; esac
  done
  if [ -f "$OLD_MANIFEST" ]; then grep '^dir ' "$OLD_MANIFEST" || true; fi
} | awk '!seen[$0]++' > "$ROOT/.manifest.new"
TEMPS+=("$ROOT/.manifest.new")
if [ -f "$OLD_MANIFEST" ]; then
  while IFS= read -r line; do
    case "$line" in
      "file "*)
        f="${line#file }"
        if ! grep -Fxq -- "file $f" "$ROOT/.manifest.new"; then
          case "$(basename "$f")" in lesionlens*) rm -f -- "$f" ;; esac
        fi ;;
    esac
  done < "$OLD_MANIFEST"
fi
mv -f "$ROOT/.manifest.new" "$OLD_MANIFEST"

# --- 3. the switch: one atomic rename of the `current` symlink ---------------------------------
ln -s "$APP_NAME" "$ROOT/.current.new"
TEMPS+=("$ROOT/.current.new")
mv -Tf "$ROOT/.current.new" "$ROOT/current"
STAGING=""  # installed: nothing to roll back any more

# --- 4. remove older versions (kept while one of them is still running) ------------------------
for old in "$ROOT"/app-* "$ROOT"/.app-*.partial; do
  [ -e "$old" ] || continue
  [ "$old" != "$ROOT/$APP_NAME" ] || continue
  if in_use "$ROOT_REAL/$(basename "$old")"; then
    warn "an older $PRODUCT is still running; its folder $(basename "$old") is removed at the next install or uninstall."
  else
    rm -rf -- "$old"
  fi
done

# Desktop caches, only where the desktop already keeps them (we create none).
if [ -f "$APPS_DIR/mimeinfo.cache" ] && command -v update-desktop-database >/dev/null 2>&1; then
  update-desktop-database -q "$APPS_DIR" 2>/dev/null || true
fi
if [ -f "$ICON_DIR/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null 2>&1; then
  gtk-update-icon-cache -q -t "$ICON_DIR" 2>/dev/null || true
fi

# --- 5. tell the user --------------------------------------------------------------------------
say "$PRODUCT $VERSION ($FLAVOUR) is installed."
say "  start it from your applications menu, or run: $BIN_DIR/lesionlens"
say "  check it:     $BIN_DIR/lesionlens --self-test"
say "  remove it:    $BIN_DIR/lesionlens-uninstall"
case ":${PATH:-}:" in
  *":$BIN_DIR:"*) ;;
  *) say "  note: $BIN_DIR is not on your PATH; add it to run \`lesionlens\` by name." ;;
esac
# Qt's X11 plugin needs a few system libraries that are not bundled; name any that are missing.
XCB="$ROOT/$APP_NAME/_internal/PySide6/Qt/plugins/platforms/libqxcb.so"
if [ -f "$XCB" ] && command -v ldd >/dev/null 2>&1; then
  missing_libs="$(LD_LIBRARY_PATH="$ROOT/$APP_NAME/_internal" ldd "$XCB" 2>/dev/null \
    | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')"
  if [ -n "$missing_libs" ]; then
    warn "the window needs these system libraries, which are missing: $missing_libs"
    warn "on Debian/Ubuntu: sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0"
  fi
fi
