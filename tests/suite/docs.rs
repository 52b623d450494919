//! Docs are tested against reality: docs/metrics.md names exactly the metrics a real scrape has.

use std::collections::BTreeSet;

use crate::helpers::*;

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1))
        .filter(|n| n.starts_with("assignment_") || n.starts_with("rollout_exporter_"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn docs_metrics_match_a_real_scrape() {
    let db = TestDb::new().await;
    db.insert(Some("coordinator.start"), Some(r#"{"booking_id": "a"}"#)).await;
    db.insert(Some("coordinator.confirmed"), Some(r#"{"booking_id": "orphan"}"#)).await;
    db.insert(Some("coordinator.start"), None).await;
    let dir = TempDir::new("rex_docs");
    let flags = dir.path().join("flags.env");
    // Invalid (both on) but with a valid MAX_PARALLEL, so every conditional family is present.
    std::fs::write(&flags, "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL=3\n").unwrap();
    let app = spawn_app(serve_config(&db.url, &["--flags-file", flags.to_str().unwrap()])).await;
    app.ready().await;
    app.wait_polls(1).await;
    let s = app.scrape().await;
    promtool_check_metrics(&s.text);
    let scraped: BTreeSet<String> = s.names().into_iter().filter(|n| !n.starts_with("process_")).collect();
    let docs = documented();
    let undocumented: Vec<_> = scraped.difference(&docs).collect();
    // Present only when reading from a hot standby (tests/suite/replica.rs scrapes it there).
    let standby_only = ["rollout_exporter_replica_lag_seconds"];
    let missing: Vec<_> = docs.difference(&scraped).filter(|n| !standby_only.contains(&n.as_str())).collect();
    // The metric table is the other side of the contract: every family it defines is documented.
    let table: BTreeSet<String> =
        rollout_exporter::outputs::metrics::FAMILIES.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(table, docs, "docs/metrics.md and the metric table differ");
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "undocumented: {undocumented:?}\ndocumented but not scraped: {missing:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_poll_error_kinds_are_the_documented_ones_and_every_one_has_a_series() {
    let text = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let row = text.lines().find(|l| l.starts_with("| `rollout_exporter_poll_errors_total`")).expect("documented");
    let kinds = row.rsplit_once("by kind:").expect("the kinds").1;
    let documented: BTreeSet<&str> = kinds.split('`').skip(1).step_by(2).collect();
    assert_eq!(documented, ERROR_KINDS.into_iter().collect::<BTreeSet<_>>());
    let db = TestDb::new().await;
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    let s = app.scrape().await;
    let scraped: BTreeSet<&str> = s
        .series
        .keys()
        .filter(|(n, _)| n == "rollout_exporter_poll_errors_total")
        .flat_map(|(_, l)| l.iter().filter(|(k, _)| k == "kind").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(scraped, documented, "a fresh exporter shows every kind, at 0");
    app.stop().await;
}
