//! The rollout: flags -> phase, and evidence -> criteria -> decision.
//!
//! [`Evidence::from_view`] is the one evidence constructor: it reads a [`TallyView`], which the
//! ingest loop builds from polls and the `verdict` command builds from the same start-up
//! aggregates, and [`decide`] turns evidence into a [`Verdict`]. [`view`] adds the live gauges
//! (active, circuit open, sustained errors, shadow leak). Everything here is a pure function.
//!
//! Besides pass/fail, the verdict says how sure it is: each ratio criterion carries its Wilson
//! score interval and whether the evidence is conclusive ([`interval`]); `decided` says whether the
//! decision at the due time is already certain, and `projection` what it will be if the rates seen
//! since the phase began continue (docs/verdict.md).

pub mod flags;
pub mod interval;
pub mod phase;

use serde::Serialize;

pub use crate::config::Thresholds;
use crate::config::{RolloutConfig, Window};
use crate::events::{self, CIRCUIT_OPEN, KNOWN_EVENT_TYPES};
use crate::tally::{MinuteCounts, TallyView};
use crate::time::{error_block, minute_start, window_start_minute, UnixMicros};
pub use flags::{Flags, Phase, PhaseState};
pub use interval::{Interval, Strength};
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
    /// The window's minutes with gate events, ascending: where in the window the counts fall.
    pub minutes: Vec<MinuteCounts>,
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
            minutes: view.soak_minutes.clone(),
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

    /// The criterion's name in words, for people (the status page, the journal).
    pub fn title(self) -> &'static str {
        match self {
            CriterionKind::SuccessRatio => "Success ratio",
            CriterionKind::ManualReviewRatio => "Manual-review ratio",
            CriterionKind::NoSustainedErrors => "No sustained errors",
            CriterionKind::NoCircuitTrips => "No circuit-breaker trips",
            CriterionKind::PhaseFull => "Phase is full",
            CriterionKind::SoakElapsed => "Soak time elapsed",
            CriterionKind::MinStarts => "Enough bookings",
        }
    }

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
        self.is_ratio()
    }

    /// A ratio of two counts: it carries a confidence interval.
    pub fn is_ratio(self) -> bool {
        matches!(self, CriterionKind::SuccessRatio | CriterionKind::ManualReviewRatio)
    }

    /// One failure is enough, and it stays a failure for as long as it is inside the soak window:
    /// a circuit-breaker trip and sustained errors are events that no later data can undo, so once
    /// one lies inside the window judged at the due time the due-time decision is `no_go` whatever
    /// happens next (`decided`). Not the ratios (more bookings can still move them across the
    /// threshold), not `phase_full` (a state of the flags, not an event: changing them starts a new
    /// phase and a new soak), and the shadow leak is no criterion of the verdict (it is an alert in
    /// the shadow and legacy phases, whose soak the gate does not judge).
    pub fn zero_tolerance(self) -> bool {
        matches!(self, CriterionKind::NoSustainedErrors | CriterionKind::NoCircuitTrips)
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
    /// Ratio criteria: the Wilson score interval of `numerator / denominator` at `--confidence`
    /// (`[0, 1]` without a denominator: no data says nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// Ratio criteria: `conclusive` when the comparison with the threshold gives the same answer
    /// over the whole interval, `inconclusive` when the interval straddles the threshold (always
    /// so without a denominator, unless the threshold is 0 or above 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Strength>,
}

impl Criterion {
    fn judge(kind: CriterionKind, observed: Option<f64>, fraction: Option<(u64, u64)>, cx: &Context<'_>) -> Self {
        let threshold = kind.threshold(&cx.thresholds, cx.window.seconds);
        let cmp = kind.comparison();
        let pass = match observed {
            Some(v) => cmp.holds(v, threshold),
            None => kind.passes_when_undefined(),
        };
        let interval =
            fraction.filter(|_| kind.is_ratio()).map(|(num, den)| interval::wilson(num, den, cx.thresholds.confidence));
        let evidence = interval.map(|i| {
            if cmp.holds(i.low, threshold) == cmp.holds(i.high, threshold) {
                Strength::Conclusive
            } else {
                Strength::Inconclusive
            }
        });
        Criterion {
            name: kind,
            observed,
            threshold,
            comparison: cmp.symbol(),
            pass,
            numerator: fraction.map(|f| f.0),
            denominator: fraction.map(|f| f.1),
            interval,
            evidence,
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

/// What the due-time verdict would be if the rates seen since the phase began continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Projection {
    /// coordinator.start rows the window judged at the due time would hold: the starts since the
    /// phase began scaled by (due time - phase start) / (now - phase start), both measured from
    /// the first instant of the phase's first minute (the window's edge), rounded. After the due
    /// time: the starts in the window now.
    pub starts_at_due: u64,
    /// The decision of the due-time judgement with those starts, the success and manual-review
    /// ratios seen since the phase began, the circuit trips and error blocks already inside the
    /// due-time window, and the flags as they are. After the due time: the decision now.
    pub decision_at_due: Decision,
    /// The criteria that judgement fails (not the ones that only wait), in
    /// [`CriterionKind::ALL`] order; empty unless `decision_at_due` is `no_go`.
    pub failing_at_due: Vec<CriterionKind>,
}

/// The verdict, as JSON (docs/verdict.md) and markdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// Whether the decision at `verdict_due_at` is already certain: before the due time, true when
    /// a zero-tolerance criterion ([`CriterionKind::zero_tolerance`]) failed inside the window that
    /// will be judged at the due time (`decision` is then `no_go` at once); at and after the due
    /// time, true. False without a phase start, and while the gate fails closed.
    pub decided: bool,
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
    /// The due-time verdict if the rates since the phase began continue (None without a phase start).
    pub projection: Option<Projection>,
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

/// The numbers one judgement compares with the thresholds.
struct Counts {
    starts: u64,
    confirmed: u64,
    manual_review: u64,
    /// The longest run of consecutive 5-minute blocks with a coordinator.error.
    error_run: u64,
    circuit_opens: u64,
    /// Seconds since the phase began (None: unknown).
    elapsed: Option<f64>,
    /// What `min_starts` compares with `--min-starts` (the projection's starts at the due time).
    starts_for_min: u64,
}

/// The criteria of [`CriterionKind::ALL`] over `c`, and the decision they give.
fn judge_counts(c: &Counts, phase: &PhaseState, cx: &Context<'_>) -> (Vec<Criterion>, Decision) {
    use CriterionKind as K;
    let full = phase.phase == Phase::Full;
    let criteria = vec![
        Criterion::judge(K::SuccessRatio, ratio(c.confirmed, c.starts), Some((c.confirmed, c.starts)), cx),
        Criterion::judge(K::ManualReviewRatio, ratio(c.manual_review, c.starts), Some((c.manual_review, c.starts)), cx),
        Criterion::judge(K::NoSustainedErrors, Some(c.error_run as f64), None, cx),
        Criterion::judge(K::NoCircuitTrips, Some(c.circuit_opens as f64), None, cx),
        Criterion::judge(K::PhaseFull, Some(if full { 1.0 } else { 0.0 }), None, cx),
        Criterion::judge(K::SoakElapsed, c.elapsed, None, cx),
        Criterion::judge(K::MinStarts, Some(c.starts_for_min as f64), None, cx),
    ];
    let decision = if criteria.iter().all(|c| c.pass) {
        Decision::Go
    } else if criteria.iter().filter(|c| !c.pass).all(|c| c.name.only_delays()) {
        Decision::Pending
    } else {
        Decision::NoGo
    };
    (criteria, decision)
}

/// The part of the evidence that will still be inside the window judged at the due time `due`
/// (Unix microseconds): the minutes from the one holding `due - window` on (the window's
/// minute-aligned start), i.e. from the phase's first minute.
fn due_window<'e>(ev: &'e Evidence, due: UnixMicros, window: &Window) -> (i64, Vec<&'e MinuteCounts>) {
    let first = window_start_minute(due, window.seconds);
    (first, ev.minutes.iter().filter(|m| m.minute >= first).collect())
}

/// The criteria that fail, not counting those that only wait (`soak_elapsed`, `min_starts`).
fn failing(criteria: &[Criterion]) -> Vec<CriterionKind> {
    criteria.iter().filter(|c| !c.pass && !c.name.only_delays()).map(|c| c.name).collect()
}

/// `decided` and the projection before the due time (`now < due`).
fn look_ahead(ev: &Evidence, due: UnixMicros, phase: &PhaseState, cx: &Context<'_>) -> (bool, Projection) {
    let (first, inside) = due_window(ev, due, cx.window);
    let sum = |f: fn(&MinuteCounts) -> u64| inside.iter().map(|m| f(m)).sum::<u64>();
    let circuit_opens = sum(|m| m.circuit_opens);
    let mut blocks: Vec<i64> = inside.iter().filter(|m| m.errors > 0).map(|m| error_block(m.minute)).collect();
    blocks.dedup();
    let error_run = longest_run(&blocks);
    let decided = circuit_opens > 0 || error_run >= SUSTAINED_ERROR_BLOCKS;
    // Rates since the phase's first minute, continued to the due time.
    let since = minute_start(first);
    let (so_far, to_due) = (ev.now.0 - since.0, due.0 - since.0);
    let scale = if so_far > 0 { to_due as f64 / so_far as f64 } else { 0.0 };
    let starts = sum(|m| m.starts);
    let starts_at_due = (starts as f64 * scale).round() as u64;
    let projected = Counts {
        starts,
        confirmed: sum(|m| m.confirmed),
        manual_review: sum(|m| m.manual_review),
        error_run,
        circuit_opens,
        elapsed: Some(cx.window.seconds as f64),
        starts_for_min: starts_at_due,
    };
    let (criteria, decision_at_due) = judge_counts(&projected, phase, cx);
    (decided, Projection { starts_at_due, decision_at_due, failing_at_due: failing(&criteria) })
}

/// Judges the evidence. `go` when every criterion passes; `pending` when the only failures are time
/// (`soak_elapsed`) or too little data (`min_starts`); `no_go` otherwise. Ratio criteria pass
/// vacuously while there is no start at all (then `min_starts` fails, so the decision is `pending`).
/// Adds each ratio's interval and evidence, `decided` and the projection (docs/verdict.md).
pub fn decide(ev: &Evidence, cx: &Context<'_>) -> Verdict {
    use CriterionKind as K;
    let now = ev.now.seconds();
    let elapsed = cx.phase_started_at.map(|s| (now - s).max(0.0));
    let counts = Counts {
        starts: ev.starts,
        confirmed: ev.confirmed,
        manual_review: ev.manual_review,
        error_run: longest_run(&ev.error_blocks),
        circuit_opens: ev.circuit_opens,
        elapsed,
        starts_for_min: ev.starts,
    };
    let (criteria, mut decision) = judge_counts(&counts, cx.phase, cx);
    let due = cx.phase_started_at.map(|s| s + cx.window.seconds as f64);
    let (decided, projection) = match due {
        None => (false, None),
        Some(due) if now >= due => (
            true,
            Some(Projection {
                starts_at_due: ev.starts,
                decision_at_due: decision,
                failing_at_due: failing(&criteria),
            }),
        ),
        Some(due) => {
            let (decided, projection) = look_ahead(ev, UnixMicros::from_seconds(due), cx.phase, cx);
            if decided {
                // The failure inside the due-time window is inside today's window too, so the
                // decision is already no_go; said outright so no rule change can make it pending.
                decision = Decision::NoGo;
            }
            (decided, Some(projection))
        }
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
        decided,
        environment: cx.environment.to_string(),
        phase: cx.phase.phase,
        flags: cx.phase.flags.clone(),
        window: cx.window.label.clone(),
        window_seconds: cx.window.seconds,
        evaluated_at: ev.now.rfc3339(),
        phase_started_at: cx.phase_started_at.map(crate::time::rfc3339),
        verdict_due_at: due.map(crate::time::rfc3339),
        projection,
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
        verdict.decided = false;
        // Nor a projection from numbers the gate does not trust.
        verdict.projection = None;
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

/// A ratio as a percentage for people, 2 places (`96.33%`).
fn percent(r: f64) -> String {
    format!("{:.2}%", 100.0 * r)
}

/// The interval and evidence cells of a criterion row (empty for the criteria without one).
fn fmt_interval(c: &Criterion) -> (String, String) {
    match (c.interval, c.evidence) {
        (Some(i), Some(e)) => (format!("{} to {}", percent(i.low), percent(i.high)), e.label().to_string()),
        _ => (String::new(), String::new()),
    }
}

impl Verdict {
    /// `decided` in words.
    fn fmt_decided(&self) -> &'static str {
        match (self.decided, self.verdict_due_at.is_some()) {
            (true, _) if self.decision == Decision::NoGo => {
                "yes: no_go is certain (a zero-tolerance failure lies inside the window judged at the due time, or the due time has passed)"
            }
            (true, _) => "yes: the due time has passed",
            (false, true) => "no: the data until the due time can still change it",
            (false, false) => "no: without a phase start there is no due time",
        }
    }

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
        let _ = writeln!(s, "| decided | {} |", self.fmt_decided());
        if let Some(p) = &self.projection {
            let _ = writeln!(
                s,
                "| projected at the due time | {} starts, **{}**{} (if the rates since the phase began continue) |",
                p.starts_at_due,
                p.decision_at_due.label().to_uppercase(),
                if p.failing_at_due.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = p.failing_at_due.iter().map(|k| k.label()).collect();
                    format!(", failing {}", names.join(", "))
                }
            );
        }
        let confidence = self.criteria.iter().find_map(|c| c.interval).map_or(0.0, |i| i.confidence);
        let _ = writeln!(
            s,
            "\n### Criteria\n\n| criterion | observed | threshold | result | {}% interval | evidence |\n|---|---|---|---|---|---|",
            (confidence * 1e6).round() / 1e4
        );
        for c in &self.criteria {
            let result = if c.pass { "pass" } else { "FAIL" };
            let (interval, evidence) = fmt_interval(c);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {result} | {interval} | {evidence} |",
                c.name.label(),
                fmt_observed(c),
                fmt_threshold(c)
            );
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

    /// The verdict of `ev` in phase full since t = 1000 s, over a 48 h window.
    fn decide_full(ev: &Evidence, thresholds: Thresholds) -> Verdict {
        let p = phase(Phase::Full);
        let window = Window { label: "48h".into(), seconds: 172_800 };
        let cx =
            Context { environment: "staging", phase: &p, phase_started_at: Some(1000.0), window: &window, thresholds };
        decide(ev, &cx)
    }

    fn judge(starts: u64, confirmed: u64, manual: u64, elapsed: f64) -> Verdict {
        let now = UnixMicros::from_seconds(1000.0 + elapsed);
        let ev = Evidence { now, starts, confirmed, manual_review: manual, ..Default::default() };
        decide_full(&ev, Thresholds::default())
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

    const T0: f64 = 1_800_000_000.0; // a whole minute
    const SOAK: u64 = 172_800;

    fn minute(seconds_after_t0: f64) -> i64 {
        UnixMicros::from_seconds(T0 + seconds_after_t0).minute()
    }

    /// The verdict `hours` after a phase that began at T0, with the window's evidence summed from
    /// `minutes` (which may lie before T0, still inside today's window).
    fn judge_minutes(hours: f64, minutes: Vec<MinuteCounts>, thresholds: Thresholds) -> Verdict {
        let now = UnixMicros::from_seconds(T0 + hours * 3600.0);
        let sum = |f: fn(&MinuteCounts) -> u64| minutes.iter().map(f).sum::<u64>();
        let mut error_blocks: Vec<i64> =
            minutes.iter().filter(|m| m.errors > 0).map(|m| error_block(m.minute)).collect();
        error_blocks.dedup();
        let ev = Evidence {
            now,
            starts: sum(|m| m.starts),
            confirmed: sum(|m| m.confirmed),
            manual_review: sum(|m| m.manual_review),
            circuit_opens: sum(|m| m.circuit_opens),
            error_blocks,
            minutes,
            ..Default::default()
        };
        let p = phase(Phase::Full);
        let window = Window { label: "48h".into(), seconds: SOAK };
        decide(
            &ev,
            &Context { environment: "staging", phase: &p, phase_started_at: Some(T0), window: &window, thresholds },
        )
    }

    /// Steady traffic since T0 - 1h: `per_hour` starts an hour (all confirmed) until `hours` after T0.
    fn steady(per_hour: u64, hours: f64) -> Vec<MinuteCounts> {
        (-1..hours as i64)
            .map(|h| MinuteCounts {
                minute: minute(h as f64 * 3600.0),
                starts: per_hour,
                confirmed: per_hour,
                ..Default::default()
            })
            .collect()
    }

    fn with(mut minutes: Vec<MinuteCounts>, extra: MinuteCounts) -> Vec<MinuteCounts> {
        minutes.push(extra);
        minutes.sort_by_key(|m| m.minute);
        minutes
    }

    #[test]
    fn a_circuit_trip_since_the_phase_began_decides_no_go_long_before_the_due_time() {
        let trip = MinuteCounts { minute: minute(2.0 * 3600.0 + 30.0), circuit_opens: 1, ..Default::default() };
        let v = judge_minutes(3.0, with(steady(100, 3.0), trip), Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::NoGo, true));
        let p = v.projection.clone().unwrap();
        assert_eq!((p.decision_at_due, p.failing_at_due), (Decision::NoGo, vec![CriterionKind::NoCircuitTrips]));
        // The phase's first minute is the due-time window's first minute (edges are minute-aligned).
        let edge = MinuteCounts { minute: minute(0.0), circuit_opens: 1, ..Default::default() };
        assert!(judge_minutes(3.0, with(steady(100, 3.0), edge), Thresholds::default()).decided);
    }

    #[test]
    fn a_trip_before_the_phase_began_fails_today_but_leaves_the_window_by_the_due_time() {
        let before = MinuteCounts { minute: minute(-60.0), circuit_opens: 1, ..Default::default() };
        let v = judge_minutes(3.0, with(steady(100, 3.0), before), Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::NoGo, false), "today's window holds it, the due one will not");
        assert_eq!(v.projection.clone().unwrap().decision_at_due, Decision::Go);
    }

    #[test]
    fn sustained_errors_decide_only_when_all_three_blocks_are_inside_the_due_window() {
        let err = |s: f64| MinuteCounts { minute: minute(s), errors: 1, ..Default::default() };
        let inside = [err(600.0), err(900.0), err(1200.0)];
        let mut m = steady(100, 3.0);
        m.extend(inside);
        m.sort_by_key(|m| m.minute);
        assert!(judge_minutes(3.0, m, Thresholds::default()).decided);
        // Blocks -5 min, 0 and +5 min: a run of three today, but two of them in the due window.
        let straddling = [err(-300.0), err(0.0), err(300.0)];
        let mut m = steady(100, 3.0);
        m.extend(straddling);
        m.sort_by_key(|m| m.minute);
        let v = judge_minutes(3.0, m, Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::NoGo, false));
    }

    #[test]
    fn at_and_after_the_due_time_the_decision_is_decided_and_the_projection_is_the_present() {
        let v = judge_minutes(48.0, steady(100, 48.0), Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::Go, true));
        let p = v.projection.clone().unwrap();
        assert_eq!((p.starts_at_due, p.decision_at_due), (v.criteria[0].denominator.unwrap(), Decision::Go));
        // A failing ratio after the due time is a decided no-go too.
        let bad = MinuteCounts { minute: minute(3600.0), starts: 500, ..Default::default() };
        let v = judge_minutes(49.0, with(steady(100, 49.0), bad), Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::NoGo, true));
    }

    #[test]
    fn a_failing_ratio_before_the_due_time_is_no_go_but_not_decided() {
        let bad = MinuteCounts { minute: minute(3600.0), starts: 100, ..Default::default() };
        let v = judge_minutes(3.0, with(steady(100, 3.0), bad), Thresholds::default());
        assert_eq!((v.decision, v.decided), (Decision::NoGo, false));
    }

    #[test]
    fn the_projection_continues_the_rates_since_the_phase_began() {
        // 12 h of 50 starts an hour since T0 (and an hour before it, which does not count).
        let v = judge_minutes(12.0, steady(50, 12.0), Thresholds::default());
        let p = v.projection.clone().unwrap();
        assert_eq!((v.decision, p.starts_at_due, p.decision_at_due), (Decision::Pending, 2400, Decision::Go));
        let t = Thresholds { min_starts: 2401, ..Thresholds::default() };
        assert_eq!(judge_minutes(12.0, steady(50, 12.0), t).projection.unwrap().decision_at_due, Decision::Pending);
        // Manual reviews at 1% of the starts since the phase began project a no-go.
        let manual = MinuteCounts { minute: minute(7200.0), manual_review: 6, ..Default::default() };
        let v = judge_minutes(12.0, with(steady(50, 12.0), manual), Thresholds::default());
        assert_eq!((v.decision, v.projection.clone().unwrap().decision_at_due), (Decision::Pending, Decision::NoGo));
        // No start since the phase began: nothing to project, pending.
        let p = judge_minutes(0.5, vec![], Thresholds::default()).projection.unwrap();
        assert_eq!((p.starts_at_due, p.decision_at_due), (0, Decision::Pending));
    }

    #[test]
    fn without_a_phase_start_nothing_is_decided_or_projected() {
        let ev = Evidence { now: UnixMicros::from_seconds(T0), starts: 200, confirmed: 200, ..Default::default() };
        let p = phase(Phase::Full);
        let window = Window { label: "48h".into(), seconds: SOAK };
        let v = decide(
            &ev,
            &Context {
                environment: "staging",
                phase: &p,
                phase_started_at: None,
                window: &window,
                thresholds: Thresholds::default(),
            },
        );
        assert_eq!((v.decision, v.decided, v.projection), (Decision::Pending, false, None));
    }

    #[test]
    fn ratio_criteria_carry_their_interval_and_whether_it_settles_them() {
        let v = judge(100, 97, 0, 172_800.0);
        let (success, manual) = (&v.criteria[0], &v.criteria[1]);
        assert_eq!(success.interval, Some(interval::wilson(97, 100, 0.95)));
        assert_eq!(success.evidence, Some(Strength::Inconclusive), "97/100 passes, but 0.97 could be lower");
        assert_eq!(manual.evidence, Some(Strength::Inconclusive), "0/100 still allows 3.7% manual reviews");
        let v = judge(100_000, 99_000, 100, 172_800.0);
        assert_eq!(v.criteria[0].evidence, Some(Strength::Conclusive));
        assert_eq!(v.criteria[1].evidence, Some(Strength::Conclusive));
        let v = judge(10_000, 9_000, 0, 172_800.0);
        assert_eq!((v.criteria[0].pass, v.criteria[0].evidence), (false, Some(Strength::Conclusive)));
        // No data: the whole range, inconclusive, and the other criteria carry none.
        let v = judge(0, 0, 0, 172_800.0);
        assert_eq!(v.criteria[0].interval.map(|i| (i.low, i.high)), Some((0.0, 1.0)));
        assert_eq!(v.criteria[0].evidence, Some(Strength::Inconclusive));
        assert!(v.criteria[2..].iter().all(|c| c.interval.is_none() && c.evidence.is_none()));
        // The confidence level changes the interval, never pass or fail.
        let ev = Evidence {
            now: UnixMicros::from_seconds(1000.0 + 172_800.0),
            starts: 1000,
            confirmed: 980,
            ..Default::default()
        };
        let at = |confidence: f64| decide_full(&ev, Thresholds { confidence, ..Thresholds::default() });
        let (loose, strict) = (at(0.5), at(0.999));
        assert_eq!(loose.criteria[0].evidence, Some(Strength::Conclusive));
        assert_eq!(strict.criteria[0].evidence, Some(Strength::Inconclusive));
        assert_eq!((loose.decision, strict.decision), (Decision::Go, Decision::Go));
    }

    #[test]
    fn a_gate_failing_closed_decides_nothing() {
        let trip = MinuteCounts { minute: minute(3600.0), circuit_opens: 1, ..Default::default() };
        let mut v = judge_minutes(3.0, with(steady(100, 3.0), trip), Thresholds::default());
        assert!(v.decided);
        let stale = Freshness { ready: true, database_up: false, data_age_seconds: Some(600.0) };
        fail_closed(&mut v, &stale, Some(std::time::Duration::from_secs(30)));
        assert_eq!((v.decision, v.decided), (Decision::Pending, false));
        let mut v = judge_minutes(49.0, steady(100, 49.0), Thresholds::default());
        fail_closed(&mut v, &Freshness { ready: false, database_up: true, data_age_seconds: None }, None);
        assert_eq!((v.decision, v.decided), (Decision::Pending, false), "not ready");
    }

    #[test]
    fn error_budget_counts_bookings_left() {
        assert_eq!(error_budget_remaining(100, 97, 0.97), 0);
        assert_eq!(error_budget_remaining(1000, 980, 0.97), 10);
        assert!(error_budget_remaining(100, 90, 0.97) < 0);
    }
}
