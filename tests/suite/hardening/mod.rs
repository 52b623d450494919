//! Hardening: faults injected into real processes, properties of the tally and the exposition,
//! TLS to PostgreSQL, and access control.
//!
//! Shared here: a background scraper that proves `/metrics` answers throughout a fault, and a
//! writer of realistic rows. The exporter binary as a child process (for signals and RSS) is
//! `helpers::Exporter`.

mod faults;
mod load;
mod properties;
mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::helpers::*;

/// What a [`Scraper`] saw.
#[derive(Debug, Default)]
pub struct ScrapeLog {
    pub ok: u64,
    pub failures: Vec<String>,
    pub slowest: Duration,
    /// Values of `rollout_exporter_database_up` seen, in order, consecutive repeats collapsed.
    pub database_up: Vec<u8>,
}

impl ScrapeLog {
    /// Every scrape answered 200 within a second, and there were some.
    pub fn assert_answered_throughout(&self, what: &str) {
        assert!(self.failures.is_empty(), "{what}: /metrics failed during the fault: {:?}", self.failures);
        assert!(self.ok >= 5, "{what}: only {} scrapes during the fault", self.ok);
        assert!(self.slowest < Duration::from_secs(1), "{what}: a scrape took {:?}", self.slowest);
    }

    pub fn saw_down_then_up(&self) -> bool {
        let s = &self.database_up;
        s.windows(2).any(|w| w == [0, 1]) && s.last() == Some(&1)
    }
}

/// Scrapes `/metrics` every 100 ms in the background until [`Scraper::finish`].
pub struct Scraper {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<ScrapeLog>,
}

impl Scraper {
    pub fn start(port: u16) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut log = ScrapeLog::default();
            // One more scrape after the stop flag, so the log ends with the state at `finish`.
            loop {
                let last = flag.load(Ordering::Relaxed);
                let t = Instant::now();
                match try_request(port, "GET", "/metrics", &[], Duration::from_secs(5)).await {
                    Ok((200, body)) => {
                        log.ok += 1;
                        log.slowest = log.slowest.max(t.elapsed());
                        if let Some(up) = Scrape::parse(&body).get("rollout_exporter_database_up", &[]) {
                            if log.database_up.last() != Some(&(up as u8)) {
                                log.database_up.push(up as u8);
                            }
                        }
                    }
                    Ok((status, _)) => log.failures.push(format!("status {status}")),
                    Err(e) => log.failures.push(e),
                }
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            log
        });
        Scraper { stop, handle }
    }

    pub async fn finish(self) -> ScrapeLog {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("scraper task")
    }
}

/// `rollout_exporter_poll_errors_total` by kind.
pub fn errors(s: &Scrape) -> BTreeMap<String, u64> {
    ERROR_KINDS
        .iter()
        .map(|k| (k.to_string(), s.value("rollout_exporter_poll_errors_total", &[("kind", k)]) as u64))
        .collect()
}

/// Asserts that errors of kinds outside `allowed` did not grow between two scrapes, and returns how
/// much each allowed kind grew.
pub fn error_growth(before: &Scrape, after: &Scrape, allowed: &[&str]) -> BTreeMap<String, u64> {
    let (b, a) = (errors(before), errors(after));
    let mut grown = BTreeMap::new();
    for (kind, n) in &a {
        let d = n - b[kind];
        if allowed.contains(&kind.as_str()) {
            grown.insert(kind.clone(), d);
        } else {
            assert_eq!(d, 0, "unexpected {kind} errors: before {b:?}, after {a:?}");
        }
    }
    grown
}

/// Inserts `n` rows in one statement: bookings that start and end (mostly confirmed, some retries
/// and manual reviews with reasons), tagged so every batch has its own booking ids.
pub async fn insert_mix(pool: &PgPool, n: i64, tag: &str) {
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT $1,
                (ARRAY['coordinator.start','coordinator.confirmed','coordinator.start','coordinator.retry',
                       'coordinator.confirmed','coordinator.start','coordinator.manual_review'])[1 + g % 7],
                CASE WHEN g % 7 IN (3, 6)
                     THEN jsonb_build_object('booking_id', $2 || '-' || (g / 2), 'reason',
                                             (ARRAY['upstream_timeout','no_driver_available','rate_limited'])[1 + g % 3])
                     ELSE jsonb_build_object('booking_id', $2 || '-' || (g / 2)) END
         FROM generate_series(1, $3::int8) AS g",
    )
    .bind(SOURCE)
    .bind(tag)
    .bind(n)
    .execute(pool)
    .await
    .expect("insert mix");
}

/// Prints a measured figure (visible with `--nocapture`; docs/reliability.md records them).
pub fn figure(test: &str, text: &str) {
    eprintln!("FIGURE {test}: {text}");
}
