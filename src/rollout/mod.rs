//! The rollout: flags -> phase, and evidence -> criteria -> decision.
//!
//! [`Evidence::from_view`] is the one evidence constructor: it reads a [`TallyView`], which the
//! ingest loop builds from polls and the `verdict` command builds from the same start-up
//! aggregates, and [`decide`] turns evidence into a [`Verdict`]. [`view`] adds the live gauges
//! (active, circuit open, sustained errors, shadow leak). Everything here is a pure function.

pub mod flags;
pub mod phase;

use serde::Serialize;

pub use crate::config::Thresholds;
use crate::config::{RolloutConfig, Window};
use crate::events::{self, CIRCUIT_OPEN, KNOWN_EVENT_TYPES};
use crate::tally::TallyView;
use crate::time::{error_block, UnixMicros};
pub use flags::{Flags, Phase, PhaseState};
pub use phase::{PhaseTracker, PhaseView};

/// Errors are sustained when this many consecutive 5-minute blocks each hold a coordinator.error
/// (the runbook's "no sustained errors").
pub const SUSTAINED_ERROR_BLOCKS: u64 = 3;

/// One row of the runbook's health-check table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunbookRow {
    /// The event type's label (`(null)` for NULL, `other` past the cap).
    pub event_type: String,
    pub total: u64,
    /// Share of the rows without a reason, in percent, rounded half away from zero to 2 places as
    /// Postgres `ROUND(numeric, 2)` does.
    pub success_rate_percent: f64,
}

impl RunbookRow {
    pub fn new(event_type: String, total: u64, without_reason: u64) -> Self {
        RunbookRow { event_type, total, success_rate_percent: percent_2dp(without_reason, total) }
    }
}

/// `ROUND(100.0 * part / total, 2)`, exactly, in integers.
pub fn percent_2dp(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let n = u128::from(part) * 10_000;
    let t = u128::from(total);
    let (q, rem) = (n / t, n % t);
    let hundredths = if 2 * rem >= t { q + 1 } else { q };
    hundredths as f64 / 100.0
}

/// What the data says about one soak window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// The instant the window ends at (database time).
    pub now: UnixMicros,
    pub starts: u64,
    pub confirmed: u64,
    pub manual_review: u64,
    /// 5-minute blocks (Unix minute / 5) holding at least one coordinator.error, ascending.
    pub error_blocks: Vec<i64>,
    pub circuit_opens: u64,
    /// Every event type label with rows in the window, sorted by label.
    pub runbook: Vec<RunbookRow>,
}

impl Evidence {
    /// The one evidence constructor: the soak window of a tally view. An absent window is no data.
    pub fn from_view(view: &TallyView, soak: &Window) -> Evidence {
        let Some(w) = view.window(soak.seconds) else {
            return Evidence { now: view.now, ..Evidence::default() };
        };
        let mut runbook: Vec<RunbookRow> = w
            .counts
            .iter()
            .filter(|c| c.rows > 0)
            .map(|c| RunbookRow::new(c.event_type.clone(), c.rows, c.without_reason))
            .collect();
        runbook.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        Evidence {
            now: view.now,
            starts: w.rows(events::START),
            confirmed: w.rows(events::CONFIRMED),
            manual_review: w.rows(events::MANUAL_REVIEW),
            error_blocks: view.error_blocks.clone(),
            circuit_opens: w.rows(CIRCUIT_OPEN),
            runbook,
        }
    }
}

/// The gate's criteria, in the order the verdict lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CriterionKind {
    /// coordinator.confirmed / coordinator.start `>=` `--min-success-ratio`.
    SuccessRatio,
    /// coordinator.manual_review / coordinator.start `<` `--max-manual-review-ratio`.
    ManualReviewRatio,
    /// Longest run of 5-minute blocks with a coordinator.error `<` 3.
    NoSustainedErrors,
    /// coordinator.circuit_open rows `==` 0.
    NoCircuitTrips,
    /// The flags select phase `full` (1) `==` 1.
    PhaseFull,
    /// Seconds since the phase began `>=` the soak window.
    SoakElapsed,
    /// coordinator.start rows `>=` `--min-starts`.
    MinStarts,
}

/// How a criterion's observed value is compared with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    AtLeast,
    Below,
    Equal,
}

impl Comparison {
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::Equal => "==",
        }
    }

    fn holds(self, observed: f64, threshold: f64) -> bool {
        match self {
            Comparison::AtLeast => observed >= threshold,
            Comparison::Below => observed < threshold,
            Comparison::Equal => observed == threshold,
        }
    }
}

impl CriterionKind {
    pub const ALL: [CriterionKind; 7] = [
        CriterionKind::SuccessRatio,
        CriterionKind::ManualReviewRatio,
        CriterionKind::NoSustainedErrors,
        CriterionKind::NoCircuitTrips,
        CriterionKind::PhaseFull,
        CriterionKind::SoakElapsed,
        CriterionKind::MinStarts,
    ];

    /// The `criterion` label value and JSON name.
    pub fn label(self) -> &'static str {
        match self {
            CriterionKind::SuccessRatio => "success_ratio",
            CriterionKind::ManualReviewRatio => "manual_review_ratio",
            CriterionKind::NoSustainedErrors => "no_sustained_errors",
            CriterionKind::NoCircuitTrips => "no_circuit_trips",
            CriterionKind::PhaseFull => "phase_full",
            CriterionKind::SoakElapsed => "soak_elapsed",
            CriterionKind::MinStarts => "min_starts",
        }
    }

    pub fn comparison(self) -> Comparison {
        match self {
            CriterionKind::SuccessRatio | CriterionKind::SoakElapsed | CriterionKind::MinStarts => Comparison::AtLeast,
            CriterionKind::ManualReviewRatio | CriterionKind::NoSustainedErrors => Comparison::Below,
            CriterionKind::NoCircuitTrips | CriterionKind::PhaseFull => Comparison::Equal,
        }
    }

    /// The threshold the observed value is compared with.
    pub fn threshold(self, t: &Thresholds, window_seconds: u64) -> f64 {
        match self {
            CriterionKind::SuccessRatio => t.min_success_ratio,
            CriterionKind::ManualReviewRatio => t.max_manual_review_ratio,
            CriterionKind::NoSustainedErrors => SUSTAINED_ERROR_BLOCKS as f64,
            CriterionKind::NoCircuitTrips => 0.0,
            CriterionKind::PhaseFull => 1.0,
            CriterionKind::SoakElapsed => window_seconds as f64,
            CriterionKind::MinStarts => t.min_starts as f64,
        }
    }

    /// Failing only for want of time or data: the decision is `pending`, not `no_go`.
    pub fn only_delays(self) -> bool {
        matches!(self, CriterionKind::SoakElapsed | CriterionKind::MinStarts)
    }

    /// Undefined (no denominator) counts as passing: then `min_starts` fails and the decision waits.
    fn passes_when_undefined(self) -> bool {
        matches!(self, CriterionKind::SuccessRatio | CriterionKind::ManualReviewRatio)
    }
}

/// One judged criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criterion {
    pub name: CriterionKind,
    /// The exact value (a ratio is not rounded); null when it has no denominator yet.
    pub observed: Option<f64>,
    pub threshold: f64,
    /// How `observed` is compared with `threshold`: `>=`, `<`, `==`.
    pub comparison: &'static str,
    pub pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numerator: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u64>,
}

impl Criterion {
    fn judge(kind: CriterionKind, observed: Option<f64>, fraction: Option<(u64, u64)>, cx: &Context<'_>) -> Self {
        let threshold = kind.threshold(&cx.thresholds, cx.window.seconds);
        let pass = match observed {
            Some(v) => kind.comparison().holds(v, threshold),
            None => kind.passes_when_undefined(),
        };
        Criterion {
            name: kind,
            observed,
            threshold,
            comparison: kind.comparison().symbol(),
            pass,
            numerator: fraction.map(|f| f.0),
            denominator: fraction.map(|f| f.1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Go,
    NoGo,
    Pending,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Go, Decision::NoGo, Decision::Pending];

    pub fn label(self) -> &'static str {
        match self {
            Decision::Go => "go",
            Decision::NoGo => "no_go",
            Decision::Pending => "pending",
        }
    }

    /// `verdict` exit code: 0 go, 1 no_go, 3 pending.
    pub fn exit_code(self) -> u8 {
        match self {
            Decision::Go => 0,
            Decision::NoGo => 1,
            Decision::Pending => 3,
        }
    }
}

/// The verdict, as JSON (docs/verdict.md) and markdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub environment: String,
    pub phase: Phase,
    pub flags: Flags,
    pub window: String,
    pub window_seconds: u64,
    /// RFC 3339, database time.
    pub evaluated_at: String,
    pub phase_started_at: Option<String>,
    /// Phase start + window: when a `go` can first be due.
    pub verdict_due_at: Option<String>,
    pub criteria: Vec<Criterion>,
    /// How many more bookings may end without confirmation before `success_ratio` fails
    /// (negative: already below the threshold).
    pub error_budget_remaining_bookings: i64,
    pub runbook: Vec<RunbookRow>,
    /// Why the decision is `pending`, in words (None otherwise).
    pub pending_reason: Option<String>,
    /// Seconds since the numbers were last known current (the live gate; 0 for the `verdict`
    /// command, which reads them just now).
    pub data_age_seconds: f64,
}

/// Longest run of consecutive blocks.
pub fn longest_run(blocks: &[i64]) -> u64 {
    let mut best = 0u64;
    let mut run = 0u64;
    let mut prev: Option<i64> = None;
    for &b in blocks {
        run = if prev == Some(b - 1) { run + 1 } else { 1 };
        best = best.max(run);
        prev = Some(b);
    }
    best
}

/// The largest k with `confirmed / (starts + k) >= min`: more unconfirmed bookings the soak absorbs.
pub fn error_budget_remaining(starts: u64, confirmed: u64, min: f64) -> i64 {
    if min <= 0.0 {
        return i64::MAX;
    }
    let k = (confirmed as f64 / min - starts as f64 + 1e-9).floor();
    k.clamp(i64::MIN as f64, i64::MAX as f64) as i64
}

/// Everything [`decide`] needs besides the evidence.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub environment: &'a str,
    pub phase: &'a PhaseState,
    /// Unix seconds; None when unknown (the `verdict` command without `--phase-started-at`).
    pub phase_started_at: Option<f64>,
    pub window: &'a Window,
    pub thresholds: Thresholds,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Judges the evidence. `go` when every criterion passes; `pending` when the only failures are time
/// (`soak_elapsed`) or too little data (`min_starts`); `no_go` otherwise. Ratio criteria pass
/// vacuously while there is no start at all (then `min_starts` fails, so the decision is `pending`).
pub fn decide(ev: &Evidence, cx: &Context<'_>) -> Verdict {
    use CriterionKind as K;
    let now = ev.now.seconds();
    let elapsed = cx.phase_started_at.map(|s| (now - s).max(0.0));
    let full = cx.phase.phase == Phase::Full;
    let criteria = vec![
        Criterion::judge(K::SuccessRatio, ratio(ev.confirmed, ev.starts), Some((ev.confirmed, ev.starts)), cx),
        Criterion::judge(
            K::ManualReviewRatio,
            ratio(ev.manual_review, ev.starts),
            Some((ev.manual_review, ev.starts)),
            cx,
        ),
        Criterion::judge(K::NoSustainedErrors, Some(longest_run(&ev.error_blocks) as f64), None, cx),
        Criterion::judge(K::NoCircuitTrips, Some(ev.circuit_opens as f64), None, cx),
        Criterion::judge(K::PhaseFull, Some(if full { 1.0 } else { 0.0 }), None, cx),
        Criterion::judge(K::SoakElapsed, elapsed, None, cx),
        Criterion::judge(K::MinStarts, Some(ev.starts as f64), None, cx),
    ];
    let decision = if criteria.iter().all(|c| c.pass) {
        Decision::Go
    } else if criteria.iter().filter(|c| !c.pass).all(|c| c.name.only_delays()) {
        Decision::Pending
    } else {
        Decision::NoGo
    };
    let pending_reason = (decision == Decision::Pending).then(|| {
        let waiting: Vec<&str> = criteria
            .iter()
            .filter(|c| !c.pass)
            .map(|c| match c.name {
                K::SoakElapsed => "too early: the soak window has not elapsed since the phase began",
                _ => "too few coordinator.start rows in the window (min_starts)",
            })
            .collect();
        waiting.join("; ")
    });
    Verdict {
        decision,
        environment: cx.environment.to_string(),
        phase: cx.phase.phase,
        flags: cx.phase.flags.clone(),
        window: cx.window.label.clone(),
        window_seconds: cx.window.seconds,
        evaluated_at: ev.now.rfc3339(),
        phase_started_at: cx.phase_started_at.map(crate::time::rfc3339),
        verdict_due_at: cx.phase_started_at.map(|s| crate::time::rfc3339(s + cx.window.seconds as f64)),
        criteria,
        error_budget_remaining_bookings: error_budget_remaining(
            ev.starts,
            ev.confirmed,
            cx.thresholds.min_success_ratio,
        ),
        runbook: ev.runbook.clone(),
        pending_reason,
        data_age_seconds: 0.0,
    }
}

/// The verdict of a command (`verdict`, `backtest`): the soak window of `tally` judged with the
/// flags `phase` and `--phase-started-at`, at the tally's instant.
pub fn judge(tally: &TallyView, phase: &PhaseState, cfg: &RolloutConfig) -> Verdict {
    decide(
        &Evidence::from_view(tally, &cfg.soak),
        &Context {
            environment: &cfg.environment,
            phase,
            phase_started_at: cfg.phase_started_at,
            window: &cfg.soak,
            thresholds: cfg.thresholds,
        },
    )
}

/// How current the live numbers are, for the fail-closed rule of [`view`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    /// The first full load has finished.
    pub ready: bool,
    /// The last load or poll succeeded.
    pub database_up: bool,
    /// Seconds since the numbers were last known current (None before the first load).
    pub data_age_seconds: Option<f64>,
}

/// The gate fails closed: before the first load, or from numbers older than `--max-staleness`,
/// the decision is `pending` with the reason, never `go` (nor a stale `no_go`).
fn fail_closed(verdict: &mut Verdict, f: &Freshness, max_staleness: Option<std::time::Duration>) {
    verdict.data_age_seconds = f.data_age_seconds.unwrap_or(0.0);
    let reason = if !f.ready {
        Some("not ready: the first load from the database has not finished".to_string())
    } else {
        match (f.data_age_seconds, max_staleness) {
            (Some(age), Some(max)) if age > max.as_secs_f64() => Some(format!(
                "stale data: the numbers are {age:.0} s old, more than --max-staleness {} ({})",
                humantime::format_duration(max),
                if f.database_up {
                    "the database answers but the data lags"
                } else {
                    "the polls are failing: the database is unreachable or cannot say how current it is"
                }
            )),
            _ => None,
        }
    };
    if let Some(reason) = reason {
        verdict.decision = Decision::Pending;
        verdict.pending_reason = Some(reason);
    }
}

/// The rollout as the live outputs show it: the verdict and the gauges derived with it.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub phase: PhaseView,
    pub verdict: Verdict,
    pub active: bool,
    pub circuit_open: bool,
    pub errors_sustained: bool,
    pub shadow_leak_events: u64,
}

/// The live rollout view of a tally view, the phase and the data's freshness: a pure function.
pub fn view(tally: &TallyView, phase: &PhaseView, cfg: &RolloutConfig, fresh: &Freshness) -> RolloutView {
    let now = tally.now;
    let evidence = Evidence::from_view(tally, &cfg.soak);
    let mut verdict = decide(
        &evidence,
        &Context {
            environment: &cfg.environment,
            phase: &phase.state,
            phase_started_at: Some(phase.started_at),
            window: &cfg.soak,
            thresholds: cfg.thresholds,
        },
    );
    let active_since = now.minus(cfg.active_within);
    let active =
        tally.last_event.iter().any(|l| KNOWN_EVENT_TYPES.contains(&l.event_type.as_str()) && l.at >= active_since);
    let circuit_since = now.minus(cfg.circuit_hold);
    let circuit_open = tally.last_event.iter().any(|l| l.event_type == CIRCUIT_OPEN && l.at >= circuit_since);
    let block = error_block(now.minute());
    let errors_sustained =
        (1..=SUSTAINED_ERROR_BLOCKS as i64).all(|k| tally.error_blocks.binary_search(&(block - k)).is_ok());
    fail_closed(&mut verdict, fresh, cfg.max_staleness);
    let leak_phase = matches!(phase.state.phase, Phase::Shadow | Phase::Legacy);
    RolloutView {
        phase: phase.clone(),
        verdict,
        active,
        circuit_open,
        errors_sustained,
        shadow_leak_events: if leak_phase { tally.recent_events } else { 0 },
    }
}

/// Criterion values for the markdown table.
fn fmt_observed(c: &Criterion) -> String {
    match (c.observed, c.numerator, c.denominator) {
        (Some(v), Some(n), Some(d)) => format!("{v:.6} ({n}/{d})"),
        (None, Some(n), Some(d)) => format!("n/a ({n}/{d})"),
        (Some(v), _, _) if c.name == CriterionKind::SoakElapsed => {
            humantime::format_duration(std::time::Duration::from_secs(v as u64)).to_string()
        }
        (Some(v), _, _) => format!("{v}"),
        (None, _, _) => "n/a".to_string(),
    }
}

fn fmt_threshold(c: &Criterion) -> String {
    if c.name == CriterionKind::SoakElapsed {
        // Whole hours as the window is usually written (48h), not humantime's "2days".
        let secs = c.threshold as u64;
        let d = if secs % 3600 == 0 {
            format!("{}h", secs / 3600)
        } else {
            humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
        };
        return format!("{} {d}", c.comparison);
    }
    format!("{} {}", c.comparison, c.threshold)
}

impl Verdict {
    /// Markdown for the verification record.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "(unset)".into());
        let _ = writeln!(s, "## Assignment Pipeline V3 soak verdict: **{}**\n", self.decision.label().to_uppercase());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| environment | {} |", self.environment);
        let _ = writeln!(s, "| phase | {} |", self.phase.label());
        let _ = writeln!(s, "| window | {} (since phase start: {}) |", self.window, show(&self.phase_started_at));
        let _ = writeln!(s, "| evaluated at | {} |", self.evaluated_at);
        let _ = writeln!(s, "| verdict due | {} |", show(&self.verdict_due_at));
        let _ = writeln!(s, "| `{}` | {} |", flags::V3, show(&self.flags.v3));
        let _ = writeln!(s, "| `{}` | {} |", flags::SHADOW, show(&self.flags.shadow));
        let _ = writeln!(s, "| `{}` | {} |", flags::MAX_PARALLEL, show(&self.flags.max_parallel));
        let _ = writeln!(s, "| error budget left | {} bookings |", self.error_budget_remaining_bookings);
        if let Some(reason) = &self.pending_reason {
            let _ = writeln!(s, "| pending because | {reason} |");
        }
        let _ = writeln!(s, "\n### Criteria\n\n| criterion | observed | threshold | result |\n|---|---|---|---|");
        for c in &self.criteria {
            let result = if c.pass { "pass" } else { "FAIL" };
            let _ = writeln!(s, "| {} | {} | {} | {result} |", c.name.label(), fmt_observed(c), fmt_threshold(c));
        }
        let _ = writeln!(
            s,
            "\n### Runbook health check ({})\n\n| event_type | total | success_rate_percent |\n|---|---|---|",
            self.window
        );
        for r in &self.runbook {
            let _ = writeln!(s, "| {} | {} | {:.2} |", r.event_type, r.total, r.success_rate_percent);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(p: Phase) -> PhaseState {
        PhaseState { phase: p, invalid_reasons: vec![], max_parallel: Some(3), flags: Flags::default() }
    }

    fn judge(starts: u64, confirmed: u64, manual: u64, elapsed: f64) -> Verdict {
        let now = UnixMicros::from_seconds(1000.0 + elapsed);
        let ev = Evidence { now, starts, confirmed, manual_review: manual, ..Default::default() };
        let p = phase(Phase::Full);
        let window = Window { label: "48h".into(), seconds: 172_800 };
        decide(
            &ev,
            &Context {
                environment: "staging",
                phase: &p,
                phase_started_at: Some(1000.0),
                window: &window,
                thresholds: Thresholds::default(),
            },
        )
    }

    #[test]
    fn success_ratio_exactly_at_threshold_passes_and_one_below_fails() {
        assert_eq!(judge(10_000, 9_700, 0, 172_800.0).decision, Decision::Go);
        assert_eq!(judge(10_000, 9_699, 0, 172_800.0).decision, Decision::NoGo);
        assert_eq!(judge(100, 97, 0, 172_800.0).decision, Decision::Go);
    }

    #[test]
    fn manual_review_exactly_at_threshold_fails_and_one_below_passes() {
        assert_eq!(judge(10_000, 9_800, 100, 172_800.0).decision, Decision::NoGo);
        assert_eq!(judge(10_000, 9_800, 99, 172_800.0).decision, Decision::Go);
    }

    #[test]
    fn short_soak_or_little_data_is_pending_but_a_failure_is_no_go() {
        assert_eq!(judge(10_000, 9_800, 0, 172_799.0).decision, Decision::Pending);
        assert_eq!(judge(99, 99, 0, 172_800.0).decision, Decision::Pending);
        assert_eq!(judge(0, 0, 0, 172_800.0).decision, Decision::Pending);
        assert_eq!(judge(50, 40, 0, 10.0).decision, Decision::NoGo);
    }

    #[test]
    fn criteria_serialise_by_their_label() {
        let v = judge(100, 100, 0, 172_800.0);
        let json = serde_json::to_value(&v).unwrap();
        let names: Vec<&str> =
            json["criteria"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        let labels: Vec<&str> = CriterionKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(names, labels);
    }

    #[test]
    fn sustained_errors_need_three_consecutive_blocks() {
        assert_eq!(longest_run(&[1, 2, 4, 5, 6]), 3);
        assert_eq!(longest_run(&[1, 2, 4, 5, 7]), 2);
        assert_eq!(longest_run(&[]), 0);
    }

    #[test]
    fn runbook_percent_rounds_half_away_from_zero() {
        assert_eq!(percent_2dp(1, 3), 33.33);
        assert_eq!(percent_2dp(2, 3), 66.67);
        assert_eq!(percent_2dp(1, 8), 12.5);
        assert_eq!(percent_2dp(1, 80_000), 0.0);
        assert_eq!(percent_2dp(1, 40_000), 0.0); // 0.0025 -> 0.00
        assert_eq!(percent_2dp(1, 20_000), 0.01); // 0.005 -> 0.01
    }

    #[test]
    fn error_budget_counts_bookings_left() {
        assert_eq!(error_budget_remaining(100, 97, 0.97), 0);
        assert_eq!(error_budget_remaining(1000, 980, 0.97), 10);
        assert!(error_budget_remaining(100, 90, 0.97) < 0);
    }
}
