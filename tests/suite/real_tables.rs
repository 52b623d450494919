//! Tables shaped like real deployments (the kinds of ../shared/cases/field/): every row counted
//! where docs/metrics.md places it or named as malformed, against the SQL truth.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

/// `events_total` summed per event type label.
fn per_type(s: &Scrape) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for ((et, _), n) in s.totals() {
        *out.entry(et).or_default() += n;
    }
    out
}

fn malformed(s: &Scrape, kind: &str) -> f64 {
    s.value("rollout_exporter_malformed_rows_total", &[("kind", kind)])
}

/// Waits until the scrape satisfies `check` (20 s at most); returns it.
async fn wait_scrape(app: &TestApp, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for(what, Duration::from_secs(20), || async {
        let s = app.scrape().await;
        check(&s).then_some(s)
    })
    .await
}

#[tokio::test]
async fn a_timestamp_without_time_zone_is_read_in_the_databases_zone_and_new_rows_are_polled() {
    let db = TestDb::builder()
        .schema(
            "CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text,
               context jsonb, created_at timestamp without time zone NOT NULL DEFAULT now())",
        )
        .build()
        .await;
    sqlx::raw_sql(&format!("ALTER DATABASE {} SET timezone = 'America/New_York'", db.name))
        .execute(&db.pool)
        .await
        .unwrap();
    // The writers and the SQL truth go through psql, which sends no TimeZone: the database's applies.
    let psql = |sql: &str| {
        run_ok(Command::new("psql").args([
            "-X",
            "-Atq",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-c",
            sql,
        ]))
    };
    assert_eq!(psql("SHOW timezone").trim(), "America/New_York");
    psql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT 'assignment.coordinator', e, jsonb_build_object('booking_id', 'b' || g), now() - (g * 15 || ' seconds')::interval
         FROM generate_series(1, 100) g, unnest(ARRAY['coordinator.start', 'coordinator.confirmed']) e",
    );
    let app = spawn_app(serve_config(&db.url, &["--windows", "1h"])).await;
    app.ready().await;
    psql(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT 'assignment.coordinator', 'coordinator.start', jsonb_build_object('booking_id', 'n' || g) FROM generate_series(1, 50) g",
    );
    // The runbook's SQL in the writers' (New York) session.
    let sql_1h: i64 = psql(
        "SELECT count(*) FROM observability_events WHERE event_type = 'coordinator.start' AND created_at >= now() - interval '1 hour'",
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(sql_1h, 150);
    let s = wait_scrape(&app, "the 50 new starts polled", |s| per_type(s).get("coordinator.start") == Some(&150)).await;
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "1h"), ("event_type", "coordinator.start")]),
        150.0
    );
    assert_eq!(s.value("assignment_coordinator_active", &[]), 1.0);
    assert_eq!(malformed(&s, "future_dated"), 0.0);
    // --created-at-time-zone overrides: read as UTC, the rows are 5 hours old (none in the last hour).
    let utc = spawn_app(serve_config(&db.url, &["--windows", "1h", "--created-at-time-zone", "UTC"])).await;
    utc.ready().await;
    let s = utc.scrape().await;
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "1h"), ("event_type", "coordinator.start")]),
        0.0
    );
    utc.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn null_and_infinite_created_at_are_counted_where_sql_puts_them_and_reported() {
    let db = TestDb::builder()
        .schema(
            "CREATE TABLE observability_events (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), source text,
               event_type text, context jsonb, created_at timestamptz DEFAULT now())",
        )
        .build()
        .await;
    db.events().event_type("coordinator.start").count(100).within_last_secs(3000).insert().await;
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT 'assignment.coordinator', 'coordinator.start', jsonb_build_object('booking_id', 'x' || g), NULL FROM generate_series(1, 7) g;
         INSERT INTO observability_events (source, event_type, context, created_at) VALUES
           ('assignment.coordinator', 'coordinator.start', '{}', 'infinity'),
           ('assignment.coordinator', 'coordinator.start', '{}', '-infinity')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.start".to_string(), String::new())], 109);
    let s = app.scrape().await;
    // Windows as SQL's `created_at >= start`: NULL and -infinity in none, infinity in every one.
    let in_48h: i64 =
        sqlx::query_scalar("SELECT count(*) FROM observability_events WHERE created_at >= now() - interval '48 hours'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(in_48h, 101);
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "48h"), ("event_type", "coordinator.start")]),
        in_48h as f64
    );
    assert_eq!(malformed(&s, "created_at_null"), 7.0);
    assert_eq!(malformed(&s, "created_at_out_of_range"), 2.0);
    // The newest event is a real instant, not the epoch nor infinity.
    let last = s.value("assignment_coordinator_last_event_timestamp_seconds", &[("event_type", "coordinator.start")]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 3600.0..=now + 60.0).contains(&last), "{last}");
    // Polls keep running and count new rows normally.
    db.events().event_type("coordinator.confirmed").count(5).insert().await;
    app.wait_totals_match(&db).await;
    app.stop().await;
}

async fn enum_table(variant_c: bool) -> TestDb {
    let schema = if variant_c {
        "CREATE TYPE event_source AS ENUM ('assignment.coordinator', 'billing.worker');
         CREATE TABLE observability_events (id bigserial PRIMARY KEY, source event_source NOT NULL, event_type text,
            context jsonb, created_at timestamptz NOT NULL DEFAULT now())"
    } else {
        "CREATE TYPE event_kind AS ENUM ('coordinator.start', 'coordinator.confirmed', 'coordinator.retry', 'coordinator.manual_review');
         CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type event_kind,
            context jsonb, created_at timestamptz NOT NULL DEFAULT now())"
    };
    let db = TestDb::builder().schema(schema).build().await;
    let (source_type, event_type) = if variant_c { ("event_source", "text") } else { ("text", "event_kind") };
    sqlx::raw_sql(&format!(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT 'assignment.coordinator'::{source_type}, (ARRAY['coordinator.start', 'coordinator.confirmed'])[1 + g % 2]::text::{event_type},
                jsonb_build_object('booking_id', 'b' || (g / 2)) FROM generate_series(1, 200) g",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    db
}

#[tokio::test]
async fn enum_typed_source_and_event_type_columns_are_counted_by_serve_and_verdict_alike() {
    for variant_c in [false, true] {
        let db = enum_table(variant_c).await;
        let app = spawn_app(serve_config(&db.url, &[])).await;
        app.ready().await;
        let s = app.scrape().await;
        assert_eq!(per_type(&s).get("coordinator.start"), Some(&100), "variant c: {variant_c}");
        assert_eq!(per_type(&s).get("coordinator.confirmed"), Some(&100));
        let (code, out, err) =
            run_bin(&["verdict", "--database-url", &db.url, "--min-starts", "1", "--format", "json"]);
        assert!([0, 1, 3].contains(&code), "exit {code}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let starts = v["runbook"].as_array().unwrap().iter().find(|r| r["event_type"] == "coordinator.start").unwrap();
        assert_eq!(starts["total"], 100);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_text_context_that_is_not_json_is_counted_and_named_and_polls_go_on() {
    let db = TestDb::builder()
        .schema(
            "CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text,
               context text, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .build()
        .await;
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context)
         SELECT 'assignment.coordinator', 'coordinator.start', json_build_object('booking_id', 'b' || g)::text FROM generate_series(1, 100) g;
         INSERT INTO observability_events (source, event_type, context)
         SELECT 'assignment.coordinator', 'coordinator.retry', '{\"booking_id\":\"r' || g || '\",\"reason\":\"lock\"}' FROM generate_series(1, 10) g;
         INSERT INTO observability_events (source, event_type, context, created_at)
         VALUES ('assignment.coordinator', 'coordinator.error', '{\"booking_id\":\"old\",\"reason\":\"upstream timeo', now() - interval '3 hours')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    // A bad row arriving while polling, then good rows after it.
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context)
         VALUES ('assignment.coordinator', 'coordinator.error', '{\"booking_id\":\"e1\",\"reason\":\"upstream timeo');
         INSERT INTO observability_events (source, event_type, context)
         SELECT 'assignment.coordinator', 'coordinator.confirmed', json_build_object('booking_id', 'b' || g)::text FROM generate_series(1, 60) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let s = wait_scrape(&app, "the 60 confirmations after the bad row", |s| {
        per_type(s).get("coordinator.confirmed") == Some(&60)
    })
    .await;
    let t = s.totals();
    assert_eq!(t[&("coordinator.start".to_string(), String::new())], 100);
    assert_eq!(t[&("coordinator.retry".to_string(), "lock".to_string())], 10);
    assert_eq!(t[&("coordinator.error".to_string(), String::new())], 2, "no reason can be read from a bad row");
    assert_eq!(malformed(&s, "context_not_json"), 2.0);
    assert_eq!(s.value("rollout_exporter_database_up", &[]), 1.0);
    assert_eq!(s.value("rollout_exporter_poll_errors_total", &[("kind", "query")]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn text_that_is_not_utf8_in_a_sql_ascii_database_is_counted_and_reported() {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await.unwrap();
    let name = unique("rex_test_ascii");
    sqlx::raw_sql(&format!(
        "CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let result = std::panic::AssertUnwindSafe(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text, context jsonb,
                created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ON observability_events (source, created_at);
             INSERT INTO observability_events (source, event_type, context)
             SELECT 'assignment.coordinator', 'coordinator.start', jsonb_build_object('booking_id', 'b' || g) FROM generate_series(1, 100) g;
             INSERT INTO observability_events (source, event_type, context)
             VALUES ('assignment.coordinator', 'coordinator.retry', ('{\"booking_id\":\"b7\",\"reason\":\"caf' || E'\\xe9' || ' closed\"}')::jsonb)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let app = spawn_app(serve_config(&url, &[])).await;
        app.ready().await;
        sqlx::raw_sql(
            "INSERT INTO observability_events (source, event_type, context)
             VALUES ('assignment.coordinator', 'coordinator.retry', ('{\"booking_id\":\"b8\",\"reason\":\"caf' || E'\\xe9' || ' closed\"}')::jsonb);
             INSERT INTO observability_events (source, event_type, context)
             SELECT 'assignment.coordinator', 'coordinator.confirmed', jsonb_build_object('booking_id', 'b' || g) FROM generate_series(1, 40) g",
        )
        .execute(&pool)
        .await
        .unwrap();
        let s =
            wait_scrape(&app, "the 40 confirmations", |s| per_type(s).get("coordinator.confirmed") == Some(&40)).await;
        assert_eq!(s.totals()[&("coordinator.retry".to_string(), "caf\u{fffd} closed".to_string())], 2);
        assert_eq!(malformed(&s, "not_utf8"), 2.0);
        assert_eq!(s.value("rollout_exporter_poll_errors_total", &[("kind", "query")]), 0.0);
        app.stop().await;
        pool.close().await;
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn row_level_security_that_hides_every_row_keeps_the_exporter_not_ready_and_names_the_fix() {
    let db = TestDb::builder()
        .schema(
            "CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text,
               context jsonb, created_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE observability_events ENABLE ROW LEVEL SECURITY",
        )
        .build()
        .await;
    db.events().event_type("coordinator.start").count(150).within_last_secs(3000).insert().await;
    // `app` stands for Supabase's `authenticated`: the only role a policy lets read.
    let (role, app) = (unique("rex_rls"), unique("rex_rls_app"));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {app} NOLOGIN;
         CREATE POLICY app_reads ON observability_events FOR SELECT TO {app} USING (true);
         CREATE ROLE {role} LOGIN NOBYPASSRLS; GRANT SELECT ON observability_events TO {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let mut exporter = Exporter::serve(&url, &["--poll-interval", "200ms"], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !exporter.stderr().contains("CREATE POLICY") {
        assert!(std::time::Instant::now() < deadline, "no fix in the log:\n{}", exporter.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(exporter.get("/readyz").await.0, 503, "zeros must not look ready");
    let (status, body) = exporter.get("/gate").await;
    assert_eq!(status, 412);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["decision"], "pending", "{body}");
    let log = exporter.stderr();
    let fix =
        format!("CREATE POLICY rollout_exporter_read ON \"observability_events\" FOR SELECT TO {role} USING (true);");
    assert!(log.contains(&fix), "{log}");
    // The statement from the log fixes it.
    sqlx::raw_sql(&fix).execute(&db.pool).await.unwrap();
    exporter.ready().await;
    exporter.wait_totals_match(&db).await;
    drop(exporter);
    sqlx::raw_sql(&format!(
        "DROP POLICY rollout_exporter_read ON observability_events; DROP POLICY app_reads ON observability_events;
         DROP OWNED BY {role}; DROP ROLE {role}; DROP ROLE {app}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

/// A flags file selecting phase `full`, in a temporary directory kept alive by the first element.
fn full_phase_flags() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("rex_flags");
    let flags = dir.path().join("flags.env");
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n")
        .unwrap();
    (dir, flags)
}

/// Seeds a soak whose rows are all older than the reconciliation range: 300 starts and 300
/// confirmations, plus 20 load-test bookings (a start and a manual review each).
async fn seed_with_load_test(db: &TestDb) {
    let old = "now() - interval '4 minutes' - make_interval(secs => g * 3)";
    db.events().event_type("coordinator.start").count(300).at(old).insert().await;
    db.events().event_type("coordinator.confirmed").count(300).at(old).insert().await;
    for et in ["coordinator.start", "coordinator.manual_review"] {
        db.events()
            .event_type(et)
            .context(r#"{"booking_id": "lt", "reason": "load_test"}"#)
            .count(20)
            .at(old)
            .insert()
            .await;
    }
}

async fn verdict_of(app: &TestApp) -> serde_json::Value {
    serde_json::from_str(&app.get("/verdict").await.1).unwrap()
}

#[tokio::test]
async fn deleted_rows_leave_the_window_and_the_gate_in_both_directions_while_counters_stay() {
    let db = TestDb::new().await;
    seed_with_load_test(&db).await;
    let (_dir, flags) = full_phase_flags();
    let args = [
        "--flags-file",
        flags.to_str().unwrap(),
        "--phase-started-at",
        "2000-01-01T00:00:00Z",
        "--overlap",
        "30s",
        "--reconcile-window",
        "1m",
        "--window-reconcile-interval",
        "1s",
    ];
    let app = spawn_app(serve_config(&db.url, &args)).await;
    app.ready().await;
    assert_eq!(verdict_of(&app).await["decision"], "no_go", "20 manual reviews in 320 starts");
    let before = app.scrape().await.totals();
    // The load-test bookings are removed: the window gauges and the gate follow SQL.
    sqlx::query("DELETE FROM observability_events WHERE context->>'booking_id' = 'lt'")
        .execute(&db.pool)
        .await
        .unwrap();
    let v = wait_for("the gate to see the deletion", Duration::from_secs(30), || async {
        let v = verdict_of(&app).await;
        (v["decision"] == "go").then_some(v)
    })
    .await;
    assert_eq!(v["criteria"][1]["numerator"], 0, "{v:#}");
    let s = app.scrape().await;
    assert_eq!(
        s.value("assignment_coordinator_window_events", &[("window", "48h"), ("event_type", "coordinator.start")]),
        300.0
    );
    assert_eq!(s.totals(), before, "counters never go down");
    // And the other way: confirmations deleted turn a go into a no_go.
    sqlx::query(
        "DELETE FROM observability_events WHERE id IN
           (SELECT id FROM observability_events WHERE event_type = 'coordinator.confirmed' ORDER BY id LIMIT 20)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let v = wait_for("the gate to see the deleted confirmations", Duration::from_secs(30), || async {
        let v = verdict_of(&app).await;
        (v["decision"] == "no_go").then_some(v)
    })
    .await;
    assert_eq!(
        (v["criteria"][0]["numerator"].as_u64(), v["criteria"][0]["denominator"].as_u64()),
        (Some(280), Some(300))
    );
    // The verdict command, from SQL, says the same.
    let (code, out, _) = run_bin(&[
        "verdict",
        "--database-url",
        &db.url,
        "--flags-file",
        flags.to_str().unwrap(),
        "--phase-started-at",
        "2000-01-01T00:00:00Z",
        "--format",
        "json",
    ]);
    let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, &cli["criteria"][0]), (1, &v["criteria"][0]));
    app.stop().await;
}

#[tokio::test]
async fn the_gate_fails_closed_when_the_database_goes_away_after_a_go() {
    let Some(cluster) = crate::faults::Cluster::create() else { return };
    let db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(200).within_last_secs(3000).insert().await;
    db.events().event_type("coordinator.confirmed").count(200).within_last_secs(3000).insert().await;
    let (_dir, flags) = full_phase_flags();
    let args = [
        "--flags-file",
        flags.to_str().unwrap(),
        "--phase-started-at",
        "2000-01-01T00:00:00Z",
        "--max-staleness",
        "3s",
    ];
    let app = spawn_app(serve_config(&db.url, &args)).await;
    app.ready().await;
    assert_eq!(http_request(app.port, "POST", "/gate", &[]).await.0, 200);
    cluster.stop();
    let stopped = std::time::Instant::now();
    // database_up drops within about one poll interval of the refused connection.
    wait_for("database_up 0", Duration::from_secs(5), || async {
        (app.scrape().await.value("rollout_exporter_database_up", &[]) == 0.0).then_some(())
    })
    .await;
    let down_after = stopped.elapsed();
    assert!(down_after < Duration::from_secs(2), "database_up took {down_after:?}");
    // Within --max-staleness the gate stops saying go, and says why.
    let (status, body) = wait_for("the gate to fail closed", Duration::from_secs(10), || async {
        let (status, body) = http_request(app.port, "POST", "/gate", &[]).await;
        (status == 412).then_some((status, body))
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(6), "took {:?}", stopped.elapsed());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, v["decision"].as_str()), (412, Some("pending")));
    assert!(v["pending_reason"].as_str().unwrap().contains("database is unreachable"), "{v:#}");
    assert!(v["data_age_seconds"].as_f64().unwrap() > 3.0);
    let s = app.scrape().await;
    assert_eq!(s.value("assignment_rollout_decision", &[("decision", "go")]), 0.0);
    assert_eq!(s.value("assignment_rollout_decision", &[("decision", "pending")]), 1.0);
    app.stop().await;
    drop(db);
}

/// Peak resident memory of a process (VmHWM), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_storm_of_unique_reasons_starts_within_40_mib_and_the_sums_stay_exact() {
    let db = TestDb::new().await;
    // 150,000 errors over two days, each with its own ~330-character reason (field case 16).
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT 'assignment.coordinator', 'coordinator.error',
                jsonb_build_object('booking_id', 'b' || g, 'reason', 'upstream failed for request ' || g || ': ' || repeat(md5(g::text), 10)),
                now() - make_interval(secs => g)
         FROM generate_series(1, 150000) g;
         ANALYZE observability_events",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut exporter = Exporter::serve(&db.url, &[], &[]);
    exporter.ready().await;
    let peak = peak_rss_kib(exporter.pid());
    let s = exporter.scrape().await;
    let errors: Vec<(String, u64)> =
        s.totals().into_iter().filter(|((et, _), _)| et == "coordinator.error").map(|((_, r), n)| (r, n)).collect();
    assert_eq!(errors.iter().map(|e| e.1).sum::<u64>(), 150_000, "the sums stay exact");
    assert_eq!(errors.len(), 51, "50 reasons by name and `other`");
    assert_eq!(errors.iter().find(|e| e.0 == "other").map(|e| e.1), Some(150_000 - 50));
    crate::hardening::figure(
        "unique reasons",
        &format!("150,000 unique ~330-character reasons: peak RSS {} KiB", peak),
    );
    assert!(peak <= 40 * 1024, "peak RSS {peak} KiB > 40 MiB\n{}", exporter.stderr());
}

/// The series a start-up load decides (counters, windows, malformed rows, newest event), by name
/// and labels.
fn loaded_series(s: &Scrape) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    let families = [
        "assignment_coordinator_events_total",
        "assignment_coordinator_window_events",
        "assignment_coordinator_last_event_timestamp_seconds",
        "rollout_exporter_malformed_rows_total",
    ];
    s.series.iter().filter(|((n, _), _)| families.contains(&n.as_str())).map(|(k, v)| (k.clone(), *v)).collect()
}

/// `check`'s account of how the start-up load reads the table.
fn load_detail(url: &str) -> String {
    let (code, out, err) = run_bin(&["check", "--database-url", url, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e} (exit {code}): {out}\n{err}"));
    v["items"].as_array().unwrap().iter().find(|i| i["item"] == "start-up load").expect("a start-up load item")
        ["detail"]
        .as_str()
        .unwrap()
        .to_string()
}

/// With the (source, created_at) index the start-up load reads the table in time slices (the
/// parallel workers aggregate whole slices); without it, in one scan. Rows 15 days back, through
/// the 48 h window and the minutes streamed after the load, without an instant, at +-infinity,
/// with an array context and without an event type: both loads count them where SQL puts them,
/// and agree to the last series. Rows sit 300 s off every window boundary (the windows are
/// multiples of 600 s), so no row leaves a window while the test runs.
#[tokio::test]
async fn the_load_in_time_slices_and_in_one_scan_count_every_row_alike_and_as_sql() {
    let db = TestDb::builder()
        .schema(
            "CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text,
               context jsonb, created_at timestamptz DEFAULT now())",
        )
        .build()
        .await;
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT 'assignment.coordinator',
                CASE WHEN g % 211 = 0 THEN NULL ELSE (ARRAY['coordinator.start', 'coordinator.confirmed', 'coordinator.error', 'coordinator.retry'])[1 + g % 4] END,
                CASE WHEN g % 97 = 0 THEN '[1, 2]'::jsonb
                     WHEN g % 4 >= 2 THEN jsonb_build_object('booking_id', 'b' || g, 'reason', (ARRAY['db_timeout', 'upstream_5xx', 'no_driver'])[1 + g % 3])
                     ELSE jsonb_build_object('booking_id', 'b' || g) END,
                now() - (g * 600 + 300) * interval '1 second'
         FROM generate_series(1, 2200) AS g;
         INSERT INTO observability_events (source, event_type, context, created_at) VALUES
           ('assignment.coordinator', 'coordinator.start', '{\"booking_id\": \"n1\"}', NULL),
           ('assignment.coordinator', 'coordinator.start', '{\"booking_id\": \"n2\"}', NULL),
           ('assignment.coordinator', 'coordinator.error', '{\"reason\": \"db_timeout\"}', '-infinity'),
           ('assignment.coordinator', 'coordinator.start', '{}', 'infinity'),
           ('booking.api', 'request', '{}', now() - interval '900 seconds');
         ANALYZE observability_events",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut loaded = Vec::new();
    for (sliced, how) in [(true, "time slices"), (false, "one scan")] {
        if !sliced {
            sqlx::raw_sql("DROP INDEX observability_events_source_created_at_idx").execute(&db.pool).await.unwrap();
        }
        let detail = load_detail(&db.url);
        assert!(detail.contains(how), "{detail}");
        let app = spawn_app(serve_config(&db.url, &[])).await;
        app.ready().await;
        // Right after ready, before any poll could add a row: what the load and its catch-up counted.
        let s = app.scrape().await;
        assert_eq!(s.totals(), db.sql_totals().await, "{how}");
        for (window, secs) in [("1h", 3600), ("6h", 21600), ("48h", 172800)] {
            let sql: Vec<(Option<String>, i64)> = sqlx::query_as(
                "SELECT event_type, count(*) FROM observability_events
                 WHERE source = 'assignment.coordinator' AND created_at >= now() - $1 * interval '1 second' GROUP BY 1",
            )
            .bind(secs as f64)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            for (et, n) in sql.into_iter().filter_map(|(et, n)| et.map(|et| (et, n))) {
                let got = s.value("assignment_coordinator_window_events", &[("window", window), ("event_type", &et)]);
                assert_eq!(got, n as f64, "{how}: window {window}, {et}");
            }
        }
        assert_eq!(malformed(&s, "created_at_null"), 2.0, "{how}");
        assert_eq!(malformed(&s, "created_at_out_of_range"), 2.0, "{how}");
        assert_eq!(malformed(&s, "event_type_null"), 10.0, "{how}");
        loaded.push(loaded_series(&s));
        app.stop().await;
    }
    assert!(loaded[0].len() > 20, "{:#?}", loaded[0]);
    assert_eq!(loaded[0], loaded[1], "the sliced load and the single scan disagree");
}
