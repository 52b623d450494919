#!/usr/bin/env python3
"""Rule files: promtool check + unit tests, and the shape of every alert as Prometheus loads it.

Structure is read from a real Prometheus (no scrape targets) through /api/v1/rules, so no YAML
library is needed and the check sees exactly what Prometheus sees.
"""

from __future__ import annotations

import re
import sys

import kitlib as k

# The alerts issue 4 asks for, with the severity it names.
REQUIRED = {
    "RolloutSoakSuccessRatioBelowThreshold": "critical",
    "RolloutManualReviewRatioTooHigh": "critical",
    "RolloutErrorBudgetBurnFast": "critical",
    "RolloutErrorBudgetBurnMedium": "critical",
    "RolloutErrorBudgetBurnSlow": "warning",
    "RolloutCoordinatorErrorsSustained": "critical",
    "RolloutCircuitBreakerOpen": "critical",
    "RolloutShadowLeak": "critical",
    "RolloutFlagsInvalid": "critical",
    "RolloutLockContentionElevated": "warning",
    "RolloutRetriesElevated": "warning",
    "RolloutStuckBookings": "warning",
    "RolloutCoordinatorInactive": "warning",
    "RolloutExporterDown": "critical",
    "RolloutExporterAbsent": "critical",
    "RolloutExporterDatabaseDown": "critical",
    "RolloutExporterPollsStale": "critical",
    # Issue 13: a decided no-go pages at once, a projected one opens a ticket.
    "RolloutSoakDecidedNoGo": "critical",
    "RolloutSoakProjectedNoGo": "warning",
}
RUNBOOK_BASE = "https://github.com/example/rollout-exporter/blob/main/docs/runbook.md#"


def unit_test_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "silent": n} over every alert_rule_test of alerts/tests/*.yml."""
    out: dict[str, dict[str, int]] = {}
    for f in k.RULE_TESTS:
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*alertname:\s*(\S+)\s*$", line)
            if not m:
                continue
            name = m.group(1)
            nxt = next((l for l in lines[i + 1:] if l.strip()), "")
            c = out.setdefault(name, {"fires": 0, "silent": 0})
            if re.match(r"\s*exp_alerts:\s*\[\]\s*$", nxt):
                c["silent"] += 1
            elif re.match(r"\s*exp_alerts:\s*$", nxt):
                c["fires"] += 1
    return out


def main(r: k.Report) -> None:
    promtool = r.tool("promtool", "prometheus")
    if promtool:
        for f in k.RULE_FILES:
            p = k.run([promtool, "check", "rules", str(f)])
            r.check(p.returncode == 0, f"promtool check rules {f.relative_to(k.REPO)}", p.stdout + p.stderr)
        for f in k.RULE_TESTS:
            p = k.run([promtool, "test", "rules", str(f)], timeout=120)
            r.check(p.returncode == 0, f"promtool test rules {f.relative_to(k.REPO)}", p.stdout + p.stderr)

    if not r.tool("prometheus", "prometheus"):
        return
    procs = k.Processes("rollout-kit-")
    files = "\n".join(f"  - {f}" for f in k.RULE_FILES)
    try:
        url = k.start_prometheus(procs, f"global:\n  evaluation_interval: 1m\nrule_files:\n{files}\n",
                                 name="prometheus-rules")
        rules = k.loaded_rules(url)
    except Exception as e:  # noqa: BLE001
        r.check(False, "a real Prometheus loads alerts/*.yml", f"{e}\n{procs.log_tail('prometheus-rules')}")
        return
    finally:
        procs.stop_all()

    alerts = [x for x in rules if x["type"] == "alerting"]
    r.check(len(alerts) > 0, f"Prometheus loaded {len(alerts)} alerts and "
            f"{len(rules) - len(alerts)} recording rules from alerts/")
    names = [a["name"] for a in alerts]
    r.check(len(names) == len(set(names)), "alert names are unique",
            str(sorted(n for n in names if names.count(n) > 1)))
    by_name = {a["name"]: a for a in alerts}
    for name, sev in REQUIRED.items():
        got = by_name.get(name, {}).get("labels", {}).get("severity")
        r.check(got == sev, f"alert {name} exists with severity={sev}", f"got severity={got!r}")

    anchors = k.runbook_anchors()
    cases = unit_test_cases()
    for a in alerts:
        n, labels, ann = a["name"], a.get("labels", {}), a.get("annotations", {})
        problems = []
        if labels.get("severity") not in ("critical", "warning"):
            problems.append(f"severity label is {labels.get('severity')!r}, not critical|warning")
        if labels.get("signal") not in ("data", "exporter"):
            problems.append(f"signal label is {labels.get('signal')!r}, not data|exporter (inhibition)")
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key, "").strip():
                problems.append(f"annotation {key} missing")
        if "$value" not in ann.get("description", ""):
            problems.append("description does not show the observed value ($value)")
        url = ann.get("runbook_url", "")
        if not url.startswith(RUNBOOK_BASE):
            problems.append(f"runbook_url {url!r} does not start with {RUNBOOK_BASE}")
        elif url[len(RUNBOOK_BASE):] not in anchors:
            problems.append(f"runbook_url anchor #{url[len(RUNBOOK_BASE):]} is no heading of docs/runbook.md")
        elif url[len(RUNBOOK_BASE):] != k.github_anchor(n):
            problems.append(f"runbook_url anchor is not the alert's own section #{k.github_anchor(n)}")
        if a.get("duration", 0) <= 0:
            problems.append("no `for:` duration (a single bad evaluation would page)")
        c = cases.get(n, {"fires": 0, "silent": 0})
        if c["fires"] == 0 or c["silent"] == 0:
            problems.append(f"unit tests: {c['fires']} firing and {c['silent']} silent evaluations "
                            "(need both sides of the threshold)")
        r.check(not problems, f"alert {n}: severity, annotations, runbook section, for:, unit tests",
                "\n".join(problems))

    # Thresholds live in one group: no alert expression carries a bare gate number.
    for a in alerts:
        bare = re.findall(r"(?<![\w.])(0\.97|0\.01|0\.03)(?![\w.])", a["query"])
        r.check(not bare, f"alert {a['name']} takes its thresholds from rollout:threshold:* only",
                f"literal {bare} in {a['query']}")


if __name__ == "__main__":
    sys.exit(k.standalone("kit", main))
