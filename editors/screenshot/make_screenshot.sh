#!/usr/bin/env bash
# Render a .layer spec highlighted with grammars/layer.tmLanguage.json (shiki) and screenshot it with
# headless Chromium into docs/img/spec-highlighted.png (the README picture).
#
#   editors/screenshot/make_screenshot.sh [SPEC.layer] [OUT.png] [THEME]
#   editors/screenshot/make_screenshot.sh --annotate [SPEC.layer] [OUT.png] [THEME]
#
# --annotate draws what an editor shows over the spec, as layerdsl computes it (spec_annotations.py, run
# with this checkout's layerdsl): squiggles and hover boxes for its diagnostics, and the inferred shapes as
# inlay hints; by default diagnostics_sample.layer into docs/img/diagnostics-and-hints.png.
#
# Needs node + npm (installs shiki from editors/screenshot/package-lock.json) and Debian's `chromium`
# (installed with apt-get when missing and running as root); --annotate also $PYTHON (default python3)
# with layerdsl's dependencies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
annotate=""
if [ "${1:-}" = "--annotate" ]; then
  annotate=1
  shift
fi
if [ -n "$annotate" ]; then
  spec="${1:-$here/diagnostics_sample.layer}"
  out="${2:-$root/docs/img/diagnostics-and-hints.png}"
else
  spec="${1:-$here/sample.layer}"
  out="${2:-$root/docs/img/spec-highlighted.png}"
fi
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

if [ -n "$annotate" ]; then
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" "$here/spec_annotations.py" "$spec" >"$work/annotations.json"
  size="$(node "$here/render.mjs" "$spec" "$work/spec.html" "$theme" "$work/annotations.json")"
else
  size="$(node "$here/render.mjs" "$spec" "$work/spec.html" "$theme")"
fi
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --force-device-scale-factor=2 \
  --user-data-dir="$profile" \
  --screenshot="$out" --window-size="$size" \
  "file://$work/spec.html" >/dev/null 2>"$work/chromium.log" || { cat "$work/chromium.log" >&2; exit 1; }
[ -s "$out" ] || { cat "$work/chromium.log" >&2; echo "make_screenshot.sh: no screenshot written" >&2; exit 1; }
echo "wrote $out (window $size, theme $theme)"
