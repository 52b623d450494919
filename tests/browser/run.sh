#!/usr/bin/env bash
# The status page in a real browser (tests/browser/browser.py): Debian's chromium driven by
# playwright (pinned in requirements.txt, installed into a venv under target/; playwright's own
# browser is never downloaded). Report protocol as tools/rexlib.py: ok / FAIL / SKIP lines, then
# `browser: N passed, N failed`. CI=true turns a missing chromium or binary into a failure.
#
# Usage: tests/browser/run.sh                        the checks
#        tests/browser/run.sh --screenshots DIR      also write the README's screenshots to DIR
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export ROLLOUT_EXPORTER_BIN="${ROLLOUT_EXPORTER_BIN:-$repo/target/debug/rollout-exporter}"
export PYTHONDONTWRITEBYTECODE=1
venv="${REX_BROWSER_VENV:-$repo/target/browser-venv}"
pin="$(grep -v '^#' "$here/requirements.txt")"
if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qxF "$pin"; then
  python3 -m venv "$venv" || exit 1
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" || exit 1
fi
exec "$venv/bin/python" "$here/browser.py" "$@"
