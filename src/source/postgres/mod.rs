//! The PostgreSQL follower: one aggregate load, then polls of new rows, each row exactly once.
//!
//! - [`queries`]: the SQL, one named statement per purpose;
//! - [`db`]: connections, read-only transactions with deadlines, typed errors;
//! - [`dedup`]: the few rows dated at or after the watermark, which the next poll reads again.
//!
//! Exactly-once, in memory that does not follow the table or the write rate: polls read disjoint
//! ranges of `created_at`, `[watermark, now() - --timestamp-delay)` of their snapshot (the
//! watermark is where the previous poll stopped, a database time, never the newest `created_at`,
//! so a future-dated row cannot hide later rows; rows dated at or after `now()` are read apart and
//! remembered by id), at most [`PAGE_ROWS`] at a time in `created_at` order; a burst is read page by page,
//! back to back. `created_at` is the writer's transaction start, so a row can commit after a poll
//! passed its `created_at`: each poll counts the rows per second of the overlap margin below the
//! watermark with an index-only scan and compares them with what it handed over per second. A
//! second whose count grew is read again up to the watermark, and the tally adds what it holds beyond what was
//! counted, label set by label set ([`crate::tally::Tally::count_late_rows`]). Every
//! `--reconcile-interval` the counted range reaches back `--reconcile-window`. The start-up load
//! aggregates everything before the minute `stream_back` ago; the polls that follow catch up from
//! there row by row (the booking state machine needs the rows), and the exporter is ready when
//! they have.

pub mod db;
mod decode;
pub mod dedup;
pub mod probe;
pub mod queries;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use db::{Db, LoadPlan, SourceError};
use db::{PollPlan, Polled, SecondCount};
use dedup::{Ahead, Sighting};

use super::{Batch, BatchStats, MinuteRows, SecondRows, Source};
use crate::config::{DatabaseConfig, ServeConfig, VerdictConfig};
use crate::events::{Row, TimeClass};
use crate::time::{minute_start, second_start, window_start_minute, UnixMicros};

/// Rows a poll reads at most (about 3 MB): a burst is read in pages, back to back, so memory
/// follows this bound, not the write rate.
pub const PAGE_ROWS: usize = 10_000;

/// How the follower reads: intervals and how far back it looks.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    pub poll_interval: Duration,
    /// `--timestamp-delay`: polls read rows up to the database's `now()` less this, so a writer
    /// transaction that commits within it (the coordinator's take milliseconds) is never late.
    pub timestamp_delay: Duration,
    /// Margin below the watermark checked by every poll.
    pub overlap: Duration,
    pub reconcile_interval: Duration,
    /// How far back reconciliation reaches (and how long ids are kept).
    pub reconcile_window: Duration,
    /// How often the rows per minute of the whole longest window are counted (deletions).
    pub window_reconcile_interval: Duration,
    /// At start-up the rows of the minutes from this far back on are handed over one by one (the
    /// booking state machine and the per-minute reconciliation need them); older rows are
    /// aggregated. Zero: everything aggregated, and no polls follow (the commands).
    pub stream_back: Duration,
    /// Seconds of the longest window: the start-up aggregates carry minutes this far back.
    pub longest_window: u64,
    /// `--reason-cap`: the load returns this many reasons per event type by name.
    pub reason_cap: usize,
    /// Load as of this past instant (`verdict --at`).
    pub as_of: Option<UnixMicros>,
    /// Read reason texts (false for `backtest`: its verdicts need none).
    pub reasons: bool,
}

impl FollowConfig {
    /// What `serve` follows with.
    pub fn serve(cfg: &ServeConfig) -> Self {
        FollowConfig {
            poll_interval: cfg.poll_interval,
            timestamp_delay: cfg.timestamp_delay,
            overlap: cfg.overlap,
            reconcile_interval: cfg.reconcile_interval,
            reconcile_window: cfg.reconcile_window,
            window_reconcile_interval: cfg.window_reconcile_interval,
            stream_back: cfg.overlap.max(cfg.reconcile_window).max(cfg.tally.stuck_after * 2),
            longest_window: cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(0),
            reason_cap: cfg.tally.reason_cap,
            as_of: None,
            reasons: true,
        }
    }

    /// A single load for a command (nothing streamed, no polls): minutes `longest_window` back,
    /// as of `as_of` when given.
    fn one_load(longest_window: u64, reason_cap: usize, as_of: Option<UnixMicros>) -> Self {
        FollowConfig {
            poll_interval: Duration::from_secs(1),
            timestamp_delay: Duration::ZERO,
            overlap: Duration::ZERO,
            reconcile_interval: Duration::from_secs(60),
            reconcile_window: Duration::ZERO,
            window_reconcile_interval: Duration::from_secs(300),
            stream_back: Duration::ZERO,
            longest_window,
            reason_cap,
            as_of,
            reasons: true,
        }
    }

    /// `backtest` and `backfill`: the load as of the last step `to`, its minutes reaching back to
    /// the longest window of the first step `from`; reason texts only when `reasons` (backfill
    /// exports the counters by reason, a backtest's verdicts read none).
    pub fn replay(tally: &crate::config::TallyConfig, from: UnixMicros, to: UnixMicros, reasons: bool) -> Self {
        let span = ((to.0 - from.0) / 1_000_000) as u64;
        let longest = tally.windows.iter().map(|w| w.seconds).max().unwrap_or(tally.soak.seconds);
        FollowConfig { reasons, ..Self::one_load(longest + span + 60, tally.reason_cap, Some(to)) }
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

/// Seconds read again because their count grew.
#[derive(Debug, Default)]
struct Reread {
    seconds: Vec<SecondRows>,
    /// New rows inside the overlap margin, and older ones (reconciliation), by the counts.
    late: u64,
    reconciled: u64,
    /// Rows transferred.
    read: u64,
}

/// Follows the events table (see the module documentation for the exactly-once argument).
pub struct PgSource {
    db: Db,
    cfg: FollowConfig,
    /// Counted rows dated at or after the watermark.
    ahead: Ahead,
    /// Every row below this was handed over (database time); None until the first load.
    watermark: Option<UnixMicros>,
    /// Rows from here on (a minute start) were handed over one by one: the oldest a re-read reaches.
    rows_from: UnixMicros,
    /// The last poll read up to its `now()` less the delay (false while a load's catch-up or a
    /// burst is being read page by page: then no counts are taken).
    caught_up: bool,
    /// The load's database `now()`: the catch-up reads at least up to it, so that ready means
    /// every row the load saw is counted, as the `verdict` command counts them.
    loaded_at: UnixMicros,
    last_reconcile: Instant,
    /// Dated rows handed over per Unix minute of the longest window, below the watermark: what
    /// the window check's per-minute counts are compared with.
    held: BTreeMap<i64, u64>,
    /// The same per Unix second from the oldest second a poll may count again: what the polls'
    /// per-second counts are compared with (a late row costs a second's rows, not a minute's).
    held_recent: BTreeMap<i64, u64>,
    last_window_check: Instant,
}

impl PgSource {
    /// Prepares the follower; nothing touches the network yet.
    pub fn new(db: DatabaseConfig, cfg: FollowConfig) -> Result<Self, SourceError> {
        Ok(PgSource {
            db: Db::new(db)?,
            cfg,
            ahead: Ahead::default(),
            watermark: None,
            rows_from: UnixMicros(0),
            caught_up: false,
            loaded_at: UnixMicros(0),
            last_reconcile: Instant::now(),
            held: BTreeMap::new(),
            held_recent: BTreeMap::new(),
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
            reasons: self.cfg.reasons,
        };
        let loaded = self.db.load(plan).await?;
        let follows = !self.cfg.stream_back.is_zero();
        self.ahead = Ahead::default();
        let rows: Vec<Row> = loaded.rows.into_iter().filter(|r| self.ahead.sight(r) == Sighting::New).collect();
        self.rows_from = if follows { loaded.rows_from } else { loaded.now };
        self.watermark = Some(self.rows_from);
        self.caught_up = false;
        self.loaded_at = loaded.now;
        self.last_reconcile = Instant::now();
        self.last_window_check = Instant::now();
        self.held.clear();
        self.held_recent.clear();
        let before = self.rows_from.minute();
        for g in loaded.groups.iter().filter(|g| g.time == TimeClass::Dated) {
            if let Some(m) = g.minute.filter(|m| !follows || *m < before) {
                *self.held.entry(m).or_default() += g.count;
            }
        }
        let stats = BatchStats {
            tracked_ids: Some(self.ahead.len() as u64),
            replica_lag_us: loaded.lag_us,
            ..BatchStats::default()
        };
        Ok(Batch {
            now: loaded.now,
            groups: loaded.groups,
            rows,
            stats,
            more: follows,
            reread_from: follows.then_some(self.rows_from.second()),
            ..Batch::default()
        })
    }

    /// Seconds below the watermark whose database count exceeds what was handed over (rows that
    /// committed after a poll passed their `created_at`), read again up to the watermark.
    async fn late_seconds(&mut self, counts: &[SecondCount], watermark: UnixMicros) -> Result<Reread, SourceError> {
        let mut out = Reread::default();
        let overlap_start = watermark.minus(self.cfg.overlap);
        for c in counts {
            let held = self.held_recent.get(&c.second).copied().unwrap_or(0);
            if c.rows <= held {
                continue;
            }
            let rows = self.db.rows_between(second_start(c.second), second_start(c.second + 1).min(watermark)).await?;
            if second_start(c.second + 1) > overlap_start {
                out.late += c.rows - held;
            } else {
                out.reconciled += c.rows - held;
                tracing::info!(
                    second = %second_start(c.second).rfc3339(),
                    rows = c.rows - held,
                    "reconciliation found rows committed after the overlap margin"
                );
            }
            out.read += rows.len() as u64;
            let now_held = rows.iter().filter(|r| r.time == TimeClass::Dated).count() as u64;
            self.held_recent.insert(c.second, now_held);
            let minute = self.held.entry(second_start(c.second).minute()).or_default();
            *minute = (*minute + now_held).saturating_sub(held);
            out.seconds.push(SecondRows { second: c.second, rows });
        }
        Ok(out)
    }

    /// The new rows of a poll: its page below the new watermark, and the rows dated at or after
    /// `now()` that were not counted before. The new watermark is the page's upper bound when the
    /// page holds every row below it, else the `created_at` of the page's last row (or, when one
    /// instant holds more than a page, just past that instant, read whole).
    async fn page(&mut self, polled: Polled, w: UnixMicros) -> Result<(Vec<Row>, UnixMicros), SourceError> {
        let instant = |r: &Row| if r.time == TimeClass::Dated { r.created_us } else { i64::MAX };
        let Polled { rows, ahead, upto, .. } = polled;
        let last = rows.last().map(instant).unwrap_or(i64::MIN);
        let (rows, new_w) = if rows.len() < PAGE_ROWS {
            (rows, upto)
        } else if last > w.0 {
            (rows.into_iter().filter(|r| instant(r) < last).collect(), UnixMicros(last))
        } else {
            let past = w.plus_us(1);
            (self.db.rows_between(w, past).await?, past)
        };
        let mut fresh = Vec::with_capacity(rows.len() + ahead.len());
        fresh.extend(rows.into_iter().filter(|row| self.ahead.is_empty() || !self.ahead.counted(row)));
        fresh.extend(ahead.into_iter().filter(|row| self.ahead.sight(row) == Sighting::New));
        Ok((fresh, new_w))
    }

    /// Reads what changed since the watermark: late rows of the minutes below it (while caught
    /// up), then a page of new rows.
    async fn poll_batch(&mut self) -> Result<Batch, SourceError> {
        let w = self.watermark.expect("the ingest loop polls only after a load");
        let reconcile = self.caught_up && self.last_reconcile.elapsed() >= self.cfg.reconcile_interval;
        let back = if reconcile { self.cfg.reconcile_window.max(self.cfg.overlap) } else { self.cfg.overlap };
        // From a second start, never below the rows handed over one by one.
        let (count_from, count_to) =
            if self.caught_up { (second_start(w.minus(back).second()).max(self.rows_from), w) } else { (w, w) };
        let plan = PollPlan {
            count_from,
            count_to,
            rows_from: w,
            settle: self.cfg.timestamp_delay,
            at_least_to: self.loaded_at,
            limit: PAGE_ROWS,
        };
        let polled = self.db.poll(plan).await?;
        let late = self.late_seconds(&polled.counts, w).await?;
        if reconcile {
            self.last_reconcile = Instant::now();
        }
        let (now, lag_us) = (polled.now.max(w), polled.lag_us);
        let read = (polled.rows.len() + polled.ahead.len()) as u64;
        let (fresh, new_w) = self.page(polled, w).await?;
        self.hold(&fresh, new_w);
        for at in self.ahead.passed(new_w) {
            *self.held.entry(UnixMicros(at).minute()).or_default() += 1;
            *self.held_recent.entry(UnixMicros(at).second()).or_default() += 1;
        }
        let replaced = if self.caught_up { self.window_check(w).await? } else { Vec::new() };
        let rebuilt_minutes = replaced.len() as u64;
        let stats = BatchStats {
            read_rows: read + late.read,
            late_rows: late.late,
            reconciled_rows: late.reconciled,
            tracked_ids: Some(self.ahead.len() as u64),
            replica_lag_us: lag_us,
            rebuilt_minutes,
            behind_us: now.0 - new_w.0,
        };
        self.caught_up = new_w >= now.minus(self.cfg.timestamp_delay);
        self.watermark = Some(new_w);
        self.held = self.held.split_off(&window_start_minute(new_w, self.cfg.longest_window));
        let keep_back = self.cfg.reconcile_window.max(self.cfg.overlap);
        let reread_from = new_w.minus(keep_back).max(self.rows_from).second();
        self.held_recent = self.held_recent.split_off(&reread_from);
        Ok(Batch {
            now: new_w,
            groups: Vec::new(),
            rows: fresh,
            late: late.seconds,
            replaced,
            stats,
            more: !self.caught_up,
            reread_from: Some(reread_from),
        })
    }

    /// Counts the dated rows below the watermark per minute as handed over (rows at or after it
    /// are held when the watermark passes them: [`Ahead::passed`]).
    fn hold(&mut self, rows: &[Row], watermark: UnixMicros) {
        for r in rows.iter().filter(|r| r.time == TimeClass::Dated && r.created_us < watermark.0) {
            *self.held.entry(UnixMicros(r.created_us).minute()).or_default() += 1;
            *self.held_recent.entry(UnixMicros(r.created_us).second()).or_default() += 1;
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
