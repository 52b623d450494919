#!/usr/bin/env bash
# The alerting and dashboard kit's checks, in one run (tests/kit/kit.py):
#   1. check_rules:        promtool check rules + promtool test rules + the shape of every alert
#   2. check_alertmanager: amtool check-config, `amtool config routes test` per alert, live inhibitions
#   3. lint_dashboards:    dashboard lint (grafana/dashboard-linter rules + ids + 0.97/0.01 thresholds)
#   4. check_thresholds:   rules = docs/configuration.md defaults = `rollout-exporter serve --help`
#   5. check_intervals:    the verdict JSON's Wilson intervals over real PostgreSQL = scipy.stats
#   6. e2e:                exporter demo + real Prometheus + real Alertmanager + webhook (live)
#
# Usage: tests/kit/run.sh            (from anywhere; ROLLOUT_EXPORTER_BIN defaults to
#                                     target/debug/rollout-exporter)
# Report protocol (tools/rexlib.py): `ok <name>`, `FAIL <name>: <reason>`, `SKIP <name>: <why>`
# lines; the last line is exactly `kit: N passed, N failed` (`, N skipped` when something was
# skipped); the exit status is non-zero on any failure. CI=true turns a missing tool or binary
# into a failure instead of a skip. KIT_VERBOSE=1 (or REX_KEEP=1) keeps the logs of the processes
# the checks start.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export ROLLOUT_EXPORTER_BIN="${ROLLOUT_EXPORTER_BIN:-$repo/target/debug/rollout-exporter}"
export PYTHONDONTWRITEBYTECODE=1

# The kit runs in a venv under target/ with tests/kit/requirements.txt (scipy, pinned, from PyPI;
# about 40 MB, installed once and kept). Without it (offline, no python3-venv) the kit runs on the
# system python3 and check_intervals fails under CI=true, skips otherwise; the rest is stdlib only.
venv="$repo/target/kit-venv"
python=python3
if { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } &&
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"; then
  python="$venv/bin/python"
else
  echo "warning: could not install tests/kit/requirements.txt into $venv" >&2
fi

exec "$python" "$here/kit.py"
