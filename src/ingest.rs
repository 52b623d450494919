//! The ingest loop: drives any [`Source`], owns the tally, the backoff, the health and the
//! exporter's own counters, and publishes an immutable [`Snapshot`] after every load and poll.
//!
//! It is the only writer of snapshots; outputs read them from the `watch` channel. With a
//! [`Judge`] it also keeps the [`journal`] of what this process saw happen, in the snapshot.

pub mod journal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::TallyConfig;
use crate::snapshot::{Snapshot, POLL_BUCKETS};
use crate::source::{Batch, Source, SourceError};
use crate::tally::Tally;
use crate::time::UnixMicros;
pub use journal::{Journal, Judge};

/// First wait after a failed start-up load; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// A poll that read this many rows (a page of a burst, a re-read second) gives the memory it
/// freed back to the kernel afterwards.
const LARGE_BATCH_ROWS: u64 = 1_000;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Owns what the loop accumulates; every change is published as a new snapshot.
pub struct Ingest {
    tally: Tally,
    current: Snapshot,
    tx: watch::Sender<Arc<Snapshot>>,
    /// The journal and how to judge for it (None: the commands, which publish once).
    journal: Option<(Journal, Judge)>,
}

impl Ingest {
    /// A loop that publishes on `tx`, starting from the snapshot `tx` holds.
    pub fn new(cfg: TallyConfig, tx: watch::Sender<Arc<Snapshot>>) -> Self {
        let current = (**tx.borrow()).clone();
        Ingest { tally: Tally::new(cfg), current, tx, journal: None }
    }

    /// Keeps the journal of what happens in the snapshots it publishes.
    pub fn with_journal(mut self, judge: Judge) -> Self {
        self.journal = Some((Journal::default(), judge));
        self
    }

    fn publish(&mut self) {
        self.current.generation += 1;
        if let Some((journal, judge)) = &mut self.journal {
            let phase = judge.phases.borrow().clone();
            journal.observe(&self.current, &phase, &judge.rollout, UnixMicros::now());
            self.current.journal = journal.entries();
        }
        self.tx.send_replace(Arc::new(self.current.clone()));
    }

    /// Folds a start-up batch into a fresh tally; the snapshot becomes ready unless the source
    /// still has rows to hand over (`more`: its catch-up polls follow at once).
    fn fold_load(&mut self, cfg: TallyConfig, mut batch: Batch, seconds: f64) {
        let mut tally = Tally::new(cfg);
        tally.advance(batch.now);
        tally.fold_load(&batch.groups, &mut batch.rows, batch.reread_from);
        self.tally = tally;
        let s = &mut self.current;
        s.ready = !batch.more;
        s.health.load_seconds = seconds;
        s.ingest.tracked_ids = batch.stats.tracked_ids.unwrap_or(0);
        self.succeeded(&batch);
    }

    /// Folds a poll: minutes read again whole, then the new rows.
    fn fold_poll(&mut self, mut batch: Batch, seconds: f64) -> usize {
        self.tally.advance(batch.now);
        for m in &batch.late {
            self.tally.count_late_rows(m.second, &m.rows);
        }
        for m in &batch.replaced {
            self.tally.rebuild_minute(m.minute, &m.rows);
        }
        self.tally.fold_rows(&mut batch.rows);
        if let Some(m) = batch.reread_from {
            self.tally.reconcile_from(m);
        }
        let s = &mut self.current;
        s.ingest.poll_seconds.observe(&POLL_BUCKETS, seconds);
        s.ingest.read_rows += batch.stats.read_rows;
        s.ingest.late_rows += batch.stats.late_rows;
        s.ingest.reconciled_rows += batch.stats.reconciled_rows;
        s.ingest.rebuilt_minutes += batch.stats.rebuilt_minutes;
        if let Some(n) = batch.stats.tracked_ids {
            s.ingest.tracked_ids = n;
        }
        if !batch.more && !s.ready {
            s.ready = true;
            s.health.load_seconds += seconds;
            tracing::info!(seconds = s.health.load_seconds, "caught up with the table: ready");
        } else if !s.ready {
            s.health.load_seconds += seconds;
        }
        self.succeeded(&batch);
        batch.rows.len()
    }

    /// What every successful batch updates: health, freshness and the tally's view.
    fn succeeded(&mut self, batch: &Batch) {
        let s = &mut self.current;
        s.health.database_up = true;
        s.health.last_success = Some(batch.now);
        s.health.fresh_at = Some(fresh_at(batch));
        s.health.replica_lag_seconds = batch.stats.replica_lag_us.map(|us| us as f64 / 1e6);
        s.tally = self.tally.view();
        self.publish();
    }

    /// A failed load or poll: counted by kind, the data stays served with `database_up` 0.
    fn fail(&mut self, e: &SourceError, what: &str, poll_seconds: Option<f64>) {
        let s = &mut self.current;
        s.ingest.errors[e.kind_index()] += 1;
        if let Some(secs) = poll_seconds {
            s.ingest.poll_seconds.observe(&POLL_BUCKETS, secs);
        }
        s.health.database_up = false;
        tracing::warn!(error = %e, kind = e.metric_label(), "{what} failed");
        self.publish();
    }
}

/// When the batch's data was current, on the exporter's clock: now, less a standby's replay lag
/// and what the source has not read yet while it is behind.
fn fresh_at(batch: &Batch) -> UnixMicros {
    UnixMicros::now().plus_us(-batch.stats.replica_lag_us.unwrap_or(0).max(0) - batch.stats.behind_us.max(0))
}

/// Loads (retrying with backoff), then calls `next` every interval until shutdown. A load or poll
/// blocked in the database is abandoned at shutdown (the connection goes with it), so SIGTERM
/// never waits for a statement timeout. With `judge`, the snapshots carry the journal.
pub async fn run<S: Source>(
    mut source: S,
    cfg: TallyConfig,
    tx: watch::Sender<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    judge: Option<Judge>,
) {
    let mut ingest = Ingest::new(cfg.clone(), tx);
    if let Some(judge) = judge {
        ingest = ingest.with_journal(judge);
    }
    let mut backoff = FIRST_BACKOFF;
    let mut behind;
    loop {
        let started = Instant::now();
        let loaded = tokio::select! {
            r = source.load() => r,
            _ = shutdown.changed() => return,
        };
        match loaded {
            Ok(batch) => {
                let (groups, rows, more) = (batch.groups.len(), batch.rows.len(), batch.more);
                let seconds = started.elapsed().as_secs_f64();
                ingest.fold_load(cfg, batch, seconds);
                crate::release_freed_memory();
                tracing::info!(seconds, groups, rows, catching_up = more, "start-up load finished");
                behind = more;
                break;
            }
            Err(e) => {
                ingest.fail(&e, "start-up load", None);
                if crate::sleep_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let mut failures = 0u32;
    loop {
        // Behind (catching up, or a burst read page by page): the next page at once.
        let wait = if behind && failures == 0 {
            Duration::ZERO
        } else {
            (source.interval() * 2u32.saturating_pow(failures.min(3))).min(MAX_BACKOFF.max(source.interval()))
        };
        if crate::sleep_or_shutdown(wait, &mut shutdown).await {
            return;
        }
        let started = Instant::now();
        let polled = tokio::select! {
            r = source.next() => r,
            _ = shutdown.changed() => return,
        };
        let seconds = started.elapsed().as_secs_f64();
        match polled {
            Ok(batch) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "source reachable again");
                }
                failures = 0;
                behind = batch.more;
                let large = batch.stats.read_rows >= LARGE_BATCH_ROWS;
                let n = ingest.fold_poll(batch, seconds);
                if large {
                    crate::release_freed_memory();
                }
                tracing::debug!(new_rows = n, behind, "poll");
            }
            Err(e) => {
                failures += 1;
                ingest.fail(&e, "poll", Some(seconds));
            }
        }
    }
}

/// One load, folded exactly as `serve` folds its start-up load: what the `verdict` command
/// judges, so the live gate and the command read the same numbers the same way.
pub async fn snapshot_once<S: Source>(mut source: S, cfg: TallyConfig) -> Result<Snapshot, SourceError> {
    let started = Instant::now();
    let batch = source.load().await?;
    let (tx, _rx) = watch::channel(Arc::new(Snapshot::default()));
    let mut ingest = Ingest::new(cfg.clone(), tx);
    ingest.fold_load(cfg, batch, started.elapsed().as_secs_f64());
    Ok(ingest.current)
}

/// A past range replayed from one load: the aggregates of `[first step - longest window, last
/// step]`, folded minute by minute into the same tally the live loop uses, so the snapshot at
/// each step is what `serve` would have published then (`backtest`, `backfill`).
pub struct Replay {
    tally: Tally,
    /// Groups with a minute, ascending; those before `folded` are in the tally.
    dated: Vec<crate::events::Group>,
    folded: usize,
}

impl Replay {
    /// Loads once and prepares the tally at `from` (labels ranked over the whole load).
    pub async fn load<S: Source>(mut source: S, cfg: TallyConfig, from: UnixMicros) -> Result<Replay, SourceError> {
        let mut groups = source.load().await?.groups;
        groups.sort_by_key(|g| g.minute);
        let mut tally = Tally::new(cfg);
        tally.rank_labels(&groups, &[]);
        let split = groups.partition_point(|g| g.minute.is_none());
        let dated = groups.split_off(split);
        tally.advance(from);
        tally.fold_groups(&groups);
        Ok(Replay { tally, dated, folded: 0 })
    }

    /// The snapshot as of `at` (steps must not go back): every minute before it folded.
    pub fn snapshot_at(&mut self, at: UnixMicros) -> Snapshot {
        let upto = self.dated.partition_point(|g| g.minute.is_some_and(|m| m < at.minute())).max(self.folded);
        self.tally.fold_groups(&self.dated[self.folded..upto]);
        self.folded = upto;
        self.tally.advance(at);
        let mut s = Snapshot { ready: true, tally: self.tally.view(), ..Snapshot::default() };
        s.health.database_up = true;
        s.health.last_success = Some(at);
        s.health.fresh_at = Some(at);
        s
    }
}
