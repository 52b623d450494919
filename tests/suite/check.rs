//! `rollout-exporter check`: each item on a table that fails it, with the fix it prints.

use crate::helpers::*;

/// Runs `check --format json` on `url` with `extra`; returns (exit code, items by name).
fn check(url: &str, extra: &[&str]) -> (i32, std::collections::BTreeMap<String, serde_json::Value>) {
    let mut args = vec!["check", "--database-url", url, "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run_bin(&args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let items =
        v["items"].as_array().unwrap().iter().map(|i| (i["item"].as_str().unwrap().to_string(), i.clone())).collect();
    (code, items)
}

fn status(items: &std::collections::BTreeMap<String, serde_json::Value>, item: &str) -> String {
    items.get(item).map_or_else(|| format!("no item {item}: {items:?}"), |i| i["status"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn check_passes_a_good_table_and_names_the_index_the_table_and_the_load() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(50).within_last_secs(600).insert().await;
    let (code, items) = check(&db.url, &[]);
    assert_eq!(code, 0, "{items:#?}");
    for item in
        ["connection", "pooler", "encoding", "hot standby", "index", "table", "created_at", "row level security"]
    {
        assert_eq!(status(&items, item), "ok", "{item}: {:#?}", items[item]);
    }
    assert!(items["start-up load"]["detail"].as_str().unwrap().contains("50 rows of the source"));
    assert_eq!(status(&items, "malformed rows"), "ok");
    // The text format: one line per item, status first.
    let (code, text, _) = run_bin(&["check", "--database-url", &db.url]);
    assert_eq!(code, 0);
    assert!(text.lines().all(|l| l.starts_with("ok ") || l.starts_with("warn ") || l.starts_with("FAIL ")), "{text}");
}

#[tokio::test]
async fn check_fails_without_the_index_and_prints_the_script_that_creates_it() {
    let db = TestDb::new().await;
    sqlx::raw_sql("DROP INDEX observability_events_source_created_at_idx").execute(&db.pool).await.unwrap();
    let (code, items) = check(&db.url, &[]);
    assert_eq!((code, status(&items, "index")), (1, "fail".to_string()));
    assert!(items["index"]["fix"].as_str().unwrap().contains("deploy/sql/index.sql"));
}

#[tokio::test]
async fn check_fails_on_a_missing_column_a_missing_table_and_an_unreachable_database() {
    let db = TestDb::new().await;
    let (code, items) = check(&db.url, &["--created-at-column", "inserted_at"]);
    assert_eq!((code, status(&items, "columns")), (1, "fail".to_string()));
    assert!(items["columns"]["detail"].as_str().unwrap().contains("\"inserted_at\""));
    let (code, items) = check(&db.url, &["--table", "no_such_table"]);
    assert_eq!((code, status(&items, "connection")), (1, "fail".to_string()));
    assert!(items["connection"]["detail"].as_str().unwrap().contains("not found"));
    let port = free_port();
    let (code, items) = check(&format!("postgres://postgres@127.0.0.1:{port}/x"), &["--connect-timeout", "2s"]);
    assert_eq!((code, status(&items, "connection")), (1, "fail".to_string()));
}

#[tokio::test]
async fn check_fails_when_row_level_security_or_a_missing_grant_hides_the_rows() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(10).insert().await;
    let role = unique("rex_check");
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN; ALTER TABLE observability_events ENABLE ROW LEVEL SECURITY"))
        .execute(&db.pool)
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let (code, items) = check(&url, &[]);
    assert_eq!((code, status(&items, "privileges")), (1, "fail".to_string()));
    assert_eq!(items["privileges"]["fix"], format!("GRANT SELECT ON \"observability_events\" TO {role};"));
    sqlx::raw_sql(&format!("GRANT SELECT ON observability_events TO {role}")).execute(&db.pool).await.unwrap();
    let (code, items) = check(&url, &[]);
    assert_eq!((code, status(&items, "row level security")), (1, "fail".to_string()));
    let fix = items["row level security"]["fix"].as_str().unwrap().to_string();
    assert!(fix.starts_with("CREATE POLICY"), "{fix}");
    sqlx::raw_sql(&fix).execute(&db.pool).await.unwrap();
    let (code, items) = check(&url, &[]);
    assert_eq!((code, status(&items, "row level security")), (0, "ok".to_string()), "{items:#?}");
    assert_eq!(status(&items, "privileges"), "ok", "a read-only role");
    sqlx::raw_sql(&format!(
        "DROP POLICY rollout_exporter_read ON observability_events; DROP OWNED BY {role}; DROP ROLE {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn check_warns_of_malformed_rows_a_guessed_zone_and_an_enum_without_the_source() {
    let db = TestDb::builder()
        .schema(
            "CREATE TYPE src AS ENUM ('billing.worker');
             CREATE TABLE observability_events (id bigserial PRIMARY KEY, source src NOT NULL, event_type text,
               context jsonb, created_at timestamp NOT NULL DEFAULT now())",
        )
        .build()
        .await;
    let (code, items) = check(&db.url, &[]);
    assert_eq!((code, status(&items, "source")), (1, "fail".to_string()), "{items:#?}");
    assert!(items["source"]["fix"].as_str().unwrap().contains("ALTER TYPE"));
    assert!(items["created_at"]["detail"].as_str().unwrap().contains("timestamp without time zone"));
    let ok = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO observability_events (source, event_type, context) VALUES
           ('assignment.coordinator', NULL, '{}'), ('assignment.coordinator', 'coordinator.start', '[1]');
         INSERT INTO observability_events (source, event_type, context, created_at) VALUES
           ('assignment.coordinator', 'coordinator.start', '{}', now() + interval '1 hour')",
    )
    .execute(&ok.pool)
    .await
    .unwrap();
    let (_, items) = check(&ok.url, &[]);
    assert_eq!(status(&items, "malformed rows"), "warn");
    let detail = items["malformed rows"]["detail"].as_str().unwrap();
    assert!(detail.contains("event_type_null 1") && detail.contains("context_not_object 1"), "{detail}");
    // Rows dated ahead (a writer's clock) are a kind too.
    assert!(detail.contains("future_dated 1"), "{detail}");
}

#[test]
fn check_usage_errors_exit_2() {
    let (code, _, err) = run_bin(&["check", "--format", "yaml", "--database-url", "postgres://x@127.0.0.1/x"]);
    assert_eq!(code, 2, "{err}");
}
