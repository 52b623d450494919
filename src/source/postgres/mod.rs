//! The PostgreSQL follower: one aggregate load, then polls of new rows, each row exactly once.
//!
//! - [`queries`]: the SQL, one named statement per purpose;
//! - [`db`]: connections, read-only transactions with deadlines, typed errors;
//! - [`dedup`]: which recent rows were already counted.
//!
//! Exactly-once: `created_at` is the writer's transaction start, so a row can commit after a poll
//! with a `created_at` before it. Each poll therefore reads the rows from the previous poll's
//! database `now()` (the watermark, never the newest `created_at`, so a future-dated row cannot
//! hide later rows) and, in the same snapshot, counts the rows per minute of the overlap margin
//! below it with an index-only scan. Only a minute whose count exceeds what was counted is read
//! again, and ids already counted are skipped. Every `--reconcile-interval` the counted range
//! reaches back `--reconcile-window`, which catches writers whose transactions outlived the overlap.

pub mod db;
mod decode;
pub mod dedup;
pub mod probe;
pub mod queries;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use db::{Db, LoadPlan, SourceError};
use db::{MinuteCount, PollPlan};
use dedup::{ranges, Seen};

use super::{Batch, BatchStats, MinuteRows, Source};
use crate::config::{DatabaseConfig, ServeConfig, VerdictConfig};
use crate::events::{Row, TimeClass};
use crate::time::{minute_start, window_start_minute, UnixMicros};

/// How the follower reads: intervals and how far back it looks.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    pub poll_interval: Duration,
    /// Margin below the watermark checked by every poll.
    pub overlap: Duration,
    pub reconcile_interval: Duration,
    /// How far back reconciliation reaches (and how long ids are kept).
    pub reconcile_window: Duration,
    /// How often the rows per minute of the whole longest window are counted (deletions).
    pub window_reconcile_interval: Duration,
    /// Rows newer than this at start-up are read one by one (they seed de-duplication and the
    /// booking state machine); older rows are aggregated.
    pub stream_back: Duration,
    /// Seconds of the longest window: the start-up aggregates carry minutes this far back.
    pub longest_window: u64,
    /// `--reason-cap`: the load returns this many reasons per event type by name.
    pub reason_cap: usize,
    /// Load as of this past instant (`verdict --at`).
    pub as_of: Option<UnixMicros>,
}

impl FollowConfig {
    /// What `serve` follows with.
    pub fn serve(cfg: &ServeConfig) -> Self {
        FollowConfig {
            poll_interval: cfg.poll_interval,
            overlap: cfg.overlap,
            reconcile_interval: cfg.reconcile_interval,
            reconcile_window: cfg.reconcile_window,
            window_reconcile_interval: cfg.window_reconcile_interval,
            stream_back: cfg.overlap.max(cfg.reconcile_window).max(cfg.tally.stuck_after * 2),
            longest_window: cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(0),
            reason_cap: cfg.tally.reason_cap,
            as_of: None,
        }
    }

    /// A single load for a command (nothing streamed, no polls): minutes `longest_window` back,
    /// as of `as_of` when given.
    fn one_load(longest_window: u64, reason_cap: usize, as_of: Option<UnixMicros>) -> Self {
        FollowConfig {
            poll_interval: Duration::from_secs(1),
            overlap: Duration::ZERO,
            reconcile_interval: Duration::from_secs(60),
            reconcile_window: Duration::ZERO,
            window_reconcile_interval: Duration::from_secs(300),
            stream_back: Duration::ZERO,
            longest_window,
            reason_cap,
            as_of,
        }
    }

    /// `backtest` and `backfill`: the load as of the last step `to`, its minutes reaching back to
    /// the longest window of the first step `from`.
    pub fn replay(tally: &crate::config::TallyConfig, from: UnixMicros, to: UnixMicros) -> Self {
        let span = ((to.0 - from.0) / 1_000_000) as u64;
        let longest = tally.windows.iter().map(|w| w.seconds).max().unwrap_or(tally.soak.seconds);
        Self::one_load(longest + span + 60, tally.reason_cap, Some(to))
    }

    /// `check`: the same start-up load as `verdict`, over 48 h, to count what it finds.
    pub fn check(cfg: &crate::config::CheckConfig) -> Self {
        Self::one_load(cfg.tally.soak.seconds, cfg.tally.reason_cap, None)
    }

    /// The `verdict` command: the same start-up load, everything aggregated, minutes of the soak
    /// window only (as of `--at` when given).
    pub fn verdict(cfg: &VerdictConfig) -> Self {
        Self::one_load(cfg.rollout.soak.seconds, cfg.tally.reason_cap, cfg.at)
    }
}

/// Follows the events table (see the module documentation for the exactly-once argument).
pub struct PgSource {
    db: Db,
    cfg: FollowConfig,
    seen: Seen,
    /// Database `now()` of the last successful load or poll; None until the first load.
    watermark: Option<UnixMicros>,
    last_reconcile: Instant,
    /// Rows handed over per Unix minute of the longest window (dated rows only): what the window
    /// check compares with the database's count.
    held: BTreeMap<i64, u64>,
    last_window_check: Instant,
}

impl PgSource {
    /// Prepares the follower; nothing touches the network yet.
    pub fn new(db: DatabaseConfig, cfg: FollowConfig) -> Result<Self, SourceError> {
        Ok(PgSource {
            db: Db::new(db)?,
            cfg,
            seen: Seen::default(),
            watermark: None,
            last_reconcile: Instant::now(),
            held: BTreeMap::new(),
            last_window_check: Instant::now(),
        })
    }

    /// The database access, for EXPLAIN in tests.
    #[cfg(feature = "testing")]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// What `check` reports of the table, the role and the server.
    pub async fn inspect(&mut self) -> Result<db::Inspection, SourceError> {
        self.db.inspect().await
    }

    async fn load_batch(&mut self) -> Result<Batch, SourceError> {
        let plan = LoadPlan {
            stream_back: self.cfg.stream_back,
            longest_window: self.cfg.longest_window,
            reason_cap: self.cfg.reason_cap,
            as_of: self.cfg.as_of,
        };
        let loaded = self.db.load(plan).await?;
        let mut seen = Seen::complete_from(loaded.now.minus(self.cfg.stream_back).0);
        for r in &loaded.rows {
            seen.insert(r);
        }
        self.seen = seen;
        self.watermark = Some(loaded.now);
        self.last_reconcile = Instant::now();
        self.last_window_check = Instant::now();
        self.held.clear();
        for g in loaded.groups.iter().filter(|g| g.time == TimeClass::Dated) {
            if let Some(m) = g.minute {
                *self.held.entry(m).or_default() += g.count;
            }
        }
        self.hold(&loaded.rows);
        let stats = BatchStats {
            tracked_ids: Some(self.seen.len as u64),
            replica_lag_us: loaded.lag_us,
            ..BatchStats::default()
        };
        Ok(Batch { now: loaded.now, groups: loaded.groups, rows: loaded.rows, stats, ..Batch::default() })
    }

    /// Reads what changed since the watermark; the minutes whose database count exceeds what was
    /// counted are read again.
    async fn poll_batch(&mut self) -> Result<Batch, SourceError> {
        let watermark = self.watermark.expect("the ingest loop polls only after a load");
        let reconcile = self.last_reconcile.elapsed() >= self.cfg.reconcile_interval;
        let back = if reconcile { self.cfg.reconcile_window.max(self.cfg.overlap) } else { self.cfg.overlap };
        // Never reach below what the de-duplication set still holds completely (and never past
        // the watermark: then only new rows are read).
        let count_from = UnixMicros(watermark.minus(back).0.max(self.seen.complete_from_us).min(watermark.0));
        let plan = PollPlan { count_from, count_to: watermark, rows_from: watermark };
        let polled = self.db.poll(plan).await?;
        let ours = self.seen.counts(count_from.0, watermark.0);
        let short: Vec<i64> = polled
            .counts
            .iter()
            .filter(|c: &&MinuteCount| c.rows > ours.get(&c.minute).copied().unwrap_or(0))
            .map(|c| c.minute)
            .collect();
        let mut missed = Vec::new();
        for (from, to) in ranges(&short, count_from.0, watermark.0) {
            missed.extend(self.db.rows_between(UnixMicros(from), UnixMicros(to)).await?);
        }
        if reconcile {
            self.last_reconcile = Instant::now();
        }
        let mut stats = BatchStats {
            read_rows: (polled.rows.len() + missed.len()) as u64,
            replica_lag_us: polled.lag_us,
            ..BatchStats::default()
        };
        let overlap_start = watermark.minus(self.cfg.overlap);
        let mut fresh = Vec::new();
        for row in missed {
            if self.seen.insert(&row) {
                if UnixMicros(row.created_us) >= overlap_start {
                    stats.late_rows += 1;
                } else {
                    stats.reconciled_rows += 1;
                    tracing::info!(id = %row.id, "reconciliation found a row committed after the overlap margin");
                }
                fresh.push(row);
            }
        }
        fresh.extend(polled.rows.into_iter().filter(|row| self.seen.insert(row)));
        self.hold(&fresh);
        let replaced = self.window_check(watermark).await?;
        stats.rebuilt_minutes = replaced.len() as u64;
        let now = polled.now.max(watermark);
        self.watermark = Some(now);
        let keep_back = self.cfg.reconcile_window.max(self.cfg.overlap);
        self.seen.prune(now.minus(keep_back).0, now.minus(self.cfg.overlap).0);
        stats.tracked_ids = Some(self.seen.len as u64);
        self.held = self.held.split_off(&window_start_minute(now, self.cfg.longest_window));
        Ok(Batch { now, groups: Vec::new(), rows: fresh, replaced, stats })
    }

    /// Counts dated rows per minute as handed over.
    fn hold(&mut self, rows: &[Row]) {
        for r in rows.iter().filter(|r| r.time == TimeClass::Dated) {
            *self.held.entry(UnixMicros(r.created_us).minute()).or_default() += 1;
        }
    }

    /// Every `--window-reconcile-interval`: the rows per minute of the longest window below the
    /// reconciliation range, counted in the database (an index-only scan) and compared with what
    /// was handed over; a minute that differs (rows deleted, or rows that appeared long after their
    /// `created_at`) is read again whole and replaced. Minutes inside the reconciliation range are
    /// left to it, so no row can be counted twice; a deletion therefore shows within
    /// `--reconcile-window` plus this interval (15 minutes by default).
    async fn window_check(&mut self, watermark: UnixMicros) -> Result<Vec<MinuteRows>, SourceError> {
        if self.cfg.longest_window == 0 || self.last_window_check.elapsed() < self.cfg.window_reconcile_interval {
            return Ok(Vec::new());
        }
        self.last_window_check = Instant::now();
        let from = minute_start(window_start_minute(watermark, self.cfg.longest_window));
        let to = minute_start(watermark.minus(self.cfg.reconcile_window.max(self.cfg.overlap)).minute());
        if from >= to {
            return Ok(Vec::new());
        }
        let counts: BTreeMap<i64, u64> =
            self.db.minute_counts(from, to).await?.into_iter().map(|c| (c.minute, c.rows)).collect();
        let mut differing: Vec<i64> =
            counts.iter().filter(|(m, n)| self.held.get(m).copied().unwrap_or(0) != **n).map(|(m, _)| *m).collect();
        differing.extend(
            self.held.range(from.minute()..to.minute()).filter(|(m, _)| !counts.contains_key(m)).map(|(m, _)| *m),
        );
        differing.sort_unstable();
        let mut replaced = Vec::with_capacity(differing.len());
        for m in differing {
            let rows = self.db.rows_between(minute_start(m), minute_start(m + 1)).await?;
            tracing::info!(
                minute = %minute_start(m).rfc3339(),
                rows_before = self.held.get(&m).copied().unwrap_or(0),
                rows_now = rows.len(),
                "rows of this minute were deleted (or appeared late): its window buckets were rebuilt"
            );
            self.held.insert(m, rows.len() as u64);
            replaced.push(MinuteRows { minute: m, rows });
        }
        Ok(replaced)
    }
}

impl Source for PgSource {
    const NAME: &'static str = "database poller";

    fn interval(&self) -> Duration {
        self.cfg.poll_interval
    }

    fn load(&mut self) -> impl std::future::Future<Output = Result<Batch, SourceError>> + Send {
        self.load_batch()
    }

    fn next(&mut self) -> impl std::future::Future<Output = Result<Batch, SourceError>> + Send {
        self.poll_batch()
    }
}
