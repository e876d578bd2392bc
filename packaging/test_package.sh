#!/usr/bin/env bash
# The packaging test: build, make the installer, install it into a temporary HOME, run the
# installed app's --self-test, install again (the upgrade), uninstall, and check that nothing is
# left but the user's own data.
#
#   packaging/test_package.sh            CPU flavour (what CI runs)
#   packaging/test_package.sh gpu        GPU flavour (onnxruntime-gpu; runs on CPU without CUDA)
#   packaging/test_package.sh both       both flavours
#   NO_BUILD=1 packaging/test_package.sh use the dist/ already built
#
# Needs: make, makeself, Python 3.11, and the default model at resources/models/default.onnx.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-cpu}" in
  cpu) FLAVOURS=(cpu) ;;
  gpu) FLAVOURS=(gpu) ;;
  both) FLAVOURS=(cpu gpu) ;;
  *) echo "usage: $0 [cpu|gpu|both]" >&2; exit 2 ;;
esac
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' desktop_app/__init__.py)"
SAMPLE="$PWD/resources/samples/ISIC_0026993.jpg"
export QT_QPA_PLATFORM=offscreen
unset XDG_DATA_HOME XDG_CONFIG_HOME XDG_CACHE_HOME XDG_BIN_HOME

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/lesionlens-package-test.XXXXXX")"
trap 'rm -rf -- "$TMP_ROOT"' EXIT
DIST_ROOT=dist

step() { printf '\n--- %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND...
  local what="$1"; shift
  "$@" || fail "$what"
}

leftovers() { # every path under $1 except the user data the test made and system font caches
  (cd "$1" && find . -mindepth 1 | sed 's|^\./||' | sort) | grep -Ev \
    '^(\.config|\.config/LesionLens|\.config/LesionLens/LesionLens\.conf|Documents|Documents/case\.pdf|\.cache|\.cache/fontconfig(/.*)?)$' \
    || true
}

test_flavour() {
  local flavour="$1" run home data app_dir out
  run="$DIST_ROOT/LesionLens-$VERSION-linux-$flavour.run"
  if [ "${NO_BUILD:-0}" != 1 ]; then
    step "build: make dist FLAVOUR=$flavour"
    make dist FLAVOUR="$flavour"  # packaging/build.sh, into $DIST_ROOT
  fi
  [ -f "$run" ] || fail "$run was not built"
  echo "installed size of $flavour: $(du -sh "$DIST_ROOT/$flavour/LesionLens" | cut -f1)"
  echo "installer $run: $(du -h "$run" | cut -f1)"

  home="$TMP_ROOT/home-$flavour"
  mkdir -p "$home"
  data="$home/.local/share/lesionlens"

  step "$flavour: install into a temporary HOME"
  HOME="$home" "$run" > "$TMP_ROOT/install1.log" 2>&1 || { cat "$TMP_ROOT/install1.log"; fail "install"; }
  tail -n 6 "$TMP_ROOT/install1.log"
  check "launcher" test -x "$home/.local/bin/lesionlens"
  check "uninstall command" test -x "$home/.local/bin/lesionlens-uninstall"
  check "desktop entry" test -f "$home/.local/share/applications/lesionlens.desktop"
  if command -v desktop-file-validate >/dev/null 2>&1; then
    check "valid desktop entry" desktop-file-validate "$home/.local/share/applications/lesionlens.desktop"
  fi
  for size in 16 24 32 48 64 128 256; do
    check "icon $size" test -f "$home/.local/share/icons/hicolor/${size}x${size}/apps/lesionlens.png"
  done
  check "scalable icon" test -f "$home/.local/share/icons/hicolor/scalable/apps/lesionlens.svg"
  check "current link" test -L "$data/current"
  app_dir="$(readlink "$data/current")"
  check "app folder" test -x "$data/$app_dir/LesionLens"
  echo "installed size ($flavour): $(du -sh "$data" | cut -f1) in ~/.local/share/lesionlens"

  step "$flavour: the installed app's --self-test"
  HOME="$home" "$home/.local/bin/lesionlens" --self-test | tee "$TMP_ROOT/selftest.log"
  check "self-test passed" grep -q '^self-test passed$' "$TMP_ROOT/selftest.log"
  check "telemetry off" grep -q 'telemetry off' "$TMP_ROOT/selftest.log"
  [ ! -e "$home/.cache/Microsoft" ] || fail "onnxruntime wrote telemetry data to ~/.cache/Microsoft"

  step "$flavour: user data (settings, a report written by the installed app)"
  mkdir -p "$home/.config/LesionLens" "$home/Documents"
  printf '[General]\nrecent_files=@Invalid()\n' > "$home/.config/LesionLens/LesionLens.conf"
  HOME="$home" "$home/.local/bin/lesionlens" report "$SAMPLE" --age 45 --sex female \
    --site "lower extremity" --out "$home/Documents/case.pdf"
  check "report written" test -s "$home/Documents/case.pdf"

  step "$flavour: a damaged installation fails its self-test in plain words"
  mv "$data/$app_dir/_internal/resources/models/default.onnx" "$TMP_ROOT/model.bak"
  if HOME="$home" "$home/.local/bin/lesionlens" --self-test > "$TMP_ROOT/broken.log" 2>&1; then
    fail "the self-test passed without its model"
  fi
  cat "$TMP_ROOT/broken.log"
  check "clear message" grep -q 'bundled default model is missing' "$TMP_ROOT/broken.log"
  touch "$data/$app_dir/_internal/STALE-FILE-FROM-OLD-VERSION"

  step "$flavour: install again (upgrade in place)"
  HOME="$home" "$run" > "$TMP_ROOT/install2.log" 2>&1 || { cat "$TMP_ROOT/install2.log"; fail "upgrade"; }
  tail -n 3 "$TMP_ROOT/install2.log"
  [ "$(readlink "$data/current")" != "$app_dir" ] || fail "upgrade did not switch to a fresh folder"
  [ ! -e "$data/$app_dir" ] || fail "the old version's folder is still there"
  [ "$(find "$data" -maxdepth 1 -name 'app-*' | wc -l)" = 1 ] || fail "more than one app folder"
  [ -z "$(find "$data" -name 'STALE-FILE-FROM-OLD-VERSION')" ] || fail "stale file survived"
  HOME="$home" "$home/.local/bin/lesionlens" --self-test > "$TMP_ROOT/selftest2.log" \
    || { cat "$TMP_ROOT/selftest2.log"; fail "self-test after upgrade"; }
  tail -n 2 "$TMP_ROOT/selftest2.log"

  step "$flavour: uninstall"
  HOME="$home" "$home/.local/bin/lesionlens" --uninstall
  out="$(leftovers "$home")"
  [ -z "$out" ] || fail "left behind after uninstall: $out"
  check "settings kept" test -f "$home/.config/LesionLens/LesionLens.conf"
  check "report kept" test -f "$home/Documents/case.pdf"
  echo "nothing left but the user's settings and report"

  step "$flavour: XDG_DATA_HOME is honoured"
  home="$TMP_ROOT/home-xdg-$flavour"
  mkdir -p "$home"
  XDG_DATA_HOME="$home/data" HOME="$home" "$run" > "$TMP_ROOT/install3.log" 2>&1 \
    || { cat "$TMP_ROOT/install3.log"; fail "install with XDG_DATA_HOME"; }
  check "app in XDG_DATA_HOME" test -x "$home/data/lesionlens/current/LesionLens"
  check "desktop entry in XDG_DATA_HOME" test -f "$home/data/applications/lesionlens.desktop"
  XDG_DATA_HOME="$home/data" HOME="$home" "$home/.local/bin/lesionlens-uninstall"
  out="$(leftovers "$home")"
  [ -z "$out" ] || fail "left behind after uninstall: $out"
  rm -rf -- "$TMP_ROOT/home-$flavour" "$home"
  echo "$flavour: all packaging checks passed"
}

for flavour in "${FLAVOURS[@]}"; do
  test_flavour "$flavour"
done
printf '\npackaging test passed (%s)\n' "${FLAVOURS[*]}"
