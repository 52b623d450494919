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
    let missing: Vec<_> = docs.difference(&scraped).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "undocumented: {undocumented:?}\ndocumented but not scraped: {missing:?}"
    );
    app.stop().await;
}
