#!/usr/bin/env bash
# Render a difflab report page in headless chromium, offline, and save a screenshot:
#   tools/report_screenshot.sh RUN/report.html [shot.png]
# (apt-get install -y chromium). A self-contained page renders completely with the network cut off.
set -euo pipefail
page=$(realpath "$1")
shot=$(realpath -m "${2:-/tmp/report.png}")
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "report_screenshot: chromium not found (apt-get install -y chromium)" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --proxy-server to a closed port: any network fetch by the page fails, so what shows came from the file
timeout 90 "$browser" --headless --no-sandbox --disable-gpu --user-data-dir="$profile" \
    --proxy-server="127.0.0.1:9" --hide-scrollbars --screenshot="$shot" --window-size=1280,2000 \
    "file://$page" >/dev/null 2>&1
test -s "$shot"
echo "$shot"
