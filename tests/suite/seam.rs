//! The outputs as functions of a snapshot: gzip on request, the exporter-toolkit flag spellings,
//! and the same snapshot rendered the same way whoever asks.

use std::io::Read;
use std::time::Duration;

use clap::Parser;
use rollout_exporter::config::{Cli, RolloutConfig, Thresholds, Validated, Window};
use rollout_exporter::outputs::Live;
use rollout_exporter::rollout::{Flags, PhaseView};
use rollout_exporter::snapshot::Snapshot;
use tower::ServiceExt;

fn rollout() -> RolloutConfig {
    RolloutConfig {
        flags_file: None,
        environment: "test".into(),
        phase_started_at: Some(1_000.0),
        thresholds: Thresholds::default(),
        soak: Window { label: "48h".into(), seconds: 172_800 },
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
        max_staleness: None,
        links: Default::default(),
    }
}

fn live() -> Live {
    let full = Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) };
    let phase = PhaseView { state: full.phase(), started_at: 1_000.0 };
    Live::fixed(Snapshot::default(), phase, rollout())
}

async fn get(router: axum::Router, path: &str, headers: &[(&str, &str)]) -> (axum::http::HeaderMap, Vec<u8>) {
    let mut req = axum::http::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = router.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    (headers, bytes.to_vec())
}

#[tokio::test]
async fn metrics_are_gzip_compressed_when_the_scraper_asks_and_plain_otherwise() {
    let router = rollout_exporter::outputs::http::router(live());
    let (plain_headers, plain) = get(router.clone(), "/metrics", &[]).await;
    assert!(plain_headers.get("content-encoding").is_none());
    let text = String::from_utf8(plain).unwrap();
    assert!(text.contains("rollout_exporter_ready 0"), "{text}");
    let (headers, body) = get(router, "/metrics", &[("accept-encoding", "gzip")]).await;
    assert_eq!(headers.get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut unzipped).expect("a gzip body");
    assert!(body.len() < unzipped.len(), "compressed {} vs {} bytes", body.len(), unzipped.len());
    // The same snapshot: the same families (process metrics may differ between two renderings).
    let families = |t: &str| t.lines().filter(|l| l.starts_with("# TYPE assignment_")).count();
    assert_eq!(families(&unzipped), families(&text));
}

#[test]
fn exporter_toolkit_flag_spellings_are_accepted() {
    let cli = Cli::try_parse_from([
        "rollout-exporter",
        "demo",
        "--web.listen-address",
        "127.0.0.1:19999",
        "--web.config.file",
        "/nonexistent/web.yml",
    ])
    .expect("the exporter-toolkit spellings parse");
    // The file is read at validation: the error names our flag and the path.
    let err = cli.command.validate().unwrap_err().to_string();
    assert!(err.contains("--web-config-file") && err.contains("/nonexistent/web.yml"), "{err}");
    let cli = Cli::try_parse_from(["rollout-exporter", "demo", "--web.listen-address", "127.0.0.1:19999"]).unwrap();
    match cli.command.validate().unwrap() {
        Validated::Demo(cfg) => assert_eq!(cfg.http.listen.to_string(), "127.0.0.1:19999"),
        other => panic!("not a demo: {other:?}"),
    }
}

#[tokio::test]
async fn before_the_first_load_the_gate_is_pending_and_readyz_503() {
    let router = rollout_exporter::outputs::http::router(live());
    let res = router
        .clone()
        .oneshot(axum::http::Request::get("/gate").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 412);
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["decision"], "pending");
    let res =
        router.oneshot(axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 503);
}
