#!/usr/bin/env bash
# End-to-end benchmarks of rollout-exporter and its peers; see docs/benchmarks.md.
#
#   bench/run.sh            full run: 1M and 10M rows, our exporter, query-exporter and
#                           postgres_exporter side by side; prints the table and rewrites the
#                           generated part of docs/benchmarks.md (about 25 minutes on 2 cores)
#   bench/run.sh --smoke    ~10,000 rows, our exporter only, every step of its path, < 60 s;
#                           what scripts/test.sh runs so the harness keeps working
#   extra arguments go to bench/harness.py (e.g. --sizes 1000000 --no-peers; --no-peers also
#   skips installing the peers, --doc PATH writes the generated block elsewhere)
# Each size also times `rollout-exporter backtest` over the seed's last 48 h in 5-minute steps
# against the runbook's 48 h query (target: at most 3x; the smoke run only checks that it works).
#
# Needs PostgreSQL 15 server binaries (initdb, pg_ctl, pgbench; /usr/lib/postgresql/15/bin or
# PG_BIN), psql, python3 and wrk; the full run also installs query-exporter into
# target/bench/venv (PyPI) and prometheus-postgres-exporter (Debian). Everything listens on
# 127.0.0.1 only. ROLLOUT_EXPORTER_BIN picks the binary (default: cargo build --release).
# Report protocol (tools/rexlib.py): one `ok <step>` / `FAIL <step>: <reason>` / `SKIP <step>: <why>`
# line per step, then exactly `bench: N passed, N failed` (`, N skipped` when something was
# skipped); the exit status is non-zero when anything failed. With CI=true a missing tool is a
# failure, never a skip; without it, a skip with the reason (wrk alone skips only its own step).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
peers=1
args=()
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1; args+=("$a") ;;
    --no-peers) peers=0; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done
mode=$([ "$smoke" = 1 ] && echo smoke || echo full)
base="target/bench/$mode"
mkdir -p "$base"

# A failure before the harness runs, in the same protocol: the FAIL line and the closing line.
fail() { printf 'FAIL %s: %s\nbench: 0 passed, 1 failed\n' "$1" "$2"; exit 1; }

# Whatever happens (failure, Ctrl-C, SIGTERM), kill what the harness started (its pid file lists
# them, one process group each) and stop the throwaway cluster.
py=""
cleanup() {
  local rc=$?
  if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then
    kill -TERM "$py" 2>/dev/null || true  # the harness stops its own processes first
    for _ in $(seq 1 30); do kill -0 "$py" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$py" 2>/dev/null || true
  fi
  if [ -s "$base/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null || true
    done < "$base/pids"
    sleep 1
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done < "$base/pids"
    : > "$base/pids"
  fi
  if [ -f "$base/pg/data/postmaster.pid" ]; then
    pg_ctl_cmd=("${PG_BIN:-/usr/lib/postgresql/15/bin}/pg_ctl" -D "$base/pg/data" -m immediate -w stop)
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "${pg_ctl_cmd[@]}" >/dev/null 2>&1 || true
    else "${pg_ctl_cmd[@]}" >/dev/null 2>&1 || true; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null || fail "tool python3" "python3 is not installed"
# The other tools (PostgreSQL server binaries, psql, wrk) are checked and reported by the harness.

if [ "$smoke" = 0 ] && [ "$peers" = 1 ]; then
  # The peers, installed on demand (not with --no-peers): query-exporter in its own venv, postgres_exporter from Debian
  # without starting its service (the harness starts it on a loopback port).
  # SQLAlchemy 2.1 maps postgresql:// to psycopg 3.
  if ! { [ -x target/bench/venv/bin/query-exporter ] && target/bench/venv/bin/python -c 'import psycopg' 2>/dev/null; }; then
    { python3 -m venv target/bench/venv &&
      target/bench/venv/bin/pip install -q query-exporter 'psycopg[binary]'; } ||
      fail "peer query-exporter" "could not install query-exporter into target/bench/venv"
  fi
  if ! command -v prometheus-postgres-exporter >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "peer postgres_exporter" "prometheus-postgres-exporter missing and not root"
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-postgres-exporter >/dev/null ||
      fail "peer postgres_exporter" "apt-get install prometheus-postgres-exporter failed"
    [ "$created_policy" = 1 ] && rm -f "$policy"
  fi
fi

bin="${ROLLOUT_EXPORTER_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --quiet || fail "exporter binary" "cargo build --release failed"
  bin="$PWD/target/release/rollout-exporter"
fi
# The harness copies the binary into $base (one binary for the whole run); the commit it was built
# from goes into docs/benchmarks.md.
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || commit="$commit+uncommitted"
export BENCH_EXPORTER_COMMIT="$commit"

cmd="bench/run.sh${*:+ $*}"
# In the background so that a signal reaches the traps at once, not after the run.
python3 bench/harness.py --binary "$bin" --command "$cmd" "${args[@]}" &
py=$!
wait "$py"
