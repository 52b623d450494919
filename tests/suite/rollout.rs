//! The rollout gate against real data: phase from the flags, thresholds at their edges, the
//! verdict CLI (SQL) and /gate (memory) agreeing, the runbook table, the state machine.

use std::time::Duration;

use crate::helpers::*;

fn flags_file(dir: &TempDir, v3: &str, shadow: &str) -> String {
    let path = dir.path().join("flags.env");
    std::fs::write(
        &path,
        format!(
            "# Created by Vercel CLI\nFEATURE_ASSIGNMENT_PIPELINE_V3=\"{v3}\"\nexport FEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=\"{shadow}\"\n\nFEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL=\"3\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

const THREE_DAYS_AGO: &str = "2000-01-01T00:00:00Z";

/// Runs `verdict` on the database; returns (exit code, stdout).
fn verdict_cli(url: &str, flags: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verdict", "--database-url", url, "--flags-file", flags, "--environment", "staging"];
    args.extend_from_slice(extra);
    let (code, stdout, _) = run_bin(&args);
    (code, stdout)
}

/// Seeds a soak with `starts` starts, `confirmed` confirmations and `manual` manual reviews within
/// the last hour.
async fn seed(db: &TestDb, starts: i64, confirmed: i64, manual: i64) {
    db.events().event_type("coordinator.start").count(starts).within_last_secs(3000).insert().await;
    db.events().event_type("coordinator.confirmed").count(confirmed).within_last_secs(3000).insert().await;
    if manual > 0 {
        db.events()
            .event_type("coordinator.manual_review")
            .reason("ambiguous_address")
            .count(manual)
            .within_last_secs(3000)
            .insert()
            .await;
    }
}

async fn gate_and_cli_agree(starts: i64, confirmed: i64, manual: i64, expected: &str, code: i32) {
    let db = TestDb::new().await;
    seed(&db, starts, confirmed, manual).await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let (exit, json) = verdict_cli(&db.url, &flags, &["--format", "json", "--phase-started-at", THREE_DAYS_AGO]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("verdict JSON");
    assert_eq!((v["decision"].as_str().unwrap(), exit), (expected, code), "{json}");
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags, "--phase-started-at", THREE_DAYS_AGO])).await;
    app.ready().await;
    let (status, body) = app.get("/gate").await;
    let g: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(g["decision"], v["decision"]);
    // Memory and SQL judge the same evidence (but for the clock, read a moment apart).
    let without_clock = |v: &serde_json::Value| {
        let mut c = v["criteria"].clone();
        for cr in c.as_array_mut().unwrap() {
            if cr["name"] == "soak_elapsed" {
                cr["observed"] = serde_json::Value::Null;
            }
        }
        c
    };
    assert_eq!(without_clock(&g), without_clock(&v));
    assert_eq!(status, if expected == "go" { 200 } else { 412 });
    let (vstatus, _) = app.get("/verdict").await;
    assert_eq!(vstatus, 200, "/verdict always answers 200");
    let (pstatus, _) = http_request(app.port, "POST", "/gate", &[("Content-Type", "application/json")]).await;
    assert_eq!(pstatus, status, "Flagger POSTs to the gate");
    // Long after the due time every verdict is decided: a no_go rolls back, nothing else does.
    assert_eq!((v["decided"].as_bool(), g["decided"].as_bool()), (Some(true), Some(true)));
    let (rstatus, _) = http_request(app.port, "POST", "/gate/rollback", &[]).await;
    assert_eq!(rstatus, if expected == "no_go" { 200 } else { 412 }, "Flagger POSTs to the rollback webhook");
    app.stop().await;
}

#[tokio::test]
async fn gate_says_go_at_exactly_ninety_seven_percent_success() {
    gate_and_cli_agree(100, 97, 0, "go", 0).await;
}

#[tokio::test]
async fn gate_says_no_go_one_booking_below_ninety_seven_percent() {
    gate_and_cli_agree(100, 96, 0, "no_go", 1).await;
}

#[tokio::test]
async fn gate_says_no_go_when_manual_review_reaches_one_percent() {
    gate_and_cli_agree(200, 198, 2, "no_go", 1).await;
}

#[tokio::test]
async fn gate_says_go_just_below_one_percent_manual_review() {
    gate_and_cli_agree(200, 198, 1, "go", 0).await;
}

#[tokio::test]
async fn a_short_soak_is_pending_with_exit_code_three_and_markdown_evidence() {
    let db = TestDb::new().await;
    seed(&db, 150, 149, 0).await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let started =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600)).to_string();
    let (exit, md) = verdict_cli(&db.url, &flags, &["--phase-started-at", &started]);
    assert_eq!(exit, 3, "{md}");
    assert!(md.contains("verdict: **PENDING**"), "{md}");
    assert!(md.contains("| environment | staging |"));
    assert!(md.contains("| success_ratio | 0.993333 (149/150) | >= 0.97 | pass |"), "{md}");
    assert!(md.contains("| soak_elapsed |") && md.contains("FAIL"));
    assert!(md.contains("| coordinator.start | 150 | 100.00 |"), "{md}");
    assert!(md.contains("`FEATURE_ASSIGNMENT_PIPELINE_V3` | true"));
    // Too little data is pending too.
    let (exit, _) = verdict_cli(&db.url, &flags, &["--phase-started-at", THREE_DAYS_AGO, "--min-starts", "151"]);
    assert_eq!(exit, 3);
}

fn rfc3339_ago(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(secs)).to_string()
}

/// The verdict JSON of `verdict` and of the live `/verdict`, `/gate` and `/gate/rollback` statuses
/// and the `decided` gauge, for a soak that began `started`.
async fn cli_and_live(
    db: &TestDb,
    flags: &str,
    started: &str,
) -> (i32, serde_json::Value, serde_json::Value, u16, u16, f64) {
    let (code, json) = verdict_cli(&db.url, flags, &["--format", "json", "--phase-started-at", started]);
    let cli: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let app = spawn_app(serve_config(&db.url, &["--flags-file", flags, "--phase-started-at", started])).await;
    app.ready().await;
    let (_, body) = app.get("/verdict").await;
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (gate, _) = app.get("/gate").await;
    let (rollback, _) = http_request(app.port, "POST", "/gate/rollback", &[]).await;
    let decided = app.scrape().await.value("assignment_rollout_decided", &[]);
    app.stop().await;
    (code, cli, live, gate, rollback, decided)
}

#[tokio::test]
async fn a_circuit_trip_since_the_phase_began_is_a_decided_no_go_that_rolls_back_at_once() {
    let db = TestDb::new().await;
    seed(&db, 200, 200, 0).await;
    // Three hours into a 48 h soak. A trip an hour before the phase began is in today's window (no_go)
    // but will have left the window judged at the due time: not decided, no rollback.
    let started = rfc3339_ago(3 * 3600);
    db.events().event_type("coordinator.circuit_open").context("{}").at("now() - interval '4 hours'").insert().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let (code, cli, live, gate, rollback, decided) = cli_and_live(&db, &flags, &started).await;
    for v in [&cli, &live] {
        assert_eq!((v["decision"].as_str(), v["decided"].as_bool()), (Some("no_go"), Some(false)), "{v:#}");
        assert_eq!(v["projection"]["decision_at_due"], "go", "200 starts in 3 h project 3200 clean ones: {v:#}");
        assert_eq!(v["projection"]["failing_at_due"], serde_json::json!([]));
    }
    assert_eq!((code, gate, rollback, decided), (1, 412, 412, 0.0));
    // A trip two hours ago, after the phase began, stays in the window until the due time.
    db.events().event_type("coordinator.circuit_open").context("{}").at("now() - interval '2 hours'").insert().await;
    let (code, cli, live, gate, rollback, decided) = cli_and_live(&db, &flags, &started).await;
    for v in [&cli, &live] {
        assert_eq!((v["decision"].as_str(), v["decided"].as_bool()), (Some("no_go"), Some(true)), "{v:#}");
        assert_eq!(v["projection"]["decision_at_due"], "no_go");
        assert_eq!(v["projection"]["failing_at_due"], serde_json::json!(["no_circuit_trips"]));
        assert_eq!(v["pending_reason"], serde_json::Value::Null);
    }
    assert_eq!((code, gate, rollback, decided), (1, 412, 200, 1.0), "Flagger rolls back 45 h early");
    let (_, md) = verdict_cli(&db.url, &flags, &["--phase-started-at", &started]);
    assert!(md.contains("| decided | yes: no_go is certain"), "{md}");
    assert!(md.contains("| projected at the due time |") && md.contains("**NO_GO**"), "{md}");
}

#[tokio::test]
async fn ratio_criteria_carry_their_wilson_interval_in_json_markdown_and_metrics() {
    let db = TestDb::new().await;
    seed(&db, 100, 97, 0).await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let (code, json) = verdict_cli(&db.url, &flags, &["--format", "json", "--phase-started-at", THREE_DAYS_AGO]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(code, 0, "97/100 passes");
    let success = &v["criteria"][0];
    // Wilson (1927) at 95%: 97/100 -> [0.915481, 0.989745]; 0/100 -> [0, 0.036993].
    let bound = |c: &serde_json::Value, b: &str| c["interval"][b].as_f64().unwrap();
    assert!((bound(success, "low") - 0.915_481).abs() < 1e-6 && (bound(success, "high") - 0.989_745).abs() < 1e-6);
    assert_eq!(
        (success["interval"]["confidence"].as_f64(), success["evidence"].as_str()),
        (Some(0.95), Some("inconclusive"))
    );
    let manual = &v["criteria"][1];
    assert_eq!(bound(manual, "low"), 0.0, "0 manual reviews: the lower bound is exactly 0");
    assert!((bound(manual, "high") - 0.036_993).abs() < 1e-6, "{manual}");
    assert!(v["criteria"][2].get("interval").is_none(), "only the ratios carry one");
    // --confidence (and GATE_CONFIDENCE) changes the interval, never the decision.
    let (code, json) = verdict_cli(
        &db.url,
        &flags,
        &["--format", "json", "--phase-started-at", THREE_DAYS_AGO, "--confidence", "0.5"],
    );
    let narrow: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((code, narrow["criteria"][0]["interval"]["confidence"].as_f64()), (0, Some(0.5)));
    assert!(bound(&narrow["criteria"][0], "low") > bound(success, "low"));
    let (_, md) = verdict_cli(&db.url, &flags, &["--phase-started-at", THREE_DAYS_AGO]);
    assert!(md.contains("| 95% interval | evidence |"), "{md}");
    assert!(
        md.contains("| success_ratio | 0.970000 (97/100) | >= 0.97 | pass | 91.55% to 98.97% | inconclusive |"),
        "{md}"
    );
    for bad in ["0", "1", "1.5", "-0.1", "NaN", "ninety"] {
        let (code, _, err) = run_bin(&["verdict", "--database-url", &db.url, &format!("--confidence={bad}")]);
        assert_eq!(code, 2, "--confidence {bad}: {err}");
        assert!(err.contains("--confidence"), "{err}");
    }
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags, "--phase-started-at", THREE_DAYS_AGO])).await;
    app.ready().await;
    let s = app.scrape().await;
    let low = s.value("assignment_rollout_gate_interval_low", &[("criterion", "success_ratio")]);
    assert_eq!(low, bound(success, "low"), "the gauge is the verdict's bound");
    assert_eq!(
        s.value("assignment_rollout_gate_interval_high", &[("criterion", "manual_review_ratio")]),
        bound(manual, "high")
    );
    assert_eq!(s.value("assignment_rollout_gate_conclusive", &[("criterion", "success_ratio")]), 0.0);
    assert_eq!(s.value("assignment_rollout_gate_confidence", &[]), 0.95);
    assert_eq!(s.value("assignment_rollout_decided", &[]), 1.0, "long after the due time");
    assert_eq!(s.value("assignment_rollout_projected_decision", &[("decision", "go")]), 1.0);
    assert_eq!(
        s.value("assignment_rollout_projected_starts_at_due", &[]),
        100.0,
        "after the due time: the window's starts"
    );
    assert!(s.get("assignment_rollout_gate_interval_low", &[("criterion", "min_starts")]).is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_runbook_table_equals_the_runbooks_own_sql() {
    let db = TestDb::new().await;
    seed(&db, 300, 280, 4).await;
    db.events()
        .event_type("coordinator.retry")
        .reason("upstream_timeout")
        .count(30)
        .within_last_secs(3000)
        .insert()
        .await;
    db.events().event_type("coordinator.retry").count(7).within_last_secs(3000).insert().await;
    db.events().event_type("coordinator.error").reason("boom").count(3).within_last_secs(3000).insert().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let (_, json) = verdict_cli(&db.url, &flags, &["--format", "json", "--window", "6h"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The runbook's query, verbatim but for the window.
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT
          event_type,
          count(*) AS total,
          ROUND(100.0 * count(*) FILTER (WHERE context->>'reason' IS NULL) / NULLIF(count(*), 0), 2)::text AS success_rate_percent
        FROM observability_events
        WHERE source = 'assignment.coordinator'
          AND created_at >= now() - INTERVAL '6 hours'
        GROUP BY 1
        ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let ours = v["runbook"].as_array().unwrap();
    assert_eq!(ours.len(), rows.len());
    for (row, (et, total, pct)) in ours.iter().zip(rows) {
        assert_eq!(row["event_type"], et.as_str());
        assert_eq!(row["total"], total);
        assert_eq!(format!("{:.2}", row["success_rate_percent"].as_f64().unwrap()), pct, "{et}");
    }
}

#[tokio::test]
async fn the_phase_follows_the_flags_file_when_it_changes() {
    let db = TestDb::new().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "false", "true");
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(s.value("assignment_rollout_phase", &[("phase", "shadow")]), 1.0);
    assert_eq!(s.value("assignment_rollout_phase", &[("phase", "full")]), 0.0);
    assert_eq!(s.value("assignment_rollout_max_parallel", &[]), 3.0);
    let before = s.value("assignment_rollout_phase_started_timestamp_seconds", &[]);
    flags_file(&dir, "yes", "off");
    wait_for("phase full within 10 s", Duration::from_secs(10), || async {
        (app.scrape().await.value("assignment_rollout_phase", &[("phase", "full")]) == 1.0).then_some(())
    })
    .await;
    assert!(app.scrape().await.value("assignment_rollout_phase_started_timestamp_seconds", &[]) > before);
    flags_file(&dir, "true", "true");
    wait_for("phase invalid", Duration::from_secs(10), || async {
        let s = app.scrape().await;
        (s.value("assignment_rollout_phase", &[("phase", "invalid")]) == 1.0
            && s.get("assignment_rollout_flags_invalid", &[("reason", "both_enabled")]) == Some(1.0))
        .then_some(())
    })
    .await;
    std::fs::write(dir.path().join("flags.env"), "FEATURE_ASSIGNMENT_PIPELINE_V3=maybe\n").unwrap();
    wait_for("not a boolean", Duration::from_secs(10), || async {
        (app.scrape().await.get("assignment_rollout_flags_invalid", &[("reason", "v3_not_boolean")]) == Some(1.0))
            .then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn coordinator_events_in_shadow_mode_are_a_leak() {
    let db = TestDb::new().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "false", "true");
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(s.value("assignment_rollout_shadow_leak_events", &[]), 0.0);
    assert_eq!(s.value("assignment_coordinator_active", &[]), 0.0);
    db.insert(Some("coordinator.start"), Some(r#"{"booking_id": "leak"}"#)).await;
    wait_for("a shadow leak", Duration::from_secs(10), || async {
        let s = app.scrape().await;
        (s.value("assignment_rollout_shadow_leak_events", &[]) == 1.0
            && s.value("assignment_coordinator_active", &[]) == 1.0)
            .then_some(())
    })
    .await;
    flags_file(&dir, "true", "false");
    wait_for("no leak in full mode", Duration::from_secs(10), || async {
        (app.scrape().await.value("assignment_rollout_shadow_leak_events", &[]) == 0.0).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_booking_state_machine_counts_invalid_transitions_stuck_bookings_and_outcome_times() {
    let db = TestDb::new().await;
    let ev = |b: &str, et: &'static str, ago: &str| {
        (et, format!(r#"{{"booking_id": "{b}"}}"#), format!("now() - interval '{ago}'"))
    };
    let rows = vec![
        ev("ok", "coordinator.start", "10 minutes"),
        ev("ok", "coordinator.retry", "9 minutes"),
        ev("ok", "coordinator.lock_contention", "9 minutes"),
        ev("ok", "coordinator.confirmed", "8 minutes"),
        ev("orphan", "coordinator.confirmed", "5 minutes"),
        ev("after", "coordinator.start", "6 minutes"),
        ev("after", "coordinator.error", "5 minutes"),
        ev("after", "coordinator.retry", "4 minutes"),
        ev("stuck", "coordinator.start", "20 minutes"),
        ev("twice", "coordinator.start", "3 minutes"),
        ev("twice", "coordinator.start", "2 minutes"),
    ];
    for (et, ctx, at) in &rows {
        db.events().event_type(et).context(ctx).at(at).insert().await;
    }
    db.events().event_type("coordinator.start").context("{}").insert().await;
    // Same created_at (one transaction): start sorts before its outcome.
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at) VALUES
         ('assignment.coordinator', 'coordinator.confirmed', '{\"booking_id\": \"same\"}', '2026-01-01T00:00:00Z'::timestamptz + (now() - '2026-01-01'::timestamptz)),
         ('assignment.coordinator', 'coordinator.start', '{\"booking_id\": \"same\"}', '2026-01-01T00:00:00Z'::timestamptz + (now() - '2026-01-01'::timestamptz))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(
        s.value("assignment_coordinator_invalid_transitions_total", &[("from", "none"), ("to", "confirmed")]),
        1.0
    );
    assert_eq!(s.value("assignment_coordinator_invalid_transitions_total", &[("from", "error"), ("to", "retry")]), 1.0);
    assert_eq!(
        s.value("assignment_coordinator_invalid_transitions_total", &[("from", "started"), ("to", "start")]),
        1.0
    );
    let invalid: f64 = s
        .series
        .iter()
        .filter(|((n, _), _)| n == "assignment_coordinator_invalid_transitions_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(invalid, 3.0, "{}", s.text);
    assert_eq!(s.value("assignment_coordinator_stuck_bookings", &[]), 1.0);
    assert_eq!(
        s.value("assignment_coordinator_events_without_booking_total", &[("event_type", "coordinator.start")]),
        1.0
    );
    assert_eq!(s.value("assignment_coordinator_time_to_outcome_seconds_count", &[("outcome", "confirmed")]), 2.0);
    assert_eq!(s.value("assignment_coordinator_time_to_outcome_seconds_count", &[("outcome", "error")]), 1.0);
    // Each insert has its own now(): a few milliseconds apart.
    let sum = s.value("assignment_coordinator_time_to_outcome_seconds_sum", &[("outcome", "confirmed")]);
    assert!((120.0..121.0).contains(&sum), "{sum}");
    app.stop().await;
}

#[tokio::test]
async fn a_recent_circuit_open_holds_the_circuit_gauge_and_fails_the_gate() {
    let db = TestDb::new().await;
    seed(&db, 200, 200, 0).await;
    db.events().event_type("coordinator.circuit_open").context("{}").at("now() - interval '10 minutes'").insert().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags, "--phase-started-at", THREE_DAYS_AGO])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(s.value("assignment_coordinator_circuit_open", &[]), 0.0, "older than --circuit-hold");
    assert_eq!(s.value("assignment_rollout_gate_passing", &[("criterion", "no_circuit_trips")]), 0.0);
    assert_eq!(s.value("assignment_rollout_decision", &[("decision", "no_go")]), 1.0);
    db.insert(Some("coordinator.circuit_open"), Some("{}")).await;
    wait_for("circuit open", Duration::from_secs(10), || async {
        (app.scrape().await.value("assignment_coordinator_circuit_open", &[]) == 1.0).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn errors_in_three_consecutive_five_minute_blocks_are_sustained() {
    let db = TestDb::new().await;
    seed(&db, 200, 200, 0).await;
    // One error in each of the last four 5-minute blocks (so the last three whole blocks hold one
    // even if the test crosses a block boundary).
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context, created_at)
         SELECT 'assignment.coordinator', 'coordinator.error', '{}',
                to_timestamp((floor(extract(epoch FROM now()) / 300) - k) * 300 + 60)
         FROM generate_series(0, 3) k",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let app = spawn_app(serve_config(&db.url, &["--flags-file", &flags, "--phase-started-at", THREE_DAYS_AGO])).await;
    app.ready().await;
    let s = app.scrape().await;
    assert_eq!(s.value("assignment_coordinator_errors_sustained", &[]), 1.0);
    assert_eq!(s.value("assignment_rollout_gate_passing", &[("criterion", "no_sustained_errors")]), 0.0);
    let (exit, _) = verdict_cli(&db.url, &flags, &["--phase-started-at", THREE_DAYS_AGO]);
    assert_eq!(exit, 1);
    app.stop().await;
}

/// The verdict JSON without what depends on the instant it was computed at.
fn without_instant(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    v["evaluated_at"] = serde_json::Value::Null;
    v["data_age_seconds"] = serde_json::Value::Null;
    for cr in v["criteria"].as_array_mut().unwrap() {
        if cr["name"] == "soak_elapsed" {
            cr["observed"] = serde_json::Value::Null;
        }
    }
    v
}

#[tokio::test]
async fn the_live_gate_and_the_verdict_command_give_the_same_verdict_json_with_null_and_capped_types() {
    let db = TestDb::new().await;
    seed(&db, 300, 290, 2).await;
    db.events().event_type("coordinator.error").reason("boom").count(4).within_last_secs(3000).insert().await;
    // Unknown types past the cap: with --event-type-cap 8 one label is left after the
    // coordinator's seven; NULL (the most frequent) takes it, the others fold into `other`.
    for _ in 0..40 {
        db.insert(None, Some(r#"{"booking_id": "n"}"#)).await;
    }
    db.events().event_type("legacy.assign").count(30).within_last_secs(3000).insert().await;
    db.events().event_type("legacy.retry").reason("slow").count(20).within_last_secs(3000).insert().await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let common = ["--phase-started-at", THREE_DAYS_AGO, "--event-type-cap", "8"];
    let (_, json) = verdict_cli(&db.url, &flags, &[&common[..], &["--format", "json"]].concat());
    let cli: serde_json::Value = serde_json::from_str(&json).expect("verdict JSON");
    let serve = [&common[..], &["--flags-file", &flags, "--environment", "staging"]].concat();
    let app = spawn_app(serve_config(&db.url, &serve)).await;
    app.ready().await;
    let (_, body) = app.get("/verdict").await;
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(without_instant(&live), without_instant(&cli), "live:\n{live:#}\ncommand:\n{cli:#}");
    let labels: Vec<&str> =
        cli["runbook"].as_array().unwrap().iter().map(|r| r["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "(null)",
            "coordinator.confirmed",
            "coordinator.error",
            "coordinator.manual_review",
            "coordinator.start",
            "other"
        ]
    );
    let other = cli["runbook"].as_array().unwrap().iter().find(|r| r["event_type"] == "other").unwrap();
    assert_eq!(other["total"], 50, "legacy.assign and legacy.retry fold into other");
    assert_eq!(other["success_rate_percent"], 60.0, "30 of the 50 have no reason");
    app.stop().await;
}

/// A soak whose decision changes over time: a start and a confirmation every minute for 70 hours,
/// and a bad stretch of 200 manual reviews 60 to 58 hours ago. Returns (the minute now, in RFC 3339
/// terms, as Unix seconds, and the phase start).
async fn soak_with_a_bad_stretch(db: &TestDb) -> (i64, String) {
    let now: i64 = sqlx::query_scalar("SELECT extract(epoch FROM date_trunc('minute', now()))::int8")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for et in ["coordinator.start", "coordinator.confirmed"] {
        db.events()
            .event_type(et)
            .count(70 * 60)
            .at(&format!("to_timestamp({now}) - make_interval(mins => g::int)"))
            .insert()
            .await;
    }
    db.events()
        .event_type("coordinator.manual_review")
        .reason("ambiguous_address")
        .count(200)
        .at(&format!("to_timestamp({now}) - interval '58 hours' - make_interval(secs => g * 36)"))
        .insert()
        .await;
    let started =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs((now - 70 * 3600) as u64));
    (now, started.to_string())
}

#[tokio::test]
async fn verdict_at_a_past_instant_equals_sql_over_the_window_ending_there_and_follows_the_bad_stretch() {
    let db = TestDb::new().await;
    let (now, started) = soak_with_a_bad_stretch(&db).await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    for (hours_ago, expected) in [(65, "pending"), (30, "no_go"), (1, "go")] {
        let at = now - hours_ago * 3600;
        let at_text =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at as u64)).to_string();
        let (code, json) =
            verdict_cli(&db.url, &flags, &["--format", "json", "--phase-started-at", &started, "--at", &at_text]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(v["decision"], expected, "{hours_ago} h ago: {v:#}");
        assert_eq!(v["evaluated_at"], at_text.as_str());
        assert_eq!(code, [("go", 0), ("no_go", 1), ("pending", 3)].iter().find(|c| c.0 == expected).unwrap().1);
        // The SQL truth over [T - 48h, T), the start minute-aligned (docs/metrics.md).
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT event_type, count(*), count(*) FILTER (WHERE context->>'reason' IS NULL) FROM observability_events
             WHERE source = 'assignment.coordinator' AND created_at >= to_timestamp(floor(($1::int8 - 172800) / 60.0) * 60)
               AND created_at < to_timestamp($1::int8) GROUP BY 1 ORDER BY 1",
        )
        .bind(at)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let runbook = v["runbook"].as_array().unwrap();
        assert_eq!(runbook.len(), rows.len(), "{hours_ago} h ago: {runbook:?} vs {rows:?}");
        for (row, (et, total, _)) in runbook.iter().zip(&rows) {
            assert_eq!((row["event_type"].as_str(), row["total"].as_i64()), (Some(et.as_str()), Some(*total)));
        }
        let count = |et: &str| rows.iter().find(|r| r.0 == et).map_or(0, |r| r.1);
        assert_eq!(v["criteria"][0]["numerator"], count("coordinator.confirmed"));
        assert_eq!(v["criteria"][1]["numerator"], count("coordinator.manual_review"));
        assert_eq!(v["criteria"][1]["denominator"], count("coordinator.start"));
    }
    // A future instant is a usage error.
    let (code, _) = verdict_cli(&db.url, &flags, &["--at", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, 2);
}

#[tokio::test]
async fn backtest_steps_equal_verdict_at_and_show_the_decision_changing() {
    let db = TestDb::new().await;
    let (now, started) = soak_with_a_bad_stretch(&db).await;
    let dir = TempDir::new("rex_flags");
    let flags = flags_file(&dir, "true", "false");
    let rfc =
        |t: i64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t as u64)).to_string();
    let (from, to) = (now - 66 * 3600, now - 3600);
    let common = ["--database-url", &db.url, "--flags-file", &flags, "--phase-started-at", &started];
    let backtest = |format: &str| {
        let mut args = vec!["backtest"];
        args.extend_from_slice(&common);
        let (from, to) = (rfc(from), rfc(to));
        args.extend_from_slice(&[
            "--from",
            &from,
            "--to",
            &to,
            "--step",
            "1h",
            "--format",
            format,
            "--environment",
            "staging",
        ]);
        let (code, out, err) = run_bin(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let lines: Vec<serde_json::Value> = backtest("jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 66, "both ends included");
    let decisions: Vec<&str> = lines.iter().map(|v| v["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions.first(), Some(&"pending"), "before the soak elapsed");
    // 66 h ago the phase was 4 h old with a start a minute and no manual review: at that rate the
    // due time holds 2880 starts and says go; the bad stretch 60 h ago had not happened yet.
    assert_eq!(lines[0]["projection"]["decision_at_due"], "go", "{:#}", lines[0]);
    assert_eq!(lines[0]["projection"]["starts_at_due"], 48 * 60);
    assert_eq!(lines[0]["decided"], false);
    // In the bad stretch (before the due time) the ratio fails: no_go, not decided; the projection
    // from the rates since the phase began says no_go too.
    let stretch = &lines[7];
    assert_eq!(
        (stretch["decision"].as_str(), stretch["decided"].as_bool()),
        (Some("no_go"), Some(false)),
        "{stretch:#}"
    );
    assert_eq!(stretch["projection"]["decision_at_due"], "no_go");
    // The phase began 70 h ago, so the due time was 22 h ago (step 44): decided from there on only.
    assert!(lines[..44].iter().all(|v| v["decided"] == false) && lines[44..].iter().all(|v| v["decided"] == true));
    assert!(decisions.contains(&"no_go"), "the bad stretch inside the window");
    assert_eq!(decisions.last(), Some(&"go"), "after it left");
    // Each sampled step equals `verdict --at` for the same instant, field for field.
    for k in [0, 20, 37, 65] {
        let at = rfc(from + k as i64 * 3600);
        let (_, json) =
            verdict_cli(&db.url, &flags, &["--format", "json", "--phase-started-at", &started, "--at", &at]);
        let at_verdict: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(lines[k], at_verdict, "step {k} ({at})");
    }
    let md = backtest("markdown");
    assert!(
        md.contains("| **PENDING** |")
            && md.contains("| **NO_GO** | manual_review_ratio")
            && md.contains("| **GO** | none"),
        "{md}"
    );
    let csv = backtest("csv");
    assert_eq!(csv.lines().count(), 67);
    assert!(csv.starts_with("evaluated_at,decision,"));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let col = |name: &str| last[header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("{name}: {header:?}"))];
    let low: f64 = col("success_ratio_low").parse().unwrap();
    assert!((low - lines[65]["criteria"][0]["interval"]["low"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!((col("decided"), col("projected_decision_at_due")), ("true", "go"));
    // What-if thresholds change the judgement, not the data.
    let mut args = vec!["backtest"];
    args.extend_from_slice(&common);
    let (f, t) = (rfc(to), rfc(to));
    args.extend_from_slice(&["--from", &f, "--to", &t, "--format", "jsonl", "--min-success-ratio", "1.01"]);
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 2, "a ratio above 1 is a usage error: {err}");
}
