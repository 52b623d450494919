//! The outputs: pure functions of a snapshot and the phase.
//!
//! - [`metrics`]: the metric table and the `/metrics` collector;
//! - [`http`]: the router (`/metrics`, `/healthz`, `/readyz`, `/gate`, `/gate/rollback`, `/verdict`, `/`) and the
//!   exporter-toolkit web layer ([`web`]: basic auth, TLS);
//! - [`landing`]: the status page at `/` (its chart in [`chart`]); [`runbook`]: docs/runbook.md at
//!   `/runbook`, where the page's runbook links go by default;
//! - [`verdict`]: the `verdict` command, which judges a snapshot built from SQL by the same load.
//! - [`check`]: the `check` command: what the table, the role and the server look like.
//! - [`backtest`]: the verdict at every step of a past range, from one load.
//! - [`backfill`]: what `serve` would have exported over a past range, for Prometheus.

pub mod backfill;
pub mod backtest;
pub mod chart;
pub mod check;
pub mod http;
pub mod landing;
pub mod metrics;
mod progress;
pub mod runbook;
pub mod verdict;
pub mod web;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::RolloutConfig;
use crate::rollout::{self, Freshness, PhaseView, RolloutView};
use crate::snapshot::{Snapshot, Snapshots};
use crate::time::UnixMicros;

/// What every live output reads: the latest snapshot and phase. Cheap to clone; holds no lock.
#[derive(Debug, Clone)]
pub struct Live {
    pub snapshots: Snapshots,
    pub phases: watch::Receiver<Arc<PhaseView>>,
    pub rollout: Arc<RolloutConfig>,
}

/// One consistent view for one request: the snapshot, the phase and the rollout view of both.
#[derive(Debug, Clone)]
pub struct Current {
    pub snapshot: Arc<Snapshot>,
    pub phase: Arc<PhaseView>,
    pub rollout: RolloutView,
    pub rollout_config: Arc<RolloutConfig>,
    /// The exporter's clock the view was judged at (ages and the soak's progress count to it).
    pub now: UnixMicros,
}

impl Current {
    /// The rollout view of a snapshot and a phase at the exporter's clock `now`: a pure function.
    pub fn at(snapshot: Arc<Snapshot>, phase: Arc<PhaseView>, cfg: Arc<RolloutConfig>, now: UnixMicros) -> Current {
        let fresh = Freshness {
            ready: snapshot.ready,
            database_up: snapshot.health.database_up,
            data_age_seconds: snapshot.health.fresh_at.map(|t| ((now.0 - t.0) as f64 / 1e6).max(0.0)),
        };
        let rollout = rollout::view(&snapshot.tally, &phase, &cfg, &fresh);
        Current { snapshot, phase, rollout, rollout_config: cfg, now }
    }
}

impl Live {
    /// Outputs over one fixed snapshot and phase (benchmarks, tools): nothing will publish again.
    pub fn fixed(snapshot: Snapshot, phase: PhaseView, rollout: RolloutConfig) -> Live {
        let (_snapshot_tx, snapshots) = watch::channel(Arc::new(snapshot));
        let (_phase_tx, phases) = watch::channel(Arc::new(phase));
        Live { snapshots, phases, rollout: Arc::new(rollout) }
    }

    /// The latest snapshot and phase, judged.
    pub fn current(&self) -> Current {
        let snapshot = self.snapshots.borrow().clone();
        let phase = self.phases.borrow().clone();
        Current::at(snapshot, phase, self.rollout.clone(), UnixMicros::now())
    }

    /// The latest snapshot and phase without judging them (for cache keys).
    pub fn latest(&self) -> (Arc<Snapshot>, Arc<PhaseView>) {
        (self.snapshots.borrow().clone(), self.phases.borrow().clone())
    }
}
