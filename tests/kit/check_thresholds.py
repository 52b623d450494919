#!/usr/bin/env python3
"""Thresholds live in one place and equal the exporter's defaults.

Sources compared: the rollout:threshold:* recording rules (the one place the alerts read), the
defaults table of docs/configuration.md, dashboards/generate.py's constants, and, when the binary
exists, `rollout-exporter serve --help` (the defaults the code really has).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import kitlib as k

# exporter flag -> (recording rule, generate.py constant or None)
GATE = {
    "--min-success-ratio": ("rollout:threshold:min_success_ratio", "MIN_SUCCESS_RATIO"),
    "--max-manual-review-ratio": ("rollout:threshold:max_manual_review_ratio", "MAX_MANUAL_REVIEW_RATIO"),
    "--min-starts": ("rollout:threshold:min_starts", "MIN_STARTS"),
}


WINDOW_MATCHER = re.compile(r'\bwindow\s*(?:=|!=|=~|!~)\s*"[^"]*"')
# soak alert -> the gate criteria it must read (the ratio, then the minimum-traffic guard)
SOAK_ALERTS = {
    "RolloutSoakSuccessRatioBelowThreshold": ("success_ratio", "min_starts"),
    "RolloutManualReviewRatioTooHigh": ("manual_review_ratio", "min_starts"),
}


def doc_defaults() -> dict[str, str]:
    out = {}
    for line in (k.REPO / "docs" / "configuration.md").read_text().splitlines():
        m = re.match(r"\|\s*`(--[a-z-]+)`\s*\|[^|]*\|\s*`([^`]*)`\s*\|", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def help_defaults(binary: str) -> dict[str, str]:
    p = k.run([binary, "serve", "--help"])
    out, flag = {}, None
    for line in (p.stdout + p.stderr).splitlines():
        m = re.match(r"\s+(?:-\w, )?(--[a-z-]+)", line)
        if m:
            flag = m.group(1)
        d = re.search(r"\[default: ([^\]]+)\]", line)
        if d and flag:
            out[flag] = d.group(1)
    return out


def main(r: k.Report) -> None:
    rules = k.rule_constants()
    docs = doc_defaults()
    spec = importlib.util.spec_from_file_location("generate", k.REPO / "dashboards" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    binary = os.environ.get("ROLLOUT_EXPORTER_BIN", str(k.REPO / "target" / "debug" / "rollout-exporter"))
    helpd = help_defaults(binary) if os.access(binary, os.X_OK) else None
    if helpd is None:
        if k.CI:
            r.check(False, f"{binary} exists (CI=true: needed to read the real defaults)")
        else:
            r.skip("thresholds equal `serve --help` defaults", f"{binary} not built: compared with docs/configuration.md only")

    for flag, (rule, const) in GATE.items():
        want = docs.get(flag)
        r.check(want is not None and rules.get(rule) == float(want),
                f"{rule} = {rules.get(rule)} equals the documented default of {flag} ({want})")
        if helpd is not None:
            r.check(helpd.get(flag) is not None and rules.get(rule) == float(helpd[flag]),
                    f"{rule} equals `rollout-exporter serve --help` default of {flag} ({helpd.get(flag)})")
        if const:
            r.check(getattr(gen, const) == rules.get(rule),
                    f"dashboards/generate.py {const} = {getattr(gen, const)} equals {rule}")

    # The error budget is derived, not a second copy of the threshold.
    text = "\n".join(f.read_text() for f in k.RULE_FILES)
    r.check(re.search(r"record:\s*rollout:threshold:error_budget_ratio\s*\n\s*expr:\s*1 - rollout:threshold:min_success_ratio",
                      text) is not None,
            "the 3% error budget is derived from the success threshold (1 - min_success_ratio)")
    # Each threshold is defined once.
    names = re.findall(r"record:\s*(rollout:threshold:\w+)", text)
    r.check(len(names) == len(set(names)), "each rollout:threshold:* is defined once")

    # The soak-window series are labelled with --soak as written, so nothing may select a window
    # label: the soak is read from assignment_rollout_gate_observed{criterion}, whatever --soak is.
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    pinned = sorted(set(WINDOW_MATCHER.findall(code)))
    r.check(not pinned, "no rule selects a `window` label (it follows --soak as written)", str(pinned))
    for path in k.DASHBOARDS:
        exprs = [t["expr"] for _p, t in k.dashboard_exprs(json.loads(path.read_text()))]
        pinned = sorted({m for e in exprs for m in WINDOW_MATCHER.findall(e)})
        r.check(not pinned, f"{path.relative_to(k.REPO)}: no query selects a `window` label", str(pinned))
    for alert, criteria in SOAK_ALERTS.items():
        m = re.search(rf"- alert:\s*{alert}\s*\n\s*expr:\s*\|?\n?(.*?)\n\s*for:", code, re.S)
        expr = m.group(1) if m else ""
        missing = [c for c in criteria if f'assignment_rollout_gate_observed{{criterion="{c}"}}' not in expr]
        r.check(m is not None and not missing,
                f"{alert} reads assignment_rollout_gate_observed for {', '.join(criteria)}",
                f"missing {missing} in:\n{expr}")


if __name__ == "__main__":
    sys.exit(k.standalone("kit", main))
