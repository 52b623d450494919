//! `rollout-exporter verdict`: the soak verdict from SQL, no running exporter needed.
//!
//! The command runs `serve`'s own start-up load (one REPEATABLE READ snapshot, aggregates by event
//! type, reason and minute) through the same ingest fold into the same [`Snapshot`] type, and
//! judges it with the same evidence constructor and rollout view as the live gate. The two cannot
//! disagree on the same table: same SQL, same labels (caps included), same window edges.

use crate::config::{VerdictConfig, VerdictFormat};
use crate::rollout::phase::read_flags;
use crate::rollout::{self, Verdict};
use crate::snapshot::Snapshot;
use crate::source::postgres::{FollowConfig, PgSource};
use crate::source::SourceError;

/// The snapshot the command judges: the start-up load of `serve`, with the soak window only.
pub async fn snapshot(cfg: &VerdictConfig) -> Result<Snapshot, SourceError> {
    let source = PgSource::new(cfg.db.clone(), FollowConfig::verdict(cfg))?;
    crate::ingest::snapshot_once(source, cfg.tally.clone()).await
}

/// Judges a snapshot as the live gate does ([`rollout::judge`]: the same evidence and rules), with the
/// flags read now and `--phase-started-at` (without it `soak_elapsed` is undefined and fails, so
/// the decision is at best `pending`).
pub fn judge(snapshot: &Snapshot, cfg: &VerdictConfig) -> Verdict {
    rollout::judge(&snapshot.tally, &read_flags(cfg.rollout.flags_file.as_ref()), &cfg.rollout)
}

/// Computes the verdict over `--window` ending at the database's `now()`.
pub async fn compute(cfg: &VerdictConfig) -> Result<Verdict, SourceError> {
    Ok(judge(&snapshot(cfg).await?, cfg))
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
