//! The exporter reading from a hot standby (a real streaming replica of a throwaway primary) whose
//! replay is paused for longer than the reconciliation window, then resumed.

use std::time::{Duration, Instant};

use clap::Parser;
use rollout_exporter::config::{Cli, ServeConfig, Validated};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::faults::Cluster;
use crate::helpers::*;

const MAX_STALENESS_SECS: f64 = 5.0;
const LAG: &str = "rollout_exporter_replica_lag_seconds";

/// `serve` with the given arguments (not [`serve_config`], which sets its own poll interval).
fn config(db_url: &str, extra: &[&str]) -> ServeConfig {
    let mut args = vec!["rollout-exporter", "serve", "--listen", "127.0.0.1:0", "--database-url", db_url];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(&args).expect("valid test arguments");
    match cli.command.validate().expect("valid test configuration") {
        Validated::Serve(cfg) => cfg,
        _ => unreachable!(),
    }
}

fn pool(url: &str) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect_lazy(url).expect("replica URL")
}

/// What one look at the exporter saw: the totals, the lag gauge, the verdict's decision and reason.
struct Look {
    totals: Totals,
    lag: Option<f64>,
    decision: String,
    pending_reason: Option<String>,
}

async fn look(app: &TestApp) -> Look {
    let s = app.scrape().await;
    let (status, body) = app.get("/verdict").await;
    assert_eq!(status, 200, "/verdict always answers 200: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("verdict JSON");
    Look {
        totals: s.totals(),
        lag: s.get(LAG, &[]),
        decision: v["decision"].as_str().unwrap_or_default().to_string(),
        pending_reason: v["pending_reason"].as_str().map(str::to_string),
    }
}

fn is_stale(l: &Look) -> bool {
    l.decision == "pending" && l.pending_reason.as_deref().is_some_and(|r| r.contains("stale"))
}

fn sum(t: &Totals) -> u64 {
    t.values().sum()
}

#[tokio::test]
async fn a_streaming_replica_counts_every_row_once_however_far_replay_lags() {
    pause_replay_for_longer_than_the_reconcile_window(true).await;
}

/// The same pause on a standby that has replayed no commit since it started (a fresh base backup
/// or a restart, on a quiet primary): `pg_last_xact_replay_timestamp()` is NULL while WAL waits
/// unreplayed. Before the fix the watermark moved on with `now()` (the gate never said stale, and
/// after the resume 105 of 150 rows were counted, for good); now the polls refuse to advance until
/// a commit is replayed, the gate says pending, and every row is counted once.
#[tokio::test]
async fn a_standby_with_no_replayed_commit_yet_counts_every_row_once() {
    pause_replay_for_longer_than_the_reconcile_window(false).await;
}

async fn pause_replay_for_longer_than_the_reconcile_window(replayed_commit_first: bool) {
    // 1. The primary (wal_level replica, max_wal_senders 10 and `host replication all 127.0.0.1/32
    // trust` are PostgreSQL 15's initdb defaults with -A trust), a database and 100 rows.
    let Some(primary) = Cluster::create() else { return };
    let db = TestDb::builder().port(primary.port).build().await;
    let (settings,): (String,) =
        sqlx::query_as("SELECT current_setting('wal_level') || ' ' || current_setting('max_wal_senders')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let mut s = settings.split(' ');
    assert!(matches!(s.next(), Some("replica" | "logical")), "wal_level: {settings}");
    assert!(s.next().unwrap().parse::<u32>().unwrap() >= 2, "max_wal_senders: {settings}");
    db.events().event_type("coordinator.start").count(100).within_last_secs(600).insert().await;

    // 2. A streaming replica of it, the database visible there.
    let t0 = Instant::now();
    let Some(replica) = Cluster::replica_of(&primary) else { return };
    let replica_started = t0.elapsed();
    let replica_url = format!("postgres://postgres@127.0.0.1:{}/{}", replica.port, db.name);
    let standby = pool(&replica_url);
    wait_for("the seeded rows on the replica", Duration::from_secs(30), || async {
        let n: Option<(i64,)> =
            sqlx::query_as("SELECT count(*) FROM observability_events").fetch_one(&standby).await.ok();
        n.filter(|n| n.0 == 100).map(|_| ())
    })
    .await;
    // A standby knows no replay timestamp until it has replayed a commit since it started (the
    // seeded rows came with the base backup): one commit on the primary, replayed, so that the
    // pause below starts from a known last-replayed commit, as on any standby of a busy primary.
    if replayed_commit_first {
        sqlx::query("SELECT txid_current()").execute(&db.pool).await.unwrap();
        wait_for("a replayed commit on the replica", Duration::from_secs(30), || async {
            let r: Option<(bool,)> =
                sqlx::query_as("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetch_one(&standby).await.ok();
            r.filter(|r| r.0).map(|_| ())
        })
        .await;
    }
    let (in_recovery,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()").fetch_one(&standby).await.unwrap();
    assert!(in_recovery, "the replica is a standby");
    wait_for("the replica streaming from the primary", Duration::from_secs(30), || async {
        let r: Option<(i64,)> = sqlx::query_as("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .fetch_one(&db.pool)
            .await
            .ok();
        r.filter(|r| r.0 == 1).map(|_| ())
    })
    .await;

    // 3. The exporter on the replica, windows short enough that the pause outlasts them.
    let dir = TempDir::new("rex_flags");
    let flags = dir.path().join("flags.env");
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n")
        .unwrap();
    let app = spawn_app(config(
        &replica_url,
        &[
            "--poll-interval",
            "200ms",
            "--overlap",
            "2s",
            "--reconcile-window",
            "3s",
            "--reconcile-interval",
            "1s",
            "--max-staleness",
            "5s",
            "--flags-file",
            flags.to_str().unwrap(),
            "--phase-started-at",
            "2000-01-01T00:00:00Z",
        ],
    ))
    .await;
    app.ready().await;
    let before = app.wait_totals_match(&db).await;
    assert_eq!(sum(&before), 100);
    let l = look(&app).await;
    let lag = l.lag.expect("rollout_exporter_replica_lag_seconds is exported on a standby");
    assert!((0.0..2.0).contains(&lag), "lag on a caught-up standby: {lag}");
    assert!(!is_stale(&l), "fresh standby, yet: {:?} {:?}", l.decision, l.pending_reason);

    // 4. Replay paused; 50 rows in 10 transactions over ~8 s on the primary, every other one
    // dated 2 s in the past. Between inserts the exporter is watched every 100 ms.
    sqlx::query("SELECT pg_wal_replay_pause()").execute(&standby).await.unwrap();
    wait_for("replay paused", Duration::from_secs(10), || async {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT pg_get_wal_replay_pause_state()").fetch_one(&standby).await.ok();
        r.filter(|r| r.0 == "paused").map(|_| ())
    })
    .await;
    let paused = Instant::now();
    let kinds: [(&str, Option<&str>); 3] = [
        ("coordinator.confirmed", None),
        ("coordinator.retry", Some("upstream_timeout")),
        ("coordinator.manual_review", Some("ambiguous_address")),
    ];
    let (mut max_lag, mut first_lag, mut stale_after, mut looks) = (0.0f64, None, None, 0u32);
    let mut first_insert = None;
    for i in 0..10usize {
        let (event_type, reason) = kinds[i % kinds.len()];
        let mut e = db.events().event_type(event_type).count(5);
        if let Some(r) = reason {
            e = e.reason(r);
        }
        if i % 2 == 1 {
            e = e.at("now() - interval '2 seconds'");
        }
        e.insert().await;
        let inserted = *first_insert.get_or_insert_with(Instant::now);
        // Spaces the inserts 800 ms apart; the exporter is checked all along.
        let until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < until {
            let l = look(&app).await;
            looks += 1;
            assert_eq!(
                l.totals,
                before,
                "rows counted while replay is paused ({:?} after the pause)",
                paused.elapsed()
            );
            let lag = l.lag.expect("lag gauge while paused");
            max_lag = max_lag.max(lag);
            if lag > 0.0 && first_lag.is_none() {
                first_lag = Some(lag);
            }
            if is_stale(&l) && stale_after.is_none() {
                stale_after = Some(inserted.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let inserted_for = first_insert.unwrap().elapsed();
    // The gate says stale within --max-staleness (plus a margin) of the first unreplayed commit.
    let margin = Duration::from_secs(3);
    let first = first_insert.unwrap();
    let stale_after = match stale_after {
        Some(t) => t,
        None => {
            wait_for("the gate to say stale", Duration::from_secs_f64(MAX_STALENESS_SECS) + margin, || async {
                let l = look(&app).await;
                assert_eq!(l.totals, before, "rows counted while replay is paused");
                is_stale(&l).then_some(())
            })
            .await;
            first.elapsed()
        }
    };
    assert!(
        stale_after <= Duration::from_secs_f64(MAX_STALENESS_SECS) + margin,
        "the gate said stale only {stale_after:?} after the first unreplayed commit"
    );
    let (status, body) = app.get("/gate").await;
    let g: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, g["decision"].as_str()), (412, Some("pending")), "{g:#}");
    assert!(g["pending_reason"].as_str().unwrap().contains("stale data"), "{g:#}");
    let l = look(&app).await;
    assert_eq!(l.totals, before);
    let first_lag = if replayed_commit_first {
        assert!(g["pending_reason"].as_str().unwrap().contains("the data lags"), "{g:#}");
        let last_lag = l.lag.unwrap();
        max_lag = max_lag.max(last_lag);
        let first_lag = first_lag.expect("the lag gauge rose above 0 while paused");
        assert!(last_lag >= first_lag + 5.0, "the lag did not grow: first {first_lag:.2} s, last {last_lag:.2} s");
        assert!(max_lag > MAX_STALENESS_SECS, "max lag {max_lag:.2} s");
        first_lag
    } else {
        // No commit replayed yet: how current the data is cannot be known, so the polls refuse to
        // advance (and say why) instead of guessing a time that would skip rows.
        assert!(g["pending_reason"].as_str().unwrap().contains("polls are failing"), "{g:#}");
        0.0
    };
    let primary_totals = db.sql_totals().await;
    assert_eq!(sum(&primary_totals), 150);

    // 5. Replay resumed: every row counted exactly once, the lag back near 0, the gate fresh.
    sqlx::query("SELECT pg_wal_replay_resume()").execute(&standby).await.unwrap();
    let resumed = Instant::now();
    let after = app.wait_totals_match_within(&db, Duration::from_secs(30)).await;
    let caught_up = resumed.elapsed();
    assert_eq!(after, primary_totals);
    assert_eq!(sum(&after), 150);
    for (event_type, reason) in kinds {
        let key = (event_type.to_string(), reason.unwrap_or("").to_string());
        let want = if event_type == "coordinator.confirmed" { 20 } else { 15 };
        assert_eq!(after.get(&key), Some(&want), "{key:?}: {after:#?}");
    }
    let fresh = wait_for("lag near 0 and the gate no longer stale", Duration::from_secs(20), || async {
        let l = look(&app).await;
        (l.lag.is_some_and(|lag| lag < 1.0) && !is_stale(&l)).then_some(l)
    })
    .await;
    let fresh_after = resumed.elapsed();
    // Polls and reconciliations past the reconcile window recount nothing.
    app.wait_polls(15).await;
    let settled = look(&app).await;
    assert_eq!(settled.totals, primary_totals, "totals changed after catching up");
    eprintln!(
        "FIGURE replica: replica made in {replica_started:.1?}; paused {:.1} s ({inserted_for:.1?} of inserts), max lag {max_lag:.2} s (first {first_lag:.2} s), \
         stale gate {stale_after:.1?} after the first unreplayed commit, {looks} looks all at {} rows; \
         after resume: totals exact in {caught_up:.2?}, lag {:.3} s and gate fresh in {fresh_after:.2?}, decision {}",
        resumed.duration_since(paused).as_secs_f64(),
        sum(&before),
        fresh.lag.unwrap(),
        fresh.decision,
    );
    app.stop().await;
    standby.close().await;
    drop(db);
    drop(replica);
    drop(primary);
}
