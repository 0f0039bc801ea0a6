#!/usr/bin/env bash
# Build the docs site and screenshot a few pages in a real headless browser (Debian's chromium),
# to check by eye that code blocks fit, tables read and the navigation is short.
#   scripts/docs_screenshots.sh [DIR]        (default DIR: build/screenshots)
# HEIGHT=4000 scripts/docs_screenshots.sh   takes taller screenshots (the width is 1280 px).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/build/screenshots}"
height="${HEIGHT:-2000}"

browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
    echo "docs_screenshots: chromium not found; install it with: apt-get install chromium" >&2
    exit 2
fi

# The same strict build as `make docs`, into build/site/.
(cd "$root" && .venv/bin/mkdocs build --strict --quiet)

mkdir -p "$out"
out="$(cd "$out" && pwd)"
# name of the screenshot -> page of the built site
pages=(
    "home:index.html"
    "pretrain:pretrain/index.html"
    "quickstart:quickstart/index.html"
    "config_reference:config_reference/index.html"
)
for entry in "${pages[@]}"; do
    name="${entry%%:*}"
    page="$root/build/site/${entry#*:}"
    # --no-sandbox: chromium refuses to run as root otherwise; the virtual-time budget lets
    # the theme's JavaScript finish before the picture is taken. Chromium's chatter goes to a log.
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu \
        --window-size="1280,$height" --virtual-time-budget=3000 \
        --screenshot="$out/$name.png" "file://$page" >"$out/chromium.log" 2>&1 \
        || { echo "docs_screenshots: chromium failed on $page (see $out/chromium.log)" >&2; exit 1; }
    echo "$out/$name.png"
done
