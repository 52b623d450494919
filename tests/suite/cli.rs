//! The binary as operators run it: exit codes, one-line errors, secrets, signals, the demo.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(bin()).args(args).env_remove("DATABASE_URL").env_remove("DATABASE_URL_FILE").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

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
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} printed more than one line:\n{stderr}");
        assert!(stderr.contains(flag), "{args:?} error does not name {flag}: {stderr}");
    }
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let (code, out, _) = run(&["serve", "--help"]);
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

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_bin(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("DATABASE_URL").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn exporter"))
}

fn sigterm(p: &Proc) {
    run_ok(Command::new("kill").args(["-TERM", &p.0.id().to_string()]));
}

/// Waits for exit; returns (code, elapsed).
fn wait_exit(p: &mut Proc, deadline: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        assert!(start.elapsed() < deadline, "process did not exit within {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(p: &mut Proc) -> String {
    let mut s = String::new();
    if let Some(mut e) = p.0.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[tokio::test]
async fn the_password_never_reaches_logs_errors_or_endpoints() {
    let sentinel = "S3ntinel-Pw-7f1c";
    let db = TestDb::new().await;
    db.insert(Some("coordinator.start"), Some("{}")).await;
    let good = db.url.replace("postgres@", &format!("postgres:{sentinel}@"));
    let port_a = free_port();
    let port_b = free_port();
    let debug = [("RUST_LOG", "debug")];
    let mut a = spawn_bin(
        &["serve", "--listen", &format!("127.0.0.1:{port_a}"), "--database-url", &good, "--poll-interval", "100ms"],
        &debug,
    );
    // A server that is not there: connection errors must not echo the URL's password either.
    let bad = format!("postgres://postgres:{sentinel}@127.0.0.1:1/nowhere?password={sentinel}");
    let mut b = spawn_bin(
        &["serve", "--listen", &format!("127.0.0.1:{port_b}"), "--database-url", &bad, "--connect-timeout", "200ms"],
        &debug,
    );
    wait_ready(port_a).await;
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
    sigterm(&a);
    sigterm(&b);
    wait_exit(&mut a, Duration::from_secs(5));
    wait_exit(&mut b, Duration::from_secs(5));
    seen.push_str(&stderr_of(&mut a));
    let b_err = stderr_of(&mut b);
    assert!(b_err.contains("start-up load failed"), "the failure is logged: {b_err}");
    seen.push_str(&b_err);
    // Configuration errors and the verdict's connection error.
    seen.push_str(
        &run(&["serve", "--database-url", &format!("postgres://u:{sentinel}@h/db?sslmode=bogus&x={sentinel}")]).2,
    );
    seen.push_str(&run(&["verdict", "--database-url", &bad, "--connect-timeout", "200ms"]).2);
    seen.push_str(&run(&["serve", "--database-url", &format!("postgres://u:{sentinel}@h/db"), "--listen", "bad"]).2);
    assert!(!seen.is_empty());
    assert!(!seen.contains(sentinel), "the password leaked:\n{seen}");
    db.drop_db().await;
}

#[tokio::test]
async fn sigterm_during_polls_exits_zero_within_five_seconds() {
    let db = TestDb::new().await;
    db.insert_many(1000, "coordinator.start", None, 100).await;
    let port = free_port();
    let mut p = spawn_bin(
        &["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &db.url, "--poll-interval", "10ms"],
        &[],
    );
    wait_ready(port).await;
    sigterm(&p);
    let (code, elapsed) = wait_exit(&mut p, Duration::from_secs(5));
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(elapsed < Duration::from_secs(5));
    db.drop_db().await;
}

#[tokio::test]
async fn the_demo_serves_valid_metrics_and_its_scenarios_decide_the_gate() {
    for (scenario, decision, status) in [("healthy", "go", 200), ("degraded", "no_go", 412)] {
        let port = free_port();
        let mut p = spawn_bin(&["demo", "--listen", &format!("127.0.0.1:{port}"), "--scenario", scenario], &[]);
        wait_ready(port).await;
        let (_, body) = http_get(port, "/metrics").await;
        promtool_check_metrics(&body);
        let s = Scrape::parse(&body);
        assert_eq!(s.value("assignment_rollout_decision", &[("decision", decision)]), 1.0, "{scenario}");
        let (code, gate) = http_get(port, "/gate").await;
        assert_eq!(code, status, "{scenario}: {gate}");
        let (_, landing) = http_get(port, "/").await;
        assert!(landing.contains("href=\"metrics\"") && landing.contains(decision));
        sigterm(&p);
        assert_eq!(wait_exit(&mut p, Duration::from_secs(5)).0, Some(0));
    }
}

#[tokio::test]
async fn sighup_rereads_the_flags_file_without_stopping() {
    let dir = TempDir::new("rex_hup");
    let flags = dir.path().join("flags.env");
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=false\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=true\n")
        .unwrap();
    let port = free_port();
    let mut p =
        spawn_bin(&["demo", "--listen", &format!("127.0.0.1:{port}"), "--flags-file", flags.to_str().unwrap()], &[]);
    wait_ready(port).await;
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n")
        .unwrap();
    run_ok(Command::new("kill").args(["-HUP", &p.0.id().to_string()]));
    wait_for("phase full after SIGHUP", Duration::from_secs(10), || async {
        let s = Scrape::parse(&http_get(port, "/metrics").await.1);
        (s.value("assignment_rollout_phase", &[("phase", "full")]) == 1.0).then_some(())
    })
    .await;
    assert!(p.0.try_wait().unwrap().is_none(), "SIGHUP must not stop the exporter");
    sigterm(&p);
    wait_exit(&mut p, Duration::from_secs(5));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_the_url_can_come_from_a_file() {
    let db = TestDb::new().await;
    let dir = TempDir::new("rex_urlfile");
    let file = dir.path().join("database-url");
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let port = free_port();
    let mut p = spawn_bin(
        &[
            "--log-format",
            "json",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    wait_ready(port).await;
    sigterm(&p);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(5)).0, Some(0));
    let logs = stderr_of(&mut p);
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(logs.contains("start-up load finished"));
    db.drop_db().await;
}
