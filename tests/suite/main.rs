//! The one integration-test binary: every test talks to real PostgreSQL on 127.0.0.1:5432, and
//! to real PgBouncer, promtool and throwaway clusters where it says so.

mod backfill;
mod check;
mod cli;
mod config_hardening;
mod deploy_sql;
mod docs;
mod exactness;
mod faults;
mod hardening;
mod harness;
mod helpers;
mod real_tables;
mod replica;
mod rollout;
mod seam;
mod web;

/// The live outputs over a fixed phase and a snapshot channel the test publishes on (no app, no
/// database): for router and exposition tests.
pub fn live_outputs(
    rollout: rollout_exporter::config::RolloutConfig,
    phase: rollout_exporter::rollout::PhaseState,
    first: rollout_exporter::snapshot::Snapshot,
) -> (rollout_exporter::outputs::Live, tokio::sync::watch::Sender<std::sync::Arc<rollout_exporter::snapshot::Snapshot>>)
{
    use std::sync::Arc;
    let started_at = rollout.phase_started_at.unwrap_or(0.0);
    let (tx, snapshots) = tokio::sync::watch::channel(Arc::new(first));
    let (_phase_tx, phases) =
        tokio::sync::watch::channel(Arc::new(rollout_exporter::rollout::PhaseView { state: phase, started_at }));
    (rollout_exporter::outputs::Live { snapshots, phases, rollout: Arc::new(rollout) }, tx)
}
