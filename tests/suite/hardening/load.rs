//! Load: `/metrics` under wrk while the poller ingests about 1,000 rows/s, and a compressed soak
//! (`SOAK_MINUTES`, default 1; docs/reliability.md records a 10-minute run). The exporter is the
//! real binary, so its resident memory can be read from /proc.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::*;
use crate::helpers::*;

/// Inserts `rows_per_second` in batches every 100 ms until stopped (or `limit` passes).
struct Writer {
    stop: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(pool: PgPool, rows_per_second: u64, limit: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), rows.clone());
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let batch = (rows_per_second / 10).max(1);
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) && started.elapsed() < limit {
                tick.tick().await;
                insert_mix(&pool, batch as i64, &format!("load-{i}")).await;
                count.fetch_add(batch, Ordering::Relaxed);
                i += 1;
            }
        });
        Writer { stop, rows, handle }
    }

    /// Stops; returns rows written and the achieved rate.
    async fn finish(self, since: Instant) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("writer task");
        let n = self.rows.load(Ordering::Relaxed);
        (n, n as f64 / since.elapsed().as_secs_f64())
    }
}

/// Retention compressed so that every bounded structure (the ids of the reconciliation window, the
/// booking state machine) reaches its bound within a minute or two (ids are pruned by whole
/// minutes): growth after that would be a leak, not a window filling up. `SOAK_RETENTION=production`
/// runs the soak with the defaults instead (the ids of 10 minutes and up to 100,000 bookings;
/// docs/reliability.md gives both runs' figures).
const COMPRESSED: &[&str] = &[
    "--overlap",
    "10s",
    "--reconcile-window",
    "10s",
    "--reconcile-interval",
    "5s",
    "--stuck-after",
    "10s",
    "--max-tracked-bookings",
    "2000",
];

/// Memory is flat when the largest RSS of the last third of the run is at most the largest of the
/// first third times 1.2, plus 2 MiB. Returns (first-third max, last-third max, flat).
fn flat(samples: &[u64]) -> (u64, u64, bool) {
    assert!(samples.len() >= 6, "too few RSS samples: {samples:?}");
    let third = samples.len() / 3;
    let first = *samples[..third].iter().max().unwrap();
    let last = *samples[samples.len() - third..].iter().max().unwrap();
    (first, last, last as f64 <= first as f64 * 1.2 + 2048.0)
}

/// The line of wrk's report that starts with `prefix`, if any.
fn wrk_line<'a>(report: &'a str, prefix: &str) -> Option<&'a str> {
    report.lines().map(str::trim).find(|l| l.starts_with(prefix))
}

#[tokio::test]
async fn hardening_metrics_under_wrk_while_ingesting_1000_rows_per_second_has_no_errors_and_flat_memory() {
    if !require_tool("wrk") {
        return;
    }
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(5_000).within_last_secs(6 * 3600).insert().await;
    let mut args = vec!["--poll-interval", "1s"];
    args.extend_from_slice(COMPRESSED);
    let exporter = Exporter::serve(&db.url, &args, &[]);
    exporter.ready().await;
    let started = Instant::now();
    let writer = Writer::start(db.pool.clone(), 1_000, Duration::from_secs(40));

    let url = format!("http://127.0.0.1:{}/metrics", exporter.port);
    let mut wrk = Command::new("wrk")
        .args(["-t2", "-c4", "-d30s", "--timeout", "2s", "--latency", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wrk");
    let mut rss = Vec::new();
    let status = loop {
        if let Some(status) = wrk.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(45), "wrk did not finish");
        rss.push(exporter.rss_kib());
        tokio::time::sleep(Duration::from_millis(250)).await; // sampling period
    };
    let (rows, rate) = writer.finish(started).await;
    let mut report = String::new();
    wrk.stdout.take().unwrap().read_to_string(&mut report).unwrap();
    assert!(status.success(), "wrk failed:\n{report}");

    assert!(wrk_line(&report, "Non-2xx").is_none(), "non-2xx answers under load:\n{report}");
    assert!(wrk_line(&report, "Socket errors").is_none(), "socket errors under load:\n{report}");
    let requests: u64 = wrk_line(&report, "Requests/sec:")
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|r| r as u64)
        .expect("wrk's Requests/sec");
    assert!(requests >= 50, "only {requests} scrapes/s:\n{report}");
    assert!(rate > 800.0, "the writer reached only {rate:.0} rows/s");
    let (first, last, is_flat) = flat(&rss);
    assert!(is_flat, "RSS grew: first third max {first} KiB, last third max {last} KiB, samples {rss:?}");

    let totals = exporter.wait_totals_match(&db).await;
    assert_eq!(totals.values().sum::<u64>(), 5_000 + rows);
    let s = exporter.scrape().await;
    assert_eq!(errors(&s).values().sum::<u64>(), 0, "{:?}", errors(&s));
    figure(
        "wrk",
        &format!(
            "{requests} req/s, p99 {}, rows {rows} at {rate:.0}/s, RSS first third {first} KiB, last third {last} KiB",
            wrk_line(&report, "99%").unwrap_or("?")
        ),
    );
    drop(exporter);
}

/// `SOAK_MINUTES` (default 1) at 500 rows/s, scraped every second as Prometheus would (faster).
#[tokio::test]
async fn hardening_a_compressed_soak_at_500_rows_per_second_ends_exact_with_flat_memory() {
    let minutes: u64 = std::env::var("SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(1);
    let length = Duration::from_secs(60 * minutes);
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(20_000).within_last_secs(48 * 3600).insert().await;
    let production = std::env::var("SOAK_RETENTION").is_ok_and(|v| v == "production");
    let exporter = Exporter::serve(&db.url, if production { &[] } else { COMPRESSED }, &[]);
    exporter.ready().await;
    let started = Instant::now();
    let writer = Writer::start(db.pool.clone(), 500, length);
    let mut rss = Vec::new();
    let mut scrapes = 0u64;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < length {
        let t = Instant::now();
        let (status, _) =
            try_request(exporter.port, "GET", "/metrics", &[], Duration::from_secs(2)).await.expect("scrape");
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
        scrapes += 1;
        rss.push(exporter.rss_kib());
        tokio::time::sleep(Duration::from_secs(1)).await; // scrape interval
    }
    let (rows, rate) = writer.finish(started).await;
    let totals = exporter.wait_totals_match_within(&db, Duration::from_secs(30)).await;
    assert_eq!(totals.values().sum::<u64>(), 20_000 + rows);
    let s = exporter.scrape().await;
    assert_eq!(errors(&s).values().sum::<u64>(), 0, "{:?}", errors(&s));
    let (first, last, is_flat) = flat(&rss);
    figure(
        "soak",
        &format!(
            "{minutes} min ({}), rows {rows} at {rate:.0}/s, {scrapes} scrapes (slowest {slowest:?}), \
             RSS first third {first} KiB, last third {last} KiB, max {} KiB, tracked ids {}",
            if production { "production retention" } else { "compressed retention" },
            rss.iter().max().unwrap(),
            s.value("rollout_exporter_tracked_ids", &[])
        ),
    );
    assert!(is_flat, "RSS grew: first third max {first} KiB, last third max {last} KiB, samples {rss:?}");
    assert!(rate > 400.0, "the writer reached only {rate:.0} rows/s");
    drop(exporter);
}
