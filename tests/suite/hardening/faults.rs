//! Faults injected into real processes while the exporter runs. After each: nothing lost, nothing
//! counted twice (scraped totals equal SQL), `/metrics` answered throughout (a scraper runs during
//! the fault), and `rollout_exporter_database_up` and `rollout_exporter_poll_errors_total{kind}`
//! told the truth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;
use crate::faults::{Bouncer, Cluster};
use crate::helpers::*;

async fn database_up(app: &TestApp) -> f64 {
    app.scrape().await.value("rollout_exporter_database_up", &[])
}

async fn wait_database_up(app: &TestApp, up: f64, deadline: Duration) {
    wait_for(&format!("rollout_exporter_database_up {up}"), deadline, || async {
        (database_up(app).await == up).then_some(())
    })
    .await;
}

/// The pid of this test database's exporter backend, if it is connected.
async fn exporter_backend(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'rollout-exporter' AND datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .expect("pg_stat_activity")
}

/// True while the exporter's backend waits for a lock.
async fn exporter_waits_for_lock(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rollout-exporter'
         AND datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
        > 0
}

/// Holds `LOCK TABLE observability_events IN ACCESS EXCLUSIVE MODE` in an open transaction.
async fn lock_table(db: &TestDb) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE observability_events IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.expect("lock");
    tx
}

#[tokio::test]
async fn hardening_a_pgbouncer_restart_loses_nothing_and_is_reported_as_connect_errors() {
    let db = TestDb::new().await;
    let Some(mut bouncer) = Bouncer::start(5432).await else { return };
    db.events().event_type("coordinator.start").count(150).within_last_secs(3600).insert().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", bouncer.port, db.name);
    let app = spawn_app(serve_config(&url, &["--connect-timeout", "1s", "--statement-timeout", "2s"])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    let before = app.scrape().await;
    let scraper = Scraper::start(app.port);

    bouncer.process.kill();
    insert_mix(&db.pool, 70, "while-bouncer-down").await;
    wait_database_up(&app, 0.0, Duration::from_secs(20)).await;
    let down = app.scrape().await;
    assert_eq!(down.totals(), before.totals(), "the last values stay served while the pooler is away");

    // The same pooler, same configuration, same port.
    bouncer.respawn();
    wait_database_up(&app, 1.0, Duration::from_secs(30)).await;
    insert_mix(&db.pool, 30, "after-bouncer-restart").await;
    let totals = app.wait_totals_match(&db).await;
    let log = scraper.finish().await;

    log.assert_answered_throughout("pgbouncer restart");
    assert!(log.saw_down_then_up(), "database_up went 1 -> 0 -> 1: {:?}", log.database_up);
    let after = app.scrape().await;
    let grown = error_growth(&before, &after, &["connect", "timeout"]);
    assert!(grown.values().sum::<u64>() >= 1, "the outage was counted: {grown:?}");
    assert_eq!(totals.values().sum::<u64>(), 250);
    figure("pgbouncer_restart", &format!("errors {grown:?}, scrapes {} ok, slowest {:?}", log.ok, log.slowest));
    app.stop().await;
    drop(bouncer);
}

#[tokio::test]
async fn hardening_pg_terminate_backend_idle_or_mid_poll_loses_nothing_and_counts_one_connect_error() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(100).within_last_secs(3600).insert().await;
    let app = spawn_app(serve_config(&db.url, &["--statement-timeout", "5s", "--connect-timeout", "2s"])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    let before = app.scrape().await;
    let scraper = Scraper::start(app.port);

    // 1. Between polls: the pool notices the dead connection and reconnects.
    let first = wait_for("the exporter's backend", Duration::from_secs(10), || exporter_backend(&db.pool)).await;
    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&db.pool).await.unwrap();
    assert!(killed);
    insert_mix(&db.pool, 40, "after-idle-kill").await;
    wait_for("a new backend", Duration::from_secs(20), || async {
        exporter_backend(&db.pool).await.filter(|&p| p != first)
    })
    .await;
    app.wait_totals_match(&db).await;
    let middle = app.scrape().await;
    // A kill between polls costs at most one failed poll (when it lands inside one).
    let grown = error_growth(&before, &middle, &["connect"]);
    assert!(grown["connect"] <= 1, "{grown:?}");

    // 2. Mid-poll: the poll waits for a lock when its backend is terminated.
    let locker = lock_table(&db).await;
    wait_for("the poll to wait for the lock", Duration::from_secs(10), || async {
        exporter_waits_for_lock(&db.pool).await.then_some(())
    })
    .await;
    let victim = exporter_backend(&db.pool).await.expect("backend");
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(victim).fetch_one(&db.pool).await.unwrap();
    wait_for("the terminated poll counted as a connect error", Duration::from_secs(10), || async {
        let s = app.scrape().await;
        (errors(&s)["connect"] > errors(&middle)["connect"] && s.value("rollout_exporter_database_up", &[]) == 0.0)
            .then_some(())
    })
    .await;
    locker.commit().await.unwrap();
    wait_database_up(&app, 1.0, Duration::from_secs(20)).await;
    insert_mix(&db.pool, 20, "after-mid-poll-kill").await;
    let totals = app.wait_totals_match(&db).await;
    let log = scraper.finish().await;

    let after = app.scrape().await;
    let grown = error_growth(&middle, &after, &["connect"]);
    assert_eq!(grown["connect"], 1, "exactly the terminated poll failed");
    figure("pg_terminate_backend", &format!("idle kill: {:?} errors; mid-poll kill: {grown:?}", errors(&middle)));
    assert_eq!(totals.values().sum::<u64>(), 160);
    log.assert_answered_throughout("pg_terminate_backend");
    assert!(log.saw_down_then_up(), "{:?}", log.database_up);
    app.stop().await;
}

/// A TCP proxy 127.0.0.1:port -> 127.0.0.1:upstream whose switch stops forwarding without closing
/// anything: a network stall, as a paused pooler or a dropped route looks to a client.
struct StallProxy {
    port: u16,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read before a stall are held until it ends.
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl StallProxy {
    async fn start(upstream: u16) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let (stalled, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting the proxy aborts them too.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, rx.clone()), pipe(sr, cw, rx));
                });
            }
        });
        StallProxy { port, stalled, task }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn hardening_a_network_stall_longer_than_the_statement_timeout_ends_the_poll_and_recovers() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(80).within_last_secs(600).insert().await;
    let proxy = StallProxy::start(5432).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
    let app = spawn_app(serve_config(&url, &["--statement-timeout", "1s", "--connect-timeout", "1s"])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    let before = app.scrape().await;
    let polls_before = app.polls().await;
    let scraper = Scraper::start(app.port);

    proxy.stall(true);
    let stalled_at = Instant::now();
    insert_mix(&db.pool, 90, "during-stall").await; // straight to PostgreSQL, not through the proxy
    wait_for("the stall reported", Duration::from_secs(20), || async {
        let s = app.scrape().await;
        let e = errors(&s);
        (e["timeout"] + e["connect"] > errors(&before)["timeout"] + errors(&before)["connect"] + 1
            && s.value("rollout_exporter_database_up", &[]) == 0.0)
            .then_some(())
    })
    .await;
    let stall = stalled_at.elapsed();
    assert!(stall > Duration::from_secs(1), "the stall outlasted the statement timeout");
    assert!(app.polls().await > polls_before, "polls end at their deadline instead of hanging");
    proxy.stall(false);

    wait_database_up(&app, 1.0, Duration::from_secs(30)).await;
    let totals = app.wait_totals_match(&db).await;
    let log = scraper.finish().await;
    let after = app.scrape().await;
    // A stall shows as `connect` when it meets the pool's health check (no answer within
    // --connect-timeout) and as `timeout` when it strikes mid-statement; never as anything else.
    let grown = error_growth(&before, &after, &["timeout", "connect"]);
    log.assert_answered_throughout("network stall");
    assert!(log.saw_down_then_up(), "{:?}", log.database_up);
    assert_eq!(totals.values().sum::<u64>(), 170);
    figure("network_stall", &format!("stalled {stall:?}, errors {grown:?}, slowest scrape {:?}", log.slowest));
    app.stop().await;
    drop(proxy);
}

#[tokio::test]
async fn hardening_a_poll_blocked_by_a_lock_times_out_is_counted_and_catches_up_after_release() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(100).within_last_secs(600).insert().await;
    let app = spawn_app(serve_config(&db.url, &["--statement-timeout", "500ms"])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    let before = app.scrape().await;
    let polls_before = app.polls().await;
    let scraper = Scraper::start(app.port);

    let mut locker = lock_table(&db).await;
    let locked_at = Instant::now();
    // Rows written inside the locking transaction: dated at its start, visible when it ends.
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT $1, 'coordinator.retry', '{\"reason\": \"upstream_timeout\"}' FROM generate_series(1, 25)",
    )
    .bind(SOURCE)
    .execute(&mut *locker)
    .await
    .unwrap();
    wait_for("three polls timed out on the lock, held at least 3 s", Duration::from_secs(20), || async {
        let s = app.scrape().await;
        (errors(&s)["timeout"] >= errors(&before)["timeout"] + 3
            && s.value("rollout_exporter_database_up", &[]) == 0.0
            && locked_at.elapsed() > Duration::from_secs(3))
        .then_some(())
    })
    .await;
    let held = locked_at.elapsed();
    locker.commit().await.unwrap();

    wait_database_up(&app, 1.0, Duration::from_secs(20)).await;
    let totals = app.wait_totals_match(&db).await;
    let log = scraper.finish().await;
    let after = app.scrape().await;
    let grown = error_growth(&before, &after, &["timeout"]);
    assert!(grown["timeout"] >= 3);
    // Nothing hung: every poll, the blocked ones included, ended well before the lock was released.
    let count = after.value("rollout_exporter_poll_duration_seconds_count", &[]);
    let within = after.value("rollout_exporter_poll_duration_seconds_bucket", &[("le", "2.5")]);
    assert_eq!(within, count, "a poll outlived 2.5 s with a 500 ms statement timeout (lock held {held:?})");
    assert!(app.polls().await >= polls_before + 3);
    assert_eq!(totals[&("coordinator.retry".to_string(), "upstream_timeout".to_string())], 25);
    log.assert_answered_throughout("lock");
    assert!(log.saw_down_then_up(), "{:?}", log.database_up);
    figure("lock", &format!("held {held:?}, timeouts {}, slowest scrape {:?}", grown["timeout"], log.slowest));
    app.stop().await;
}

#[tokio::test]
async fn hardening_the_database_down_for_30_seconds_at_start_is_retried_and_then_exact() {
    let Some(cluster) = Cluster::create() else { return };
    let mut db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(300).within_last_secs(7200).insert().await;
    insert_mix(&db.pool, 70, "before-outage").await;
    db.pool.close().await;
    cluster.stop();

    let app = spawn_app(serve_config(&db.url, &["--connect-timeout", "500ms"])).await;
    let scraper = Scraper::start(app.port);
    let down_since = Instant::now();
    // The outage lasts 30 s; meanwhile every scrape must answer and tell the truth.
    let down_for = Duration::from_secs(30);
    while down_since.elapsed() < down_for {
        let s = app.scrape().await;
        assert_eq!(s.value("rollout_exporter_database_up", &[]), 0.0);
        assert_eq!(s.value("rollout_exporter_ready", &[]), 0.0);
        assert!(s.totals().is_empty(), "no counter is invented before the first load");
        assert_eq!(app.get("/readyz").await.0, 503);
        assert_eq!(app.get("/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await; // the fault's duration, not a wait
    }
    let during = app.scrape().await;
    let e = errors(&during);
    assert!(e["connect"] >= 4, "start-up attempts were counted as connect errors: {e:?}");
    assert_eq!(e.values().sum::<u64>(), e["connect"], "{e:?}");

    cluster.start();
    wait_for("ready after the database returned", Duration::from_secs(45), || async {
        (app.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let back_after = down_since.elapsed();
    db.reconnect().await;
    insert_mix(&db.pool, 30, "after-outage").await;
    let totals = app.wait_totals_match(&db).await;
    let log = scraper.finish().await;
    log.assert_answered_throughout("database down at start");
    assert_eq!(log.database_up, vec![0, 1]);
    assert_eq!(totals.values().sum::<u64>(), 400);
    figure(
        "down_at_start",
        &format!("ready {back_after:?} after start, connect errors {}, scrapes {} ok", e["connect"], log.ok),
    );
    app.stop().await;
}

/// A tiny deterministic generator, so the writers' schedule differs per task without a crate.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

#[tokio::test]
async fn hardening_many_concurrent_writers_are_counted_exactly_and_rolled_back_rows_never() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let before = app.scrape().await;
    let pool = PgPoolOptions::new().max_connections(12).connect(&db.url).await.unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let (pool, committed) = (pool.clone(), committed.clone());
        tasks.spawn(async move {
            let mut seed = w + 1;
            for i in 0..30 {
                let n = 1 + lcg(&mut seed) % 5;
                let mut tx = pool.begin().await.unwrap();
                insert_in(&mut tx, n, &format!("w{w}-{i}"), None).await;
                // Some transactions stay open across several polls before they commit.
                let hold = lcg(&mut seed) % 4 * 120;
                tokio::time::sleep(Duration::from_millis(hold)).await;
                tx.commit().await.unwrap();
                committed.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    for w in 0..2u64 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut seed = 100 + w;
            for i in 0..25 {
                let mut tx = pool.begin().await.unwrap();
                insert_in(&mut tx, 3, &format!("rb{w}-{i}"), Some("rolled_back")).await;
                tokio::time::sleep(Duration::from_millis(lcg(&mut seed) % 300)).await;
                tx.rollback().await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals.values().sum::<u64>(), committed.load(Ordering::Relaxed));
    assert!(totals.keys().all(|(_, r)| r != "rolled_back"), "a rolled-back row was counted");
    app.wait_polls(3).await;
    let after = app.scrape().await;
    assert_eq!(after.totals(), db.sql_totals().await, "still exact after more polls");
    error_growth(&before, &after, &[]);
    figure(
        "concurrent_writers",
        &format!(
            "{} rows committed by 8 writers, 150 rolled back, late {}",
            committed.load(Ordering::Relaxed),
            after.value("rollout_exporter_late_events_total", &[])
        ),
    );
    app.stop().await;
    pool.close().await;
}

async fn insert_in(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, n: u64, tag: &str, reason: Option<&str>) {
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT $1, (ARRAY['coordinator.start','coordinator.confirmed','coordinator.retry'])[1 + g % 3],
                jsonb_strip_nulls(jsonb_build_object('booking_id', $2 || '-' || g, 'reason', $3::text))
         FROM generate_series(1, $4::int8) AS g",
    )
    .bind(SOURCE)
    .bind(tag)
    .bind(reason)
    .bind(n as i64)
    .execute(&mut **tx)
    .await
    .unwrap();
}

#[tokio::test]
async fn hardening_sigterm_while_a_poll_waits_for_a_lock_exits_zero_within_five_seconds() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(100).within_last_secs(600).insert().await;
    // The default 10 s statement timeout: the blocked poll would outlive the 5 s budget.
    let mut exporter = Exporter::serve(&db.url, &["--poll-interval", "100ms"], &[]);
    exporter.ready().await;
    let locker = lock_table(&db).await;
    wait_for("a poll waiting for the lock", Duration::from_secs(10), || async {
        exporter_waits_for_lock(&db.pool).await.then_some(())
    })
    .await;
    exporter.sigterm();
    let (code, took) = exporter.wait_exit(Duration::from_secs(5)).await;
    locker.rollback().await.unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM during a blocked poll");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    figure("sigterm_blocked_poll", &format!("exited in {took:?}"));
}
