#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian packages,
# without starting their services), makes sure PostgreSQL listens on 127.0.0.1:5432, then runs
# fmt, clippy, the unit and integration tests, the alert/dashboard kit and the deploy checks.
# With CI=true a missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

need_pkgs=()
command -v pgbouncer >/dev/null || need_pkgs+=(pgbouncer)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_pkgs+=(prometheus-alertmanager)
command -v amtool >/dev/null || need_pkgs+=(prometheus-alertmanager)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  if [ "$(id -u)" = 0 ]; then
    # Packages must not start their services: tests start their own on free loopback ports.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
    # Some postinst scripts start daemons anyway on non-systemd machines; stop them.
    pkill -x prometheus 2>/dev/null || true
    pkill -x prometheus-alertmanager 2>/dev/null || true
    pkill -x pgbouncer 2>/dev/null || true
    pkill -f prometheus-node-exporter 2>/dev/null || true
  elif [ "${CI:-}" = true ]; then
    echo "missing ${need_pkgs[*]} and not root: cannot install" >&2; exit 1
  else
    echo "warning: ${need_pkgs[*]} missing; tests that need them will be skipped (CI fails instead)" >&2
  fi
fi

log "PostgreSQL on 127.0.0.1:5432"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  fi
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p 5432
fi
# Databases left behind by an interrupted run.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'rex\_test\_%'" \
  | psql -h 127.0.0.1 -U postgres -d postgres -q >/dev/null || true

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test"
cargo test --locked -- --test-threads=8

export ROLLOUT_EXPORTER_BIN="$PWD/target/debug/rollout-exporter"
log "alert and dashboard kit"
bash tests/kit/run.sh
log "bench smoke"
bash bench/run.sh --smoke
log "secret scan (detect-secrets over the tracked files)"
# Pinned, in a venv under target/ (about 6 s to install, 2 s to scan). Any finding fails the run;
# deliberate test sentinels and proven false positives are listed, with why, in the allowlist.
scan_venv=target/secret-scan-venv
if [ ! -x "$scan_venv/bin/detect-secrets" ]; then
  python3 -m venv "$scan_venv"
  "$scan_venv/bin/pip" install -q --disable-pip-version-check 'detect-secrets==1.5.0'
fi
allow=()
while IFS= read -r pattern; do
  case "$pattern" in '' | '#'*) continue ;; esac
  allow+=(--exclude-secrets "$pattern")
done < scripts/secret-scan-allowlist.txt
mapfile -t tracked < <(git ls-files)
"$scan_venv/bin/detect-secrets" scan "${allow[@]}" "${tracked[@]}" > target/secret-scan.json
python3 - target/secret-scan.json <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
for path, findings in sorted(results.items()):
    for f in findings:
        print(f"possible secret: {path}:{f['line_number']}: {f['type']}", file=sys.stderr)
sys.exit(1 if results else 0)
PY

log "deploy kit"
bash tests/deploy/run.sh
