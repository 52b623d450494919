//! Every metric the exporter serves, defined in this one module (docs/metrics.md is the contract).
//!
//! Data metrics are built at collect time from the latest snapshot by [`SnapshotCollector`], the
//! shape of the `prometheus` crate's own process collector; the exporter's self-observation
//! (poll histogram, error counters) uses ordinary registered metrics updated by the poller.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::events::Malformed;
use crate::rollout::{Decision, Phase};
use crate::state::State;
use crate::tally::bookings::{OUTCOMES, OUTCOME_BUCKETS};

/// Kinds of failed polls (bounded label values of `rollout_exporter_poll_errors_total`).
pub const ERROR_KINDS: [&str; 5] = ["connect", "timeout", "query", "schema", "decode"];

/// Metrics the poller updates directly.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    pub poll_duration: Histogram,
    pub poll_errors: IntCounterVec,
    pub polled_rows: IntCounter,
    pub late_events: IntCounter,
    pub reconciled_rows: IntCounter,
    pub tracked_ids: IntGauge,
}

impl ExporterMetrics {
    pub fn new() -> Self {
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new("rollout_exporter_poll_duration_seconds", "Wall time of each poll, successful or not.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid histogram");
        let poll_errors = IntCounterVec::new(
            Opts::new("rollout_exporter_poll_errors_total", "Failed polls and loads by kind."),
            &["kind"],
        )
        .expect("valid counter");
        for kind in ERROR_KINDS {
            poll_errors.with_label_values(&[kind]);
        }
        ExporterMetrics {
            poll_duration,
            poll_errors,
            polled_rows: IntCounter::new(
                "rollout_exporter_polled_rows_total",
                "Rows that polls read, duplicates from the overlap included.",
            )
            .expect("valid counter"),
            late_events: IntCounter::new(
                "rollout_exporter_late_events_total",
                "Rows found in the overlap margin that the previous poll had not seen (late commits).",
            )
            .expect("valid counter"),
            reconciled_rows: IntCounter::new(
                "rollout_exporter_reconciled_rows_total",
                "Rows older than the overlap margin found by reconciliation (transactions that outlived the overlap).",
            )
            .expect("valid counter"),
            tracked_ids: IntGauge::new(
                "rollout_exporter_tracked_ids",
                "Row ids held for de-duplication and reconciliation.",
            )
            .expect("valid gauge"),
        }
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.poll_duration.clone()))?;
        registry.register(Box::new(self.poll_errors.clone()))?;
        registry.register(Box::new(self.polled_rows.clone()))?;
        registry.register(Box::new(self.late_events.clone()))?;
        registry.register(Box::new(self.reconciled_rows.clone()))?;
        registry.register(Box::new(self.tracked_ids.clone()))?;
        Ok(())
    }
}

impl Default for ExporterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the registry served on /metrics.
pub fn registry(state: &State) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    state.metrics().register(&registry)?;
    registry.register(Box::new(SnapshotCollector { state: state.clone(), descs: Vec::new() }))?;
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

struct SnapshotCollector {
    state: State,
    descs: Vec<Desc>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn counter(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        // Families are built at collect time; an empty description makes this an unchecked collector.
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let view = self.state.tally();
        let health = self.state.health();
        let rollout = self.state.rollout();
        let cfg = self.state.rollout_config();
        let mut out = Vec::with_capacity(40);
        let g = MetricType::GAUGE;
        let c = MetricType::COUNTER;

        out.push(family(
            "assignment_coordinator_events_total",
            "Rows of the configured source by event type and reason, as of the last poll.",
            c,
            view.totals.iter().map(|(e, r, n)| counter(&[("event_type", e), ("reason", r)], *n as f64)).collect(),
        ));
        let mut window_metrics = Vec::new();
        let mut success = Vec::new();
        let mut manual = Vec::new();
        for w in &view.windows {
            let label = w.window.label.as_str();
            for tc in &w.counts {
                window_metrics.push(gauge(&[("window", label), ("event_type", &tc.event_type)], tc.rows as f64));
            }
            let starts = w.rows(crate::events::START);
            if starts > 0 {
                let ratio = |n: u64| (n as f64 / starts as f64).min(1.0);
                success.push(gauge(&[("window", label)], ratio(w.rows(crate::events::CONFIRMED))));
                manual.push(gauge(&[("window", label)], ratio(w.rows(crate::events::MANUAL_REVIEW))));
            }
        }
        out.push(family(
            "assignment_coordinator_window_events",
            "Rows created in the window (minute-aligned edges, see docs/metrics.md), by event type.",
            g,
            window_metrics,
        ));
        if !success.is_empty() {
            out.push(family(
                "assignment_coordinator_success_ratio",
                "coordinator.confirmed / coordinator.start in the window (absent without starts).",
                g,
                success,
            ));
            out.push(family(
                "assignment_coordinator_manual_review_ratio",
                "coordinator.manual_review / coordinator.start in the window (absent without starts).",
                g,
                manual,
            ));
        }
        if !view.last_event_us.is_empty() {
            out.push(family(
                "assignment_coordinator_last_event_timestamp_seconds",
                "created_at of the newest row of the event type, Unix seconds.",
                g,
                view.last_event_us.iter().map(|(e, t)| gauge(&[("event_type", e)], *t as f64 / 1e6)).collect(),
            ));
        }

        // Rollout state.
        let phase = rollout.phase.state.phase;
        out.push(family(
            "assignment_rollout_phase",
            "Rollout phase selected by the flags: 1 for the active phase.",
            g,
            Phase::ALL.iter().map(|p| gauge(&[("phase", p.label())], b(*p == phase))).collect(),
        ));
        if !rollout.phase.state.invalid_reasons.is_empty() {
            out.push(family(
                "assignment_rollout_flags_invalid",
                "1 for each reason the rollout flags are invalid.",
                g,
                rollout.phase.state.invalid_reasons.iter().map(|r| gauge(&[("reason", r)], 1.0)).collect(),
            ));
        }
        if let Some(mp) = rollout.phase.state.max_parallel {
            out.push(family(
                "assignment_rollout_max_parallel",
                "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL.",
                g,
                vec![gauge(&[], f64::from(mp))],
            ));
        }
        out.push(family(
            "assignment_rollout_phase_started_timestamp_seconds",
            "When the active phase began, Unix seconds (--phase-started-at, else when the exporter saw it).",
            g,
            vec![gauge(&[], rollout.phase.started_at)],
        ));
        out.push(family(
            "assignment_rollout_soak_window_seconds",
            "The soak window of the gate.",
            g,
            vec![gauge(&[], cfg.soak.seconds as f64)],
        ));
        out.push(family(
            "assignment_rollout_verdict_due_timestamp_seconds",
            "Phase start plus the soak window, Unix seconds.",
            g,
            vec![gauge(&[], rollout.phase.started_at + cfg.soak.seconds as f64)],
        ));
        out.push(family(
            "assignment_rollout_gate_passing",
            "1 when the gate criterion passes over the soak window.",
            g,
            rollout.verdict.criteria.iter().map(|cr| gauge(&[("criterion", cr.name)], b(cr.pass))).collect(),
        ));
        out.push(family(
            "assignment_rollout_gate_observed",
            "The value each gate criterion compares with its threshold (absent while undefined).",
            g,
            rollout
                .verdict
                .criteria
                .iter()
                .filter_map(|cr| cr.observed.map(|v| gauge(&[("criterion", cr.name)], v)))
                .collect(),
        ));
        let t = cfg.thresholds;
        out.push(family(
            "assignment_rollout_gate_threshold",
            "Configured gate thresholds.",
            g,
            vec![
                gauge(&[("criterion", "success_ratio")], t.min_success_ratio),
                gauge(&[("criterion", "manual_review_ratio")], t.max_manual_review_ratio),
                gauge(&[("criterion", "min_starts")], t.min_starts as f64),
            ],
        ));
        out.push(family(
            "assignment_rollout_decision",
            "Soak decision: 1 for the current one.",
            g,
            Decision::ALL
                .iter()
                .map(|d| gauge(&[("decision", d.label())], b(*d == rollout.verdict.decision)))
                .collect(),
        ));
        out.push(family(
            "assignment_rollout_error_budget_remaining_bookings",
            "More bookings that may end unconfirmed before success_ratio fails (negative: already failing).",
            g,
            vec![gauge(&[], rollout.verdict.error_budget_remaining_bookings as f64)],
        ));
        out.push(family(
            "assignment_rollout_shadow_leak_events",
            "Coordinator events within --active-within while the phase is shadow or legacy.",
            g,
            vec![gauge(&[], rollout.shadow_leak_events as f64)],
        ));
        out.push(family(
            "assignment_coordinator_active",
            "1 when a coordinator event was created within --active-within.",
            g,
            vec![gauge(&[], b(rollout.active))],
        ));
        out.push(family(
            "assignment_coordinator_circuit_open",
            "1 while the newest coordinator.circuit_open is more recent than --circuit-hold.",
            g,
            vec![gauge(&[], b(rollout.circuit_open))],
        ));
        out.push(family(
            "assignment_coordinator_errors_sustained",
            "1 when each of the last three whole 5-minute blocks holds a coordinator.error.",
            g,
            vec![gauge(&[], b(rollout.errors_sustained))],
        ));

        // Booking state machine.
        let bk = &view.bookings;
        if !bk.invalid.is_empty() {
            out.push(family(
                "assignment_coordinator_invalid_transitions_total",
                "Booking events that break the coordinator state machine, by state and event.",
                c,
                bk.invalid.iter().map(|((f, t), n)| counter(&[("from", f), ("to", t)], *n as f64)).collect(),
            ));
        }
        out.push(family(
            "assignment_coordinator_stuck_bookings",
            "Bookings started more than --stuck-after ago without an outcome.",
            g,
            vec![gauge(&[], bk.stuck as f64)],
        ));
        out.push(family(
            "assignment_coordinator_tracked_bookings",
            "Bookings held in memory by the state machine.",
            g,
            vec![gauge(&[], bk.tracked as f64)],
        ));
        if !bk.without_booking.is_empty() {
            out.push(family(
                "assignment_coordinator_events_without_booking_total",
                "Coordinator events without context->>'booking_id'.",
                c,
                bk.without_booking.iter().map(|(e, n)| counter(&[("event_type", e)], *n as f64)).collect(),
            ));
        }
        let hists = OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, outcome)| {
                let h = bk.time_to_outcome.get(i).cloned().unwrap_or_default();
                let mut cumulative = 0;
                let buckets = OUTCOME_BUCKETS
                    .iter()
                    .enumerate()
                    .map(|(j, ub)| {
                        cumulative += h.buckets.get(j).copied().unwrap_or(0);
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
                let mut m = proto::Metric::from_label(labels(&[("outcome", outcome)]));
                m.set_histogram(ph);
                m
            })
            .collect();
        out.push(family(
            "assignment_coordinator_time_to_outcome_seconds",
            "Time from a booking's coordinator.start to its outcome.",
            MetricType::HISTOGRAM,
            hists,
        ));

        // The exporter itself.
        out.push(family(
            "rollout_exporter_database_up",
            "1 when the last poll succeeded.",
            g,
            vec![gauge(&[], b(health.database_up))],
        ));
        out.push(family(
            "rollout_exporter_ready",
            "1 once the first full load has finished.",
            g,
            vec![gauge(&[], b(self.state.is_ready()))],
        ));
        out.push(family(
            "rollout_exporter_last_poll_success_timestamp_seconds",
            "Database now() of the last successful poll, Unix seconds.",
            g,
            vec![gauge(&[], health.last_success)],
        ));
        out.push(family(
            "rollout_exporter_load_duration_seconds",
            "Wall time of the last full (aggregate) load.",
            g,
            vec![gauge(&[], health.load_seconds)],
        ));
        out.push(family(
            "rollout_exporter_malformed_rows_total",
            "Rows counted normally but with odd data, by kind.",
            c,
            Malformed::ALL
                .iter()
                .map(|k| {
                    let n = view.malformed.iter().find(|(l, _)| *l == k.label()).map_or(0, |m| m.1);
                    counter(&[("kind", k.label())], n as f64)
                })
                .collect(),
        ));
        out.push(family(
            "rollout_exporter_build_info",
            "Build information; always 1.",
            g,
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        ));
        out
    }
}
