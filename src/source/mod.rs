//! Sources advance the tally and publish snapshots: [`Follower`] follows PostgreSQL, [`demo`]
//! simulates traffic. Neither is ever called from a scrape.

pub mod demo;
pub mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::events::Row;
use crate::state::State;
use crate::tally::{minute_of, Tally, US_PER_MINUTE};
use postgres::{Db, PollPlan, SourceError};

/// Waits for `d`, or returns true early when shutdown is signalled.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = *shutdown.borrow();
    if stopped {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
    let stopped = *shutdown.borrow();
    stopped
}

/// Ids already counted, by the minute of their `created_at`, over the reconciliation horizon.
///
/// Ids are kept as 64-bit hashes (fixed keys): two rows of the same minute colliding among a
/// million has a chance near 3e-8. Holds the rows of `--reconcile-window` (and future-dated ones);
/// past [`MAX_TRACKED_IDS`] the oldest minutes are dropped and reconciliation reaches less far back.
#[derive(Debug, Default)]
struct Seen {
    by_minute: BTreeMap<i64, HashMap<u64, i64>>,
    len: usize,
    /// Every row counted with `created_at` at or after this is in the set (Unix microseconds).
    complete_from_us: i64,
}

/// Memory bound of the de-duplication set (about 40 MiB at the limit).
pub const MAX_TRACKED_IDS: usize = 1_000_000;

fn id_key(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl Seen {
    /// Records a counted row; false when it was already there.
    fn insert(&mut self, row: &Row) -> bool {
        let fresh = self
            .by_minute
            .entry(minute_of(row.created_us))
            .or_default()
            .insert(id_key(&row.id), row.created_us)
            .is_none();
        self.len += usize::from(fresh);
        fresh
    }

    /// Counted rows per minute in `[from_us, to_us)`.
    fn counts(&self, from_us: i64, to_us: i64) -> BTreeMap<i64, u64> {
        let mut out = BTreeMap::new();
        if from_us >= to_us {
            return out;
        }
        for (&m, ids) in self.by_minute.range(minute_of(from_us)..=minute_of(to_us - 1)) {
            let whole = m * US_PER_MINUTE >= from_us && (m + 1) * US_PER_MINUTE <= to_us;
            let n = if whole { ids.len() } else { ids.values().filter(|&&t| t >= from_us && t < to_us).count() };
            out.insert(m, n as u64);
        }
        out
    }

    /// Forgets rows before `cut_us` and, past the cap, the oldest minutes, but never a minute at
    /// or after `needed_from_us` (the overlap and later): those ids are what keeps the next polls
    /// from counting a row twice, so under extreme write rates the cap gives way, not exactness.
    fn prune(&mut self, cut_us: i64, needed_from_us: i64) {
        let keep = self.by_minute.split_off(&minute_of(cut_us));
        self.by_minute = keep;
        // The minute the cut falls in is trimmed exactly, so the set holds the configured window
        // (not up to a minute more) and its memory follows the write rate, not the clock.
        if let Some(ids) = self.by_minute.get_mut(&minute_of(cut_us)) {
            ids.retain(|_, created| *created >= cut_us);
        }
        self.complete_from_us = self.complete_from_us.max(cut_us);
        self.len = self.by_minute.values().map(HashMap::len).sum();
        while self.len > MAX_TRACKED_IDS {
            match self.by_minute.first_key_value() {
                Some((&m, _)) if (m + 1) * US_PER_MINUTE <= needed_from_us => {}
                _ => break,
            }
            let Some((m, ids)) = self.by_minute.pop_first() else { break };
            self.len -= ids.len();
            self.complete_from_us = self.complete_from_us.max((m + 1) * US_PER_MINUTE);
        }
    }
}

/// Merges minutes into contiguous `[from, to)` ranges clipped to `[lo, hi)`.
fn ranges(minutes: &[i64], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &m in minutes {
        let (from, to) = ((m * US_PER_MINUTE).max(lo), ((m + 1) * US_PER_MINUTE).min(hi));
        match out.last_mut() {
            Some(last) if last.1 >= from => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

/// Follows the events table: one aggregate load, then polls of new rows.
///
/// Exactly-once: `created_at` is the writer's transaction start, so a row can commit after a poll
/// with a `created_at` before it. Each poll therefore reads the rows from the previous poll's
/// database `now()` (the watermark, never the newest `created_at`, so a future-dated row cannot
/// hide later rows) and, in the same snapshot, counts the rows per minute of the overlap margin
/// below it with an index-only scan. Only a minute whose count exceeds what the exporter counted is
/// read again, and ids already counted are skipped. Every `--reconcile-interval` the counted range
/// reaches back `--reconcile-window`, which catches writers whose transactions outlived the overlap.
pub struct Follower {
    db: Db,
    cfg: ServeConfig,
    tally: Tally,
    seen: Seen,
    /// Database `now()` of the last successful load or poll; None until the first load.
    watermark_us: Option<i64>,
    last_reconcile: Instant,
}

impl Follower {
    pub fn new(cfg: ServeConfig) -> Result<Self, SourceError> {
        Ok(Follower {
            db: Db::new(cfg.db.clone())?,
            tally: Tally::new(cfg.tally.clone()),
            cfg,
            seen: Seen::default(),
            watermark_us: None,
            last_reconcile: Instant::now(),
        })
    }

    fn overlap_us(&self) -> i64 {
        self.cfg.overlap.as_micros() as i64
    }

    fn publish(&self, state: &State) {
        let rc = state.rollout_config();
        state.publish_tally(self.tally.view(rc.soak.seconds, rc.active_within.as_secs()));
        state.metrics().tracked_ids.set(self.seen.len as i64);
    }

    fn record_error(&self, state: &State, e: &SourceError, what: &str) {
        state.metrics().poll_errors.with_label_values(&[e.metric_label()]).inc();
        state.set_health(|h| h.database_up = false);
        tracing::warn!(error = %e, kind = e.metric_label(), "{what} failed");
    }

    /// The start-up load. Rows newer than `max(reconcile window, overlap, 2 x stuck_after)` are
    /// streamed one by one so the state machine and the de-duplication set start warm; older rows
    /// are aggregated in Postgres.
    pub async fn load(&mut self, state: &State) -> Result<(), SourceError> {
        let started = Instant::now();
        let stream_back = self.cfg.overlap.max(self.cfg.reconcile_window).max(self.cfg.tally.stuck_after * 2);
        let longest = self.cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(0);
        let loaded = self.db.load(stream_back, longest).await?;
        let mut tally = Tally::new(self.cfg.tally.clone());
        tally.advance(loaded.now_us);
        tally.fold_groups(&loaded.groups);
        for (et, minute, rows, without) in &loaded.buckets {
            tally.fold_bucket(et.as_deref(), *minute, *rows, *without);
        }
        let mut rows = loaded.rows;
        let mut seen = Seen { complete_from_us: loaded.now_us - stream_back.as_micros() as i64, ..Seen::default() };
        for r in &rows {
            seen.insert(r);
        }
        tally.fold_rows(&mut rows);
        self.tally = tally;
        self.seen = seen;
        self.watermark_us = Some(loaded.now_us);
        self.last_reconcile = Instant::now();
        let secs = started.elapsed().as_secs_f64();
        state.set_health(|h| {
            h.database_up = true;
            h.last_success = loaded.now_us as f64 / 1e6;
            h.load_seconds = secs;
        });
        self.publish(state);
        state.mark_ready();
        tracing::info!(
            seconds = secs,
            groups = loaded.groups.len(),
            streamed_rows = rows.len(),
            "start-up load finished"
        );
        Ok(())
    }

    /// One poll; returns the number of rows newly counted.
    pub async fn poll(&mut self, state: &State) -> Result<usize, SourceError> {
        let watermark = self.watermark_us.expect("poll after load");
        let reconcile = self.last_reconcile.elapsed() >= self.cfg.reconcile_interval;
        let back = if reconcile { self.cfg.reconcile_window.max(self.cfg.overlap) } else { self.cfg.overlap };
        // Never reach below what the de-duplication set still holds completely (and never past
        // the watermark: then only new rows are read).
        let count_from = (watermark - back.as_micros() as i64).max(self.seen.complete_from_us).min(watermark);
        let plan = PollPlan { count_from_us: count_from, count_to_us: watermark, rows_from_us: watermark };
        let timer = state.metrics().poll_duration.start_timer();
        let result = async {
            let polled = self.db.poll(plan).await?;
            // Minutes where the database holds more rows than were counted: read them again.
            let ours = self.seen.counts(count_from, watermark);
            let short: Vec<i64> =
                polled.counts.iter().filter(|(m, n)| *n > ours.get(m).copied().unwrap_or(0)).map(|(m, _)| *m).collect();
            let mut missed = Vec::new();
            for (from, to) in ranges(&short, count_from, watermark) {
                missed.extend(self.db.rows_between(from, to).await?);
            }
            Ok::<_, SourceError>((polled, missed))
        }
        .await;
        timer.observe_duration();
        let (polled, missed) = result?;
        if reconcile {
            self.last_reconcile = Instant::now();
        }
        let m = state.metrics();
        m.polled_rows.inc_by((polled.rows.len() + missed.len()) as u64);
        let overlap_start = watermark - self.overlap_us();
        let mut fresh = Vec::new();
        for row in missed {
            if self.seen.insert(&row) {
                if row.created_us >= overlap_start {
                    m.late_events.inc();
                } else {
                    m.reconciled_rows.inc();
                    tracing::info!(id = %row.id, "reconciliation found a row committed after the overlap margin");
                }
                fresh.push(row);
            }
        }
        for row in polled.rows {
            if self.seen.insert(&row) {
                fresh.push(row);
            }
        }
        let now = polled.now_us.max(watermark);
        self.tally.advance(now);
        self.tally.fold_rows(&mut fresh);
        self.watermark_us = Some(now);
        self.seen
            .prune(now - self.cfg.reconcile_window.max(self.cfg.overlap).as_micros() as i64, now - self.overlap_us());
        state.set_health(|h| {
            h.database_up = true;
            h.last_success = now as f64 / 1e6;
        });
        self.publish(state);
        Ok(fresh.len())
    }

    /// Load (retrying with backoff), then poll every interval until shutdown.
    pub async fn run(mut self, state: State, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            // A load or poll blocked in the database is abandoned at shutdown (the connection
            // goes with it), so SIGTERM never waits for a statement timeout.
            let loaded = tokio::select! {
                r = self.load(&state) => r,
                _ = shutdown.changed() => return,
            };
            match loaded {
                Ok(()) => break,
                Err(e) => {
                    self.record_error(&state, &e, "start-up load");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let mut failures = 0u32;
        loop {
            let wait = if failures == 0 {
                self.cfg.poll_interval
            } else {
                (self.cfg.poll_interval * 2u32.saturating_pow(failures.min(3))).min(Duration::from_secs(30))
            };
            if sleep_or_shutdown(wait, &mut shutdown).await {
                return;
            }
            let polled = tokio::select! {
                r = self.poll(&state) => r,
                _ = shutdown.changed() => return,
            };
            match polled {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "database reachable again");
                    }
                    failures = 0;
                    tracing::debug!(new_rows = n, "poll");
                }
                Err(e) => {
                    failures += 1;
                    // The last values stay served; database_up says they are stale.
                    self.record_error(&state, &e, "poll");
                }
            }
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ContextKind;

    fn row(id: usize, us: i64) -> Row {
        Row {
            id: id.to_string(),
            event_type: None,
            reason: None,
            reason_json_type: None,
            context: ContextKind::Null,
            booking_id: None,
            created_us: us,
        }
    }

    #[test]
    fn counts_of_an_empty_or_inverted_range_are_empty() {
        let mut seen = Seen::default();
        seen.insert(&row(1, 10 * US_PER_MINUTE));
        assert!(seen.counts(11 * US_PER_MINUTE, 10 * US_PER_MINUTE).is_empty());
        assert_eq!(seen.counts(10 * US_PER_MINUTE, 11 * US_PER_MINUTE).get(&10), Some(&1));
    }

    #[test]
    fn the_cap_never_drops_the_minutes_the_next_polls_need() {
        let mut seen = Seen::default();
        let now = 100 * US_PER_MINUTE;
        // More ids than the cap, all inside the overlap: every one must stay.
        for i in 0..(MAX_TRACKED_IDS + 10) {
            seen.insert(&row(i, now - 1 - (i as i64 % 60_000_000)));
        }
        seen.prune(now - 10 * US_PER_MINUTE, now - 2 * US_PER_MINUTE);
        assert_eq!(seen.len, MAX_TRACKED_IDS + 10);
        assert!(seen.complete_from_us <= now - 2 * US_PER_MINUTE);
        // Older minutes go first once the cap is exceeded.
        seen.insert(&row(usize::MAX, now - 5 * US_PER_MINUTE));
        seen.prune(now - 10 * US_PER_MINUTE, now - 2 * US_PER_MINUTE);
        assert!(!seen.by_minute.contains_key(&95));
    }
}
