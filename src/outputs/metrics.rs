//! Every metric the exporter serves, defined once in [`FAMILIES`] (docs/metrics.md is the
//! contract, and a test compares it with a scrape).
//!
//! The collector's descriptors come from that table, so a duplicate name fails at registration,
//! not at scrape time. At collect time short per-stage functions fill the families from one
//! [`Current`] (a snapshot, the phase and the rollout view derived from them): adding a metric
//! touches the table and one stage function.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use super::{Current, Live};
use crate::events::Malformed;
use crate::rollout::{CriterionKind, Decision, Phase, Strength};
use crate::snapshot::{IngestStats, Snapshot, POLL_BUCKETS};
use crate::source::SourceError;
use crate::tally::bookings::{OUTCOMES, OUTCOME_BUCKETS};
use crate::tally::{Histogram, TallyView};

/// Kinds of failed polls (bounded label values of `rollout_exporter_poll_errors_total`).
pub const ERROR_KINDS: [&str; 5] = SourceError::KINDS;

/// One metric family: name (with its unit), help, type and label names.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

const fn family(name: &'static str, kind: MetricType, labels: &'static [&'static str], help: &'static str) -> Family {
    Family { name, help, kind, labels }
}

use MetricType::{COUNTER as C, GAUGE as G, HISTOGRAM as H};

pub const EVENTS_TOTAL: Family = family(
    "assignment_coordinator_events_total",
    C,
    &["event_type", "reason"],
    "Rows of the configured source by event type and reason, as of the last poll.",
);
pub const WINDOW_EVENTS: Family = family(
    "assignment_coordinator_window_events",
    G,
    &["window", "event_type"],
    "Rows created in the window (minute-aligned edges, see docs/metrics.md), by event type.",
);
pub const SUCCESS_RATIO: Family = family(
    "assignment_coordinator_success_ratio",
    G,
    &["window"],
    "coordinator.confirmed / coordinator.start in the window (absent without starts).",
);
pub const MANUAL_REVIEW_RATIO: Family = family(
    "assignment_coordinator_manual_review_ratio",
    G,
    &["window"],
    "coordinator.manual_review / coordinator.start in the window (absent without starts).",
);
pub const LAST_EVENT: Family = family(
    "assignment_coordinator_last_event_timestamp_seconds",
    G,
    &["event_type"],
    "created_at of the newest row of the event type, Unix seconds.",
);
pub const PHASE: Family =
    family("assignment_rollout_phase", G, &["phase"], "Rollout phase selected by the flags: 1 for the active phase.");
pub const FLAGS_INVALID: Family =
    family("assignment_rollout_flags_invalid", G, &["reason"], "1 for each reason the rollout flags are invalid.");
pub const MAX_PARALLEL: Family =
    family("assignment_rollout_max_parallel", G, &[], "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL.");
pub const PHASE_STARTED: Family = family(
    "assignment_rollout_phase_started_timestamp_seconds",
    G,
    &[],
    "When the active phase began, Unix seconds (--phase-started-at, else when the exporter saw it).",
);
pub const SOAK_WINDOW: Family =
    family("assignment_rollout_soak_window_seconds", G, &[], "The soak window of the gate.");
pub const VERDICT_DUE: Family = family(
    "assignment_rollout_verdict_due_timestamp_seconds",
    G,
    &[],
    "Phase start plus the soak window, Unix seconds.",
);
pub const GATE_PASSING: Family = family(
    "assignment_rollout_gate_passing",
    G,
    &["criterion"],
    "1 when the gate criterion passes over the soak window.",
);
pub const GATE_OBSERVED: Family = family(
    "assignment_rollout_gate_observed",
    G,
    &["criterion"],
    "The value each gate criterion compares with its threshold (absent while undefined).",
);
pub const GATE_THRESHOLD: Family =
    family("assignment_rollout_gate_threshold", G, &["criterion"], "Configured gate thresholds.");
pub const GATE_INTERVAL_LOW: Family = family(
    "assignment_rollout_gate_interval_low",
    G,
    &["criterion"],
    "Lower bound of the Wilson score interval of a ratio criterion at --confidence (0 without starts).",
);
pub const GATE_INTERVAL_HIGH: Family = family(
    "assignment_rollout_gate_interval_high",
    G,
    &["criterion"],
    "Upper bound of the Wilson score interval of a ratio criterion at --confidence (1 without starts).",
);
pub const GATE_CONCLUSIVE: Family = family(
    "assignment_rollout_gate_conclusive",
    G,
    &["criterion"],
    "1 when a ratio criterion's whole interval lies on one side of its threshold, 0 when it straddles it.",
);
pub const GATE_CONFIDENCE: Family = family(
    "assignment_rollout_gate_confidence",
    G,
    &[],
    "Confidence level of the ratio criteria's intervals (--confidence).",
);
pub const DECISION: Family =
    family("assignment_rollout_decision", G, &["decision"], "Soak decision: 1 for the current one.");
pub const DECIDED: Family = family(
    "assignment_rollout_decided",
    G,
    &[],
    "1 when the decision at the due time is already certain (a zero-tolerance failure inside its window, or the due time passed).",
);
pub const PROJECTED_STARTS: Family = family(
    "assignment_rollout_projected_starts_at_due",
    G,
    &[],
    "coordinator.start rows the soak window will hold at the due time if the rate since the phase began continues.",
);
pub const PROJECTED_DECISION: Family = family(
    "assignment_rollout_projected_decision",
    G,
    &["decision"],
    "The decision at the due time if the rates since the phase began continue: 1 for that one.",
);
pub const ERROR_BUDGET: Family = family(
    "assignment_rollout_error_budget_remaining_bookings",
    G,
    &[],
    "More bookings that may end unconfirmed before success_ratio fails (negative: already failing).",
);
pub const SHADOW_LEAK: Family = family(
    "assignment_rollout_shadow_leak_events",
    G,
    &[],
    "Coordinator events within --active-within while the phase is shadow or legacy.",
);
pub const ACTIVE: Family =
    family("assignment_coordinator_active", G, &[], "1 when a coordinator event was created within --active-within.");
pub const CIRCUIT_OPEN: Family = family(
    "assignment_coordinator_circuit_open",
    G,
    &[],
    "1 while the newest coordinator.circuit_open is more recent than --circuit-hold.",
);
pub const ERRORS_SUSTAINED: Family = family(
    "assignment_coordinator_errors_sustained",
    G,
    &[],
    "1 when each of the last three whole 5-minute blocks holds a coordinator.error.",
);
pub const INVALID_TRANSITIONS: Family = family(
    "assignment_coordinator_invalid_transitions_total",
    C,
    &["from", "to"],
    "Booking events that break the coordinator state machine, by state and event.",
);
pub const STUCK_BOOKINGS: Family = family(
    "assignment_coordinator_stuck_bookings",
    G,
    &[],
    "Bookings started more than --stuck-after ago without an outcome.",
);
pub const TRACKED_BOOKINGS: Family =
    family("assignment_coordinator_tracked_bookings", G, &[], "Bookings held in memory by the state machine.");
pub const EVICTED_BOOKINGS: Family = family("assignment_coordinator_evicted_bookings_total", C, &[], "Bookings dropped from the state machine because --max-tracked-bookings was reached (their later events count as invalid transitions).");
pub const WITHOUT_BOOKING: Family = family(
    "assignment_coordinator_events_without_booking_total",
    C,
    &["event_type"],
    "Coordinator events without context->>'booking_id'.",
);
pub const TIME_TO_OUTCOME: Family = family(
    "assignment_coordinator_time_to_outcome_seconds",
    H,
    &["outcome"],
    "Time from a booking's coordinator.start to its outcome.",
);
pub const DATABASE_UP: Family = family("rollout_exporter_database_up", G, &[], "1 when the last poll succeeded.");
pub const READY: Family = family("rollout_exporter_ready", G, &[], "1 once the first full load has finished.");
pub const LAST_POLL_SUCCESS: Family = family(
    "rollout_exporter_last_poll_success_timestamp_seconds",
    G,
    &[],
    "Database now() of the last successful poll, Unix seconds.",
);
pub const REPLICA_LAG: Family = family("rollout_exporter_replica_lag_seconds", G, &[], "Replay lag of the hot standby the exporter reads from (absent on a primary); the gate says pending past --max-staleness.");
pub const LOAD_DURATION: Family =
    family("rollout_exporter_load_duration_seconds", G, &[], "Wall time of the last full (aggregate) load.");
pub const MALFORMED_ROWS: Family =
    family("rollout_exporter_malformed_rows_total", C, &["kind"], "Rows counted normally but with odd data, by kind.");
pub const BUILD_INFO: Family = family("rollout_exporter_build_info", G, &["version"], "Build information; always 1.");
pub const POLL_DURATION: Family =
    family("rollout_exporter_poll_duration_seconds", H, &[], "Wall time of each poll, successful or not.");
pub const POLL_ERRORS: Family =
    family("rollout_exporter_poll_errors_total", C, &["kind"], "Failed polls and loads by kind.");
pub const POLLED_ROWS: Family =
    family("rollout_exporter_polled_rows_total", C, &[], "Rows that polls read, duplicates from the overlap included.");
pub const LATE_EVENTS: Family = family(
    "rollout_exporter_late_events_total",
    C,
    &[],
    "Rows found in the overlap margin that the previous poll had not seen (late commits).",
);
pub const RECONCILED_ROWS: Family = family(
    "rollout_exporter_reconciled_rows_total",
    C,
    &[],
    "Rows older than the overlap margin found by reconciliation (transactions that outlived the overlap).",
);
pub const REBUILT_MINUTES: Family = family(
    "rollout_exporter_window_buckets_rebuilt_total",
    C,
    &[],
    "Minutes of the longest window whose buckets were rebuilt because their rows changed (deleted rows).",
);
pub const TRACKED_IDS: Family =
    family("rollout_exporter_tracked_ids", G, &[], "Row ids held for de-duplication and reconciliation.");

/// Every family the exporter defines (the process collector adds the standard `process_*`).
pub const FAMILIES: [&Family; 47] = [
    &EVENTS_TOTAL,
    &WINDOW_EVENTS,
    &SUCCESS_RATIO,
    &MANUAL_REVIEW_RATIO,
    &LAST_EVENT,
    &PHASE,
    &FLAGS_INVALID,
    &MAX_PARALLEL,
    &PHASE_STARTED,
    &SOAK_WINDOW,
    &VERDICT_DUE,
    &GATE_PASSING,
    &GATE_OBSERVED,
    &GATE_THRESHOLD,
    &GATE_INTERVAL_LOW,
    &GATE_INTERVAL_HIGH,
    &GATE_CONCLUSIVE,
    &GATE_CONFIDENCE,
    &DECISION,
    &DECIDED,
    &PROJECTED_STARTS,
    &PROJECTED_DECISION,
    &ERROR_BUDGET,
    &SHADOW_LEAK,
    &ACTIVE,
    &CIRCUIT_OPEN,
    &ERRORS_SUSTAINED,
    &INVALID_TRANSITIONS,
    &STUCK_BOOKINGS,
    &TRACKED_BOOKINGS,
    &EVICTED_BOOKINGS,
    &WITHOUT_BOOKING,
    &TIME_TO_OUTCOME,
    &DATABASE_UP,
    &READY,
    &LAST_POLL_SUCCESS,
    &REPLICA_LAG,
    &LOAD_DURATION,
    &MALFORMED_ROWS,
    &BUILD_INFO,
    &POLL_DURATION,
    &POLL_ERRORS,
    &POLLED_ROWS,
    &LATE_EVENTS,
    &RECONCILED_ROWS,
    &REBUILT_MINUTES,
    &TRACKED_IDS,
];

/// Samples gathered for one collection, by family name.
#[derive(Default)]
struct Out(HashMap<&'static str, Vec<proto::Metric>>);

fn metric(f: &Family, values: &[&str]) -> proto::Metric {
    debug_assert_eq!(f.labels.len(), values.len(), "{}: label values do not match the table", f.name);
    let pairs = f.labels.iter().zip(values).map(|(k, v)| {
        let mut l = LabelPair::default();
        l.set_name(k.to_string());
        l.set_value(v.to_string());
        l
    });
    proto::Metric::from_label(pairs.collect())
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

impl Out {
    fn push(&mut self, f: &'static Family, m: proto::Metric) {
        self.0.entry(f.name).or_default().push(m);
    }

    /// A gauge or counter sample, by the family's type.
    fn sample(&mut self, f: &'static Family, values: &[&str], v: f64) {
        let mut m = metric(f, values);
        if f.kind == C {
            let mut c = proto::Counter::default();
            c.set_value(v);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
        self.push(f, m);
    }

    fn histogram(&mut self, f: &'static Family, values: &[&str], bounds: &[f64], h: &Histogram) {
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .enumerate()
            .map(|(i, ub)| {
                cumulative += h.buckets.get(i).copied().unwrap_or(0);
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*ub);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut ph = proto::Histogram::default();
        ph.set_bucket(buckets);
        ph.set_sample_count(h.count);
        ph.set_sample_sum(h.sum);
        let mut m = metric(f, values);
        m.set_histogram(ph);
        self.push(f, m);
    }

    /// The families in table order; a family without samples is left out (documented as absent).
    fn finish(mut self) -> Vec<MetricFamily> {
        FAMILIES
            .iter()
            .filter_map(|f| {
                let metrics = self.0.remove(f.name)?;
                let mut mf = MetricFamily::default();
                mf.set_name(f.name.to_string());
                mf.set_help(f.help.to_string());
                mf.set_field_type(f.kind);
                mf.set_metric(metrics);
                Some(mf)
            })
            .collect()
    }
}

/// Counters and gauges of the tally: all-time rows, windows, ratios, newest event.
fn tally_metrics(v: &TallyView, out: &mut Out) {
    for t in &v.totals {
        out.sample(&EVENTS_TOTAL, &[&t.event_type, &t.reason], t.rows as f64);
    }
    for w in &v.windows {
        let label = w.window.label.as_str();
        for tc in &w.counts {
            out.sample(&WINDOW_EVENTS, &[label, &tc.event_type], tc.rows as f64);
        }
        let starts = w.rows(crate::events::START);
        if starts > 0 {
            let ratio = |n: u64| (n as f64 / starts as f64).min(1.0);
            out.sample(&SUCCESS_RATIO, &[label], ratio(w.rows(crate::events::CONFIRMED)));
            out.sample(&MANUAL_REVIEW_RATIO, &[label], ratio(w.rows(crate::events::MANUAL_REVIEW)));
        }
    }
    for last in &v.last_event {
        out.sample(&LAST_EVENT, &[&last.event_type], last.at.seconds());
    }
}

/// The phase and its flags.
fn phase_metrics(cur: &Current, out: &mut Out) {
    let state = &cur.phase.state;
    for p in Phase::ALL {
        out.sample(&PHASE, &[p.label()], b(p == state.phase));
    }
    for r in &state.invalid_reasons {
        out.sample(&FLAGS_INVALID, &[r], 1.0);
    }
    if let Some(mp) = state.max_parallel {
        out.sample(&MAX_PARALLEL, &[], f64::from(mp));
    }
    let soak = cur.rollout_config.soak.seconds as f64;
    out.sample(&PHASE_STARTED, &[], cur.phase.started_at);
    out.sample(&SOAK_WINDOW, &[], soak);
    out.sample(&VERDICT_DUE, &[], cur.phase.started_at + soak);
}

/// The gate: criteria, thresholds, intervals, decision, projection, error budget.
fn gate_metrics(cur: &Current, out: &mut Out) {
    let verdict = &cur.rollout.verdict;
    for c in &verdict.criteria {
        out.sample(&GATE_PASSING, &[c.name.label()], b(c.pass));
        if let Some(v) = c.observed {
            out.sample(&GATE_OBSERVED, &[c.name.label()], v);
        }
        if let Some(i) = c.interval {
            out.sample(&GATE_INTERVAL_LOW, &[c.name.label()], i.low);
            out.sample(&GATE_INTERVAL_HIGH, &[c.name.label()], i.high);
        }
        if let Some(e) = c.evidence {
            out.sample(&GATE_CONCLUSIVE, &[c.name.label()], b(e == Strength::Conclusive));
        }
    }
    out.sample(&GATE_CONFIDENCE, &[], cur.rollout_config.thresholds.confidence);
    let t = cur.rollout_config.thresholds;
    for kind in [CriterionKind::SuccessRatio, CriterionKind::ManualReviewRatio, CriterionKind::MinStarts] {
        out.sample(&GATE_THRESHOLD, &[kind.label()], kind.threshold(&t, cur.rollout_config.soak.seconds));
    }
    for d in Decision::ALL {
        out.sample(&DECISION, &[d.label()], b(d == verdict.decision));
    }
    out.sample(&DECIDED, &[], b(verdict.decided));
    if let Some(p) = &verdict.projection {
        out.sample(&PROJECTED_STARTS, &[], p.starts_at_due as f64);
        for d in Decision::ALL {
            out.sample(&PROJECTED_DECISION, &[d.label()], b(d == p.decision_at_due));
        }
    }
    out.sample(&ERROR_BUDGET, &[], verdict.error_budget_remaining_bookings as f64);
}

/// The live signals derived with the verdict.
fn signal_metrics(cur: &Current, out: &mut Out) {
    let r = &cur.rollout;
    out.sample(&SHADOW_LEAK, &[], r.shadow_leak_events as f64);
    out.sample(&ACTIVE, &[], b(r.active));
    out.sample(&CIRCUIT_OPEN, &[], b(r.circuit_open));
    out.sample(&ERRORS_SUSTAINED, &[], b(r.errors_sustained));
}

/// The booking state machine.
fn booking_metrics(v: &TallyView, out: &mut Out) {
    let bk = &v.bookings;
    for t in &bk.invalid {
        out.sample(&INVALID_TRANSITIONS, &[t.from, t.to], t.count as f64);
    }
    out.sample(&STUCK_BOOKINGS, &[], bk.stuck as f64);
    out.sample(&TRACKED_BOOKINGS, &[], bk.tracked as f64);
    out.sample(&EVICTED_BOOKINGS, &[], bk.evicted as f64);
    for w in &bk.without_booking {
        out.sample(&WITHOUT_BOOKING, &[&w.event_type], w.count as f64);
    }
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        let h = bk.time_to_outcome.get(i).cloned().unwrap_or_default();
        out.histogram(&TIME_TO_OUTCOME, &[outcome], &OUTCOME_BUCKETS, &h);
    }
}

/// The exporter itself: health, readiness, malformed rows, build.
fn health_metrics(s: &Snapshot, out: &mut Out) {
    out.sample(&DATABASE_UP, &[], b(s.health.database_up));
    out.sample(&READY, &[], b(s.ready));
    out.sample(&LAST_POLL_SUCCESS, &[], s.health.last_success.map_or(0.0, |t| t.seconds()));
    out.sample(&LOAD_DURATION, &[], s.health.load_seconds);
    if let Some(lag) = s.health.replica_lag_seconds {
        out.sample(&REPLICA_LAG, &[], lag);
    }
    for k in Malformed::ALL {
        let n = s.tally.malformed.iter().find(|m| m.kind == k).map_or(0, |m| m.rows);
        out.sample(&MALFORMED_ROWS, &[k.label()], n as f64);
    }
    out.sample(&BUILD_INFO, &[env!("CARGO_PKG_VERSION")], 1.0);
}

/// The ingest loop's own counters.
fn ingest_metrics(st: &IngestStats, out: &mut Out) {
    out.histogram(&POLL_DURATION, &[], &POLL_BUCKETS, &st.poll_seconds);
    for (kind, n) in ERROR_KINDS.iter().zip(st.errors) {
        out.sample(&POLL_ERRORS, &[kind], n as f64);
    }
    out.sample(&POLLED_ROWS, &[], st.read_rows as f64);
    out.sample(&LATE_EVENTS, &[], st.late_rows as f64);
    out.sample(&RECONCILED_ROWS, &[], st.reconciled_rows as f64);
    out.sample(&REBUILT_MINUTES, &[], st.rebuilt_minutes as f64);
    out.sample(&TRACKED_IDS, &[], st.tracked_ids as f64);
}

/// Every family of one [`Current`]: a pure function.
pub fn families(cur: &Current) -> Vec<MetricFamily> {
    let mut out = Out::default();
    tally_metrics(&cur.snapshot.tally, &mut out);
    phase_metrics(cur, &mut out);
    gate_metrics(cur, &mut out);
    signal_metrics(cur, &mut out);
    booking_metrics(&cur.snapshot.tally, &mut out);
    health_metrics(&cur.snapshot, &mut out);
    ingest_metrics(&cur.snapshot.ingest, &mut out);
    out.finish()
}

/// The collector over the live snapshot; its descriptors are the table's.
struct SnapshotCollector {
    live: Live,
    descs: Vec<Desc>,
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.live.current())
    }
}

/// Builds the registry served on /metrics. Fails on a duplicate or invalid name in the table.
pub fn registry(live: &Live) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let descs = FAMILIES
        .iter()
        .map(|f| {
            Desc::new(f.name.into(), f.help.into(), f.labels.iter().map(|l| l.to_string()).collect(), HashMap::new())
        })
        .collect::<prometheus::Result<Vec<_>>>()?;
    registry.register(Box::new(SnapshotCollector { live: live.clone(), descs }))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok(registry)
}

/// Renders the registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let families = registry.gather();
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families, &mut buf).expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text encoder writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_no_duplicate_names_and_every_name_is_valid() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        for f in FAMILIES {
            assert!(Desc::new(f.name.into(), f.help.into(), vec![], HashMap::new()).is_ok(), "{}", f.name);
        }
    }
}
