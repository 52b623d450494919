#!/usr/bin/env python3
"""Checks of the deploy kit. Run through tests/deploy/run.sh (which makes sure PyYAML is importable).

Report protocol of tools/rexlib.py: each check prints `ok <name> (note)`, `FAIL <name>: <every
problem found>` or `SKIP <name>: <why>`; the last line is `deploy: N passed, N failed` (`, N
skipped` when something was skipped). With CI=true a missing required tool or file is a failure.

What "exists in the code" means here: the flags, environment variables and default port named in
the manifests, the systemd unit and the compose files are compared with the binary's own
`serve --help` / `demo --help` output and with docs/configuration.md (the contract), and the probe
paths are requested from a running `demo` exporter.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

from rexlib import (CI, REPO, Fail, Processes, Report, Skip, WaitTimeout, free_port,  # noqa: E402
                    http_get, need_tool, on_signals_raise, run, wait_until)

BIN = pathlib.Path(os.environ.get("ROLLOUT_EXPORTER_BIN", "target/debug/rollout-exporter"))
if not BIN.is_absolute():
    BIN = REPO / BIN

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
SYSTEMD_UNIT = DEPLOY / "systemd" / "rollout-exporter.service"
SYSTEMD_ENV = DEPLOY / "systemd" / "rollout-exporter.env.example"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
CONFIG_DOC = REPO / "docs" / "configuration.md"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

# Environment variables that are not flags but that the exporter reads (docs/configuration.md names
# them: RUST_LOG for the level, the three flags of the app when no --flags-file is given).
NON_FLAG_ENV = {
    "RUST_LOG",
    "FEATURE_ASSIGNMENT_PIPELINE_V3",
    "FEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW",
    "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL",
}
PROBES = {"liveness": "/healthz", "readiness": "/readyz"}


# ---- checks and their problems -------------------------------------------------------------------


CHECKS: list[Callable[[], Any]] = []


def check(fn: Callable[[], Any]) -> Callable[[], Any]:
    CHECKS.append(fn)
    return fn


class Problems:
    """Collects every problem of one check, so that one run shows them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def expect(self, cond: Any, msg: str) -> bool:
        if not cond:
            self.add(msg)
        return bool(cond)

    def done(self, ok_note: str = "") -> str:
        if self.items:
            raise Fail("\n".join(self.items))
        return ok_note


def rel(p: pathlib.Path) -> str:
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        return str(p)


def load_yaml_docs(path: pathlib.Path) -> list:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path: pathlib.Path) -> Any:
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        raise Fail(f"{rel(path)}: expected one YAML document, found {len(docs)}")
    return docs[0]


# ---- the contract: docs/configuration.md and --help -----------------------------------------------


def contract_rows() -> dict[str, list[dict]]:
    """Rows of the flag tables of docs/configuration.md by section: common, serve, demo."""
    sections = {"## Common to serve and demo": "common", "## serve only": "serve", "## demo only": "demo"}
    rows: dict[str, list[dict]] = {"common": [], "serve": [], "demo": []}
    current = None
    for line in CONFIG_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = sections.get(line.strip())
            continue
        if current is None or not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        flags = re.findall(r"`(--[a-z0-9-]+)`", cells[0])
        envs = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1])
        default = re.findall(r"`([^`]*)`", cells[2])
        rows[current].append({"flags": flags, "envs": envs, "default": default, "raw": line})
    return rows


def documented_default_port() -> int:
    for row in contract_rows()["common"]:
        if "--listen" in row["flags"]:
            return int(row["default"][0].rsplit(":", 1)[1])
    raise Fail("docs/configuration.md: no --listen row")


def documented_endpoints() -> set[str]:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(/[a-z]*)`", text, flags=re.M))


_HELP_CACHE: dict[str, dict] = {}


def help_of(sub: str) -> dict:
    """Parsed `rollout-exporter <sub> --help`: {"flags": {flag: {"env": ..., "default": ...}}, "text": ...}."""
    if sub in _HELP_CACHE:
        return _HELP_CACHE[sub]
    if not BIN.exists():
        raise Fail(
            f"{rel(BIN)} not found: build it first (cargo build) or set ROLLOUT_EXPORTER_BIN"
        )
    # A clean environment: clap prints the current value of a flag's variable in the help.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "NO_COLOR": "1"}
    args = [BIN, sub, "--help"] if sub else [BIN, "--help"]
    proc = run(args, env=env, timeout=30)
    if proc.returncode != 0:
        raise Fail(f"`{' '.join(map(str, args))}` exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    text = proc.stdout
    flags: dict[str, dict] = {}
    entry: list[str] = []
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\s{1,8}(-[A-Za-z], )?--[a-z0-9]", line):
            if entry:
                entries.append(" ".join(entry))
            entry = [line.strip()]
        elif entry and (line.startswith(" ") or not line.strip()):
            entry.append(line.strip())  # description, [env: ...], [default: ...], blank lines
        elif entry:
            entries.append(" ".join(entry))  # a section header ends the options
            entry = []
    if entry:
        entries.append(" ".join(entry))
    for e in entries:
        m = re.match(r"(?:-[A-Za-z], )?(--[a-z0-9][a-z0-9-]*)", e)
        if not m:
            continue
        env_m = re.search(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]", e)
        def_m = re.search(r"\[default: ([^\]]*)\]", e)
        flags[m.group(1)] = {"env": env_m.group(1) if env_m else None, "default": def_m.group(1) if def_m else None}
    subcommands = set()
    if not sub:
        in_cmds = False
        for line in text.splitlines():
            if line.strip().lower().startswith("commands:"):
                in_cmds = True
                continue
            if in_cmds:
                m = re.match(r"^\s+([a-z][a-z0-9-]*)\s", line + " ")
                if m:
                    subcommands.add(m.group(1))
                elif line.strip() and not line.startswith(" "):
                    in_cmds = False
    parsed = {"flags": flags, "text": text, "subcommands": subcommands}
    _HELP_CACHE[sub] = parsed
    return parsed


def env_to_flag(sub: str) -> dict[str, str]:
    return {v["env"]: k for k, v in help_of(sub)["flags"].items() if v["env"]}


def check_args_and_env(p: Problems, where: str, argv: list[str], env_names: list[str]) -> str | None:
    """argv = [subcommand, args...]; every flag and variable must be one the binary knows."""
    if not argv:
        p.add(f"{where}: no subcommand")
        return None
    sub = argv[0]
    top = help_of("")
    if not p.expect(sub in top["subcommands"], f"{where}: subcommand {sub!r} not in `rollout-exporter --help` ({sorted(top['subcommands'])})"):
        return None
    known = help_of(sub)["flags"]
    for a in argv[1:]:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            p.expect(flag in known, f"{where}: flag {flag} not in `{sub} --help`")
    envs = env_to_flag(sub)
    for name in env_names:
        p.expect(
            name in envs or name in NON_FLAG_ENV,
            f"{where}: environment variable {name} is read by no flag of `{sub} --help`",
        )
    return sub


# ---- checks -----------------------------------------------------------------------------------------


@check
def configuration_doc_matches_help() -> str:
    """Every flag row of docs/configuration.md exists in --help with the same variable and default."""
    p = Problems()
    rows = contract_rows()
    n = 0
    for section, subs in (("common", ("serve", "demo")), ("serve", ("serve",)), ("demo", ("demo",))):
        for row in rows[section]:
            for sub in subs:
                flags = help_of(sub)["flags"]
                for i, flag in enumerate(row["flags"]):
                    n += 1
                    if not p.expect(flag in flags, f"docs/configuration.md: {flag} ({section}) missing from `{sub} --help`"):
                        continue
                    env = row["envs"][i] if i < len(row["envs"]) else None
                    if env and len(row["flags"]) > 1 and i > 0:
                        env = None  # the row elides the variables after the first ("...")
                    if env:
                        p.expect(
                            flags[flag]["env"] == env,
                            f"{flag}: docs say env {env}, `{sub} --help` says {flags[flag]['env']}",
                        )
                    doc_default = row["default"][i] if len(row["default"]) == len(row["flags"]) else (
                        row["default"][0] if len(row["default"]) == 1 else None)
                    got = flags[flag]["default"]
                    if doc_default is not None and got is not None:
                        p.expect(got == doc_default, f"{flag}: docs default {doc_default!r}, `{sub} --help` default {got!r}")
    p.expect(n > 20, f"parsed only {n} flag rows from docs/configuration.md")
    return p.done(f"{n} flag/subcommand pairs")


@check
def every_yaml_and_json_file_parses() -> str:
    p = Problems()
    count = 0
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", "target", "node_modules")]
        for name in files:
            path = pathlib.Path(root) / name
            try:
                if name.endswith((".yml", ".yaml")):
                    load_yaml_docs(path)
                    count += 1
                elif name.endswith(".json"):
                    json.loads(path.read_text(encoding="utf-8"))
                    count += 1
            except Exception as err:  # noqa: BLE001 - report any parse error with its file
                p.add(f"{rel(path)}: {err}")
    p.expect(count > 0, "no YAML or JSON file found")
    return p.done(f"{count} files")


def rule_files() -> list[pathlib.Path]:
    files = sorted(f for f in (REPO / "alerts").glob("*.y*ml") if f.suffix in (".yml", ".yaml"))
    if not files:
        raise Fail("alerts/ holds no rule file")
    return files


def promtool_check_config(config: pathlib.Path, rules_subdir: str) -> tuple[str, int]:
    """Copy config + alerts/*.yml into the layout the config expects; return promtool's output."""
    promtool = need_tool("promtool", "prometheus")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shutil.copy(config, tmp / "prometheus.yml")
        (tmp / rules_subdir).mkdir(parents=True)
        for f in rule_files():
            shutil.copy(f, tmp / rules_subdir / f.name)
        # promtool tests beside the rules must not be picked up by the rule_files glob.
        if (REPO / "alerts" / "tests").is_dir():
            shutil.copytree(REPO / "alerts" / "tests", tmp / rules_subdir / "tests")
        proc = run([promtool, "check", "config", tmp / "prometheus.yml"], cwd=tmp)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise Fail(f"promtool check config {rel(config)} failed:\n{out}")
        m = re.search(r"SUCCESS: (\d+) rule files found", out)
        found = int(m.group(1)) if m else -1
        return out, found


def check_scrape_config(p: Problems, config: pathlib.Path, want_envs: set[str]) -> None:
    cfg = load_yaml(config)
    port = documented_default_port()
    jobs = {j["job_name"]: j for j in cfg.get("scrape_configs", [])}
    job = jobs.get("rollout-exporter")
    if not p.expect(job, f"{rel(config)}: no scrape job named rollout-exporter (alerts/ select job=\"rollout-exporter\")"):
        return
    envs = set()
    for sc in job.get("static_configs", []):
        env = (sc.get("labels") or {}).get("environment")
        p.expect(env, f"{rel(config)}: static_config {sc.get('targets')} has no environment label")
        envs.add(env)
        for t in sc.get("targets", []):
            p.expect(t.rsplit(":", 1)[-1] == str(port), f"{rel(config)}: target {t} is not on the default port {port}")
    p.expect(envs >= want_envs, f"{rel(config)}: environments {sorted(envs)}, want {sorted(want_envs)}")
    ams = (cfg.get("alerting") or {}).get("alertmanagers") or []
    p.expect(ams and any(sc.get("targets") for am in ams for sc in am.get("static_configs", [])),
             f"{rel(config)}: no Alertmanager wired under alerting.alertmanagers")
    p.expect(cfg.get("rule_files"), f"{rel(config)}: no rule_files")


@check
def prometheus_config_passes_promtool() -> str:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    p = Problems()
    check_scrape_config(p, config, {"staging", "production"})
    p.done()
    _, found = promtool_check_config(config, "rules/rollout-exporter")
    p.expect(found == len(rule_files()), f"promtool found {found} rule files, alerts/ has {len(rule_files())}")
    return p.done(f"{found} rule files")


@check
def compose_prometheus_config_passes_promtool() -> str:
    config = COMPOSE / "prometheus.yml"
    p = Problems()
    check_scrape_config(p, config, {"rehearsal"})
    # The compose file mounts ../../alerts at /etc/prometheus/rules next to the config.
    compose = load_yaml(COMPOSE / "docker-compose.yml")
    vols = compose["services"]["prometheus"].get("volumes", [])
    p.expect(any(v.startswith("../../alerts:/etc/prometheus/rules") for v in vols),
             "compose prometheus: ../../alerts is not mounted at /etc/prometheus/rules")
    p.expect(any(v.startswith("./prometheus.yml:/etc/prometheus/prometheus.yml") for v in vols),
             "compose prometheus: ./prometheus.yml is not mounted at /etc/prometheus/prometheus.yml")
    p.done()
    _, found = promtool_check_config(config, "rules")
    p.expect(found == len(rule_files()), f"promtool found {found} rule files, alerts/ has {len(rule_files())}")
    return p.done(f"{found} rule files")


@check
def alertmanager_config_passes_amtool() -> str:
    if not ALERTMANAGER.exists():
        msg = f"{rel(ALERTMANAGER)} does not exist (the compose stack mounts it)"
        if CI:
            raise Fail(msg)
        raise Skip(msg + "; this fails under CI=true")
    amtool = need_tool("amtool", "prometheus-alertmanager")
    proc = run([amtool, "check-config", ALERTMANAGER], cwd=ALERTMANAGER.parent)
    if proc.returncode != 0:
        raise Fail(f"amtool check-config failed:\n{(proc.stdout + proc.stderr).strip()}")
    return "SUCCESS"


@check
def prometheusrule_equals_alerts() -> str:
    p = Problems()
    gen = K8S / "generate-prometheusrule.py"
    proc = run([sys.executable, gen, "--check"])
    p.expect(proc.returncode == 0, f"generate-prometheusrule.py --check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    # And the same structure, not only the same text.
    rule = load_yaml(K8S / "rules" / "prometheusrule.yaml")
    p.expect(rule.get("apiVersion") == "monitoring.coreos.com/v1" and rule.get("kind") == "PrometheusRule",
             "prometheusrule.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
    want = []
    for f in rule_files():
        want.extend(load_yaml(f)["groups"])
    got = (rule.get("spec") or {}).get("groups")
    p.expect(got == want, "spec.groups of prometheusrule.yaml differ from the groups of alerts/*.yml")
    names = [g["name"] for g in want]
    p.expect(len(names) == len(set(names)), f"group names repeat across alerts/*.yml: {names}")
    return p.done(f"{len(names)} groups")


@check
def prometheusrule_spec_passes_promtool() -> str:
    """The operator serves spec.groups as one rule file: promtool must accept it as such."""
    p = Problems()
    got = (load_yaml(K8S / "rules" / "prometheusrule.yaml").get("spec") or {}).get("groups")
    promtool = need_tool("promtool", "prometheus")
    with tempfile.TemporaryDirectory() as tmp:
        f = pathlib.Path(tmp) / "prometheusrule-spec.yml"
        f.write_text(yaml.safe_dump({"groups": got}, sort_keys=False))
        proc = run([promtool, "check", "rules", f])
        p.expect(proc.returncode == 0, f"promtool check rules on spec.groups failed:\n{proc.stdout}{proc.stderr}")
    return p.done("promtool check rules")


# ---- kubernetes -----------------------------------------------------------------------------------


def k8s_objects() -> list[tuple[pathlib.Path, dict]]:
    objs = []
    for f in sorted(K8S.rglob("*.y*ml")):
        if f.name == "kustomization.yaml":
            continue
        for d in load_yaml_docs(f):
            objs.append((f, d))
    return objs


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def exporter_containers() -> list[tuple[pathlib.Path, dict, dict]]:
    out = []
    for f, o in k8s_objects():
        if o.get("kind") == "Deployment":
            for c in pod_spec(o).get("containers", []):
                if "rollout-exporter" in str(c.get("image", "")):
                    out.append((f, o, c))
    return out


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@check
def kubernetes_exporter_containers_match_the_code() -> str:
    p = Problems()
    port = documented_default_port()
    endpoints = documented_endpoints()
    containers = exporter_containers()
    p.expect(len(containers) >= 2, f"want a sidecar and a standalone Deployment, found {len(containers)} exporter containers")
    sidecar = [o for _, o, _ in containers if len(pod_spec(o)["containers"]) >= 2]
    p.expect(sidecar, "no Deployment with the exporter beside an app container (sidecar)")
    for f, dep, c in containers:
        where = f"{rel(f)} ({dep['metadata']['name']}/{c['name']})"
        spec = pod_spec(dep)
        env = c.get("env", [])
        names = [e["name"] for e in env]
        argv = list(c.get("command", [])[1:] if c.get("command") else []) + list(c.get("args", []))
        sub = check_args_and_env(p, where, argv, names)
        p.expect(sub == "serve", f"{where}: runs {sub!r}, not serve")
        p.expect(not str(c["image"]).endswith(":latest") and ":" in str(c["image"]), f"{where}: image not pinned to a tag")
        # flags from the app's ConfigMap
        cms = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        p.expect(cms, f"{where}: no envFrom configMapRef (the app's FEATURE_ASSIGNMENT_PIPELINE_V3* flags)")
        app_cms = {e["configMapRef"]["name"] for a in spec["containers"] if a is not c for e in a.get("envFrom", []) if "configMapRef" in e}
        if len(spec["containers"]) > 1:
            p.expect(set(cms) & app_cms, f"{where}: the sidecar does not read the app container's ConfigMap")
        byname = {e["name"]: e for e in env}
        p.expect(byname.get("ROLLOUT_ENVIRONMENT", {}).get("value"), f"{where}: ROLLOUT_ENVIRONMENT not set")
        # the connection string: only from a Secret
        if "DATABASE_URL" in byname:
            e = byname["DATABASE_URL"]
            p.expect("value" not in e and e.get("valueFrom", {}).get("secretKeyRef"),
                     f"{where}: DATABASE_URL must come from a secretKeyRef, never a value")
        elif "DATABASE_URL_FILE" in byname:
            path = byname["DATABASE_URL_FILE"].get("value", "")
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            secret_vols = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
            p.expect(any(path.startswith(mounts[n].rstrip("/") + "/") for n in secret_vols if n in mounts),
                     f"{where}: DATABASE_URL_FILE={path} is not inside a mounted Secret volume")
        else:
            p.add(f"{where}: neither DATABASE_URL (secretKeyRef) nor DATABASE_URL_FILE")
        # port and probes
        ports = {pp.get("name"): pp for pp in c.get("ports", [])}
        p.expect(ports.get("metrics", {}).get("containerPort") == port,
                 f"{where}: no containerPort {port} named metrics (default of --listen)")
        listen = byname.get("LISTEN_ADDR", {}).get("value")
        if listen:
            p.expect(listen.endswith(f":{port}"), f"{where}: LISTEN_ADDR={listen} but containerPort {port}")
        for kind, path in PROBES.items():
            probe = c.get(f"{kind}Probe", {}).get("httpGet", {})
            p.expect(probe.get("path") == path and probe.get("port") in ("metrics", port),
                     f"{where}: {kind}Probe is not GET {path} on the metrics port")
            p.expect(path in endpoints, f"docs/configuration.md has no endpoint {path}")
        # resources
        res = c.get("resources", {})
        for k in ("requests.cpu", "requests.memory", "limits.memory"):
            a, b = k.split(".")
            p.expect(res.get(a, {}).get(b), f"{where}: resources.{k} not set")
        # security context (container, else pod)
        sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
        p.expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot is not true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        p.expect(uid is not None and uid != 0, f"{where}: runAsUser not set to a non-zero uid")
        p.expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem is not true")
        p.expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
        p.expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop is not [ALL]")
        p.expect((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                 f"{where}: seccompProfile is not RuntimeDefault")
        p.expect(dep["spec"].get("replicas") == 1, f"{where}: replicas must be 1 (one exporter per environment)")
    return p.done(f"{len(containers)} exporter containers")


@check
def kubernetes_service_and_monitors_select_the_exporter() -> str:
    p = Problems()
    port = documented_default_port()
    objs = k8s_objects()
    deps = [o for _, o in objs if o.get("kind") == "Deployment"]
    pods = [o["spec"]["template"]["metadata"].get("labels", {}) for o in deps]
    services = [o for _, o in objs if o.get("kind") == "Service"]
    monitors = [o for _, o in objs if o.get("kind") in ("ServiceMonitor", "PodMonitor")]
    p.expect(services, "no Service")
    p.expect(monitors, "no ServiceMonitor or PodMonitor")
    for s in services:
        name = s["metadata"]["name"]
        ports = {pp.get("name"): pp for pp in s["spec"].get("ports", [])}
        p.expect("metrics" in ports, f"Service {name}: no port named metrics")
        p.expect(ports.get("metrics", {}).get("port") == port, f"Service {name}: port metrics is not {port}")
        p.expect(ports.get("metrics", {}).get("targetPort") in ("metrics", port), f"Service {name}: targetPort is not metrics")
        p.expect(any(matches(s["spec"].get("selector", {}), lbl) for lbl in pods), f"Service {name}: selects no Deployment's pods")
    for m in monitors:
        kind, name = m["kind"], m["metadata"]["name"]
        p.expect(m.get("apiVersion") == "monitoring.coreos.com/v1", f"{kind} {name}: apiVersion is not monitoring.coreos.com/v1")
        sel = m["spec"].get("selector", {}).get("matchLabels", {})
        if kind == "ServiceMonitor":
            p.expect(any(matches(sel, s["metadata"].get("labels", {})) for s in services), f"ServiceMonitor {name}: selects no Service")
            eps = m["spec"].get("endpoints", [])
        else:
            p.expect(any(matches(sel, lbl) for lbl in pods), f"PodMonitor {name}: selects no Deployment's pods")
            eps = m["spec"].get("podMetricsEndpoints", [])
        p.expect(eps, f"{kind} {name}: no endpoints")
        for ep in eps:
            p.expect(ep.get("port") == "metrics", f"{kind} {name}: endpoint port is not metrics")
            p.expect(ep.get("path", "/metrics") == "/metrics", f"{kind} {name}: path is not /metrics")
            targets = {r.get("targetLabel"): r.get("replacement") for r in ep.get("relabelings", [])}
            p.expect(targets.get("environment"), f"{kind} {name}: no environment target label")
            p.expect(targets.get("job") == "rollout-exporter", f"{kind} {name}: job label is not set to rollout-exporter")
    # Secret names agree between the two variants.
    secret_names = set()
    for d in deps:
        for v in pod_spec(d).get("volumes", []):
            if "secret" in v:
                secret_names.add(v["secret"]["secretName"])
        for c in pod_spec(d)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_names.add(ref["name"])
    p.expect(len(secret_names) == 1, f"the variants use different Secrets: {sorted(secret_names)}")
    # kustomizations name files that exist
    for k in sorted(K8S.rglob("kustomization.yaml")):
        for r in load_yaml(k).get("resources", []):
            p.expect((k.parent / r).exists(), f"{rel(k)}: resource {r} does not exist")
    return p.done(f"{len(services)} services, {len(monitors)} monitors")


@check
def kubernetes_kustomizations_render() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise Skip("kubectl not found (optional: renders deploy/kubernetes/*/kustomization.yaml offline)")
    p = Problems()
    n = 0
    for d in ("sidecar", "standalone"):
        proc = run([kubectl, "kustomize", K8S / d], timeout=60)
        if p.expect(proc.returncode == 0, f"kubectl kustomize {d}: {proc.stderr.strip()}"):
            kinds = sorted(o["kind"] for o in yaml.safe_load_all(proc.stdout) if o)
            p.expect("PrometheusRule" in kinds and "Deployment" in kinds, f"{d} renders {kinds}")
            n += 1
    return p.done(f"{n} kustomizations")


# ---- systemd --------------------------------------------------------------------------------------


def unit_entries(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order; continuation lines joined."""
    out, section, pending = [], None, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def parse_env_file(path: pathlib.Path, include_commented: bool = False) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if include_commented and re.match(r"^#[A-Z][A-Z0-9_]*=", s):
            s = s[1:]
        if not s or s.startswith("#") or "=" not in s:
            continue
        k, _, v = s.partition("=")
        env[k.strip()] = v.strip()
    return env


@check
def systemd_unit_static() -> str:
    p = Problems()
    entries = unit_entries(SYSTEMD_UNIT)
    svc: dict[str, list[str]] = {}
    for section, k, v in entries:
        if section == "Service":
            svc.setdefault(k, []).append(v)

    def one(k: str) -> str | None:
        return svc.get(k, [None])[-1]

    required = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
        "Restart": "on-failure",
    }
    for k, v in required.items():
        p.expect(one(k) == v, f"{rel(SYSTEMD_UNIT)}: {k}={one(k)!r}, want {v!r}")
    p.expect("@system-service" in svc.get("SystemCallFilter", []), "SystemCallFilter=@system-service missing")
    p.expect(one("MemoryMax"), "MemoryMax not set")
    p.expect(any(v.startswith("-/etc/rollout-exporter/env") or v == "/etc/rollout-exporter/env" for v in svc.get("EnvironmentFile", [])),
             "EnvironmentFile=/etc/rollout-exporter/env missing")
    creds = svc.get("LoadCredential", [])
    envs = dict(v.split("=", 1) for v in svc.get("Environment", []) if "=" in v)
    p.expect(any(c.startswith("database-url:") for c in creds), "LoadCredential=database-url:... missing")
    p.expect(envs.get("DATABASE_URL_FILE") == "%d/database-url", "Environment=DATABASE_URL_FILE=%d/database-url missing")
    p.expect("DATABASE_URL" not in envs, "DATABASE_URL set in the unit: use the credential or the env file")
    exec_start = (one("ExecStart") or "").split()
    p.expect(exec_start[:1] == ["/usr/local/bin/rollout-exporter"], f"ExecStart={' '.join(exec_start)}")
    check_args_and_env(p, rel(SYSTEMD_UNIT), exec_start[1:], list(envs))
    # the example env file: variables known, placeholders only
    example = parse_env_file(SYSTEMD_ENV, include_commented=True)
    check_args_and_env(p, rel(SYSTEMD_ENV), ["serve"], list(example))
    port = documented_default_port()
    if "LISTEN_ADDR" in example:
        p.expect(example["LISTEN_ADDR"].endswith(f":{port}"), f"{rel(SYSTEMD_ENV)}: LISTEN_ADDR not on port {port}")
    return p.done("static")


@check
def systemd_analyze_verify() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        raise Skip("systemd-analyze not found: the unit got the static check only (systemd_unit_static)")
    if not BIN.exists():
        raise Fail(f"{rel(BIN)} not found (ExecStart is verified against the real binary)")
    p = Problems()
    with tempfile.TemporaryDirectory() as tmp:
        unit = pathlib.Path(tmp) / SYSTEMD_UNIT.name
        text = SYSTEMD_UNIT.read_text(encoding="utf-8")
        text = re.sub(r"^ExecStart=/usr/local/bin/rollout-exporter", f"ExecStart={BIN}", text, flags=re.M)
        unit.write_text(text)
        proc = run([tool, "verify", unit], timeout=60)
        out = (proc.stdout + proc.stderr).strip()
        # Unknown keys are only warnings (exit 0): any output about the unit is a failure.
        lines = [l for l in out.splitlines() if SYSTEMD_UNIT.name in l or str(unit) in l]
        p.expect(proc.returncode == 0 and not lines, f"systemd-analyze verify:\n{out}")
        sec = run([tool, "security", "--offline=true", unit], timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout + sec.stderr)
        if m:
            p.expect(float(m.group(1)) <= 2.0, f"systemd-analyze security: exposure {m.group(1)} > 2.0")
            note = f"exposure {m.group(1)}"
        else:
            note = "security --offline not supported"
    return p.done(note)


# ---- compose --------------------------------------------------------------------------------------


def resolve_interpolation(s: str) -> str:
    """${VAR:-default} and ${VAR-default} -> default; ${VAR} -> '' (the variable unset)."""
    s = re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", s)
    return re.sub(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", "", s)


def compose_env_names(service: dict) -> list[str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return [e.split("=", 1)[0] for e in env]
    return list(env)


@check
def compose_files_static() -> str:
    p = Problems()
    port = documented_default_port()
    compose = load_yaml(COMPOSE / "docker-compose.yml")
    services = compose.get("services", {})
    for s in ("exporter", "prometheus", "alertmanager", "grafana"):
        p.expect(s in services, f"docker-compose.yml: no service {s}")
    gi = COMPOSE / ".gitignore"
    ignored = set(gi.read_text(encoding="utf-8").split()) if gi.exists() else set()
    for f in sorted(COMPOSE.glob("docker-compose*.yml")):
        doc = load_yaml(f)
        for name, svc in (doc.get("services") or {}).items():
            where = f"{rel(f)} {name}"
            for pub in svc.get("ports", []):
                pub = str(pub)
                p.expect(pub.startswith("127.0.0.1:"), f"{where}: port {pub} is not bound to 127.0.0.1")
            if "image" in svc and "build" not in svc:
                p.expect(re.search(r":[^:/]+$", svc["image"]) and not svc["image"].endswith(":latest"),
                         f"{where}: image {svc['image']} not pinned")
            for v in svc.get("volumes", []):
                src = str(v).split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
                if src.startswith((".", "/")):
                    target = (COMPOSE / src).resolve()
                    example = target.with_name(target.stem + ".example" + target.suffix)
                    operator_made = target.name in ignored  # e.g. flags.env, copied from flags.example.env
                    p.expect(target.exists() or (operator_made and example.exists()),
                             f"{where}: mounted path {src} does not exist in the repository")
            build = svc.get("build")
            if build:
                ctx = COMPOSE / (build if isinstance(build, str) else build.get("context", "."))
                dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
                p.expect((ctx / dockerfile).exists(), f"{where}: build context has no {dockerfile}")
            if name == "exporter":
                cmd = svc.get("command")
                if cmd is not None:
                    argv = [resolve_interpolation(a) for a in (cmd if isinstance(cmd, list) else cmd.split())]
                    sub = check_args_and_env(p, where, argv, compose_env_names(svc))
                    if f.name == "docker-compose.yml":
                        p.expect(argv[:3] == ["demo", "--scenario", "healthy"], f"{where}: default command is {argv}, want demo --scenario healthy")
                    if sub == "serve":
                        env = svc.get("environment", {})
                        val = str(env.get("DATABASE_URL", "")) if isinstance(env, dict) else ""
                        p.expect(not val or val.startswith("${"), f"{where}: DATABASE_URL must come from the operator's environment")
                for pub in svc.get("ports", []):
                    p.expect(str(pub).rsplit(":", 1)[-1] == str(port), f"{where}: container port of {pub} is not {port}")
    # Grafana provisioning mount and dashboards
    g = services.get("grafana", {})
    vols = [str(v) for v in g.get("volumes", [])]
    p.expect(any(v.startswith("../grafana/provisioning:/etc/grafana/provisioning") for v in vols), "grafana: provisioning not mounted")
    dash_mount = next((v.split(":")[1] for v in vols if v.startswith("../../dashboards:")), None)
    p.expect(dash_mount, "grafana: ../../dashboards not mounted")
    prov = DEPLOY / "grafana" / "provisioning" / "dashboards"
    if dash_mount and prov.is_dir():
        paths = []
        for f in prov.glob("*.y*ml"):
            for prov_doc in load_yaml_docs(f):
                for provider in prov_doc.get("providers", []) or []:
                    paths.append((provider.get("options") or {}).get("path", ""))
        p.expect(not paths or any(pp.rstrip("/").startswith(dash_mount.rstrip("/")) for pp in paths),
                 f"grafana: dashboards mounted at {dash_mount}, providers read {paths}")
    ds = DEPLOY / "grafana" / "provisioning" / "datasources"
    if ds.is_dir():
        urls = [d.get("url", "") for f in ds.glob("*.y*ml") for doc in load_yaml_docs(f) for d in doc.get("datasources", []) or []]
        for u in urls:
            host = re.sub(r"^[a-z]+://", "", u).split(":")[0].split("/")[0]
            p.expect(host in services or host in ("localhost", "127.0.0.1"), f"grafana datasource {u}: no compose service {host}")
    am = services.get("alertmanager", {})
    p.expect(any(str(v).startswith("../alertmanager/alertmanager.yml:") for v in am.get("volumes", [])), "alertmanager: ../alertmanager/alertmanager.yml not mounted")
    return p.done("static (no Docker engine on CI)")


# ---- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    out, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not pending and (not s or s.startswith("#")):
            continue
        if pending and s.startswith("#"):
            continue
        if s.endswith("\\"):
            pending += s[:-1] + " "
            continue
        line = pending + s
        pending = ""
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


@check
def dockerfile_static() -> str:
    p = Problems()
    port = documented_default_port()
    ins = dockerfile_instructions(REPO / "Dockerfile")
    args = {}
    for op, rest in ins:
        if op == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args.setdefault(k.strip(), v.strip().strip('"'))
        if op == "FROM":
            break
    def sub(s: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), s)
    froms = [sub(rest) for op, rest in ins if op == "FROM"]
    p.expect(len(froms) >= 2, f"not multi-stage: {froms}")
    if froms:
        p.expect(re.match(r"rust:[^ ]*\s+AS\s+\w+", froms[0], flags=re.I), f"build stage is {froms[0]!r}, want rust:... AS <name>")
        final = froms[-1].split()[0]
        p.expect(final.startswith("gcr.io/distroless/") or final == "scratch", f"final image {final} is neither distroless nor scratch")
    # Instructions of the final stage
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    final_ins = ins[last_from + 1:]
    users = [rest for op, rest in final_ins if op == "USER"]
    p.expect(users and users[-1].split(":")[0] not in ("root", "0"), f"final stage USER {users}: must be non-root")
    exposes = [rest for op, rest in final_ins if op == "EXPOSE"]
    p.expect(exposes == [str(port)] or exposes == [f"{port}/tcp"], f"EXPOSE {exposes}, want {port}")
    builds = [rest for op, rest in ins[:last_from] if op == "RUN"]
    p.expect(any(re.search(r"cargo build --release --locked", b) for b in builds), "no `cargo build --release --locked`")
    p.expect(any(op == "COPY" and "--from=" in rest for op, rest in final_ins), "final stage copies nothing from the builder")
    entry = [rest for op, rest in final_ins if op == "ENTRYPOINT"]
    cmd = [rest for op, rest in final_ins if op == "CMD"]
    try:
        entry_v = json.loads(entry[-1]) if entry else []
        cmd_v = json.loads(cmd[-1]) if cmd else []
    except json.JSONDecodeError as err:
        raise Fail(f"ENTRYPOINT/CMD not in exec (JSON) form: {err}")
    copied = [rest.split()[-1] for op, rest in final_ins if op == "COPY"]
    p.expect(entry_v and entry_v[0] in copied, f"ENTRYPOINT {entry_v} is not the copied binary ({copied})")
    p.expect(cmd_v == ["serve"], f"CMD {cmd_v}, want [\"serve\"]")
    if BIN.exists():
        p.expect("serve" in help_of("")["subcommands"], "serve is not a subcommand of the binary")
    for op, rest in ins:
        if op in ("ENV", "ARG", "LABEL"):
            p.expect(not re.search(r"(PASSWORD|SECRET|TOKEN|DATABASE_URL|PGPASS)", rest, flags=re.I),
                     f"{op} {rest}: no secrets in the image")
    di = [l.strip() for l in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
          if l.strip() and not l.strip().startswith("#")]
    p.expect((di and di[0] == "*") or ({"target", ".git"} <= {d.strip("/") for d in di}),
             ".dockerignore does not keep target/ and .git out of the build context")
    return p.done("static (no Docker engine on CI)")


# ---- secrets hygiene --------------------------------------------------------------------------------


@check
def no_credentials_in_deploy_files() -> str:
    p = Problems()
    files = [REPO / "Dockerfile", OPERATIONS_DOC] + [f for f in DEPLOY.rglob("*") if f.is_file()]
    url_with_password = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"`]+:([^@\s/'\"`]+)@", re.I)
    assigned = re.compile(r"\b(PGPASSWORD|PASSWORD|password)\s*[=:]\s*['\"]?([^\s'\"#]+)")
    placeholders = {"<redacted>", "CHANGE_ME", "<password>", "..."}
    for f in files:
        if not f.exists() or f.suffix in (".png", ".jpg"):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in url_with_password.finditer(text):
            p.add(f"{rel(f)}: URL with a password: {m.group(0)}")
        for m in assigned.finditer(text):
            val = m.group(2)
            if val in placeholders or val.startswith(("$", ":", "%", "<", "`")) or val.endswith(":"):
                continue
            if f.suffix in (".md", ".sql"):
                continue  # prose and psql variables; URLs above are still checked
            p.add(f"{rel(f)}: literal {m.group(1)}={val}")
    return p.done(f"{len(files)} files")


# ---- the running binary ----------------------------------------------------------------------------


def run_exporter(argv: list[str], extra_env: dict[str, str], timeout: float = 60) -> tuple[dict, str, str]:
    """Start the binary on a free loopback port, wait until /readyz is 200 (or the deadline), then
    return ({path: status}, /metrics body, its output) and stop it."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn", **extra_env}
    procs = Processes("rollout-deploy-")
    proc = procs.start("exporter", [BIN, *argv, "--listen", f"127.0.0.1:{port}"], env=env)
    base = f"http://127.0.0.1:{port}"
    status: dict = {}
    body = ""

    def ready() -> bool:
        if proc.poll() is not None:
            return True  # exited: stop waiting, reported below
        status.update({path: http_get(base + path, timeout=2)[0] for path in ("/healthz", "/readyz")})
        return status.get("/readyz") == 200

    try:
        try:
            wait_until(f"{base}/readyz to answer 200", ready, timeout, interval_s=0.3)
        except WaitTimeout:
            pass  # the caller reports the statuses seen
        if proc.poll() is None:
            try:
                code, body = http_get(base + "/metrics")
                status["/metrics"] = code
            except OSError:
                pass
        else:
            status["exit"] = proc.returncode
    finally:
        output = procs.log_tail("exporter", 200)
        procs.stop_all()
    return status, body, output


@check
def probe_paths_answer_on_a_running_exporter() -> str:
    """Start `demo --scenario healthy` (as the compose file does) and request the probe paths."""
    if not BIN.exists():
        raise Fail(f"{rel(BIN)} not found: build it first (cargo build) or set ROLLOUT_EXPORTER_BIN")
    p = Problems()
    status, body, err = run_exporter(["demo", "--scenario", "healthy"], {}, timeout=30)
    p.expect("exit" not in status, f"demo exited {status.get('exit')}: {err[-500:]}")
    p.expect(status.get("/healthz") == 200, f"GET /healthz: {status.get('/healthz')}")
    p.expect(status.get("/readyz") == 200, f"GET /readyz did not reach 200 within 30 s: {status.get('/readyz')}")
    p.expect(status.get("/metrics") == 200 and "rollout_exporter_build_info" in body,
             f"GET /metrics: {status.get('/metrics')}, build_info present: {'rollout_exporter_build_info' in body}")
    p.expect("rollout_exporter_ready 1" in body, "rollout_exporter_ready is not 1 once /readyz answers 200")
    return p.done("demo --scenario healthy")


@check
def sighup_rereads_the_flags_file_and_keeps_running() -> str:
    """The unit's ExecReload sends SIGHUP: with a flags file the exporter must re-read it and live on."""
    if not BIN.exists():
        raise Fail(f"{rel(BIN)} not found: build it first (cargo build) or set ROLLOUT_EXPORTER_BIN")
    procs = Processes("rollout-deploy-")
    flags = procs.tmp / "flags.env"
    flags.write_text("FEATURE_ASSIGNMENT_PIPELINE_V3=false\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=true\n"
                     "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL=3\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # RUST_LOG=info: the exporter logs that it handled the SIGHUP (waited for below, not slept on).
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info", "NO_COLOR": "1"}
    proc = procs.start("exporter", [BIN, "demo", "--flags-file", flags, "--listen", f"127.0.0.1:{port}"], env=env)

    def alive() -> None:
        if proc.poll() is not None:
            raise Fail(f"the exporter exited {proc.returncode}:\n{procs.log_tail('exporter')}")

    try:
        wait_until("/healthz to answer 200", lambda: alive() or http_get(base + "/healthz", timeout=2)[0] == 200, 30,
                   interval_s=0.2)
        proc.send_signal(signal.SIGHUP)
        try:
            wait_until("the exporter to log that it re-reads the flags file on SIGHUP",
                       lambda: alive() or "SIGHUP: re-reading the flags file" in procs.log_tail("exporter", 400), 10,
                       interval_s=0.1)
        except Fail as e:
            raise Fail(f"SIGHUP (systemctl reload): {e}") from None
        code, body = http_get(base + "/metrics")
        alive()
        if code != 200 or 'assignment_rollout_phase{phase="shadow"} 1' not in body:
            raise Fail(f"after SIGHUP: /metrics {code}, shadow phase from the flags file not shown")
    finally:
        procs.stop_all()
    return "alive, phase shadow from the flags file"


# ---- the read-only role -----------------------------------------------------------------------------


@check
def read_only_role_sql_on_local_postgres() -> str:
    psql = need_tool("psql", "postgresql-client")
    admin = ["-h", os.environ.get("PGHOST", "127.0.0.1"), "-p", os.environ.get("PGPORT", "5432"), "-U", os.environ.get("PGUSER", "postgres")]
    probe = run([psql, *admin, "-d", "postgres", "-Atc", "select 1"], timeout=10)
    if probe.returncode != 0:
        msg = f"no local PostgreSQL reachable as {admin[-1]}: {probe.stderr.strip()[:200]}"
        if CI:
            raise Fail(msg + " (required under CI=true)")
        raise Skip(msg)
    # Leftovers of an interrupted run (the names below with another pid).
    leftovers = run([psql, *admin, "-d", "postgres", "-Atc",
                     r"SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE)' FROM pg_database WHERE datname LIKE 'deploy\_role\_check\_%' "
                     r"UNION ALL SELECT 'DROP ROLE IF EXISTS ' || quote_ident(rolname) FROM pg_roles WHERE rolname LIKE 'rollout\_exporter\_check\_%'"],
                    timeout=30).stdout.split("\n")
    for stmt in sorted(filter(None, leftovers), key=lambda x: "ROLE" in x):  # databases first
        run([psql, *admin, "-d", "postgres", "-c", stmt], timeout=30)
    db = f"deploy_role_check_{os.getpid()}"
    role = f"rollout_exporter_check_{os.getpid()}"
    p = Problems()

    def sql(*args: Any, database: str = db, user: str | None = None, check_rc: bool = True) -> Any:
        cmd = [psql, *admin[:4], "-U", user or admin[-1], "-d", database, "-v", "ON_ERROR_STOP=1", "-At", *args]
        r = run(cmd, timeout=30)
        if check_rc and r.returncode != 0:
            raise Fail(f"{' '.join(args)}: {r.stderr.strip()}")
        return r

    sql("-c", f'CREATE DATABASE "{db}"', database="postgres")
    try:
        sql("-c", "CREATE TABLE public.observability_events (id bigserial PRIMARY KEY, source text, event_type text, context jsonb, created_at timestamptz NOT NULL DEFAULT now())",
            "-c", "CREATE TABLE public.other_table (i int)")
        r = sql("-v", f"exporter_role={role}", "-f", DEPLOY / "sql" / "role.sql")
        sql("-v", f"exporter_role={role}", "-f", DEPLOY / "sql" / "role.sql")  # idempotent
        ok = sql("-c", "SELECT count(*) FROM observability_events", user=role, check_rc=False)
        p.expect(ok.returncode == 0, f"the role cannot SELECT the events table: {ok.stderr.strip()}")
        for stmt, why in (("INSERT INTO observability_events (source) VALUES ('x')", "INSERT"),
                          ("SELECT * FROM other_table", "SELECT another table"),
                          ("CREATE TABLE t (i int)", "CREATE TABLE"),
                          ("BEGIN READ WRITE; INSERT INTO observability_events (source) VALUES ('x'); COMMIT", "INSERT in a read-write transaction")):
            r = sql("-c", stmt, user=role, check_rc=False)
            p.expect(r.returncode != 0, f"the role could {why}")
        settings = sql("-c", "SHOW default_transaction_read_only", "-c", "SHOW statement_timeout", user=role).stdout.split()
        p.expect(settings == ["on", "30s"], f"role settings: {settings}")
        limit = sql("-c", f"SELECT rolconnlimit, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{role}'").stdout.strip()
        p.expect(re.fullmatch(r"[1-9]\d?\|f\|f\|f", limit) is not None, f"role attributes (connlimit|super|createrole|createdb): {limit}")
        # The exporter itself, as the manifests run it: `serve` with DATABASE_URL_FILE (a mounted
        # secret ends with a newline) as this role, must get through its start-up load.
        if BIN.exists():
            sql("-c", "INSERT INTO observability_events (source, event_type, context) VALUES "
                      "('assignment.coordinator', 'coordinator.start', '{\"booking_id\": \"b1\"}'), "
                      "('assignment.coordinator', 'coordinator.confirmed', '{\"booking_id\": \"b1\"}')")
            host, pgport = admin[1], admin[3]
            with tempfile.TemporaryDirectory() as tmp:
                url_file = pathlib.Path(tmp) / "database-url"
                url_file.write_text(f"postgresql://{role}@{host}:{pgport}/{db}?sslmode=disable\n")
                status, body, err = run_exporter(
                    ["serve"], {"DATABASE_URL_FILE": str(url_file), "ROLLOUT_ENVIRONMENT": "deploy-check"})
            p.expect(status.get("/readyz") == 200,
                     f"serve as the read-only role via DATABASE_URL_FILE never became ready: {status}; stderr: {err[-800:]}")
            p.expect("rollout_exporter_database_up 1" in body, "serve as the read-only role: rollout_exporter_database_up is not 1")
            p.expect('assignment_coordinator_events_total{event_type="coordinator.start"' in body,
                     "serve as the read-only role: no coordinator.start counter in /metrics")
    finally:
        run([psql, *admin, "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'], timeout=30)
        run([psql, *admin, "-d", "postgres", "-c", f'DROP ROLE IF EXISTS "{role}"'], timeout=30)
    return p.done("role.sql applied twice to a scratch database" + (", serve ready as the role" if BIN.exists() else ""))


# ---- docs -------------------------------------------------------------------------------------------


@check
def operations_doc_covers_every_way_of_running() -> str:
    p = Problems()
    if not p.expect(OPERATIONS_DOC.exists(), "docs/operations.md missing"):
        return p.done()
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    for needle in ("deploy/kubernetes/sidecar", "deploy/kubernetes/standalone", "deploy/systemd", "deploy/compose",
                   "one exporter per environment", "Upgrading", "Rolling back", "No Docker engine",
                   "tests/deploy/run.sh", "generate-prometheusrule.py"):
        p.expect(needle.lower() in text.lower(), f"docs/operations.md does not mention {needle!r}")
    # Every repository path it names exists.
    for path in set(re.findall(r"`((?:deploy|alerts|dashboards|docs|tests)/[A-Za-z0-9_./-]+)`", text)):
        p.expect((REPO / path.rstrip("/")).exists() or "*" in path, f"docs/operations.md names {path}, which does not exist")
    return p.done()


def main() -> int:
    r = Report("deploy")
    on_signals_raise()
    for fn in CHECKS:
        r.run(fn.__name__, fn)
    return r.close()


if __name__ == "__main__":
    sys.exit(main())
