//! Sources advance the tally and publish snapshots: [`Follower`] follows PostgreSQL, [`demo`]
//! simulates traffic. Neither is ever called from a scrape.

pub mod demo;
pub mod postgres;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::state::State;
use crate::tally::Tally;
use postgres::{Db, SourceError};

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

/// Follows the events table: one aggregate load, then polls of new rows.
///
/// Exactly-once: each poll reads every row with `created_at >= previous poll's now() - overlap`
/// and skips the ids it has already counted. `created_at` is the writer's transaction start, so a
/// row can commit after a poll with a `created_at` before it; it is still found as long as its
/// transaction was shorter than the overlap. The watermark is the database's `now()` of the
/// previous poll, never the newest `created_at`, so a future-dated row cannot hide later rows.
pub struct Follower {
    db: Db,
    cfg: ServeConfig,
    tally: Tally,
    /// Ids already counted whose `created_at` is at or after the next poll's lower bound
    /// (id -> created_at in Unix microseconds). Holds about one overlap's worth of rows.
    seen: HashMap<Box<str>, i64>,
    /// Database `now()` of the last successful load or poll; None until the first load.
    watermark_us: Option<i64>,
}

impl Follower {
    pub fn new(cfg: ServeConfig) -> Result<Self, SourceError> {
        Ok(Follower {
            db: Db::new(cfg.db.clone())?,
            tally: Tally::new(cfg.tally.clone()),
            cfg,
            seen: HashMap::new(),
            watermark_us: None,
        })
    }

    fn overlap_us(&self) -> i64 {
        self.cfg.overlap.as_micros() as i64
    }

    fn publish(&self, state: &State) {
        let rc = state.rollout_config();
        state.publish_tally(self.tally.view(rc.soak.seconds, rc.active_within.as_secs()));
    }

    fn record_error(&self, state: &State, e: &SourceError, what: &str) {
        state.metrics().poll_errors.with_label_values(&[e.metric_label()]).inc();
        state.set_health(|h| h.database_up = false);
        tracing::warn!(error = %e, kind = e.metric_label(), "{what} failed");
    }

    /// The start-up load. Rows newer than `max(overlap, 2 x stuck_after)` are streamed one by one
    /// so the state machine and the de-duplication set start warm; older rows are aggregated.
    pub async fn load(&mut self, state: &State) -> Result<(), SourceError> {
        let started = Instant::now();
        let stream_back = self.cfg.overlap.max(self.cfg.tally.stuck_after * 2);
        let longest = self.cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(0);
        let loaded = self.db.load(stream_back, longest).await?;
        let mut tally = Tally::new(self.cfg.tally.clone());
        tally.advance(loaded.now_us);
        tally.fold_groups(&loaded.groups);
        for (et, minute, rows, without) in &loaded.buckets {
            tally.fold_bucket(et.as_deref(), *minute, *rows, *without);
        }
        let mut rows = loaded.rows;
        let lower = loaded.now_us - self.overlap_us();
        self.seen =
            rows.iter().filter(|r| r.created_us >= lower).map(|r| (r.id.as_str().into(), r.created_us)).collect();
        tally.fold_rows(&mut rows);
        self.tally = tally;
        self.watermark_us = Some(loaded.now_us);
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

    /// One poll; returns the number of new rows.
    pub async fn poll(&mut self, state: &State) -> Result<usize, SourceError> {
        let watermark = self.watermark_us.expect("poll after load");
        let timer = state.metrics().poll_duration.start_timer();
        let result = self.db.poll(watermark - self.overlap_us()).await;
        timer.observe_duration();
        let polled = result?;
        state.metrics().polled_rows.inc_by(polled.rows.len() as u64);
        let mut fresh = Vec::new();
        let mut late = 0;
        for row in polled.rows {
            if self.seen.contains_key(row.id.as_str()) {
                continue;
            }
            if row.created_us < watermark {
                late += 1;
            }
            self.seen.insert(row.id.as_str().into(), row.created_us);
            fresh.push(row);
        }
        state.metrics().late_events.inc_by(late);
        let now = polled.now_us.max(watermark);
        self.tally.advance(now);
        self.tally.fold_rows(&mut fresh);
        self.watermark_us = Some(now);
        let lower = now - self.overlap_us();
        self.seen.retain(|_, created| *created >= lower);
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
            match self.load(&state).await {
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
            match self.poll(&state).await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "database reachable again");
                    }
                    failures = 0;
                    tracing::debug!(new_rows = n, "poll");
                }
                Err(e) => {
                    failures += 1;
                    self.record_error(&state, &e, "poll");
                    // Time moves on even while the database is away: age the windows.
                    self.publish(&state);
                }
            }
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}
