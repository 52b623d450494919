//! `rollout-exporter backtest`: the verdict at every step of a past range, from ONE load of
//! per-minute aggregates over `[from - soak, to]` slid in memory (not one query per step). Each step
//! folds the minutes before it into the same tally the live exporter uses and judges it with
//! [`rollout::judge`], so every step equals `verdict --at` at that instant.

use std::fmt::Write;

use crate::config::{BacktestConfig, BacktestFormat};
use crate::ingest::Replay;
use crate::rollout::phase::read_flags;
use crate::rollout::{self, CriterionKind, Decision, Verdict};
use crate::source::postgres::{FollowConfig, PgSource};
use crate::source::SourceError;

/// Every step's verdict, `from` to `to` inclusive.
pub async fn run(cfg: &BacktestConfig) -> Result<Vec<Verdict>, SourceError> {
    let source = PgSource::new(cfg.db.clone(), FollowConfig::replay(&cfg.tally, cfg.from, cfg.to, false))?;
    let loading = super::progress::spinner("loading per-minute aggregates");
    let mut replay = Replay::load(source, cfg.tally.clone(), cfg.from).await?;
    loading.finish_and_clear();
    let phase = read_flags(cfg.rollout.flags_file.as_ref());
    let mut verdicts = Vec::new();
    let bar = super::progress::steps(cfg.from, cfg.to, cfg.step_us);
    let mut at = cfg.from;
    while at <= cfg.to {
        bar.inc(1);
        verdicts.push(rollout::judge(&replay.snapshot_at(at).tally, &phase, &cfg.rollout));
        at = at.plus_us(cfg.step_us);
    }
    bar.finish_and_clear();
    Ok(verdicts)
}

/// The criteria that failed, by label, comma-separated ("" when all pass).
fn failing(v: &Verdict) -> String {
    v.criteria.iter().filter(|c| !c.pass).map(|c| c.name.label()).collect::<Vec<_>>().join(",")
}

fn csv(verdicts: &[Verdict]) -> String {
    let mut s = String::from(
        "evaluated_at,decision,success_ratio,manual_review_ratio,starts,confirmed,manual_review,failing,\
         success_ratio_low,success_ratio_high,manual_review_ratio_low,manual_review_ratio_high,decided,\
         projected_starts_at_due,projected_decision_at_due\n",
    );
    for v in verdicts {
        let (success, manual) = (&v.criteria[0], &v.criteria[1]);
        let ratio = |o: Option<f64>| o.map_or(String::new(), |r| format!("{r:.6}"));
        let bound = |c: &rollout::Criterion, high: bool| ratio(c.interval.map(|i| if high { i.high } else { i.low }));
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},\"{}\",{},{},{},{},{},{},{}",
            v.evaluated_at,
            v.decision.label(),
            ratio(success.observed),
            ratio(manual.observed),
            success.denominator.unwrap_or(0),
            success.numerator.unwrap_or(0),
            manual.numerator.unwrap_or(0),
            failing(v),
            bound(success, false),
            bound(success, true),
            bound(manual, false),
            bound(manual, true),
            v.decided,
            v.projection.as_ref().map_or(String::new(), |p| p.starts_at_due.to_string()),
            v.projection.as_ref().map_or("", |p| p.decision_at_due.label()),
        );
    }
    s
}

/// A timeline for the verification record: each change of decision (or of whether it is decided)
/// with what caused it, then per criterion the share of steps it failed.
fn markdown(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    let (Some(first), Some(last)) = (verdicts.first(), verdicts.last()) else { return s };
    let _ =
        writeln!(s, "## Soak backtest: {} to {}, {} steps\n", first.evaluated_at, last.evaluated_at, verdicts.len());
    let _ = writeln!(s, "### Decision changes\n\n| from | decision | failing criteria | decided |\n|---|---|---|---|");
    let mut previous: Option<(Decision, bool)> = None;
    for v in verdicts.iter().filter(|v| {
        let changed = previous != Some((v.decision, v.decided));
        previous = Some((v.decision, v.decided));
        changed
    }) {
        let why = match failing(v) {
            f if f.is_empty() => "none: every criterion passes".to_string(),
            f => f.replace(',', ", "),
        };
        let decided = if v.decided { "yes" } else { "no" };
        let _ = writeln!(s, "| {} | **{}** | {why} | {decided} |", v.evaluated_at, v.decision.label().to_uppercase());
    }
    let _ = writeln!(s, "\n### Criteria\n\n| criterion | steps failed | share |\n|---|---|---|");
    for kind in CriterionKind::ALL {
        let failed = verdicts.iter().filter(|v| v.criteria.iter().any(|c| c.name == kind && !c.pass)).count();
        let share = 100.0 * failed as f64 / verdicts.len() as f64;
        let _ = writeln!(s, "| {} | {failed} | {share:.1}% |", kind.label());
    }
    s
}

/// Renders the steps in the requested format.
pub fn render(verdicts: &[Verdict], format: BacktestFormat) -> String {
    match format {
        BacktestFormat::Jsonl => {
            verdicts.iter().map(|v| serde_json::to_string(v).expect("a verdict always serialises") + "\n").collect()
        }
        BacktestFormat::Csv => csv(verdicts),
        BacktestFormat::Markdown => markdown(verdicts),
    }
}
