#!/usr/bin/env bash
# The alerting and dashboard kit's checks, in one run (tests/kit/kit.py):
#   1. check_rules:        promtool check rules + promtool test rules + the shape of every alert
#   2. check_alertmanager: amtool check-config, `amtool config routes test` per alert, live inhibitions
#   3. lint_dashboards:    dashboard lint (grafana/dashboard-linter rules + ids + 0.97/0.01 thresholds)
#   4. check_thresholds:   rules = docs/configuration.md defaults = `rollout-exporter serve --help`
#   5. e2e:                exporter demo + real Prometheus + real Alertmanager + webhook (live)
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

exec python3 "$here/kit.py"
