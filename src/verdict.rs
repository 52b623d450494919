//! `rollout-exporter verdict`: the soak verdict computed directly in SQL, no running exporter.

use crate::app::read_flags;
use crate::config::{VerdictConfig, VerdictFormat};
use crate::events;
use crate::rollout::{self, Context, Evidence, RunbookRow, Verdict};
use crate::source::postgres::{Db, SourceError};

/// Computes the verdict over `--window` ending at the database's `now()`, with the same
/// minute-aligned window start as the exporter's gauges (docs/metrics.md, "Window edges").
pub async fn compute(cfg: &VerdictConfig) -> Result<Verdict, SourceError> {
    let mut db = Db::new(cfg.db.clone())?;
    let (now_us, counts, error_blocks) = db.window_evidence(cfg.rollout.soak.seconds).await?;
    let rows = |et: &str| counts.iter().find(|c| c.0.as_deref() == Some(et)).map_or(0, |c| c.1);
    let runbook = counts
        .iter()
        .map(|(et, total, without)| {
            RunbookRow::new(et.clone().unwrap_or_else(|| events::NULL_EVENT_TYPE.into()), *total, *without)
        })
        .collect();
    let evidence = Evidence {
        starts: rows(events::START),
        confirmed: rows(events::CONFIRMED),
        manual_review: rows(events::MANUAL_REVIEW),
        error_blocks,
        circuit_opens: rows(events::CIRCUIT_OPEN),
        runbook,
    };
    let phase = read_flags(cfg.rollout.flags_file.as_ref());
    Ok(rollout::decide(
        &evidence,
        &Context {
            environment: &cfg.rollout.environment,
            phase: &phase,
            phase_started_at: cfg.rollout.phase_started_at,
            window_label: &cfg.rollout.soak.label,
            window_seconds: cfg.rollout.soak.seconds,
            now: now_us as f64 / 1e6,
            thresholds: cfg.rollout.thresholds,
        },
    ))
}

/// Renders the verdict in the requested format.
pub fn render(v: &Verdict, format: VerdictFormat) -> String {
    match format {
        VerdictFormat::Markdown => v.to_markdown(),
        VerdictFormat::Json => {
            let mut s = serde_json::to_string_pretty(v).expect("a verdict always serialises");
            s.push('\n');
            s
        }
    }
}
