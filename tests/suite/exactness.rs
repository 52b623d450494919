//! The exporter agrees with SQL to the row: start-up load, polls, late commits, clock skew,
//! restarts, windows.

use std::time::Duration;

use crate::helpers::*;
use crate::live_outputs;

/// Every odd case of the issue: NULL / non-object contexts, non-string, empty, long, quoted and
/// Unicode reasons, unknown and NULL event types, other sources.
async fn insert_every_case(db: &TestDb) {
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some("coordinator.start"), Some(r#"{"booking_id": "b1"}"#)),
        (Some("coordinator.start"), None),
        (Some("coordinator.confirmed"), Some(r#"{"booking_id": "b1"}"#)),
        (Some("coordinator.retry"), Some(r#"{"booking_id": "b2", "reason": "upstream_timeout"}"#)),
        (Some("coordinator.retry"), Some(r#""just a string""#)),
        (Some("coordinator.retry"), Some(r#"[1, 2, 3]"#)),
        (Some("coordinator.retry"), Some("42")),
        (Some("coordinator.retry"), Some("null")),
        (Some("coordinator.error"), Some(r#"{"reason": 42}"#)),
        (Some("coordinator.error"), Some(r#"{"reason": {"nested": [1, "x"]}}"#)),
        (Some("coordinator.error"), Some(r#"{"reason": true}"#)),
        (Some("coordinator.error"), Some(r#"{"reason": null}"#)),
        (Some("coordinator.manual_review"), Some(r#"{"reason": ""}"#)),
        (Some("coordinator.manual_review"), Some(r#"{"reason": "quote \" backslash \\ newline \n tab \t end"}"#)),
        (Some("coordinator.manual_review"), Some(r#"{"reason": "ünïcødé 予約 🚕 \u0001 ctrl"}"#)),
        (Some("coordinator.lock_contention"), Some(r#"{"reason": "booking_locked"}"#)),
        (Some("coordinator.something_new"), Some(r#"{"reason": "x"}"#)),
        (None, Some(r#"{"reason": "no type"}"#)),
    ];
    for (et, ctx) in cases {
        db.insert(*et, *ctx).await;
    }
    let long = "r".repeat(300);
    db.insert(Some("coordinator.retry"), Some(&format!(r#"{{"reason": "{long}"}}"#))).await;
    // Another source, never counted.
    db.events().source("legacy.planner").event_type("coordinator.start").null_context().insert().await;
}

#[tokio::test]
async fn start_up_load_equals_sql_group_by_for_every_odd_row() {
    let db = TestDb::new().await;
    insert_every_case(&db).await;
    // Old rows (aggregated at start-up, not streamed) with the same oddities.
    db.events()
        .event_type("coordinator.error")
        .context(r#"{"reason": 7}"#)
        .at("now() - interval '3 hours'")
        .insert()
        .await;
    db.events().event_type("coordinator.retry").null_context().at("now() - interval '5 days'").insert().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.manual_review".into(), "(empty)".into())], 1);
    assert_eq!(totals[&("coordinator.error".into(), "42".into())], 1);
    assert_eq!(totals[&("coordinator.error".into(), "7".into())], 1);
    assert_eq!(totals[&("(null)".into(), "no type".into())], 1);
    assert!(totals.contains_key(&("coordinator.error".into(), r#"{"nested": [1, "x"]}"#.into())));
    let s = app.scrape().await;
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "context_not_object")]), 4.0);
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "context_null")]), 2.0);
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "reason_empty")]), 1.0);
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "event_type_null")]), 1.0);
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "reason_not_string")]), 4.0);
    promtool_check_metrics(&s.text);
    app.stop().await;
}

#[tokio::test]
async fn uuid_primary_keys_work_and_polls_add_new_rows_exactly() {
    let db = TestDb::builder().schema(SCHEMA_UUID).build().await;
    db.events().event_type("coordinator.start").count(500).within_last_secs(3 * 3600).insert().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    for round in 0..3 {
        db.events().event_type("coordinator.confirmed").count(50 + round).insert().await;
        db.events().event_type("coordinator.retry").reason("upstream_timeout").count(7).insert().await;
        app.wait_totals_match(&db).await;
    }
    // Several polls later nothing has been counted twice.
    app.wait_polls(3).await;
    assert_eq!(app.scrape().await.totals(), db.sql_totals().await);
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_held_open_across_polls_is_counted_once_as_late() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context) VALUES ($1, 'coordinator.start', '{}')",
    )
    .bind(SOURCE)
    .execute(&mut *tx)
    .await
    .unwrap();
    // Rows committed meanwhile by others are counted while the long transaction is open.
    db.insert(Some("coordinator.confirmed"), Some("{}")).await;
    app.wait_totals_match(&db).await;
    app.wait_polls(4).await;
    tx.commit().await.unwrap();
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.start".into(), "".into())], 1);
    app.wait_polls(3).await;
    let s = app.scrape().await;
    assert_eq!(s.totals(), db.sql_totals().await);
    assert_eq!(s.value("rollout_exporter_late_events_total", &[]), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_future_dated_row_is_counted_and_does_not_hide_later_rows() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    db.events().event_type("coordinator.start").context("{}").at("now() + interval '2 hours'").insert().await;
    app.wait_totals_match(&db).await;
    for _ in 0..5 {
        db.insert(Some("coordinator.confirmed"), Some("{}")).await;
    }
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.confirmed".into(), "".into())], 5);
    app.wait_polls(2).await;
    let s = app.scrape().await;
    assert_eq!(s.totals(), db.sql_totals().await, "re-reading the future row must not count it again");
    assert_eq!(s.value("rollout_exporter_malformed_rows_total", &[("kind", "future_dated")]), 1.0);
    // A future row is inside every window, as `created_at >= start` is in SQL.
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "1h"), ("event_type", "coordinator.start")]),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_exporter_resumes_at_the_same_counts() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(300).within_last_secs(7200).insert().await;
    db.events().event_type("coordinator.confirmed").count(290).within_last_secs(7200).insert().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    db.events().event_type("coordinator.retry").reason("rate_limited").count(20).insert().await;
    let before = app.wait_totals_match(&db).await;
    app.stop().await;
    let again = spawn_app(serve_config(&db.url, &[])).await;
    again.ready().await;
    assert_eq!(again.scrape().await.totals(), before, "the first scrape after restart equals the last before");
    again.stop().await;
}

#[tokio::test]
async fn count_since_counts_only_newer_rows() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").null_context().at("'2020-01-01T00:00:00Z'").insert().await;
    db.events().event_type("coordinator.start").null_context().at("'2026-01-01T00:00:00Z'").insert().await;
    let app = spawn_app(serve_config(&db.url, &["--count-since", "2025-06-01T00:00:00+02:00"])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(
        s.value("assignment_coordinator_events_total", &[("event_type", "coordinator.start"), ("reason", "")]),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn window_gauges_and_ratios_equal_sql_over_the_same_minute_aligned_window() {
    let db = TestDb::new().await;
    // Rows spread over 50 hours; some fall outside every window.
    db.events().event_type("coordinator.start").count(2000).within_last_secs(50 * 3600).insert().await;
    db.events().event_type("coordinator.confirmed").count(1950).within_last_secs(50 * 3600).insert().await;
    db.events()
        .event_type("coordinator.manual_review")
        .reason("vip_customer")
        .count(15)
        .within_last_secs(50 * 3600)
        .insert()
        .await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    app.wait_polls(1).await;
    let s = app.scrape().await;
    let now = s.value("rollout_exporter_last_poll_success_timestamp_seconds", &[]);
    for (label, secs) in [("1h", 3600i64), ("6h", 21600), ("48h", 172800)] {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, count(*) FROM observability_events
             WHERE source = $1 AND created_at >= to_timestamp(floor(($2::float8 - $3::int8) / 60) * 60)
             GROUP BY 1",
        )
        .bind(SOURCE)
        .bind(now)
        .bind(secs)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let count = |et: &str| rows.iter().find(|r| r.0 == et).map_or(0, |r| r.1) as f64;
        for et in ["coordinator.start", "coordinator.confirmed", "coordinator.manual_review", "coordinator.error"] {
            assert_eq!(
                s.value("assignment_coordinator_window_events", &[("window", label), ("event_type", et)]),
                count(et),
                "{label} {et}"
            );
        }
        let starts = count("coordinator.start");
        let expected = (count("coordinator.confirmed") / starts).min(1.0);
        assert_eq!(s.value("assignment_coordinator_success_ratio", &[("window", label)]), expected);
        let expected = count("coordinator.manual_review") / starts;
        assert_eq!(s.value("assignment_coordinator_manual_review_ratio", &[("window", label)]), expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn ratios_are_absent_while_a_window_holds_no_start() {
    let db = TestDb::new().await;
    db.insert(Some("coordinator.confirmed"), Some("{}")).await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert!(s.get("assignment_coordinator_success_ratio", &[("window", "1h")]).is_none());
    assert!(!s.text.contains("assignment_coordinator_manual_review_ratio{"));
    app.stop().await;
}

#[tokio::test]
async fn reasons_beyond_the_cap_fold_into_other_and_the_sum_stays_exact() {
    let db = TestDb::new().await;
    for i in 0..6 {
        db.events()
            .event_type("coordinator.retry")
            .reason(&format!("reason_{i}"))
            .count(10 - i)
            .within_last_secs(3600 * 5)
            .insert()
            .await;
    }
    let app = spawn_app(serve_config(&db.url, &["--reason-cap", "3"])).await;
    app.ready().await;
    db.events().event_type("coordinator.retry").reason("brand_new").count(4).insert().await;
    db.events().event_type("coordinator.retry").reason("reason_0").count(2).insert().await;
    // 10 + 9 + ... + 5 at start-up, 6 after (past the timestamp delay).
    wait_for("the new rows to be counted", Duration::from_secs(20), || async {
        let t = app.scrape().await.totals();
        let retries: u64 = t.iter().filter(|((et, _), _)| et == "coordinator.retry").map(|(_, n)| n).sum();
        (retries == 45 + 6).then_some(())
    })
    .await;
    let s = app.scrape().await;
    let t = s.totals();
    // The three most frequent at start-up keep their labels.
    assert_eq!(t[&("coordinator.retry".into(), "reason_0".into())], 12);
    assert_eq!(t[&("coordinator.retry".into(), "reason_1".into())], 9);
    assert_eq!(t[&("coordinator.retry".into(), "reason_2".into())], 8);
    assert_eq!(t[&("coordinator.retry".into(), "other".into())], 7 + 6 + 5 + 4);
    let sum: u64 = t.iter().filter(|((e, _), _)| e == "coordinator.retry").map(|(_, v)| v).sum();
    let sql: i64 =
        sqlx::query_scalar("SELECT count(*) FROM observability_events WHERE event_type = 'coordinator.retry'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(sum, sql as u64);
    app.stop().await;
}

#[tokio::test]
async fn the_poll_query_is_an_index_range_scan() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT CASE WHEN g % 10 < 3 THEN 'other.source' ELSE 'assignment.coordinator' END,
                'coordinator.start', '{}', now() - make_interval(secs => g * 2)
         FROM generate_series(1, 100000) g; ANALYZE observability_events;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cfg = serve_config(&db.url, &[]);
    let follower = rollout_exporter::source::postgres::PgSource::new(
        cfg.db.clone(),
        rollout_exporter::source::postgres::FollowConfig::serve(&cfg),
    )
    .unwrap();
    let sql = follower.db().queries().rows_page().to_string();
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!("PREPARE poll(text, int8, int8, int8, int8, int8) AS {sql}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let lower_us = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
        - Duration::from_secs(135))
    .as_micros() as i64;
    let upper_us = lower_us + 135_000_000;
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN EXECUTE poll('{SOURCE}', {lower_us}, {upper_us}, 10000, {upper_us}, 10000)"
    ))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let text = plan.join("\n");
    assert!(
        text.contains("Index Scan using observability_events_source_created_at_idx"),
        "plan does not use the index:\n{text}"
    );
    assert!(!text.contains("Seq Scan"), "plan scans the table:\n{text}");
    drop(conn);
}

#[tokio::test]
async fn a_poll_with_no_new_rows_reads_no_rows() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(500).within_last_secs(60).insert().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    app.wait_polls(1).await;
    let before = app.scrape().await.value("rollout_exporter_polled_rows_total", &[]);
    app.wait_polls(5).await;
    // The 500 rows inside the overlap are only counted, never transferred again.
    assert_eq!(app.scrape().await.value("rollout_exporter_polled_rows_total", &[]), before);
    db.events().event_type("coordinator.confirmed").count(3).insert().await;
    app.wait_totals_match(&db).await;
    assert_eq!(app.scrape().await.value("rollout_exporter_polled_rows_total", &[]), before + 3.0);
    app.stop().await;
}

#[tokio::test]
async fn reconciliation_finds_a_transaction_that_outlived_the_overlap() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(
        &db.url,
        &["--overlap", "1s", "--reconcile-interval", "1s", "--reconcile-window", "10m"],
    ))
    .await;
    app.ready().await;
    let mut tx = db.pool.begin().await.unwrap();
    // The checked margin reaches back to the start of the minute the overlap begins in: a row
    // dated two minutes back is beyond it, where only reconciliation looks.
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context, created_at) \
         VALUES ($1, 'coordinator.start', '{}', now() - interval '2 minutes')",
    )
    .bind(SOURCE)
    .execute(&mut *tx)
    .await
    .unwrap();
    // A rolled-back transaction is never counted.
    let mut rolled = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO observability_events (source, event_type, context) VALUES ($1, 'coordinator.error', '{}')",
    )
    .bind(SOURCE)
    .execute(&mut *rolled)
    .await
    .unwrap();
    // Hold the transaction well past the 1 s overlap, across many polls.
    let started = std::time::Instant::now();
    wait_for("the overlap to pass", Duration::from_secs(10), || async {
        (started.elapsed() > Duration::from_millis(2500)).then_some(())
    })
    .await;
    app.wait_polls(3).await;
    tx.commit().await.unwrap();
    rolled.rollback().await.unwrap();
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals.get(&("coordinator.start".into(), "".into())), Some(&1));
    assert!(!totals.contains_key(&("coordinator.error".into(), "".into())));
    app.wait_polls(3).await;
    let s = app.scrape().await;
    assert_eq!(s.value("rollout_exporter_reconciled_rows_total", &[]), 1.0);
    assert_eq!(s.value("rollout_exporter_late_events_total", &[]), 0.0);
    assert_eq!(s.totals(), db.sql_totals().await, "counted once");
    app.stop().await;
}

#[tokio::test]
async fn a_scrape_right_after_a_poll_shows_the_new_snapshot() {
    use rollout_exporter::config::{RolloutConfig, TallyConfig, Window};
    use rollout_exporter::events::{ContextKind, Row};
    use rollout_exporter::rollout::{Flags, Thresholds};
    use rollout_exporter::snapshot::Snapshot;
    use rollout_exporter::tally::Tally;
    use rollout_exporter::time::UnixMicros;
    use tower::ServiceExt;

    let soak = Window { label: "48h".into(), seconds: 172_800 };
    let rollout = RolloutConfig {
        flags_file: None,
        environment: "test".into(),
        phase_started_at: None,
        thresholds: Thresholds::default(),
        soak: soak.clone(),
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
        max_staleness: None,
        links: Default::default(),
    };
    let (live, snapshots) = live_outputs(rollout, Flags::default().phase(), Snapshot::default());
    let router = rollout_exporter::outputs::http::router(live);
    let cfg = TallyConfig {
        windows: vec![soak.clone()],
        soak,
        active_within: Duration::from_secs(600),
        reason_cap: 50,
        event_type_cap: 50,
        stuck_after: Duration::from_secs(900),
        max_tracked_bookings: 10,
    };
    let mut tally = Tally::new(cfg);
    let now = 1_800_000_000_000_000;
    tally.advance(UnixMicros(now));
    let scrape = |router: axum::Router| async move {
        let res = router
            .oneshot(axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        Scrape::parse(std::str::from_utf8(&bytes).unwrap())
    };
    for n in 1..=3u32 {
        let mut rows = vec![Row {
            id: n.to_string(),
            event_type: Some("coordinator.start".into()),
            reason: None,
            reason_json_type: None,
            context: ContextKind::Object,
            booking_id: None,
            created_us: now,
            time: rollout_exporter::events::TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        }];
        tally.fold_rows(&mut rows);
        snapshots.send_replace(std::sync::Arc::new(Snapshot {
            generation: u64::from(n),
            tally: tally.view(),
            ..Snapshot::default()
        }));
        let s = scrape(router.clone()).await;
        let labels = [("event_type", "coordinator.start"), ("reason", "")];
        assert_eq!(
            s.value("assignment_coordinator_events_total", &labels),
            f64::from(n),
            "a reused rendering hid a poll"
        );
    }
}

#[tokio::test]
async fn a_burst_larger_than_a_page_and_one_transaction_larger_than_a_page_are_counted_exactly() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    // 25,000 rows over the last 20 s (two and a half pages), then 12,000 rows of one transaction
    // sharing one created_at (more than a page at one instant).
    db.events().event_type("coordinator.start").count(25_000).within_last_secs(20).insert().await;
    db.events().event_type("coordinator.confirmed").count(12_000).insert().await;
    let totals = app.wait_totals_match_within(&db, Duration::from_secs(60)).await;
    assert_eq!(totals.values().sum::<u64>(), 37_000);
    app.wait_polls(2).await;
    let s = app.scrape().await;
    assert_eq!(s.totals(), db.sql_totals().await, "no page counted twice");
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "1h"), ("event_type", "coordinator.start")]),
        25_000.0
    );
    assert_eq!(s.value("rollout_exporter_tracked_ids", &[]), 0.0, "no ids held for rows below the watermark");
    app.stop().await;
}

#[tokio::test]
async fn a_late_row_in_the_minute_of_a_future_dated_row_is_counted_once_and_the_future_row_once() {
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO observability_events (source, event_type, context) VALUES ($1, 'coordinator.retry', '{\"reason\": \"slow\"}')")
        .bind(SOURCE)
        .execute(&mut *tx)
        .await
        .unwrap();
    // Committed while the first is open: a row dated a few seconds ahead (in the same or the next
    // minute), read and remembered before the late one commits.
    let started = std::time::Instant::now();
    db.events().event_type("coordinator.retry").reason("slow").at("now() + interval '3 seconds'").insert().await;
    app.wait_totals_match(&db).await;
    // Past the 1 s --timestamp-delay: the open transaction's row is now behind the watermark.
    wait_for("the timestamp delay to pass", Duration::from_secs(10), || async {
        (started.elapsed() > Duration::from_millis(2000)).then_some(())
    })
    .await;
    app.wait_polls(2).await;
    tx.commit().await.unwrap();
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.retry".into(), "slow".into())], 2);
    // Well after both: the future row is below the watermark, and nothing is counted again.
    wait_for("the future row to fall below the watermark", Duration::from_secs(20), || async {
        (app.scrape().await.value("rollout_exporter_tracked_ids", &[]) == 0.0).then_some(())
    })
    .await;
    app.wait_polls(3).await;
    let s = app.scrape().await;
    assert_eq!(s.totals(), db.sql_totals().await);
    assert_eq!(s.value("rollout_exporter_late_events_total", &[]), 1.0);
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "1h"), ("event_type", "coordinator.retry")]),
        2.0
    );
    app.stop().await;
}
