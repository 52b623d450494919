#!/usr/bin/env python3
"""The verdict's Wilson score intervals against an independent implementation: scipy.stats.

For each denominator of a grid (0 and 1 included), a real PostgreSQL database gets that many
coordinator.start rows and, in turn, several numerator pairs (0 and n included) of
coordinator.confirmed and coordinator.manual_review; `rollout-exporter verdict --format json
--confidence C` then runs over it at several confidence levels. Each ratio criterion's `interval`
must equal scipy's `binomtest(k, n).proportion_ci(C, method="wilson")` (scipy's own Wilson interval
with Cephes' normal quantile, not a second copy of the exporter's formula), and its `evidence` must
be what the interval says about the threshold. n = 0 has no scipy counterpart: the documented
[0, 1], inconclusive.

scipy comes pinned from PyPI into the kit's venv (tests/kit/run.sh); without it the check fails
under CI=true and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import sys

import kitlib as k

DENOMINATORS = (0, 1, 2, 3, 10, 37, 100, 381, 1000, 100_000)
CONFIDENCES = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999_999)
THRESHOLDS = {"success_ratio": (0.97, ">="), "manual_review_ratio": (0.01, "<")}
TOLERANCE = 1e-12  # absolute, on bounds within [0, 1]


def numerators(n: int) -> list[tuple[int, int]]:
    """(confirmed, manual reviews) pairs: every k of {0, 1, n/100, n/3, n/2, n-1, n} appears on both sides."""
    ks = sorted({k_ for k_ in (0, 1, n // 100, n // 3, n // 2, n - 1, n) if 0 <= k_ <= n})
    return list(zip(ks, reversed(ks)))


def psql(*args: str, db: str = "postgres", sql: str | None = None) -> str:
    cmd = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", *args]
    if sql is not None:
        cmd += ["-c", sql]
    p = k.run(cmd, timeout=120)
    if p.returncode != 0:
        raise k.Fail(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


def seed(db: str, starts: int, confirmed: int, manual: int) -> None:
    rows = " UNION ALL ".join(
        f"SELECT '{et}', g FROM generate_series(1, {count}) g"
        for et, count in (("coordinator.start", starts), ("coordinator.confirmed", confirmed),
                          ("coordinator.manual_review", manual)) if count > 0) or "SELECT NULL, NULL WHERE false"
    psql(db=db, sql=("TRUNCATE observability_events; "
                     "INSERT INTO observability_events (source, event_type, context, created_at) "
                     f"SELECT 'assignment.coordinator', t.et, '{{}}', now() - interval '10 minutes' "
                     f"FROM ({rows}) AS t(et, g)"))


def expected_evidence(low: float, high: float, threshold: float, comparison: str) -> str:
    holds = (lambda v: v >= threshold) if comparison == ">=" else (lambda v: v < threshold)
    return "conclusive" if holds(low) == holds(high) else "inconclusive"


def main(r: k.Report) -> None:
    try:
        import scipy
        from scipy.stats import binomtest
    except ImportError as e:
        if k.CI:
            r.check(False, "scipy is importable (CI=true: the interval cross-check cannot be skipped)",
                    f"{e}; tests/kit/run.sh installs it into target/kit-venv")
        else:
            r.skip("Wilson intervals against scipy.stats", f"scipy not importable ({e}): run tests/kit/run.sh")
        return
    binary = k.exporter_binary(r, "Wilson intervals against scipy.stats")
    if binary is None:
        return
    if not r.tool("psql", "postgresql-client"):
        return

    db = f"rex_test_kit_intervals_{os.getpid()}"
    psql(sql=f"CREATE DATABASE {db}")
    try:
        psql("-f", str(k.REPO / "tests" / "sql" / "observability_events.sql"), db=db)
        url = f"postgres://postgres@127.0.0.1:5432/{db}"
        compared, mismatches = 0, []
        for n in DENOMINATORS:
            for confirmed, manual in numerators(n):
                seed(db, n, confirmed, manual)
                for c in CONFIDENCES:
                    p = k.run([binary, "verdict", "--database-url", url, "--format", "json",
                               "--confidence", repr(c)], timeout=60)
                    if p.returncode not in (0, 1, 3):
                        raise k.Fail(f"verdict exited {p.returncode}: {p.stderr.strip()}")
                    verdict = json.loads(p.stdout)
                    by_name = {cr["name"]: cr for cr in verdict["criteria"]}
                    for name, num in (("success_ratio", confirmed), ("manual_review_ratio", manual)):
                        cr = by_name[name]
                        got = cr["interval"]
                        if n == 0:
                            want_low, want_high = 0.0, 1.0
                        else:
                            ci = binomtest(num, n).proportion_ci(confidence_level=c, method="wilson")
                            want_low, want_high = float(ci.low), float(ci.high)
                        threshold, comparison = THRESHOLDS[name]
                        want_evidence = expected_evidence(want_low, want_high, threshold, comparison)
                        ok = (abs(got["low"] - want_low) <= TOLERANCE and abs(got["high"] - want_high) <= TOLERANCE
                              and got["confidence"] == c and (cr["numerator"], cr["denominator"]) == (num, n)
                              and cr["evidence"] == want_evidence)
                        # k = 0 and k = n are exact, not merely close.
                        ok = ok and (num != 0 or got["low"] == 0.0) and (num != n or got["high"] == 1.0)
                        compared += 1
                        if not ok:
                            mismatches.append(f"{name} {num}/{n} at {c}: got {got} {cr['evidence']}, "
                                              f"scipy [{want_low!r}, {want_high!r}] {want_evidence}")
        r.check(not mismatches,
                f"verdict JSON intervals equal scipy {scipy.__version__} binomtest(...).proportion_ci(method='wilson') "
                f"within {TOLERANCE:g} on {compared} (numerator, denominator, confidence) cases, 0 and n included",
                "\n".join(mismatches))
    finally:
        psql(sql=f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(k.standalone("kit", main))
