#!/usr/bin/env bash
# Checks of the deploy kit (Dockerfile, deploy/, docs/operations.md) against the code and the tools.
#
#   tests/deploy/run.sh                 # uses target/debug/rollout-exporter
#   ROLLOUT_EXPORTER_BIN=target/release/rollout-exporter tests/deploy/run.sh
#   CI=true tests/deploy/run.sh         # a missing tool (promtool, amtool) or file fails, not skips
#
# Report protocol (tools/rexlib.py): `ok <check> (note)`, `FAIL <check>: <reason>`, `SKIP <check>: <why>`;
# last line: `deploy: N passed, N failed` (`, N skipped` when something was skipped); exit status 1
# when anything failed.
# Needs: Python 3.11 with PyYAML (installed into target/deploy-venv from PyPI when it is missing),
# promtool (Debian: prometheus), amtool (Debian: prometheus-alertmanager); uses systemd-analyze,
# kubectl (kustomize) and psql + a local PostgreSQL when present. No Docker engine is needed: the
# Dockerfile and the compose file are checked statically.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

python="${PYTHON:-python3}"
if ! "$python" -c 'import yaml' 2>/dev/null; then
    venv="$repo/target/deploy-venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
        echo "deploy: PyYAML missing; installing it into $venv" >&2
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pyyaml>=6,<7'
    fi
    python="$venv/bin/python"
fi

export ROLLOUT_EXPORTER_BIN="${ROLLOUT_EXPORTER_BIN:-target/debug/rollout-exporter}"
exec "$python" "$repo/tests/deploy/check_deploy.py" "$@"
