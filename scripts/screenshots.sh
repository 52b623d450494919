#!/usr/bin/env bash
# Regenerates the README's screenshots of the status page (docs/images/status-*.png) with the
# browser tests (tests/browser/run.sh --screenshots): Debian's chromium, the demo's healthy and
# degraded scenarios and a real table with a circuit trip in a throwaway PostgreSQL cluster.
# Builds the exporter first. Needs what `REX_STAGES=install scripts/test.sh` installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked
export ROLLOUT_EXPORTER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/rollout-exporter"
exec tests/browser/run.sh --screenshots docs/images
