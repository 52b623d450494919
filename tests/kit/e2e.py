#!/usr/bin/env python3
"""Live end-to-end: the real exporter (demo scenarios), a real Prometheus loading alerts/ with 1 s
scrape and evaluation intervals, a real Alertmanager with the repository's routing whose receivers
are a webhook served by this test.

Asserts: degraded traffic pages (a severity=critical alert reaches the pager webhook through
Alertmanager), healthy traffic pages nobody over the same observation period (longer than the 1m
`for:` of the soak alerts), every dashboard query (Grafana variables substituted) is valid PromQL
on that Prometheus and returns data for the degraded exporter, and the running exporter's gate
thresholds equal the rules'.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse

import kitlib as k

DEGRADED, HEALTHY = "e2e-degraded", "e2e-healthy"
OBSERVE_S = 75       # healthy must stay silent this long (> the 1m `for:` of the soak alerts + delivery)
PAGE_DEADLINE_S = 150


def query(prom: str, expr: str) -> dict:
    return k.prom_query(prom, expr)


def main(r: k.Report) -> None:
    binary = k.exporter_binary(r, "live e2e")
    if binary is None:
        return
    tools = [r.tool("prometheus", "prometheus"), r.tool("prometheus-alertmanager", "prometheus-alertmanager")]
    if not all(tools):
        return

    procs = k.Processes("rollout-kit-")
    hook = k.Webhook()
    try:
        run(r, procs, hook, binary)
    except Exception as e:  # noqa: BLE001 - report, then clean up
        import traceback
        r.check(False, "the live end-to-end test ran to the end",
                f"{traceback.format_exc()}\n--- exporter (degraded)\n{procs.log_tail('exporter-degraded')}"
                f"\n--- prometheus\n{procs.log_tail('prometheus')}\n--- alertmanager\n{procs.log_tail('alertmanager')}")
    finally:
        procs.stop_all()
        hook.close()


def run(r: k.Report, procs: k.Processes, hook: k.Webhook, binary: str) -> None:
    # 1. Two exporters: degraded and healthy simulated traffic.
    ports = {}
    for scenario in ("degraded", "healthy"):
        port = k.free_port()
        procs.start(f"exporter-{scenario}", [binary, "demo", "--scenario", scenario,
                                             "--listen", f"127.0.0.1:{port}"])
        ports[scenario] = port
    for scenario, port in ports.items():
        k.wait_until(f"the {scenario} demo to serve /metrics and /readyz",
                     lambda p=port: k.http_ok(f"http://127.0.0.1:{p}/readyz")
                     and k.http_ok(f"http://127.0.0.1:{p}/metrics"), 30)
    r.check(True, "rollout-exporter demo --scenario degraded|healthy serve /metrics and are ready")

    # 2. Alertmanager with the repository's routing; receivers -> this test's webhook.
    am_cfg = k.alertmanager_test_copy(hook.url, procs.tmp / "alertmanager.yml")
    am = k.start_alertmanager(procs, am_cfg)

    # 3. Prometheus: the repository's rules, 1 s scrape and evaluation, the two exporters as targets.
    rule_files = "\n".join(f"  - {f}" for f in k.RULE_FILES)
    cfg = f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
{rule_files}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{am.removeprefix('http://')}"]
scrape_configs:
  - job_name: rollout-exporter
    static_configs:
      - targets: ["127.0.0.1:{ports['degraded']}"]
        labels:
          environment: {DEGRADED}
      - targets: ["127.0.0.1:{ports['healthy']}"]
        labels:
          environment: {HEALTHY}
"""
    prom = k.start_prometheus(procs, cfg)
    k.prom_wait(prom, 'up{job="rollout-exporter"} == 1', "Prometheus to scrape both exporters", 30,
                pred=lambda result: len(result) == 2)
    t0 = time.monotonic()
    r.check(True, "Prometheus scrapes both exporters with the rules loaded")
    rules = k.loaded_rules(prom)
    r.check(all(x.get("health") == "ok" or x.get("health") == "unknown" for x in rules),
            f"all {len(rules)} rules load on Prometheus",
            "\n".join(f"{x['name']}: {x.get('lastError')}" for x in rules if x.get("health") == "err"))

    # 4. Wait for the degraded exporter's page to reach the pager webhook.
    def degraded_page() -> list[dict]:
        return [a for a in hook.alerts("/pager")
                if a["labels"].get("environment") == DEGRADED and a["labels"].get("severity") == "critical"]
    try:
        pages = k.wait_until("a severity=critical page for the degraded exporter at the pager webhook",
                             degraded_page, PAGE_DEADLINE_S, interval_s=0.5)
        names = sorted({a["labels"]["alertname"] for a in pages})
        r.check(True, f"degraded traffic paged through Alertmanager after {time.monotonic() - t0:.0f}s: "
                      + ", ".join(names))
    except TimeoutError as e:
        firing = query(prom, "ALERTS")["data"]["result"]
        r.check(False, "degraded traffic paged through Alertmanager", f"{e}\nALERTS: {json.dumps(firing)}\n"
                f"webhook received: {hook.received}")

    # 5. Healthy pages nobody over the observation period (a bounded wait, not an open sleep).
    remaining = OBSERVE_S - (time.monotonic() - t0)
    if remaining > 0:
        try:
            k.wait_until("a page for the healthy exporter (there must be none)",
                         lambda: [a for a in hook.alerts() if a["labels"].get("environment") == HEALTHY],
                         remaining, interval_s=0.5)
        except TimeoutError:
            pass
    healthy_notified = [a for a in hook.alerts() if a["labels"].get("environment") == HEALTHY]
    r.check(not healthy_notified, f"healthy traffic paged nobody and opened no ticket in {OBSERVE_S}s",
            json.dumps(healthy_notified, indent=1))
    healthy_alerts = query(prom, f'ALERTS{{environment="{HEALTHY}"}}')["data"]["result"]
    r.check(not healthy_alerts, "no alert is even pending for the healthy exporter",
            "\n".join(json.dumps(a["metric"]) for a in healthy_alerts))

    # The headline alerts of the degraded scenario (success 0.90 < 0.97, manual review 3% >= 1%).
    firing = {a["metric"]["alertname"] for a in
              query(prom, f'ALERTS{{environment="{DEGRADED}", alertstate="firing"}}')["data"]["result"]}
    for name in ("RolloutSoakSuccessRatioBelowThreshold", "RolloutManualReviewRatioTooHigh"):
        r.check(name in firing, f"{name} fires for the degraded exporter", f"firing: {sorted(firing)}")
    paged = {a["labels"]["alertname"] for a in degraded_page()}
    r.check("RolloutSoakSuccessRatioBelowThreshold" in paged,
            "the soak success page reached the pager receiver", f"paged: {sorted(paged)}")
    r.check(not [a for a in hook.alerts("/ticket") if a["labels"].get("severity") == "critical"],
            "no critical alert went to the ticket receiver")
    mismatch = query(prom, 'ALERTS{alertname="RolloutGateThresholdMismatch"}')["data"]["result"]
    r.check(not mismatch, "the exporter's gate thresholds equal the rules' (no RolloutGateThresholdMismatch)")

    # 6. Every dashboard query is valid PromQL here and returns data for the degraded exporter.
    for path in k.DASHBOARDS:
        d = json.loads(path.read_text())
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") != "query" or not q:
                continue
            import re
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            sel, label = k.substitute(m.group(1)), m.group(2)
            got = k.http_json(prom + f"/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": sel}))
            r.check(got.get("status") == "success" and len(got.get("data", [])) > 0,
                    f"{path.name} variable {v['name']}: {q} lists values", json.dumps(got))
        for p, t in k.dashboard_exprs(d):
            expr = k.substitute(t["expr"], environment=DEGRADED)
            what = f"{path.name} panel {p['id']} {p['title']!r} {t['refId']} returns data"
            try:
                got = query(prom, expr)
            except Exception as e:  # noqa: BLE001 - a 400 is invalid PromQL
                body = getattr(e, "read", lambda: b"")().decode(errors="replace")
                r.check(False, what, f"{e} {body}\n{expr}")
                continue
            result = got.get("data", {}).get("result", [])
            r.check(got.get("status") == "success" and len(result) > 0, what,
                    f"status={got.get('status')} result={result}\n{expr}")


if __name__ == "__main__":
    sys.exit(k.standalone("kit", main))
