#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need (Debian
# packages, without starting their services), makes sure PostgreSQL listens on 127.0.0.1:5432,
# then runs fmt, clippy, the unit and integration tests, the alert/dashboard kit, the status page
# in a real browser, the bench smoke run, the secret scan and the deploy checks.
#
# Every stage runs through `stage`, which times it and records one line (`NAME ok 12s`,
# `NAME FAILED (exit 3) 40s`); the table of all stages is printed at the end. A failing stage
# does not stop the run (the later stages still report), except the preconditions `install` and
# `postgres`; the exit status is non-zero if any stage failed.
#
# With CI=true a missing tool is a failure, never a skip. Without CI=true and not root, missing
# packages only give a warning: the tests that need them print SKIPPED.
#
# Developer convenience: REX_STAGES=install,postgres scripts/test.sh runs only the named stages
# (comma-separated, from the list printed by REX_STAGES=help); the rest show as "not selected".
#
# This script never stops or kills a process it did not start: packages are installed under a
# policy-rc.d that answers 101, so neither invoke-rc.d nor deb-systemd-invoke starts a service.
# The stage functions are called indirectly, through `stage`:
# shellcheck disable=SC2317
set -euo pipefail
cd "$(dirname "$0")/.."

all_stages=(install postgres stale-dbs fmt clippy test kit browser bench-smoke secret-scan deploy)

selected=",${REX_STAGES:-$(IFS=,; echo "${all_stages[*]}")},"
if [ "${REX_STAGES:-}" = help ]; then echo "stages: ${all_stages[*]}"; exit 0; fi
IFS=, read -ra wanted <<<"${REX_STAGES:-}"
for s in "${wanted[@]}"; do
  case " ${all_stages[*]} " in
    *" $s "*) ;;
    *) echo "scripts/test.sh: unknown stage '$s' in REX_STAGES (stages: ${all_stages[*]})" >&2; exit 2 ;;
  esac
done

results=()   # one "NAME<TAB>outcome" per stage, in order
failed=0
halted=""    # name of the failed precondition, once one has failed

# stage [--required] NAME command...: runs the command in a subshell with errexit, records its
# outcome and duration. A failed --required stage marks every later stage "not run".
stage() {
  local required=0
  if [ "$1" = --required ]; then required=1; shift; fi
  local name=$1; shift
  if [[ "$selected" != *",$name,"* ]]; then results+=("$name	not selected (REX_STAGES)"); return 0; fi
  if [ -n "$halted" ]; then results+=("$name	not run ($halted failed)"); return 0; fi
  printf '\n== %s: %s\n' "$name" "$*"
  local start=$SECONDS rc
  # Not `( ... ) || rc=$?`: bash ignores errexit inside a command whose status is tested.
  current=$name
  set +e
  ( set -e; "$@" )
  rc=$?
  set -e
  current=""
  local line
  if [ "$rc" = 0 ]; then
    line="$name ok $((SECONDS - start))s"
  else
    line="$name FAILED (exit $rc) $((SECONDS - start))s"
    failed=1
    [ "$required" = 1 ] && halted=$name
  fi
  printf '== %s\n' "$line"
  results+=("$name	${line#"$name "}")
}

current=""   # the stage running now
finished=0
summary() {
  [ "${#results[@]}" = 0 ] && [ -z "$current" ] && return
  printf '\n== stages\n'
  local r
  for r in "${results[@]}"; do printf '   %-12s %s\n' "${r%%	*}" "${r#*	}"; done
  [ -z "$current" ] || printf '   %-12s %s\n' "$current" "interrupted"
  [ "$finished" = 1 ] || printf '   (the run stopped before the end)\n'
}
trap summary EXIT

# --- tools -----------------------------------------------------------------------------------

# pgbouncer lives in /usr/sbin, which is not on a Debian user's PATH.
for d in /usr/sbin /sbin; do case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac; done

# The PostgreSQL server binaries (initdb, pg_ctl, pgbench; pg_basebackup): Debian keeps them in
# /usr/lib/postgresql/<ver>/bin, off PATH. Appends the newest such directory to PATH and makes it
# bench/run.sh's PG_BIN unless that is set.
pg_bindir() {
  local d
  while IFS= read -r d; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  d="$(pg_config --bindir 2>/dev/null || true)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
  return 0
}
add_pg_path() {
  local d
  d="$(pg_bindir)"
  [ -n "$d" ] || return 0
  case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
  export PG_BIN="${PG_BIN:-$d}"
}
add_pg_path
export PATH

# tool:package, checked with `command -v` (after the PATH additions above).
tools=(
  wrk:wrk curl:curl openssl:openssl
  psql:postgresql-client pg_isready:postgresql-client pg_basebackup:postgresql-client
  initdb:postgresql pg_ctl:postgresql pgbench:postgresql pg_ctlcluster:postgresql
  pgbouncer:pgbouncer
  prometheus:prometheus promtool:prometheus
  prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager
  chromium:chromium
)
# chromium is the browser of the `browser` stage (tests/browser): Debian's build, driven by
# playwright over CDP; playwright's own browser download is never used (and cannot be fetched
# here). About 25 packages and 124 MB to download on Debian 12.

# Prints the packages providing the missing tools, one per line, deduplicated.
missing_packages() {
  local t
  for t in "${tools[@]}"; do command -v "${t%%:*}" >/dev/null || echo "${t#*:}"; done
  # The secret scan (and tests/deploy when PyYAML is missing) make a venv: Debian's python3 needs
  # python3-venv for ensurepip.
  python3 -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv
}

policy=/usr/sbin/policy-rc.d
policy_marker='# written by rollout-exporter scripts/test.sh'
policy_state=none   # none | created | saved (someone else's, moved aside)

deny_service_starts() {
  if [ -e "$policy" ] && grep -qF "$policy_marker" "$policy"; then
    policy_state=created   # left by an interrupted run of this script: ours to remove
  elif [ -e "$policy" ]; then
    local rc=0
    "$policy" rollout-exporter-probe start >/dev/null 2>&1 || rc=$?
    [ "$rc" = 101 ] && return 0   # an existing policy that already denies: use it as it is
    echo "note: $policy does not deny service starts (exit $rc); replacing it during the install"
    mv "$policy" "$policy.rex-test-saved"
    policy_state=saved
  else
    policy_state=created
  fi
  printf '#!/bin/sh\n%s: no service starts while it installs packages\nexit 101\n' \
    "$policy_marker" > "$policy"
  chmod 755 "$policy"
}
restore_policy() {
  case "$policy_state" in
    created) rm -f "$policy" ;;
    saved) mv -f "$policy.rex-test-saved" "$policy" ;;
  esac
  policy_state=none
}

install_packages() {
  local -a pkgs
  mapfile -t pkgs < <(missing_packages | sort -u)
  if ((${#pkgs[@]} == 0)); then echo "all tools present"; return 0; fi
  echo "missing: ${pkgs[*]}"
  if [ "$(id -u)" != 0 ]; then
    if [ "${CI:-}" = true ]; then
      echo "CI=true and not root: cannot install ${pkgs[*]}" >&2
      return 1
    fi
    echo "warning: not root, not installing ${pkgs[*]}; the tests that need them print SKIPPED" \
      "(CI fails instead)" >&2
    return 0
  fi
  trap restore_policy EXIT   # this stage's subshell: also on failure or interruption
  deny_service_starts
  local log rc=0
  log="$(mktemp)"
  export DEBIAN_FRONTEND=noninteractive
  # Waits for another apt/dpkg run instead of failing on its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >"$log" 2>&1 &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" \
      >>"$log" 2>&1 || rc=$?
  restore_policy
  if [ "$rc" != 0 ]; then cat "$log" >&2; rm -f "$log"; return "$rc"; fi
  grep -i 'denied\|warn' "$log" || true   # what the policy stopped, and apt's warnings
  rm -f "$log"
  add_pg_path
  mapfile -t pkgs < <(missing_packages | sort -u)
  if ((${#pkgs[@]})); then echo "still missing after the install: ${pkgs[*]}" >&2; return 1; fi
  echo "installed; all tools present"
}

# --- PostgreSQL --------------------------------------------------------------------------------

postgres_up() {
  if pg_isready -q -h 127.0.0.1 -p 5432; then echo "answering on 127.0.0.1:5432"; return 0; fi
  if command -v pg_ctlcluster >/dev/null; then
    # The Debian cluster configured for port 5432 (normally <newest version>/main).
    local ver="" name=""
    read -r ver name < <(pg_lsclusters -h | awk '$3 == 5432 { print $1, $2; exit }') || true
    if [ -z "$ver" ]; then echo "no Debian cluster is configured for port 5432" >&2; return 1; fi
    echo "not answering; starting cluster $ver/$name"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
  fi
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p 5432
}

# Databases left behind by an interrupted run: only those nobody is connected to (a suite running
# concurrently, e.g. from another worktree, keeps its own); a DROP that loses a race is ignored.
drop_stale_dbs() {
  local sql
  sql="$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
    "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(d.datname) || ';' FROM pg_database d
     WHERE d.datname LIKE 'rex\_test\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)")"
  if [ -z "$sql" ]; then echo "none"; return 0; fi
  echo "dropping $(grep -c . <<<"$sql") database(s)"
  psql -h 127.0.0.1 -U postgres -d postgres -q <<<"$sql" >/dev/null || true
}

# --- secret scan -------------------------------------------------------------------------------

# detect-secrets over the tracked files. Pinned, in a venv under target/ (about 6 s to install,
# 2 s to scan). Any finding fails the run; deliberate test sentinels and proven false positives
# are listed, with why, in the allowlist.
secret_scan() {
  local scan_venv=target/secret-scan-venv
  if [ ! -x "$scan_venv/bin/detect-secrets" ]; then
    python3 -m venv "$scan_venv"
    "$scan_venv/bin/pip" install -q --disable-pip-version-check 'detect-secrets==1.5.0'
  fi
  local -a allow=() tracked
  local pattern
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
}

# --- the stages, in order --------------------------------------------------------------------

stage --required install install_packages
add_pg_path   # the install may have brought the server binaries
stage --required postgres postgres_up
stage stale-dbs drop_stale_dbs
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --all-targets --locked -- -D warnings
stage test cargo test --locked -- --test-threads=8

export ROLLOUT_EXPORTER_BIN="$PWD/target/debug/rollout-exporter"
stage kit bash tests/kit/run.sh
# Its own stage, not a kit module: the kit is standard-library Python, this one needs playwright
# (pinned, in a venv under target/) and Debian's chromium.
stage browser bash tests/browser/run.sh
stage bench-smoke bash bench/run.sh --smoke
stage secret-scan secret_scan
stage deploy bash tests/deploy/run.sh

finished=1
exit "$failed"
