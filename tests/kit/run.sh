#!/usr/bin/env bash
# The alerting and dashboard kit's checks, in one run:
#   1. rules:        promtool check rules + promtool test rules + the shape of every alert
#   2. alertmanager: amtool check-config, `amtool config routes test` per alert, live inhibitions
#   3. dashboards:   dashboard lint (grafana/dashboard-linter rules + ids + 0.97/0.01 thresholds)
#   4. thresholds:   rules = docs/configuration.md defaults = `rollout-exporter serve --help`
#   5. e2e:          exporter demo + real Prometheus + real Alertmanager + webhook (live)
#
# Usage: tests/kit/run.sh            (from anywhere; ROLLOUT_EXPORTER_BIN defaults to
#                                     target/debug/rollout-exporter)
# CI=true turns a missing tool or binary into a failure instead of a skip. KIT_VERBOSE=1 keeps
# the logs of the processes the checks start.
# The last line is exactly `kit: N passed, N failed`; the exit status is non-zero on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export ROLLOUT_EXPORTER_BIN="${ROLLOUT_EXPORTER_BIN:-$repo/target/debug/rollout-exporter}"
export PYTHONDONTWRITEBYTECODE=1

passed=0
failed=0
for check in check_rules check_alertmanager lint_dashboards check_thresholds e2e; do
    echo "# $check"
    out="$(mktemp)"
    timeout 240 python3 "$here/$check.py" 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    ok=$(grep -c '^ok - ' "$out")
    bad=$(grep -c '^not ok - ' "$out")
    rm -f "$out"
    if [ "$status" -ne 0 ] && [ "$bad" -eq 0 ]; then
        echo "not ok - $check exited with status $status without reporting a failure"
        bad=1
    fi
    passed=$((passed + ok))
    failed=$((failed + bad))
done

echo "kit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
