#!/usr/bin/env bash
# LesionLens uninstaller, installed as <install folder>/uninstall by install.sh and run by
# `lesionlens-uninstall` or `lesionlens --uninstall`.
#
# Removes every file the installer wrote: the app folders, the `current` link, the launcher, the
# uninstall command, the desktop entry and the icons (listed in <install folder>/manifest), then
# the folders the installer created, where they are empty. It never touches the user's settings
# (~/.config/LesionLens) or reports, nor any file in the install folder that it did not put there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PRODUCT="LesionLens"

case "${1:-}" in
  --help|-h)
    printf 'Remove %s from %s (your settings and reports are kept).\n' "$PRODUCT" "$ROOT"
    exit 0 ;;
  "") ;;
  *) printf 'error: unknown option %s\n' "$1" >&2; exit 2 ;;
esac

if command -v flock >/dev/null 2>&1 && [ -e "$ROOT/.lock" ]; then
  exec 9>>"$ROOT/.lock"
  flock -n 9 || { printf 'error: an install of %s is running; try again later.\n' "$PRODUCT" >&2; exit 1; }
fi

dirs=()
if [ -f "$ROOT/manifest" ]; then
  while IFS= read -r line; do
    case "$line" in
      "file "*)
        f="${line#file }"
        # only files named like ours: a damaged manifest must not delete anything else
        case "$(basename "$f")" in lesionlens*) rm -f -- "$f" ;; esac ;;
      "dir "*) dirs+=("${line#dir }") ;;
    esac
  done < "$ROOT/manifest"
fi

for entry in "$ROOT"/app-* "$ROOT"/.app-*.partial; do
  [ -e "$entry" ] || [ -L "$entry" ] || continue
  rm -rf -- "$entry"
done
rm -f -- "$ROOT/current" "$ROOT/.current.new" "$ROOT/manifest" "$ROOT/.manifest.new" \
  "$ROOT"/.lesionlens.* "$ROOT/uninstall" "$ROOT/.lock"

if ! rmdir -- "$ROOT" 2>/dev/null && [ -d "$ROOT" ]; then
  printf 'note: %s was left in place: it holds files %s did not install.\n' "$ROOT" "$PRODUCT"
fi
# Folders the installer created (~/.local/bin, icon folders, ...), deepest first, when empty.
if [ "${#dirs[@]}" -gt 0 ]; then
  while IFS= read -r d; do
    rmdir -- "$d" 2>/dev/null || true
  done < <(printf '%s\n' "${dirs[@]}" | sort -r)
fi

printf '%s has been removed. Your settings (~/.config/LesionLens) and your reports were kept.\n' \
  "$PRODUCT"
