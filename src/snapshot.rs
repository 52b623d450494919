//! The snapshot: everything the outputs show, immutable, published by the ingest loop on a
//! `tokio::sync::watch` channel. Outputs are pure functions of a snapshot and the phase.

use std::sync::Arc;

use tokio::sync::watch;

use crate::tally::{Histogram, TallyView};
use crate::time::UnixMicros;

/// Health of the source as of a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Health {
    /// The last load or poll succeeded.
    pub database_up: bool,
    /// Source time (database `now()`) of the last successful load or poll; None before the first.
    pub last_success: Option<UnixMicros>,
    /// Wall time of the last full load, seconds.
    pub load_seconds: f64,
    /// The exporter's own clock when the data was last known current (a successful load or poll,
    /// less the replica's replay lag): how old the numbers are is measured from here.
    pub fresh_at: Option<UnixMicros>,
    /// Replay lag of the hot standby read from, seconds (None: a primary).
    pub replica_lag_seconds: Option<f64>,
}

/// One immutable picture of what the exporter knows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every publication, so a rendering of an unchanged snapshot can be reused.
    pub generation: u64,
    /// Set once the first full load is folded; never cleared.
    pub ready: bool,
    pub health: Health,
    pub ingest: IngestStats,
    pub tally: TallyView,
    /// What this process saw happen, newest first, at most [`JOURNAL_CAP`] entries (kept by the
    /// ingest loop; see `ingest::journal`). Scrapes and page views never query for it.
    pub journal: Vec<Happening>,
}

/// Entries [`Snapshot::journal`] keeps: the newest this many.
pub const JOURNAL_CAP: usize = 50;

/// What kind of thing happened, for the status page's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HappeningKind {
    /// coordinator.circuit_open rows appeared in the soak window.
    CircuitTrip,
    /// A run of consecutive 5-minute blocks with a coordinator.error reached the sustained length.
    SustainedErrors,
    /// The flags selected another phase.
    PhaseChange,
    /// The live decision changed (go / no_go / pending, or why pending).
    DecisionChange,
    /// The database stopped or started answering.
    Database,
}

impl HappeningKind {
    /// The kind in words, as the page shows it.
    pub fn label(self) -> &'static str {
        match self {
            HappeningKind::CircuitTrip => "circuit trip",
            HappeningKind::SustainedErrors => "sustained errors",
            HappeningKind::PhaseChange => "phase change",
            HappeningKind::DecisionChange => "decision",
            HappeningKind::Database => "database",
        }
    }
}

/// One entry of the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    /// When it happened (or was first seen), on the exporter's clock or the row's `created_at`.
    pub at: UnixMicros,
    pub kind: HappeningKind,
    /// What happened, in words (label values only: bounded, but escaped when shown).
    pub text: String,
}

impl Snapshot {
    /// The snapshot before the first load: no data, not ready, judged at the wall clock `now`.
    pub fn empty(now: UnixMicros) -> Snapshot {
        let mut s = Snapshot::default();
        s.tally.now = now;
        s
    }
}

/// The receiving side outputs hold: the latest snapshot, cheaply cloned.
pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// Upper bounds of `rollout_exporter_poll_duration_seconds`, seconds.
pub const POLL_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The ingest loop's account of its own work (the `rollout_exporter_*` counters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestStats {
    /// Wall time of every poll, successful or not, against [`POLL_BUCKETS`].
    pub poll_seconds: Histogram,
    /// Failed loads and polls by kind, in the order of `SourceError::KINDS`.
    pub errors: [u64; 5],
    /// Rows transferred by polls, duplicates from the overlap included.
    pub read_rows: u64,
    pub late_rows: u64,
    pub reconciled_rows: u64,
    /// Row ids the source holds for de-duplication.
    pub tracked_ids: u64,
    /// Minutes of the window rebuilt because their rows changed (deletions).
    pub rebuilt_minutes: u64,
}
