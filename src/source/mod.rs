//! Sources of events: [`postgres::PgSource`] follows the table, [`demo::DemoSource`] simulates
//! traffic. Both implement [`Source`]; the ingest loop drives either the same way. A source is
//! never called from a scrape.

pub mod demo;
pub mod postgres;

use std::future::Future;
use std::time::Duration;

use crate::events::{Group, Row};
use crate::time::UnixMicros;

pub use postgres::SourceError;

/// What one call of a source produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// The instant the batch is consistent with (database `now()` of its snapshot, or the demo's
    /// wall clock). The tally advances to it.
    pub now: UnixMicros,
    /// Start-up aggregates (empty after the load).
    pub groups: Vec<Group>,
    /// Single rows counted for the first time (a source de-duplicates before it hands them over).
    pub rows: Vec<Row>,
    /// Seconds below the watermark whose count grew (rows that committed after a poll passed their
    /// `created_at`): every row of the second below the watermark. The tally counts what they
    /// hold beyond what was counted.
    pub late: Vec<SecondRows>,
    /// Minutes whose rows changed other than by new rows (deletions): every row the minute holds
    /// now. The window buckets of these minutes are rebuilt; the all-time counters stay.
    pub replaced: Vec<MinuteRows>,
    /// What it cost, for the exporter's own metrics.
    pub stats: BatchStats,
    /// The source is behind (a load's catch-up, or a burst read page by page): call
    /// [`Source::next`] again at once; the data is complete up to `now` only.
    pub more: bool,
    /// The oldest Unix second the source may still hand over again in `late`; from it on it hands
    /// rows over one by one (None: it never re-reads). A minute start after a load: the groups of
    /// the minutes from it on only rank labels, their rows follow in polls.
    pub reread_from: Option<i64>,
}

/// The rows one Unix second holds below the watermark, read again.
#[derive(Debug, Default)]
pub struct SecondRows {
    pub second: i64,
    pub rows: Vec<Row>,
}

/// Every row one Unix minute holds now.
#[derive(Debug, Default)]
pub struct MinuteRows {
    pub minute: i64,
    pub rows: Vec<Row>,
}

/// The source's own accounting of one batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchStats {
    /// Rows transferred, duplicates from the overlap included.
    pub read_rows: u64,
    /// New rows found in the overlap margin (late commits).
    pub late_rows: u64,
    /// New rows found by reconciliation, older than the overlap margin.
    pub reconciled_rows: u64,
    /// Row ids held for de-duplication after the batch: rows dated at or after the watermark
    /// (None: the source keeps none).
    pub tracked_ids: Option<u64>,
    /// Replay lag of the hot standby read from, microseconds (None: a primary, or no database).
    pub replica_lag_us: Option<i64>,
    /// Minutes of the window rebuilt because their rows changed (deletions).
    pub rebuilt_minutes: u64,
    /// How far the data lags the database's `now()` while the source is behind, microseconds.
    pub behind_us: i64,
}

/// A source of events for the ingest loop.
pub trait Source: Send + 'static {
    /// What the loop calls it in logs and errors ("database poller").
    const NAME: &'static str;

    /// Time between two [`Source::next`] calls when all is well.
    fn interval(&self) -> Duration;

    /// The start-up batch: aggregates of everything so far, and rows one by one (the source may
    /// hand the recent ones over in the calls of [`Source::next`] that follow: `more`).
    fn load(&mut self) -> impl Future<Output = Result<Batch, SourceError>> + Send;

    /// The rows that arrived since the previous call, each exactly once.
    fn next(&mut self) -> impl Future<Output = Result<Batch, SourceError>> + Send;
}
