"""What the alerting/dashboard kit's checks share beyond tools/rexlib.py: the repository's rule
files, dashboards and Alertmanager configuration, a real Prometheus / Alertmanager started on a free
loopback port, and the webhook the e2e test receives notifications on (stdlib only, Python 3.11).

The report protocol, processes, waits and HTTP helpers are rexlib's (re-exported here for the
checks: k.Report, k.standalone, k.run, k.free_port, k.wait_until, k.http_json, k.http_ok,
k.prom_query, k.prom_wait, k.Processes).
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import re
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

from rexlib import (CI, REPO, Processes, Report, free_port, http_json, http_ok,  # noqa: E402,F401
                    prom_query, prom_wait, run, run_sections, standalone, wait_until)

ALERTS = REPO / "alerts"
RULE_FILES = sorted(p for p in ALERTS.iterdir() if p.suffix in (".yml", ".yaml"))
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = REPO / "docs" / "runbook.md"


def exporter_binary(r: Report, what: str) -> str | None:
    """The exporter binary (ROLLOUT_EXPORTER_BIN, else target/debug), or None after reporting why
    `what` cannot run: a failure with CI=true, a skip otherwise."""
    binary = os.environ.get("ROLLOUT_EXPORTER_BIN", str(REPO / "target" / "debug" / "rollout-exporter"))
    if os.access(binary, os.X_OK):
        return binary
    if CI:
        r.check(False, f"exporter binary {binary} exists (CI=true: {what} cannot be skipped)")
    else:
        r.skip(what, f"{binary} not built (set ROLLOUT_EXPORTER_BIN or cargo build)")
    return None


def start_prometheus(procs: Processes, config_yaml: str, name: str = "prometheus",
                     extra_args: list[str] | None = None) -> str:
    """Start a real Prometheus on a free loopback port with a temp storage dir; return its base URL."""
    port = free_port()
    d = procs.tmp / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "prometheus.yml"
    cfg.write_text(config_yaml)
    procs.start(name, ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
                       f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                       *(extra_args or [])])
    url = f"http://127.0.0.1:{port}"
    wait_until(f"{name} ready on {url}", lambda: http_ok(url + "/-/ready"), 30)
    return url


def start_alertmanager(procs: Processes, config_path: pathlib.Path, name: str = "alertmanager") -> str:
    port = free_port()
    d = procs.tmp / name
    d.mkdir(parents=True, exist_ok=True)
    procs.start(name, ["prometheus-alertmanager", f"--config.file={config_path}",
                       f"--storage.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                       "--cluster.listen-address=", "--log.level=warn"])
    url = f"http://127.0.0.1:{port}"
    wait_until(f"{name} ready on {url}", lambda: http_ok(url + "/-/ready"), 30)
    return url


def loaded_rules(prom_url: str) -> list[dict]:
    """Every rule Prometheus loaded, as its API returns it (a YAML parser without PyYAML)."""
    groups = http_json(prom_url + "/api/v1/rules")["data"]["groups"]
    return [dict(r, group=g["name"], file=g["file"]) for g in groups for r in g["rules"]]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def runbook_anchors() -> set[str]:
    if not RUNBOOK.exists():
        return set()
    out = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            out.add(github_anchor(line.lstrip("#")))
    return out


# ---------------------------------------------------------------- Alertmanager test copy and webhook
PLACEHOLDER_URLS = {
    "https://pager.example.invalid/alertmanager/rollout-exporter": "/pager",
    "https://tickets.example.invalid/alertmanager/rollout-exporter": "/ticket",
}


def alertmanager_test_copy(webhook_base: str, dest: pathlib.Path) -> pathlib.Path:
    """deploy/alertmanager/alertmanager.yml with the receivers pointed at the test's webhook
    (/pager, /ticket) and short timers; the routing tree and inhibitions stay as written
    (check_alertmanager.py proves the routing tree is identical)."""
    text = ALERTMANAGER_CONFIG.read_text()
    for placeholder, path in PLACEHOLDER_URLS.items():
        if placeholder not in text:
            raise ValueError(f"{ALERTMANAGER_CONFIG} no longer has the receiver URL {placeholder}")
        text = text.replace(placeholder, webhook_base + path)
    text, n = re.subn(r"(?m)^(\s*)group_wait: .*$", r"\1group_wait: 1s", text)
    if n == 0:
        raise ValueError("no group_wait in the Alertmanager configuration")
    text = re.sub(r"(?m)^(\s*)group_interval: .*$", r"\1group_interval: 1s", text)
    dest.write_text(text)
    return dest


def alert_severities(rule_files=None) -> dict[str, str]:
    """alertname -> severity label, read from the rule files' text (simple, fixed layout)."""
    out: dict[str, str] = {}
    for f in rule_files or RULE_FILES:
        current = None
        for line in f.read_text().splitlines():
            m = re.match(r"\s*- alert:\s*(\S+)", line)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"\s*- record:", line)
            if m:
                current = None
                continue
            m = re.match(r"\s*severity:\s*(\S+)", line)
            if m and current and current not in out:
                out[current] = m.group(1)
    return out


class Webhook:
    """An HTTP server in this process that records what Alertmanager posts to it."""

    def __init__(self) -> None:
        import http.server
        import threading
        self.received: list[tuple[str, dict]] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    payload = {"unparseable": body.decode(errors="replace")}
                with lock:
                    outer.received.append((self.path, payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def alerts(self, path: str | None = None, status: str = "firing") -> list[dict]:
        out = []
        for p, payload in list(self.received):
            if path is None or p == path:
                out += [a for a in payload.get("alerts", []) if a.get("status") == status]
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- dashboards
def substitute(expr: str, environment: str = ".*", rate_interval: str = "1m") -> str:
    """Grafana's variables as Grafana would expand them with every value selected."""
    out = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    out = out.replace("$__interval", rate_interval).replace("$__range", "1h")
    for name, value in (("environment", environment), ("job", ".+"), ("instance", ".+")):
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    return out


def dashboard_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out += p.get("panels", []) if p.get("type") == "row" else []
    return out


def dashboard_exprs(dash: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in dashboard_panels(dash) if p.get("type") != "row"
            for t in p.get("targets", []) if t.get("expr")]


def rule_constants() -> dict[str, float]:
    """rollout:threshold:* recording rules that are plain numbers: name -> value."""
    out = {}
    for f in RULE_FILES:
        for m in re.finditer(r"- record:\s*(rollout:threshold:\w+)\s*\n\s*expr:\s*vector\(([-0-9.eE+]+)\)",
                             f.read_text()):
            out[m.group(1)] = float(m.group(2))
    return out


def recorded_names() -> set[str]:
    names = set()
    for f in RULE_FILES:
        names |= set(re.findall(r"- record:\s*(\S+)", f.read_text()))
    return names


def documented_metrics() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `([a-z_:]+)` \|", text, flags=re.M))
