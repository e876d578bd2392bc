#!/usr/bin/env bash
# Build LesionLens for one flavour: `packaging/build.sh gpu|cpu` (what `make dist` runs).
#
#   1. a build venv, build/venv-<flavour>, made from pyproject.toml with the flavour's onnxruntime
#      (packaging/build_requirements.py) and the exact versions of packaging/constraints.txt;
#      remade whenever those change;
#   2. PyInstaller with build.spec into a scratch folder; the frozen app must pass its own
#      `--self-test` (offscreen) before it replaces dist/<flavour>/LesionLens/;
#   3. on Linux, the installer dist/LesionLens-<version>-linux-<flavour>.run (makeself).
#      Windows: build the Inno Setup installer from packaging/windows/lesionlens.iss instead.
#
# Environment: PYTHON (default python3, 3.11 or 3.12), NO_INSTALLER=1 to stop after step 2.
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOUR="${1:-gpu}"
case "$FLAVOUR" in gpu|cpu) ;; *) echo "usage: $0 gpu|cpu" >&2; exit 2 ;; esac
PYTHON="${PYTHON:-python3}"
VENV="build/venv-$FLAVOUR"
WORK="build/pyinstaller-$FLAVOUR"
DIST_ROOT="${DIST_ROOT:-dist}"
DIST="$DIST_ROOT/$FLAVOUR"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' desktop_app/__init__.py)"
[ -n "$VERSION" ] || { echo "error: no __version__ in desktop_app/__init__.py" >&2; exit 1; }

say() { printf '\n==> %s\n' "$*"; }

if [ ! -f resources/models/default.onnx ]; then
  echo "error: resources/models/default.onnx is missing, so there is nothing to ship: the app" >&2
  echo "would start without a model. Commit the trained default model (or, for a development" >&2
  echo "build only, copy an exported model there) and run this again." >&2
  exit 1
fi

# --- 1. the build venv ---------------------------------------------------------------------------
say "build venv $VENV ($FLAVOUR)"
"$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' \
  || { echo "error: $PYTHON is not Python 3.11 or 3.12" >&2; exit 1; }
requirements="$("$PYTHON" packaging/build_requirements.py --flavour "$FLAVOUR")"
stamp="$(printf '%s\n%s\n' "$requirements" "$(cat packaging/constraints.txt)" \
  | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$VENV/.build-stamp" 2>/dev/null || true)" != "$stamp" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  printf '%s\n' "$requirements" > "$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    -r "$VENV/requirements.txt" -c packaging/constraints.txt
  printf '%s\n' "$stamp" > "$VENV/.build-stamp"
else
  echo "up to date"
fi

# --- 2. PyInstaller, then the frozen app's own self-test -----------------------------------------
say "PyInstaller ($FLAVOUR)"
rm -rf "$WORK/dist"
"$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN \
  --distpath "$WORK/dist" --workpath "$WORK/work" build.spec -- --flavour "$FLAVOUR"

say "self-test of the frozen app"
QT_QPA_PLATFORM=offscreen "$WORK/dist/LesionLens/LesionLens" --self-test

mkdir -p "$DIST"
rm -rf "$DIST/LesionLens"
mv "$WORK/dist/LesionLens" "$DIST/LesionLens"
size="$(du -sh "$DIST/LesionLens" | cut -f1)"
echo "$DIST/LesionLens: $size installed"

# --- 3. the installer ----------------------------------------------------------------------------
if [ "${NO_INSTALLER:-0}" = 1 ] || [ "$(uname -s)" != Linux ]; then
  exit 0
fi
say "installer"
packaging/linux/make_installer.sh "$DIST/LesionLens" "$VERSION" "$FLAVOUR" \
  "$DIST_ROOT/LesionLens-$VERSION-linux-$FLAVOUR.run"
