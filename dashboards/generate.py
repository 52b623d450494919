#!/usr/bin/env python3
"""Generate the Grafana dashboards in dashboards/ (stdlib only, Python 3.11).

    python3 dashboards/generate.py           # rewrite dashboards/*.json
    python3 dashboards/generate.py --check   # exit 1 when the committed JSON differs (CI drift check)

The JSON files are the artefacts Grafana provisions (deploy/grafana/provisioning/dashboards/); this
script is their source, so change it and regenerate rather than editing the JSON. Metric names come
from docs/metrics.md, thresholds from alerts/rollout-exporter.rules.yml (group
rollout-exporter-thresholds); tests/kit/lint_dashboards.py checks both.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent

# Gate thresholds: the exporter's defaults, equal to rollout:threshold:* in the rules
# (tests/kit/check_thresholds.py verifies the three agree).
MIN_SUCCESS_RATIO = 0.97
MAX_MANUAL_REVIEW_RATIO = 0.01
MAX_RETRY_RATIO = 0.1
MAX_LOCK_CONTENTION_RATIO = 0.05
MIN_STARTS = 100
MAX_POLL_STALENESS_SECONDS = 120
# The soak-window panels read the gate's own observations (assignment_rollout_gate_observed), never a
# `window` label: the soak-window series are labelled with --soak as written, so a selector on the
# default's label would go empty with `--soak 2d`. Only the per-window panels show `window`.

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every selector carries the three template variables (dashboard-linter target-job/instance rules).
SEL = 'environment=~"$environment", job=~"$job", instance=~"$instance"'


def sel(extra: str = "") -> str:
    return "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric: str, extra: str = "", by: str = "") -> str:
    inner = f"rate({metric}{sel(extra)}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def observed(criterion: str) -> str:
    """The value the gate compares with its threshold for `criterion`, over the soak window."""
    return "assignment_rollout_gate_observed" + sel(f'criterion="{criterion}"')


def interval(criterion: str) -> list[tuple[str, str]]:
    """The ratio the gate compares and its Wilson interval's bounds at --confidence."""
    c = f'criterion="{criterion}"'
    return [(observed(criterion), "observed {{instance}}"),
            ("assignment_rollout_gate_interval_low" + sel(c), "interval low {{instance}}"),
            ("assignment_rollout_gate_interval_high" + sel(c), "interval high {{instance}}")]


RED, GREEN, YELLOW, BLUE = "red", "green", "yellow", "blue"


def steps(*pairs: tuple[float | None, str]) -> dict:
    """Threshold steps: (None, base colour), then (value, colour) ascending."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in pairs]}


SUCCESS_STEPS = steps((None, RED), (MIN_SUCCESS_RATIO, GREEN))  # passes at or above 0.97
MANUAL_STEPS = steps((None, GREEN), (MAX_MANUAL_REVIEW_RATIO, RED))  # fails at 0.01 and above
PASS_FAIL = [
    {"type": "value", "options": {"0": {"text": "FAIL", "color": RED, "index": 0},
                                  "1": {"text": "PASS", "color": GREEN, "index": 1}}},
]


class Dash:
    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict] = []
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def panel(self, kind: str, title: str, description: str, unit: str, targets: list[tuple[str, str]],
              w: int = 8, h: int = 8, thresholds: dict | None = None, mappings: list | None = None,
              options: dict | None = None, custom: dict | None = None, minv: float | None = None,
              maxv: float | None = None, decimals: int | None = None) -> dict:
        if self.x + w > 24:
            self._newline()
        defaults: dict = {"unit": unit, "color": {"mode": "thresholds" if kind != "timeseries" else "palette-classic"}}
        if thresholds is not None:
            defaults["thresholds"] = thresholds
        else:
            defaults["thresholds"] = steps((None, GREEN))
        if mappings:
            defaults["mappings"] = mappings
        if minv is not None:
            defaults["min"] = minv
        if maxv is not None:
            defaults["max"] = maxv
        if decimals is not None:
            defaults["decimals"] = decimals
        if kind == "timeseries":
            c = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                 "spanNulls": False, "thresholdsStyle": {"mode": "off"}}
            if thresholds is not None:
                c["thresholdsStyle"] = {"mode": "dashed"}
            c.update(custom or {})
            defaults["custom"] = c
        elif custom:
            defaults["custom"] = custom
        p = {
            "type": kind,
            "id": self._id(),
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                 "range": True, "instant": False}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries" and "legend" not in p["options"]:
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "none"}, **p["options"]}
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)
        return p

    def render(self) -> dict:
        def query_var(name: str, label: str, query: str, multi: bool) -> dict:
            v = {
                "name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
                "refresh": 2, "sort": 1, "regex": "", "hide": 0,
                "multi": multi, "includeAll": multi,
                "current": {},
            }
            if multi:
                v["allValue"] = ".+"
            return v

        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "schemaVersion": 39,
            "version": 1,
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "utc",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            "links": [],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "regex": "", "hide": 0, "current": {}, "refresh": 1, "multi": False, "includeAll": False},
                query_var("environment", "environment",
                          "label_values(rollout_exporter_build_info, environment)", False),
                query_var("job", "job",
                          'label_values(rollout_exporter_build_info{environment=~"$environment"}, job)', True),
                query_var("instance", "instance",
                          'label_values(rollout_exporter_build_info{environment=~"$environment", job=~"$job"}, instance)',
                          True),
            ]},
            "panels": self.panels,
        }


STAT_BG = {"colorMode": "background", "graphMode": "none", "justifyMode": "auto", "textMode": "auto",
           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "orientation": "auto"}
STAT_VALUE = {**STAT_BG, "colorMode": "value", "graphMode": "area"}

# go = 2, pending = 1, no_go = 0, one number per exporter.
DECISION_EXPR = ("2 * max by (instance) (assignment_rollout_decision" + sel('decision="go"') + ")"
                 " + max by (instance) (assignment_rollout_decision" + sel('decision="pending"') + ")")
DECISION_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "NO-GO", "color": RED, "index": 0},
    "1": {"text": "PENDING", "color": YELLOW, "index": 1},
    "2": {"text": "GO", "color": GREEN, "index": 2}}}]
# The same for the decision at the due time if the rates since the phase began continue.
PROJECTED_EXPR = ("2 * max by (instance) (assignment_rollout_projected_decision" + sel('decision="go"') + ")"
                  " + max by (instance) (assignment_rollout_projected_decision" + sel('decision="pending"') + ")")
DECIDED_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "NOT YET", "color": BLUE, "index": 0},
    "1": {"text": "DECIDED", "color": "purple", "index": 1}}}]
SOAK_PROGRESS_EXPR = (f"clamp_max((time() - assignment_rollout_phase_started_timestamp_seconds{sel()})"
                      f" / assignment_rollout_soak_window_seconds{sel()}, 1)")


def status_panels(d: Dash, compact: bool) -> None:
    w = 6 if compact else 4
    d.panel("stat", "Decision", "The gate's current decision (assignment_rollout_decision): GO, PENDING "
            "(soak not elapsed or too few starts) or NO-GO.", "none", [(DECISION_EXPR, "{{instance}}")],
            w=w, h=5, thresholds=steps((None, RED), (1, YELLOW), (2, GREEN)), mappings=DECISION_MAPPINGS,
            options=STAT_BG)
    d.panel("stat", "Phase", "The active rollout phase from the FEATURE_ASSIGNMENT_PIPELINE_V3* flags "
            "(legacy, shadow, full, or invalid when the flags contradict each other).", "none",
            [(f"assignment_rollout_phase{sel()} == 1", "{{phase}}")], w=w, h=5,
            thresholds=steps((None, BLUE)), options={**STAT_BG, "textMode": "name"})
    d.panel("gauge", "Soak progress", "Share of the soak window (--soak) elapsed since the phase began "
            "(assignment_rollout_phase_started_timestamp_seconds).", "percentunit",
            [(SOAK_PROGRESS_EXPR, "{{instance}}")], w=w, h=5, minv=0, maxv=1,
            thresholds=steps((None, BLUE), (1, GREEN)),
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "showThresholdLabels": False, "showThresholdMarkers": True})
    if not compact:
        d.panel("stat", "Verdict due", "When the soak window ends: phase start + --soak "
                "(assignment_rollout_verdict_due_timestamp_seconds).", "dateTimeAsIso",
                [(f"assignment_rollout_verdict_due_timestamp_seconds{sel()} * 1000", "{{instance}}")],
                w=w, h=5, thresholds=steps((None, BLUE)), options={**STAT_BG, "colorMode": "value"})
    d.panel("stat", "Success ratio (soak window)", "coordinator.confirmed / coordinator.start over the "
            "soak window (--soak), exactly as the gate compares it "
            "(assignment_rollout_gate_observed{criterion=\"success_ratio\"}; empty while the soak window "
            "holds no start). Passes at or above 97% (red below).", "percentunit",
            [(observed("success_ratio"), "{{instance}}")], w=w, h=5, thresholds=SUCCESS_STEPS, decimals=2,
            options=STAT_BG)
    d.panel("stat", "Manual-review ratio (soak window)", "coordinator.manual_review / coordinator.start "
            "over the soak window (--soak), exactly as the gate compares it "
            "(assignment_rollout_gate_observed{criterion=\"manual_review_ratio\"}; empty while the soak "
            "window holds no start). Passes strictly below 1% (red at 1% and above).", "percentunit",
            [(observed("manual_review_ratio"), "{{instance}}")], w=w, h=5, thresholds=MANUAL_STEPS,
            decimals=2, options=STAT_BG)
    d.panel("stat", "Gate criteria", "Each criterion of the gate (assignment_rollout_gate_passing): "
            "green passes, red fails.", "none",
            [(f"max by (criterion) (assignment_rollout_gate_passing{sel()})", "{{criterion}}")],
            w=24 if not compact else 12, h=5 if not compact else 7, thresholds=steps((None, RED), (1, GREEN)),
            mappings=PASS_FAIL, options={**STAT_BG, "textMode": "value_and_name", "orientation": "vertical"})


def full_dashboard() -> dict:
    d = Dash("rollout-exporter-soak", "Assignment Pipeline V3 rollout soak",
             "Soak of the Assignment Pipeline V3 rollout from rollout-exporter: gate status, success and "
             "manual-review ratios against the 97% / 1% thresholds, error-budget burn, traffic, "
             "reliability and the exporter's own health. Runbook: docs/runbook.md.",
             ["rollout-exporter", "assignment-pipeline-v3"])

    d.row("Rollout status")
    status_panels(d, compact=False)
    d.panel("stat", "Error budget remaining", "Bookings in the soak window that may still end without "
            "coordinator.confirmed before the success ratio falls below 97% "
            "(assignment_rollout_error_budget_remaining_bookings; negative when already below).", "short",
            [(f"assignment_rollout_error_budget_remaining_bookings{sel()}", "{{instance}}")], w=8, h=5,
            thresholds=steps((None, RED), (0, GREEN)), options=STAT_VALUE)
    d.panel("stat", "Starts in the soak window", "coordinator.start rows in the soak window (--soak), as "
            "the gate counts them (assignment_rollout_gate_observed{criterion=\"min_starts\"}); fewer than "
            f"--min-starts ({MIN_STARTS}) keeps the decision pending.", "short",
            [(observed("min_starts"), "{{instance}}")], w=8, h=5,
            thresholds=steps((None, YELLOW), (MIN_STARTS, GREEN)), options=STAT_VALUE)
    d.panel("stat", "Phase started", "When the active phase began (--phase-started-at, else when the "
            "exporter saw it begin).", "dateTimeAsIso",
            [(f"assignment_rollout_phase_started_timestamp_seconds{sel()} * 1000", "{{instance}}")], w=8, h=5,
            thresholds=steps((None, BLUE)), options={**STAT_BG, "colorMode": "value"})
    d.panel("stat", "Decided", "Whether the decision at the due time is already certain "
            "(assignment_rollout_decided): a circuit trip or sustained errors since the phase began stay in "
            "the window judged at the due time, so a NO-GO with DECIDED is final and /gate/rollback rolls "
            "back now; after the due time every decision is decided.", "none",
            [(f"max by (instance) (assignment_rollout_decided{sel()})", "{{instance}}")], w=8, h=5,
            thresholds=steps((None, BLUE)), mappings=DECIDED_MAPPINGS, options=STAT_BG)
    d.panel("stat", "Projected decision at the due time", "The verdict at the due time if the rates seen "
            "since the phase began continue (assignment_rollout_projected_decision): GO, PENDING (too few "
            "starts by then) or NO-GO.", "none", [(PROJECTED_EXPR, "{{instance}}")], w=8, h=5,
            thresholds=steps((None, RED), (1, YELLOW), (2, GREEN)), mappings=DECISION_MAPPINGS, options=STAT_BG)
    d.panel("stat", "Projected starts at the due time", "coordinator.start rows the soak window will hold "
            "at the due time at the rate since the phase began (assignment_rollout_projected_starts_at_due); "
            f"fewer than --min-starts ({MIN_STARTS}) keeps the decision pending.", "short",
            [(f"assignment_rollout_projected_starts_at_due{sel()}", "{{instance}}")], w=8, h=5,
            thresholds=steps((None, YELLOW), (MIN_STARTS, GREEN)), options=STAT_VALUE)

    d.row("Success")
    d.panel("timeseries", "Success ratio per window", "coordinator.confirmed / coordinator.start in each "
            "window of --windows (exporter gauges). The dashed line is the 97% gate threshold.",
            "percentunit", [(f"assignment_coordinator_success_ratio{sel()}", "{{window}} {{instance}}")],
            w=12, thresholds=SUCCESS_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    d.panel("timeseries", "Success ratio over the soak window with its interval", "The success ratio the "
            "gate compares (assignment_rollout_gate_observed) and its Wilson score interval at --confidence "
            "(assignment_rollout_gate_interval_low / _high). The evidence is conclusive only while the whole "
            "band is on one side of the dashed 97% line.", "percentunit", interval("success_ratio"),
            w=12, thresholds=SUCCESS_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    d.panel("timeseries", "Success ratio, short windows (from counters)", "1 - error ratio of the recording "
            "rules behind the burn-rate alerts (confirmed / start increase over 5m, 30m, 1h, 6h). "
            "The dashed line is the 97% threshold.", "percentunit",
            [(f"1 - assignment_coordinator:error_ratio:increase5m{sel()}", "5m {{instance}}"),
             (f"1 - assignment_coordinator:error_ratio:increase30m{sel()}", "30m {{instance}}"),
             (f"1 - assignment_coordinator:error_ratio:increase1h{sel()}", "1h {{instance}}"),
             (f"1 - assignment_coordinator:error_ratio:increase6h{sel()}", "6h {{instance}}")],
            w=12, thresholds=SUCCESS_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    d.panel("timeseries", "Error-budget burn rate", "How many times faster than the soak allows the 3% "
            "error budget is spent (1 = exactly on budget). Alerts: above 6 over 1h and 5m and above 3 over "
            "6h and 30m page, above 1 over 24h and 2h opens a ticket.", "none",
            [(f"assignment_coordinator:error_budget_burn_rate:increase5m{sel()}", "5m {{instance}}"),
             (f"assignment_coordinator:error_budget_burn_rate:increase1h{sel()}", "1h {{instance}}"),
             (f"assignment_coordinator:error_budget_burn_rate:increase6h{sel()}", "6h {{instance}}"),
             (f"assignment_coordinator:error_budget_burn_rate:increase24h{sel()}", "24h {{instance}}")],
            w=12, thresholds=steps((None, GREEN), (1, YELLOW), (3, "orange"), (6, RED)))
    d.panel("timeseries", "Error budget remaining", "Bookings that may still end without "
            "coordinator.confirmed in the soak window before the success ratio falls below 97%.", "short",
            [(f"assignment_rollout_error_budget_remaining_bookings{sel()}", "{{instance}}")], w=12,
            thresholds=steps((None, RED), (0, GREEN)))

    d.row("Manual review")
    d.panel("timeseries", "Manual-review ratio per window", "coordinator.manual_review / coordinator.start in "
            "each window. The dashed line is the 1% threshold (the gate passes strictly below).",
            "percentunit", [(f"assignment_coordinator_manual_review_ratio{sel()}", "{{window}} {{instance}}")],
            w=12, thresholds=MANUAL_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    d.panel("timeseries", "Manual reviews by reason", "coordinator.manual_review events per second by "
            "context->>'reason'.", "cps",
            [(rate("assignment_coordinator_events_total", 'event_type="coordinator.manual_review"', "reason"),
              "{{reason}}")], w=12)
    d.panel("timeseries", "Manual-review ratio over the soak window with its interval", "The manual-review "
            "ratio the gate compares and its Wilson score interval at --confidence. With few starts the "
            "upper bound stays above the dashed 1% line even without a single manual review: below 1% is "
            "shown only once the whole band is under it.", "percentunit", interval("manual_review_ratio"),
            w=12, thresholds=MANUAL_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})

    d.row("Traffic")
    d.panel("timeseries", "Coordinator events by type", "Coordinator events per second by event_type.",
            "cps", [(rate("assignment_coordinator_events_total", "", "event_type"), "{{event_type}}")], w=12)
    d.panel("bargauge", "Events per window", "Rows per window of --windows and event type "
            "(assignment_coordinator_window_events). The soak window is always one of them, labelled "
            "with --soak as written; the gate's own soak counts are in the Rollout status row.", "short",
            [("sum by (window, event_type) (assignment_coordinator_window_events" + sel() + ")",
              "{{window}} {{event_type}}")], w=12,
            options={"displayMode": "basic", "orientation": "horizontal", "showUnfilled": True,
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})
    d.panel("timeseries", "Retries by reason", "coordinator.retry events per second by reason.", "cps",
            [(rate("assignment_coordinator_events_total", 'event_type="coordinator.retry"', "reason"),
              "{{reason}}")], w=8)
    d.panel("timeseries", "Lock contention by reason", "coordinator.lock_contention events per second by "
            "reason.", "cps",
            [(rate("assignment_coordinator_events_total", 'event_type="coordinator.lock_contention"', "reason"),
              "{{reason}}")], w=8)
    d.panel("timeseries", "Retries and lock contention per start (1h)", "Events per coordinator.start over "
            "the last hour. Tickets open above 10% retries or 5% lock contention.", "percentunit",
            [(f"assignment_coordinator:retries:increase1h{sel()} / assignment_coordinator:starts:increase1h{sel()}",
              "retries {{instance}}"),
             (f"assignment_coordinator:lock_contentions:increase1h{sel()} / assignment_coordinator:starts:increase1h{sel()}",
              "lock contention {{instance}}")], w=8,
            thresholds=steps((None, GREEN), (MAX_LOCK_CONTENTION_RATIO, YELLOW), (MAX_RETRY_RATIO, RED)))

    d.row("Reliability")
    d.panel("state-timeline", "Circuit breaker and sustained errors", "Circuit open: a "
            "coordinator.circuit_open event within --circuit-hold. Errors sustained: coordinator.error in "
            "each of the last three 5-minute buckets. Either fails the gate.", "none",
            [(f"max(assignment_coordinator_circuit_open{sel()})", "circuit open"),
             (f"max(assignment_coordinator_errors_sustained{sel()})", "errors sustained")], w=12, h=6,
            thresholds=steps((None, GREEN), (1, RED)),
            mappings=[{"type": "value", "options": {"0": {"text": "no", "color": GREEN, "index": 0},
                                                    "1": {"text": "YES", "color": RED, "index": 1}}}],
            options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.9, "alignValue": "left",
                     "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}})
    d.panel("timeseries", "Errors and circuit trips by reason", "coordinator.error and "
            "coordinator.circuit_open events per second by reason.", "cps",
            [(rate("assignment_coordinator_events_total", 'event_type="coordinator.error"', "reason"),
              "error {{reason}}"),
             (rate("assignment_coordinator_events_total", 'event_type="coordinator.circuit_open"', "reason"),
              "circuit_open {{reason}}")], w=12, h=6)
    d.panel("timeseries", "Stuck and tracked bookings", "Stuck: started more than --stuck-after ago with no "
            "outcome (a ticket opens above 0 for 10m). Tracked: bookings held by the state machine.", "short",
            [(f"assignment_coordinator_stuck_bookings{sel()}", "stuck {{instance}}"),
             (f"assignment_coordinator_tracked_bookings{sel()}", "tracked {{instance}}")], w=8,
            thresholds=steps((None, GREEN), (1, RED)))
    d.panel("timeseries", "Time to outcome (p50, p95)", "Time from coordinator.start to the booking's "
            "outcome, by outcome (assignment_coordinator_time_to_outcome_seconds).", "s",
            [(f"histogram_quantile(0.5, sum by (le, outcome) (rate(assignment_coordinator_time_to_outcome_seconds_bucket{sel()}[$__rate_interval])))",
              "p50 {{outcome}}"),
             (f"histogram_quantile(0.95, sum by (le, outcome) (rate(assignment_coordinator_time_to_outcome_seconds_bucket{sel()}[$__rate_interval])))",
              "p95 {{outcome}}")], w=8)
    d.panel("timeseries", "Invalid state transitions", "Booking events that break "
            "start -> (retry|lock_contention)* -> confirmed|manual_review|error, per second by from/to.", "cps",
            [(rate("assignment_coordinator_invalid_transitions_total", "", "from, to"), "{{from}} -> {{to}}")],
            w=8)

    d.row("Exporter health")
    d.panel("stat", "Database up", "1 when the exporter's last poll of the database succeeded "
            "(rollout_exporter_database_up); the data alerts are inhibited while it is down.", "none",
            [(f"min(rollout_exporter_database_up{sel()})", "database")], w=4, h=5,
            thresholds=steps((None, RED), (1, GREEN)),
            mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": RED, "index": 0},
                                                    "1": {"text": "UP", "color": GREEN, "index": 1}}}],
            options=STAT_BG)
    d.panel("stat", "Scrape up", "Prometheus can scrape the exporter (up).", "none",
            [(f"min(up{sel()})", "scrape")], w=4, h=5, thresholds=steps((None, RED), (1, GREEN)),
            mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": RED, "index": 0},
                                                    "1": {"text": "UP", "color": GREEN, "index": 1}}}],
            options=STAT_BG)
    d.panel("stat", "Last successful poll", "Database now() of the last successful poll "
            "(rollout_exporter_last_poll_success_timestamp_seconds).", "dateTimeFromNow",
            [(f"max(rollout_exporter_last_poll_success_timestamp_seconds{sel()}) * 1000", "last poll")], w=4, h=5,
            thresholds=steps((None, BLUE)), options={**STAT_BG, "colorMode": "value"})
    d.panel("timeseries", "Poll lag", "Seconds since the last successful poll. A page opens above "
            f"{MAX_POLL_STALENESS_SECONDS} s for 1m.", "s",
            [(f"time() - rollout_exporter_last_poll_success_timestamp_seconds{sel()}", "{{instance}}")], w=12, h=5,
            thresholds=steps((None, GREEN), (MAX_POLL_STALENESS_SECONDS, RED)))
    d.panel("timeseries", "Poll duration (p50, p99)", "Wall time of each poll "
            "(rollout_exporter_poll_duration_seconds) and of the last full load.", "s",
            [(f"histogram_quantile(0.5, sum by (le) (rate(rollout_exporter_poll_duration_seconds_bucket{sel()}[$__rate_interval])))",
              "poll p50"),
             (f"histogram_quantile(0.99, sum by (le) (rate(rollout_exporter_poll_duration_seconds_bucket{sel()}[$__rate_interval])))",
              "poll p99"),
             (f"max(rollout_exporter_load_duration_seconds{sel()})", "last full load")], w=8)
    d.panel("timeseries", "Poll errors by kind", "Failed polls and loads per second by kind "
            "(connect, timeout, query, schema, decode).", "cps",
            [(rate("rollout_exporter_poll_errors_total", "", "kind"), "{{kind}}")], w=8)
    d.panel("timeseries", "Rows read, late and malformed", "Rows read by polls, rows committed late "
            "(found in the overlap margin) and rows with odd data, per second.", "cps",
            [(rate("rollout_exporter_polled_rows_total"), "polled"),
             (rate("rollout_exporter_late_events_total"), "late"),
             (rate("rollout_exporter_malformed_rows_total", "", "kind"), "malformed {{kind}}")], w=8)
    return d.render()


def oncall_dashboard() -> dict:
    d = Dash("rollout-exporter-oncall", "Assignment Pipeline V3 rollout: on-call",
             "Compact view for a phone or a wall screen: the decision, the two gate ratios against "
             "97% / 1%, the gate criteria, the fast burn rate and whether the numbers can be trusted. "
             "Details: the 'Assignment Pipeline V3 rollout soak' dashboard; runbook: docs/runbook.md.",
             ["rollout-exporter", "assignment-pipeline-v3", "on-call"])
    d.row("Now")
    status_panels(d, compact=True)
    d.panel("stat", "Burn rate (1h)", "Error-budget burn over the last hour: 1 spends the 3% budget exactly "
            "over the soak; above 6 (with the last 5m) pages.", "none",
            [(f"assignment_coordinator:error_budget_burn_rate:increase1h{sel()}", "{{instance}}")], w=6, h=7,
            thresholds=steps((None, GREEN), (1, YELLOW), (6, RED)), decimals=1, options=STAT_VALUE)
    d.panel("stat", "Database up", "Whether the exporter reads the database; when DOWN the numbers above "
            "are stale.", "none", [(f"min(rollout_exporter_database_up{sel()})", "database")], w=6, h=7,
            thresholds=steps((None, RED), (1, GREEN)),
            mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": RED, "index": 0},
                                                    "1": {"text": "UP", "color": GREEN, "index": 1}}}],
            options=STAT_BG)
    d.panel("stat", "Decided", "DECIDED: the decision at the due time is already certain (a circuit trip "
            "or sustained errors since the phase began, or the due time passed). With NO-GO: roll back now.",
            "none", [(f"max by (instance) (assignment_rollout_decided{sel()})", "{{instance}}")], w=6, h=7,
            thresholds=steps((None, BLUE)), mappings=DECIDED_MAPPINGS, options=STAT_BG)
    d.panel("stat", "Projected at due", "The decision at the due time if the rates since the phase began "
            "continue.", "none", [(PROJECTED_EXPR, "{{instance}}")], w=6, h=7,
            thresholds=steps((None, RED), (1, YELLOW), (2, GREEN)), mappings=DECISION_MAPPINGS, options=STAT_BG)
    d.row("Trend")
    d.panel("timeseries", "Success ratio", "Success ratio per window; dashed line at the 97% threshold.",
            "percentunit", [(f"assignment_coordinator_success_ratio{sel()}", "{{window}}")], w=12,
            thresholds=SUCCESS_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    d.panel("timeseries", "Manual-review ratio", "Manual-review ratio per window; dashed line at the 1% "
            "threshold.", "percentunit", [(f"assignment_coordinator_manual_review_ratio{sel()}", "{{window}}")],
            w=12, thresholds=MANUAL_STEPS, custom={"thresholdsStyle": {"mode": "line+area"}})
    return d.render()


DASHBOARDS = {
    "rollout-soak.json": full_dashboard,
    "rollout-oncall.json": oncall_dashboard,
}


def render(fn) -> str:
    return json.dumps(fn(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when the committed JSON differs")
    args = ap.parse_args()
    drift = False
    for name, fn in DASHBOARDS.items():
        path = HERE / name
        want = render(fn)
        if args.check:
            have = path.read_text() if path.exists() else ""
            if have != want:
                drift = True
                sys.stdout.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                           f"{name} (committed)", f"{name} (generated)"))
        else:
            path.write_text(want)
    if drift:
        print("dashboards/*.json differ from dashboards/generate.py: run python3 dashboards/generate.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
