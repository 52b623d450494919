//! Hardening: faults injected into real processes, properties of the tally and the exposition,
//! TLS to PostgreSQL, and access control.
//!
//! Shared here: a background scraper that proves `/metrics` answers throughout a fault, the
//! exporter binary as a child process (for signals and RSS), and a writer of realistic rows.

mod faults;
mod load;
mod properties;
mod tls;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// One GET without panicking (a fault test records failures instead of dying in a task).
pub async fn get_once(port: u16, path: &str, deadline: Duration) -> Result<(u16, String), String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status line")?;
        Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    };
    tokio::time::timeout(deadline, work).await.map_err(|_| format!("no answer within {deadline:?}"))?
}

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
                match get_once(port, "/metrics", Duration::from_secs(5)).await {
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
    rollout_exporter::outputs::metrics::ERROR_KINDS
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

/// The exporter binary as operators run it, killed on drop.
pub struct Exporter {
    pub child: Child,
    pub port: u16,
}

impl Exporter {
    /// `serve` on a free loopback port with `args` after it.
    pub fn serve(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", &listen, "--database-url", db_url])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_URL_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Exporter { child: cmd.spawn().expect("spawn the exporter binary"), port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn scrape(&self) -> Scrape {
        let (status, body) = http_get(self.port, "/metrics").await;
        assert_eq!(status, 200);
        Scrape::parse(&body)
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn sigterm(&self) {
        run_ok(Command::new("kill").args(["-TERM", &self.pid().to_string()]));
    }

    /// Waits for the exit; returns the code and how long it took.
    pub async fn wait_exit(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let child = &mut self.child;
        wait_for("the exporter to exit", deadline, || {
            let r = child.try_wait().expect("try_wait").map(|s| (s.code(), start.elapsed()));
            async move { r }
        })
        .await
    }

    /// Everything the process wrote on stderr (after it exited).
    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the scraped events_total equals SQL.
    pub async fn wait_totals_match(&self, db: &TestDb, deadline: Duration) -> BTreeMap<(String, String), u64> {
        wait_for("the exporter's totals to equal SQL", deadline, || async {
            let sql = db.sql_totals().await;
            let got = self.scrape().await.totals();
            (got == sql).then_some(got)
        })
        .await
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
