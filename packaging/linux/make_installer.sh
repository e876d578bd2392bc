#!/usr/bin/env bash
# Make the self-extracting Linux installer (makeself) from a one-folder build:
#   packaging/linux/make_installer.sh dist/cpu/LesionLens 0.1.0 cpu dist/LesionLens-0.1.0-linux-cpu.run
# The archive holds LesionLens/, install.sh, uninstall.sh, VERSION and FLAVOUR; makeself runs
# install.sh after extracting it into a temporary folder (see install.sh for what it does).
set -euo pipefail

[ $# -eq 4 ] || { echo "usage: $0 APP_DIR VERSION FLAVOUR OUT.run" >&2; exit 2; }
APP="$1" VERSION="$2" FLAVOUR="$3" OUT="$4"
HERE="$(cd "$(dirname "$0")" && pwd)"
[ -x "$APP/LesionLens" ] || { echo "error: $APP/LesionLens is not a LesionLens build" >&2; exit 1; }
command -v makeself >/dev/null 2>&1 || {
  echo "error: makeself is not installed (Debian/Ubuntu: apt-get install makeself)" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
STAGE="$(mktemp -d "$(dirname "$OUT")/.installer-stage.XXXXXX")"
trap 'rm -rf -- "$STAGE"' EXIT
# Hard links where the file system allows (no copy of a few hundred MB), a copy otherwise.
if ! cp -al -- "$APP" "$STAGE/LesionLens" 2>/dev/null; then
  rm -rf -- "$STAGE/LesionLens"
  cp -a -- "$APP" "$STAGE/LesionLens"
fi
cp -- "$HERE/install.sh" "$HERE/uninstall.sh" "$STAGE/"
chmod 0755 "$STAGE/install.sh" "$STAGE/uninstall.sh"
printf '%s\n' "$VERSION" > "$STAGE/VERSION"
printf '%s\n' "$FLAVOUR" > "$STAGE/FLAVOUR"

tmp_out="$OUT.partial"
rm -f -- "$tmp_out"
# gzip (level 6): every Linux can unpack it, quickly; --nox11: never open a terminal window.
makeself --quiet --noprogress --nox11 --sha256 --gzip --complevel 6 --keep-umask \
  "$STAGE" "$tmp_out" "LesionLens $VERSION ($FLAVOUR) installer" ./install.sh
mv -f -- "$tmp_out" "$OUT"
echo "$OUT: $(du -h "$OUT" | cut -f1)"
