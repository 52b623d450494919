//! The harness itself: databases go away even when a test panics, child processes die with their
//! handle, a missing tool is a visible skip, and the events builder writes what it says.

use std::time::Duration;

use crate::helpers::*;

async fn database_exists(name: &str) -> bool {
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("admin connection");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    n == 1
}

#[tokio::test]
async fn a_test_database_is_dropped_even_when_its_test_panics_with_an_app_connected() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let db = TestDb::new().await;
        db.events().event_type("coordinator.start").count(10).insert().await;
        let app = spawn_app(serve_config(&db.url, &[])).await;
        app.ready().await;
        tx.send(db.name.clone()).unwrap();
        panic!("a failing test (on purpose)");
    });
    let name = rx.await.expect("the database name");
    assert!(test.await.unwrap_err().is_panic());
    assert!(!database_exists(&name).await, "{name} outlived its panicking test");
}

#[tokio::test]
async fn a_test_database_is_dropped_when_its_guard_goes_out_of_scope() {
    let db = TestDb::builder().schema(SCHEMA_UUID).build().await;
    let name = db.name.clone();
    assert!(database_exists(&name).await);
    drop(db);
    assert!(!database_exists(&name).await);
}

#[tokio::test]
async fn an_exporter_child_is_killed_and_reaped_when_its_handle_is_dropped() {
    let exporter = Exporter::demo(&[], &[]);
    exporter.ready().await;
    let pid = exporter.pid();
    assert!(exporter.rss_kib() > 0);
    drop(exporter);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists");
}

#[tokio::test]
async fn an_exporter_childs_stderr_is_captured_while_it_runs_and_whole_after_it_exits() {
    // Debug logs are drained by a thread as they come, so the child never blocks on a full pipe.
    let mut exporter = Exporter::demo(&["--rate", "200"], &[("RUST_LOG", "debug")]);
    exporter.ready().await;
    for _ in 0..20 {
        assert_eq!(exporter.get("/metrics").await.0, 200);
    }
    let so_far = exporter.stderr();
    assert!(!so_far.is_empty(), "nothing captured while running");
    exporter.sigterm();
    assert_eq!(exporter.wait_exit(Duration::from_secs(5)).await.0, Some(0));
    let stderr = exporter.stderr();
    assert!(stderr.starts_with(&so_far) && stderr.len() > so_far.len(), "{stderr}");
}

#[test]
fn a_missing_tool_is_a_visible_skip_outside_ci_and_a_failure_in_ci() {
    assert!(require_tool("sh"));
    let missing = "rex-no-such-tool-7c1e";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(std::panic::catch_unwind(|| require_tool(missing)).is_err(), "CI=true must fail the test");
    } else {
        assert!(!require_tool(missing));
    }
}

/// source, event_type, context, at least 3 hours old, within the last 601 seconds.
type RowSeen = (String, Option<String>, Option<String>, bool, bool);

#[tokio::test]
async fn the_events_builder_writes_the_rows_it_describes() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.retry").reason("upstream_timeout").count(3).insert().await;
    db.events().event_type("coordinator.start").count(5).within_last_secs(600).insert().await;
    db.events()
        .event_type("coordinator.error")
        .context(r#"{"reason": 7}"#)
        .at("now() - interval '3 hours'")
        .insert()
        .await;
    db.events().source("legacy.planner").null_event_type().null_context().insert().await;
    db.insert(Some("coordinator.confirmed"), None).await;
    let rows: Vec<RowSeen> = sqlx::query_as(
        "SELECT source, event_type, context::text, created_at <= now() - interval '3 hours',
                created_at > now() - interval '601 seconds'
         FROM observability_events ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 11);
    assert_eq!(rows[0].2.as_deref(), Some(r#"{"reason": "upstream_timeout", "booking_id": "b1"}"#));
    assert_eq!(rows[3].2.as_deref(), Some(r#"{"booking_id": "b1"}"#));
    assert!(rows[3..8].iter().all(|r| r.1.as_deref() == Some("coordinator.start") && r.4 && !r.3));
    assert_eq!((rows[8].2.as_deref(), rows[8].3), (Some(r#"{"reason": 7}"#), true));
    assert_eq!((rows[9].0.as_str(), rows[9].1.as_deref(), rows[9].2.as_deref()), ("legacy.planner", None, None));
    assert_eq!((rows[10].1.as_deref(), rows[10].2.as_deref()), (Some("coordinator.confirmed"), None));
    let totals = db.sql_totals().await;
    assert_eq!(totals[&("coordinator.retry".into(), "upstream_timeout".into())], 3);
    assert_eq!(totals.values().sum::<u64>(), 10, "the other source is not counted");
}
