//! The rollout: flags -> phase, and evidence -> criteria -> decision.
//!
//! One function, [`decide`], turns [`Evidence`] into a [`Verdict`]. `serve` builds the evidence from
//! the in-memory tally, `verdict` from SQL; both therefore judge by the same rules.

pub mod flags;

use serde::Serialize;

pub use flags::{Flags, Phase, PhaseState};

/// Gate thresholds (defaults: the runbook's 97% / 1% and 100 starts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// `success_ratio` passes at or above.
    pub min_success_ratio: f64,
    /// `manual_review_ratio` passes strictly below.
    pub max_manual_review_ratio: f64,
    /// Fewer starts in the window is `pending`.
    pub min_starts: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { min_success_ratio: 0.97, max_manual_review_ratio: 0.01, min_starts: 100 }
    }
}

/// Errors are sustained when this many consecutive 5-minute blocks each hold a coordinator.error.
pub const SUSTAINED_ERROR_BLOCKS: u64 = 3;

/// One row of the runbook's health-check table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunbookRow {
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
    pub starts: u64,
    pub confirmed: u64,
    pub manual_review: u64,
    /// 5-minute blocks (Unix minute / 5) holding at least one coordinator.error, ascending.
    pub error_blocks: Vec<i64>,
    pub circuit_opens: u64,
    pub runbook: Vec<RunbookRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criterion {
    pub name: &'static str,
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
    pub fn exit_code(self) -> i32 {
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

pub fn rfc3339(unix_seconds: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix_seconds.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Everything [`decide`] needs besides the evidence.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub environment: &'a str,
    pub phase: &'a PhaseState,
    pub phase_started_at: Option<f64>,
    pub window_label: &'a str,
    pub window_seconds: u64,
    pub now: f64,
    pub thresholds: Thresholds,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Judges the evidence. `go` when every criterion passes; `pending` when the only failures are time
/// (`soak_elapsed`) or too little data (`min_starts`); `no_go` otherwise. Ratio criteria pass
/// vacuously while there is no start at all (then `min_starts` fails, so the decision is `pending`).
pub fn decide(ev: &Evidence, cx: &Context<'_>) -> Verdict {
    let t = cx.thresholds;
    let success = ratio(ev.confirmed, ev.starts);
    let manual = ratio(ev.manual_review, ev.starts);
    let run = longest_run(&ev.error_blocks);
    let elapsed = cx.phase_started_at.map(|s| (cx.now - s).max(0.0));
    let criteria = vec![
        Criterion {
            name: "success_ratio",
            observed: success,
            threshold: t.min_success_ratio,
            comparison: ">=",
            pass: success.is_none_or(|r| r >= t.min_success_ratio),
            numerator: Some(ev.confirmed),
            denominator: Some(ev.starts),
        },
        Criterion {
            name: "manual_review_ratio",
            observed: manual,
            threshold: t.max_manual_review_ratio,
            comparison: "<",
            pass: manual.is_none_or(|r| r < t.max_manual_review_ratio),
            numerator: Some(ev.manual_review),
            denominator: Some(ev.starts),
        },
        Criterion {
            name: "no_sustained_errors",
            observed: Some(run as f64),
            threshold: SUSTAINED_ERROR_BLOCKS as f64,
            comparison: "<",
            pass: run < SUSTAINED_ERROR_BLOCKS,
            numerator: None,
            denominator: None,
        },
        Criterion {
            name: "no_circuit_trips",
            observed: Some(ev.circuit_opens as f64),
            threshold: 0.0,
            comparison: "==",
            pass: ev.circuit_opens == 0,
            numerator: None,
            denominator: None,
        },
        Criterion {
            name: "phase_full",
            observed: Some(if cx.phase.phase == Phase::Full { 1.0 } else { 0.0 }),
            threshold: 1.0,
            comparison: "==",
            pass: cx.phase.phase == Phase::Full,
            numerator: None,
            denominator: None,
        },
        Criterion {
            name: "soak_elapsed",
            observed: elapsed,
            threshold: cx.window_seconds as f64,
            comparison: ">=",
            pass: elapsed.is_some_and(|e| e >= cx.window_seconds as f64),
            numerator: None,
            denominator: None,
        },
        Criterion {
            name: "min_starts",
            observed: Some(ev.starts as f64),
            threshold: t.min_starts as f64,
            comparison: ">=",
            pass: ev.starts >= t.min_starts,
            numerator: None,
            denominator: None,
        },
    ];
    let failing: Vec<&str> = criteria.iter().filter(|c| !c.pass).map(|c| c.name).collect();
    let decision = if failing.is_empty() {
        Decision::Go
    } else if failing.iter().all(|n| *n == "soak_elapsed" || *n == "min_starts") {
        Decision::Pending
    } else {
        Decision::NoGo
    };
    Verdict {
        decision,
        environment: cx.environment.to_string(),
        phase: cx.phase.phase,
        flags: cx.phase.flags.clone(),
        window: cx.window_label.to_string(),
        window_seconds: cx.window_seconds,
        evaluated_at: rfc3339(cx.now),
        phase_started_at: cx.phase_started_at.map(rfc3339),
        verdict_due_at: cx.phase_started_at.map(|s| rfc3339(s + cx.window_seconds as f64)),
        criteria,
        error_budget_remaining_bookings: error_budget_remaining(ev.starts, ev.confirmed, t.min_success_ratio),
        runbook: ev.runbook.clone(),
    }
}

fn fmt_observed(c: &Criterion) -> String {
    match (c.observed, c.numerator, c.denominator) {
        (Some(v), Some(n), Some(d)) => format!("{v:.6} ({n}/{d})"),
        (None, Some(n), Some(d)) => format!("n/a ({n}/{d})"),
        (Some(v), _, _) if c.name == "soak_elapsed" => {
            humantime::format_duration(std::time::Duration::from_secs(v as u64)).to_string()
        }
        (Some(v), _, _) => format!("{v}"),
        (None, _, _) => "n/a".to_string(),
    }
}

fn fmt_threshold(c: &Criterion) -> String {
    if c.name == "soak_elapsed" {
        return format!(
            "{} {}",
            c.comparison,
            humantime::format_duration(std::time::Duration::from_secs(c.threshold as u64))
        );
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
        let _ = writeln!(s, "\n### Criteria\n\n| criterion | observed | threshold | result |\n|---|---|---|---|");
        for c in &self.criteria {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                c.name,
                fmt_observed(c),
                fmt_threshold(c),
                if c.pass { "pass" } else { "FAIL" }
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

/// When the active phase began. `--phase-started-at` is the start of the phase that is active when
/// the exporter starts; without it, the exporter's own start time is used (so a restart restarts
/// the soak clock: set PHASE_STARTED_AT in the deployment). A phase change seen while running
/// starts the clock at the moment it was seen.
#[derive(Debug, Clone)]
pub struct PhaseTracker {
    pub current: Phase,
    pub started_at: f64,
}

impl PhaseTracker {
    pub fn new(initial: Phase, configured_start: Option<f64>, now: f64) -> Self {
        PhaseTracker { current: initial, started_at: configured_start.unwrap_or(now) }
    }

    /// Records the phase now in force; returns true when it changed.
    pub fn observe(&mut self, phase: Phase, now: f64) -> bool {
        if phase == self.current {
            return false;
        }
        self.current = phase;
        self.started_at = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(p: Phase) -> PhaseState {
        PhaseState { phase: p, invalid_reasons: vec![], max_parallel: Some(3), flags: Flags::default() }
    }

    fn judge(starts: u64, confirmed: u64, manual: u64, elapsed: f64) -> Verdict {
        let ev = Evidence { starts, confirmed, manual_review: manual, ..Default::default() };
        let p = phase(Phase::Full);
        decide(
            &ev,
            &Context {
                environment: "staging",
                phase: &p,
                phase_started_at: Some(1000.0),
                window_label: "48h",
                window_seconds: 172_800,
                now: 1000.0 + elapsed,
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
