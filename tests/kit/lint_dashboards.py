#!/usr/bin/env python3
"""Dashboard lint: the grafana/dashboard-linter rules that apply to dashboards/*.json, plus unique
panel ids, thresholds at 0.97 / 0.01 wherever those ratios are shown, metric names that exist, and
no drift from dashboards/generate.py. PromQL validity is decided by promtool (the real parser).

Rules encoded (dashboard-linter names): template-datasource-rule, template-job-rule,
template-instance-rule, template-label-promql-rule, template-on-time-change-reload-rule,
template-uneditable-rule, panel-datasource-rule, panel-title-description-rule, panel-units-rule,
panel-no-targets-rule, target-promql-rule, target-rate-interval-rule, target-job-rule,
target-instance-rule, target-counter-agg-rule.
"""

from __future__ import annotations

import json
import re
import sys

import kitlib as k

# grafana/dashboard-linter panel-units-rule list (the subset a dashboard like this can use, plus
# every unit it names for time, data, throughput and booleans).
VALID_UNITS = set("""none string short percent percentunit locale sci hex hex0x
dateTimeAsIso dateTimeAsIsoNoDateIfToday dateTimeAsUS dateTimeAsUSNoDateIfToday dateTimeAsLocal
dateTimeAsLocalNoDateIfToday dateTimeAsSystem dateTimeFromNow
hertz ns µs ms s m h d dtdurationms dtdurations dthms dtdhms timeticks clockms clocks
cps ops reqps rps wps iops cpm opm rpm wpm bytes decbytes bits decbits bool bool_yes_no bool_on_off""".split())
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan", "atan2"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
RATE_FUNCS = ("rate", "irate", "increase")
DS_REFS = ("${datasource}", "$datasource")


def strip_strings(expr: str) -> str:
    """Blank out string literals, keeping every position (so offsets index the original too)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)


def selectors(expr: str) -> list[tuple[str, str, int, int]]:
    """(metric, matchers, start, end) of every vector selector; matchers is '' for a bare name."""
    e = strip_strings(expr)
    # grouping / matching label lists are not selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", lambda m: " " * len(m.group(0)), e)
    out = []
    inside = [False] * len(e)  # label matchers between { and } are no selectors
    for b in re.finditer(r"\{[^}]*\}", e):
        for i in range(b.start(), b.end()):
            inside[i] = True
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        name, end = m.group(0), m.end()
        if inside[m.start()] or name in KEYWORDS or name.startswith("__"):
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] in ".$"):
            continue  # part of a number like 1e3 or a variable
        rest = e[end:].lstrip()
        if rest.startswith("("):
            continue  # a function
        if rest.startswith("{"):
            close = e.index("}", end)
            out.append((name, expr[e.index("{", end) + 1:close], m.start(), close + 1))
        else:
            out.append((name, "", m.start(), end))
    return out


def lint_target(expr: str) -> list[str]:
    problems = []
    e = strip_strings(expr)
    for rng in re.findall(r"\[([^\]]+)\]", e):
        if rng.strip() != "$__rate_interval":
            problems.append(f"range [{rng}] is not [$__rate_interval] (target-rate-interval-rule)")
    for name, matchers, start, end in selectors(expr):
        for var in ("environment", "job", "instance"):
            if not re.search(rf'\b{var}=~"\$\{{?{var}\}}?"', matchers):
                problems.append(f'{name}: no {var}=~"${var}" matcher (target-{var}-rule)')
        if name.endswith(COUNTER_SUFFIXES):
            before = e[:start].rstrip()
            after = e[end:].lstrip()
            if not (re.search(r"\b(" + "|".join(RATE_FUNCS) + r")\s*\($", before) and after.startswith("[")):
                problems.append(f"counter {name} is not inside rate/irate/increase (target-counter-agg-rule)")
    return problems


def main(r: k.Report) -> None:
    p = k.run([sys.executable, str(k.REPO / "dashboards" / "generate.py"), "--check"])
    r.check(p.returncode == 0, "dashboards/*.json are what dashboards/generate.py generates", p.stdout + p.stderr)
    r.check(len(k.DASHBOARDS) >= 1, f"found {len(k.DASHBOARDS)} dashboards")

    constants = k.rule_constants()
    min_success = constants.get("rollout:threshold:min_success_ratio")
    max_manual = constants.get("rollout:threshold:max_manual_review_ratio")
    r.check(min_success == 0.97 and max_manual == 0.01,
            "the rules' gate thresholds are 0.97 and 0.01", f"{constants}")
    known = k.documented_metrics() | k.recorded_names() | {"up", "ALERTS"}
    histo = {m + s for m in k.documented_metrics() for s in ("_bucket", "_count", "_sum")}
    known |= histo
    all_exprs: list[tuple[str, str]] = []

    for path in k.DASHBOARDS:
        rel = path.relative_to(k.REPO)
        try:
            d = json.loads(path.read_text())
        except ValueError as e:
            r.check(False, f"{rel} is JSON", str(e))
            continue
        problems: list[str] = []
        if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 39:
            problems.append(f"schemaVersion {d.get('schemaVersion')} < 39")
        for key in ("uid", "title", "description"):
            if not d.get(key):
                problems.append(f"dashboard has no {key}")
        if d.get("editable") is not False:
            problems.append("dashboard is editable (template-uneditable-rule)")
        r.check(not problems, f"{rel}: schemaVersion >= 39, uid, title, description, not editable",
                "\n".join(problems))

        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        ds_vars = [v for v in variables.values() if v.get("type") == "datasource"]
        ds = variables.get("datasource", {})
        r.check(len(ds_vars) == 1 and ds.get("type") == "datasource" and ds.get("query") == "prometheus"
                and (ds.get("label") or "").lower() == "data source",
                f"{rel}: one `datasource` variable of type prometheus labelled Data source (template-datasource-rule)",
                json.dumps(ds_vars))
        for name in ("environment", "job", "instance"):
            v = variables.get(name, {})
            problems = []
            if v.get("type") != "query":
                problems.append("missing or not a query variable")
            if (v.get("datasource") or {}).get("uid") not in DS_REFS:
                problems.append("does not use the $datasource variable")
            if v.get("refresh") != 2:
                problems.append("refresh is not 2 (on time range change; template-on-time-change-reload-rule)")
            q = v.get("query", {})
            q = q.get("query", "") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
            if not m or m.group(2) != name:
                problems.append(f"query {q!r} is not label_values(<selector>, {name}) (template-label-promql-rule)")
            else:
                all_exprs.append((f"{rel} variable {name}", k.substitute(m.group(1))))
            if name in ("job", "instance") and not (v.get("multi") and v.get("includeAll")
                                                     and v.get("allValue") == ".+"):
                problems.append("not multi-select with All = .+ (template-job/instance-rule)")
            r.check(not problems, f"{rel}: `{name}` template variable", "\n".join(problems))

        panels = k.dashboard_panels(d)
        ids = [p.get("id") for p in panels]
        r.check(all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)),
                f"{rel}: {len(ids)} panel ids are unique integers",
                f"duplicates: {sorted({i for i in ids if ids.count(i) > 1}, key=str)}")
        text = json.dumps(d)
        hard = [u for u in re.findall(r'"uid":\s*"([^"]*)"', text)
                if u not in DS_REFS and u not in (d.get("uid"), "-- Grafana --")]
        r.check(not hard, f"{rel}: no hard-coded datasource uid", str(hard))

        for p in panels:
            where = f"{rel} panel {p.get('id')} {p.get('title')!r}"
            problems = []
            if not (p.get("title") or "").strip():
                problems.append("no title (panel-title-description-rule)")
            if p.get("type") == "row":
                r.check(not problems, f"{where}: row has a title", "\n".join(problems))
                continue
            if not (p.get("description") or "").strip():
                problems.append("no description (panel-title-description-rule)")
            unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if unit not in VALID_UNITS:
                problems.append(f"unit {unit!r} missing or not a Grafana unit (panel-units-rule)")
            if (p.get("datasource") or {}).get("uid") not in DS_REFS:
                problems.append("panel datasource is not $datasource (panel-datasource-rule)")
            targets = [t for t in p.get("targets", []) if t.get("expr")]
            if not targets:
                problems.append("no PromQL targets (panel-no-targets-rule)")
            for t in targets:
                if (t.get("datasource") or {}).get("uid") not in DS_REFS:
                    problems.append(f"target {t.get('refId')} datasource is not $datasource")
                for prob in lint_target(t["expr"]):
                    problems.append(f"target {t.get('refId')}: {prob}")
                for name, _m, _s, _e in selectors(t["expr"]):
                    if name not in known:
                        problems.append(f"target {t.get('refId')}: {name} is neither in docs/metrics.md nor a "
                                        "recording rule of alerts/")
                all_exprs.append((f"{where} target {t.get('refId')}", k.substitute(t["expr"])))
            # Thresholds at the gate values wherever the gate ratios are shown.
            exprs = " ".join(t["expr"] for t in targets)
            defaults = p.get("fieldConfig", {}).get("defaults", {})
            values = [s.get("value") for s in defaults.get("thresholds", {}).get("steps", [])]
            drawn = p.get("type") != "timeseries" or \
                defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") != "off"
            if re.search(r"success_ratio|error_ratio:", exprs):
                if min_success not in values or not drawn:
                    problems.append(f"shows the success ratio without a drawn threshold at {min_success} "
                                    f"(steps {values})")
            if "manual_review_ratio" in exprs:
                if max_manual not in values or not drawn:
                    problems.append(f"shows the manual-review ratio without a drawn threshold at {max_manual} "
                                    f"(steps {values})")
            r.check(not problems, f"{where}: lint", "\n".join(problems))

    # target-promql-rule / template-label-promql-rule: the real parser decides.
    promtool = r.tool("promtool", "prometheus")
    if promtool and all_exprs:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="rollout-kit-lint-") as tmp:
            f = k.pathlib.Path(tmp) / "dashboard-exprs.yml"
            lines = ["groups:", "  - name: dashboard-exprs", "    rules:"]
            for i, (_where, e) in enumerate(all_exprs):
                lines += [f"      - record: kit:dashboard_expr_{i}", f"        expr: {json.dumps(e)}"]
            f.write_text("\n".join(lines) + "\n")
            p = k.run([promtool, "check", "rules", str(f)])
            detail = p.stdout + p.stderr
            for i, (where, e) in enumerate(all_exprs):
                if f"kit:dashboard_expr_{i}" in detail or f"rule {i}:" in detail:
                    detail += f"\n{where}: {e}"
            r.check(p.returncode == 0, f"all {len(all_exprs)} dashboard queries parse as PromQL (promtool)", detail)

    # Provisioning points at the dashboards and a prometheus datasource, without a UID in dashboards.
    prov = k.REPO / "deploy" / "grafana" / "provisioning"
    dsf = list((prov / "datasources").glob("*.y*ml"))
    dbf = list((prov / "dashboards").glob("*.y*ml"))
    r.check(bool(dsf) and all("type: prometheus" in f.read_text() for f in dsf),
            "deploy/grafana/provisioning/datasources provisions a prometheus datasource")
    r.check(bool(dbf) and all(re.search(r"path:\s*\S+", f.read_text()) and "type: file" in f.read_text() for f in dbf),
            "deploy/grafana/provisioning/dashboards has a file provider with a path")


if __name__ == "__main__":
    sys.exit(k.standalone("kit", main))
