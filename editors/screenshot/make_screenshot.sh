#!/usr/bin/env bash
# Render a .layer spec highlighted with grammars/layer.tmLanguage.json (shiki) and screenshot it with
# headless Chromium into docs/img/spec-highlighted.png (the README picture).
#
#   editors/screenshot/make_screenshot.sh [SPEC.layer] [OUT.png] [THEME]
#
# Needs node + npm (installs shiki from editors/screenshot/package-lock.json) and Debian's `chromium`
# (installed with apt-get when missing and running as root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
spec="${1:-$here/sample.layer}"
out="${2:-$root/docs/img/spec-highlighted.png}"
theme="${3:-light-plus}"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "make_screenshot.sh: chromium not found; install it (apt-get install chromium fonts-dejavu-core)" >&2
    exit 1
  fi
fi

if [ ! -d "$here/node_modules/shiki" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

work="$(mktemp -d)"
profile="$(mktemp -d)"
trap 'rm -rf "$work" "$profile"' EXIT

size="$(node "$here/render.mjs" "$spec" "$work/spec.html" "$theme")"
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --force-device-scale-factor=2 \
  --user-data-dir="$profile" \
  --screenshot="$out" --window-size="$size" \
  "file://$work/spec.html" >/dev/null 2>"$work/chromium.log" || { cat "$work/chromium.log" >&2; exit 1; }
[ -s "$out" ] || { cat "$work/chromium.log" >&2; echo "make_screenshot.sh: no screenshot written" >&2; exit 1; }
echo "wrote $out (window $size, theme $theme)"
