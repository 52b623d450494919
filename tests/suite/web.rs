//! `--web-config-file`: TLS with a self-signed certificate and basic auth with bcrypt hashes,
//! checked with real clients (curl, and a plain socket).

use std::process::Command;

use clap::Parser;
use rollout_exporter::app::App;
use rollout_exporter::config::{Cli, Validated};

use crate::helpers::*;

fn self_signed(dir: &TempDir) {
    run_ok(Command::new("openssl").current_dir(dir.path()).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]));
}

async fn demo_with(web_config: &str, dir: &TempDir) -> TestApp {
    let path = dir.path().join("web.yml");
    std::fs::write(&path, web_config).unwrap();
    let cli = Cli::try_parse_from([
        "rollout-exporter",
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--web-config-file",
        path.to_str().unwrap(),
    ])
    .unwrap();
    let Validated::Demo(cfg) = cli.command.validate().expect("valid web config") else { unreachable!() };
    start(App::build_demo(cfg).await.unwrap())
}

/// (status, body) from curl over HTTPS, trusting the test CA.
fn curl(dir: &std::path::Path, port: u16, path: &str, user: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"]).arg(dir.join("server.crt"));
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    cmd.args(["-w", "\n%{http_code}"]).arg(format!("https://localhost:{port}{path}"));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

// Multi-threaded: curl blocks this thread while the server answers on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_guard_metrics_gate_and_landing_but_not_probes() {
    if !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let dir = TempDir::new("rex_web");
    self_signed(&dir);
    let hash = bcrypt::hash("right-password", 4).unwrap();
    let app = demo_with(
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"),
        &dir,
    )
    .await;
    let port = app.port;
    let ca = dir.path().to_path_buf();
    let ready = wait_for("TLS ready", std::time::Duration::from_secs(20), || {
        let ca = ca.clone();
        async move {
            let r = tokio::task::spawn_blocking(move || curl(&ca, port, "/readyz", None)).await.unwrap();
            (r.0 == 200).then_some(r)
        }
    })
    .await;
    assert_eq!(ready.0, 200, "probes stay open");
    for path in ["/metrics", "/gate", "/gate/rollback", "/verdict", "/", "/runbook"] {
        assert_eq!(curl(dir.path(), port, path, None).0, 401, "{path} without credentials");
        assert_eq!(curl(dir.path(), port, path, Some("prometheus:wrong")).0, 401, "{path} with a wrong password");
        assert_eq!(curl(dir.path(), port, path, Some("nobody:right-password")).0, 401, "{path} with an unknown user");
    }
    let (code, body) = curl(dir.path(), port, "/metrics", Some("prometheus:right-password"));
    assert_eq!(code, 200);
    promtool_check_metrics(&body);
    assert_eq!(curl(dir.path(), port, "/gate", Some("prometheus:right-password")).0, 200, "healthy demo: go");
    let (code, runbook) = curl(dir.path(), port, "/runbook", Some("prometheus:right-password"));
    assert_eq!(code, 200);
    assert!(runbook.contains("<h2 id=\"rolloutcircuitbreakeropen\">"), "the built-in runbook, with anchors");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = try_request(port, "GET", "/metrics", &[], std::time::Duration::from_secs(5)).await;
    assert!(!plain.is_ok_and(|(_, body)| body.contains("assignment_")), "metrics served over plain HTTP");
    app.stop().await;
}

#[tokio::test]
async fn basic_auth_works_without_tls_and_open_paths_are_configurable() {
    let dir = TempDir::new("rex_web");
    let hash = bcrypt::hash("pw", 4).unwrap();
    let app = demo_with(&format!("basic_auth_users:\n  alice: {hash}\n"), &dir).await;
    app.ready().await;
    assert_eq!(app.get("/metrics").await.0, 401);
    // alice:pw
    let (code, body) = http_request(app.port, "GET", "/metrics", &[("Authorization", "Basic YWxpY2U6cHc=")]).await;
    assert_eq!(code, 200);
    assert!(body.contains("assignment_rollout_decision"));
    assert_eq!(http_request(app.port, "GET", "/metrics", &[("Authorization", "Basic YWxpY2U6bm8=")]).await.0, 401);
    assert_eq!(app.get("/healthz").await.0, 200);
    app.stop().await;
}

#[test]
fn a_bad_web_config_exits_2_with_one_line() {
    let dir = TempDir::new("rex_web");
    for (name, text) in [
        ("unknown.yml", "basic_auth_users: {}\nno_such_key: 1\n"),
        ("hash.yml", "basic_auth_users:\n  bob: plaintext\n"),
        ("tls.yml", "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run_bin(&["demo", "--web-config-file", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains("--web-config-file"), "{name}: {err}");
        assert!(!err.contains("plaintext"), "the password value is not echoed: {err}");
    }
}

/// The status page from a real table: the SQL's counts with thousands separators, ratios as
/// percentages, the margins in bookings, a `<script>` reason shown as text, and the journal.
#[tokio::test]
async fn the_status_page_shows_the_sql_numbers_for_people() {
    let db = TestDb::new().await;
    let ev = |et: &str, n: i64| db.events().event_type(et).count(n).within_last_secs(3600);
    ev("coordinator.start", 12_345).insert().await;
    ev("coordinator.confirmed", 12_300).insert().await;
    ev("coordinator.manual_review", 45).reason("ambiguous_address").insert().await;
    ev("coordinator.retry", 2_001).reason("<script>alert(1)</script>").insert().await;
    db.events().event_type("coordinator.circuit_open").at("now() - interval '20 minutes'").insert().await;
    let dir = TempDir::new("rex_page");
    let flags = dir.path().join("flags.env");
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n")
        .unwrap();
    let started = rollout_exporter::time::UnixMicros::now().minus(std::time::Duration::from_secs(7200)).rfc3339();
    let app = spawn_app(serve_config(
        &db.url,
        &[
            "--flags-file",
            flags.to_str().unwrap(),
            "--phase-started-at",
            &started,
            "--grafana-url",
            "http://127.0.0.1:3000/d/soak",
        ],
    ))
    .await;
    app.ready().await;
    let (code, html) = app.get("/").await;
    assert_eq!(code, 200);
    for expected in [
        "NO-GO</h1>",
        "Failing: No circuit-breaker trips.",
        "Decided: this NO-GO is already certain.</b> There was a circuit-breaker trip inside the window",
        "95% interval 99.",
        "12,300 of 12,345 confirmed",
        "99.6% <span",
        "45 of 12,345 reviewed",
        "0.4% <span",
        "80 more manual reviews would fail it.",
        "2 h 0 m</b> of 48 h 0 m elapsed",
        "2,001",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "in the soak window when this exporter started",
        "href=\"runbook#rolloutcircuitbreakeropen\"",
        "http://127.0.0.1:3000/d/soak?from=",
    ] {
        assert!(html.contains(expected), "missing {expected:?} in the page");
    }
    assert!(!html.contains("<script>alert"), "a reason from the table became markup");
    assert!(!html.contains("12345") && !html.contains("0.9963"), "raw numbers on the page");
    app.stop().await;
}
