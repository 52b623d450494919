//! The binary as operators run it: exit codes, one-line errors, secrets, signals, the demo.

use std::time::Duration;

use crate::helpers::*;

#[test]
fn every_invalid_value_exits_2_with_one_line_naming_the_flag() {
    let url = "postgres://u@127.0.0.1:1/x";
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--database-url", url, "--poll-interval", "soon"], "--poll-interval"),
        (&["serve", "--database-url", url, "--poll-interval", "0s"], "--poll-interval"),
        (&["serve", "--database-url", url, "--overlap", "1 fortnight"], "--overlap"),
        (&["serve", "--database-url", url, "--windows", "1h,90s"], "--windows"),
        (&["serve", "--database-url", url, "--reason-cap", "many"], "--reason-cap"),
        (&["serve", "--database-url", url, "--listen", "nowhere"], "--listen"),
        (&["serve", "--database-url", url, "--statement-timeout", "x"], "--statement-timeout"),
        (&["serve", "--database-url", url, "--count-since", "yesterday"], "--count-since"),
        (&["serve", "--database-url", url, "--table", "x; DROP TABLE y"], "--table"),
        (&["serve", "--database-url", url, "--min-success-ratio", "1.5"], "--min-success-ratio"),
        (&["serve", "--database-url", url, "--phase-started-at", "monday"], "--phase-started-at"),
        (&["serve", "--database-url", "mysql://x"], "--database-url"),
        (&["serve"], "--database-url"),
        (&["serve", "--database-url", url, "--log-format", "xml"], "--log-format"),
        (&["serve", "--database-url", url, "--no-such-flag"], "--no-such-flag"),
        (&["demo", "--scenario", "chaos"], "--scenario"),
        (&["demo", "--rate", "0"], "--rate"),
        (&["verdict", "--database-url", url, "--window", "2d3"], "--window"),
        (&["verdict", "--database-url", url, "--format", "yaml"], "--format"),
    ];
    for (args, flag) in cases {
        let (code, stdout, stderr) = run_bin(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} printed more than one line:\n{stderr}");
        assert!(stderr.contains(flag), "{args:?} error does not name {flag}: {stderr}");
    }
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let (code, out, _) = run_bin(&["serve", "--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--database-url",
        "DATABASE_URL",
        "--listen",
        "LISTEN_ADDR",
        "0.0.0.0:9864",
        "--poll-interval",
        "--overlap",
        "--windows",
        "--reason-cap",
        "--statement-timeout",
        "--log-format",
        "--table",
        "--source",
        "--count-since",
        "--flags-file",
        "--soak",
    ] {
        assert!(out.contains(needle), "serve --help lacks {needle}");
    }
}

#[tokio::test]
async fn the_password_never_reaches_logs_errors_or_endpoints() {
    let sentinel = "S3ntinel-Pw-7f1c";
    let db = TestDb::new().await;
    db.insert(Some("coordinator.start"), Some("{}")).await;
    let good = db.url.replace("postgres@", &format!("postgres:{sentinel}@"));
    let debug = [("RUST_LOG", "debug")];
    let mut a = Exporter::serve(&good, &["--poll-interval", "100ms"], &debug);
    // A server that is not there: connection errors must not echo the URL's password either.
    let bad = format!("postgres://postgres:{sentinel}@127.0.0.1:1/nowhere?password={sentinel}");
    let mut b = Exporter::serve(&bad, &["--connect-timeout", "200ms"], &debug);
    let (port_a, port_b) = (a.port, b.port);
    a.ready().await;
    wait_for("exporter b failed a load", Duration::from_secs(20), || async {
        let (_, body) = try_get(port_b, "/metrics").await?;
        let s = Scrape::parse(&body);
        (s.value("rollout_exporter_poll_errors_total", &[("kind", "connect")]) >= 2.0).then_some(())
    })
    .await;
    let mut seen = String::new();
    for port in [port_a, port_b] {
        for path in ["/", "/metrics", "/gate", "/verdict", "/readyz", "/healthz"] {
            seen.push_str(&http_get(port, path).await.1);
        }
    }
    a.sigterm();
    b.sigterm();
    a.wait_exit(Duration::from_secs(5)).await;
    b.wait_exit(Duration::from_secs(5)).await;
    seen.push_str(&a.stderr());
    let b_err = b.stderr();
    assert!(b_err.contains("start-up load failed"), "the failure is logged: {b_err}");
    seen.push_str(&b_err);
    // Configuration errors and the verdict's connection error.
    seen.push_str(
        &run_bin(&["serve", "--database-url", &format!("postgres://u:{sentinel}@h/db?sslmode=bogus&x={sentinel}")]).2,
    );
    seen.push_str(&run_bin(&["verdict", "--database-url", &bad, "--connect-timeout", "200ms"]).2);
    seen.push_str(
        &run_bin(&["serve", "--database-url", &format!("postgres://u:{sentinel}@h/db"), "--listen", "bad"]).2,
    );
    assert!(!seen.is_empty());
    assert!(!seen.contains(sentinel), "the password leaked:\n{seen}");
}

#[tokio::test]
async fn sigterm_during_polls_exits_zero_within_five_seconds() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(1000).within_last_secs(100).insert().await;
    let mut p = Exporter::serve(&db.url, &["--poll-interval", "10ms"], &[]);
    p.ready().await;
    p.sigterm();
    let (code, elapsed) = p.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(elapsed < Duration::from_secs(5));
}

#[tokio::test]
async fn the_demo_serves_valid_metrics_and_its_scenarios_decide_the_gate() {
    for (scenario, decision, status) in [("healthy", "go", 200), ("degraded", "no_go", 412)] {
        let mut p = Exporter::demo(&["--scenario", scenario], &[]);
        let port = p.port;
        p.ready().await;
        let (_, body) = http_get(port, "/metrics").await;
        promtool_check_metrics(&body);
        let s = Scrape::parse(&body);
        assert_eq!(s.value("assignment_rollout_decision", &[("decision", decision)]), 1.0, "{scenario}");
        let (code, gate) = http_get(port, "/gate").await;
        assert_eq!(code, status, "{scenario}: {gate}");
        let (_, landing) = http_get(port, "/").await;
        assert!(landing.contains("href=\"metrics\"") && landing.contains(decision));
        p.sigterm();
        assert_eq!(p.wait_exit(Duration::from_secs(5)).await.0, Some(0));
    }
}

#[tokio::test]
async fn sighup_rereads_the_flags_file_without_stopping() {
    let dir = TempDir::new("rex_hup");
    let flags = dir.path().join("flags.env");
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=false\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=true\n")
        .unwrap();
    let mut p = Exporter::demo(&["--flags-file", flags.to_str().unwrap()], &[]);
    let port = p.port;
    p.ready().await;
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n")
        .unwrap();
    p.signal("HUP");
    wait_for("phase full after SIGHUP", Duration::from_secs(10), || async {
        let s = Scrape::parse(&http_get(port, "/metrics").await.1);
        (s.value("assignment_rollout_phase", &[("phase", "full")]) == 1.0).then_some(())
    })
    .await;
    assert!(p.is_running(), "SIGHUP must not stop the exporter");
    p.sigterm();
    p.wait_exit(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_the_url_can_come_from_a_file() {
    let db = TestDb::new().await;
    let dir = TempDir::new("rex_urlfile");
    let file = dir.path().join("database-url");
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let mut p =
        Exporter::start(&["--log-format", "json"], "serve", &["--database-url-file", file.to_str().unwrap()], &[]);
    p.ready().await;
    p.sigterm();
    assert_eq!(p.wait_exit(Duration::from_secs(5)).await.0, Some(0));
    let logs = p.stderr();
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(logs.contains("start-up load finished"));
}

/// A database that does not exist refuses the connection (SQLSTATE 3D000) as an unreachable one
/// does: `verdict` exits 4 (no decision could be reached), not 2 (a usage error), and `check`
/// fails its connection item and exits 1.
#[test]
fn a_database_that_does_not_exist_is_unavailable_not_a_usage_error() {
    let url = "postgres://postgres@127.0.0.1:5432/rex_no_such_database";
    let (code, _, err) = run_bin(&["verdict", "--database-url", url]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let (code, out, err) = run_bin(&["check", "--database-url", url, "--format", "json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let conn = v["items"].as_array().unwrap().iter().find(|i| i["item"] == "connection").unwrap();
    assert_eq!(conn["status"], "fail", "{conn}");
}
