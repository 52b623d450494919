//! The database side of the deploy kit, applied with psql as the operator would: deploy/sql/index.sql on
//! a plain, a range-partitioned and a sub-partitioned table, and deploy/sql/role.sql on a table with
//! row level security. Real PostgreSQL on 127.0.0.1:5432; roles are per cluster, so the ones made here
//! have unique names and are dropped afterwards.

use std::collections::BTreeSet;
use std::process::Command;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::helpers::*;

/// Runs a deploy/sql script with psql on the test database (ON_ERROR_STOP), with `-v` variables.
fn psql_script(db: &TestDb, script: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", &db.name]);
    for (k, v) in vars {
        cmd.args(["-v", &format!("{k}={v}")]);
    }
    run_ok(cmd.arg("-f").arg(repo_root().join("deploy/sql").join(script)))
}

/// Range-partitioned by created_at: the default partition takes everything older than three days, a
/// middle one the two days before yesterday's, the newest one from a day ago on (MAXVALUE, so that a
/// `created_at >= recent` condition leaves the default partition out too).
const PARTITIONED: &str = "
CREATE TABLE observability_events (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    source     text NOT NULL,
    event_type text,
    context    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE oe_recent  PARTITION OF observability_events FOR VALUES FROM (now() - interval '1 day') TO (MAXVALUE);
CREATE TABLE oe_middle  PARTITION OF observability_events FOR VALUES FROM (now() - interval '3 days') TO (now() - interval '1 day');
CREATE TABLE oe_default PARTITION OF observability_events DEFAULT;
";

/// Rows every 10 s over the last five days (all three partitions), 70% of them the coordinator's.
const SPREAD_ROWS: &str = "
INSERT INTO observability_events (source, event_type, context, created_at)
SELECT CASE WHEN g % 10 < 3 THEN 'other.source' ELSE 'assignment.coordinator' END,
       (ARRAY['coordinator.start', 'coordinator.confirmed', 'coordinator.retry'])[1 + g % 3],
       jsonb_build_object('booking_id', 'b' || g),
       now() - make_interval(secs => g * 10)
FROM generate_series(0, 5 * 24 * 360) AS g;
ANALYZE observability_events;
";

/// Per leaf partition of `table`: (partition, index attached to the parent's index, its columns, valid).
/// A partition without an attached index has an empty index name.
async fn leaf_indexes(pool: &PgPool, table: &str) -> Vec<(String, String, String, bool)> {
    sqlx::query_as(
        "SELECT t.relid::regclass::text,
                coalesce(x.indexrelid::regclass::text, ''),
                coalesce((SELECT string_agg(a.attname, ',' ORDER BY k.n)
                            FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                            JOIN pg_attribute AS a ON a.attrelid = x.indrelid AND a.attnum = k.attnum), ''),
                coalesce(x.indisvalid AND x.indpred IS NULL AND x.indexprs IS NULL, false)
           FROM pg_partition_tree($1::regclass) AS t
           LEFT JOIN (pg_inherits AS i JOIN pg_index AS x ON x.indexrelid = i.inhrelid)
             ON x.indrelid = t.relid
            AND i.inhparent IN (SELECT indexrelid FROM pg_index WHERE indrelid = t.parentrelid AND NOT indisunique)
          WHERE t.isleaf
          ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// (valid, columns) of every index on `table` itself whose columns are exactly (source, created_at).
async fn own_indexes(pool: &PgPool, table: &str) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT x.indexrelid::regclass::text, x.indisvalid FROM pg_index AS x
          WHERE x.indrelid = $1::regclass
            AND (SELECT array_agg(a.attname::text ORDER BY k.n)
                   FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_attribute AS a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
                = ARRAY['source', 'created_at']
          ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// What a text EXPLAIN reads: (relations scanned, indexes used), e.g. from
/// `->  Index Scan using oe_recent_source_created_at_idx on oe_recent observability_events_1  (cost=...)`,
/// `->  Bitmap Heap Scan on oe_recent observability_events` over `Bitmap Index Scan on <index>`.
fn scans(plan: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut relations, mut indexes) = (BTreeSet::new(), BTreeSet::new());
    for line in plan.lines().map(|l| l.trim_start().trim_start_matches("->").trim_start()) {
        let Some((head, rest)) = line.split_once(" on ") else { continue };
        let name = rest.split_whitespace().next().unwrap_or_default().to_string();
        match head.split_once(" using ") {
            _ if head == "Bitmap Index Scan" => {
                indexes.insert(name);
            }
            Some((node, index)) if node.ends_with("Scan") => {
                indexes.insert(index.to_string());
                relations.insert(name);
            }
            None if head.ends_with("Scan") => {
                relations.insert(name);
            }
            _ => {}
        }
    }
    (relations, indexes)
}

#[tokio::test]
async fn deploy_sql_index_on_a_plain_table_is_idempotent() {
    if !require_tool("psql") {
        return;
    }
    let db = TestDb::new().await; // applies index.sql once
    psql_script(&db, "index.sql", &[]);
    psql_script(&db, "index.sql", &[("events_table", "public.observability_events")]);
    assert_eq!(
        own_indexes(&db.pool, "observability_events").await,
        vec![("observability_events_source_created_at_idx".to_string(), true)],
        "one valid index on (source, created_at), under the name the tests EXPLAIN for"
    );
}

#[tokio::test]
async fn deploy_sql_index_on_a_partitioned_table_indexes_every_partition_and_the_poll_prunes() {
    if !require_tool("psql") {
        return;
    }
    let db = TestDb::builder().schema(PARTITIONED).build().await; // index.sql on the empty partitions
    sqlx::raw_sql(SPREAD_ROWS).execute(&db.pool).await.unwrap();
    psql_script(&db, "index.sql", &[]);
    psql_script(&db, "index.sql", &[]);

    // The parent's index (ON ONLY, then every partition's attached) is valid, and every leaf partition
    // has exactly one index on (source, created_at): valid and attached to it.
    assert_eq!(
        own_indexes(&db.pool, "observability_events").await,
        vec![("observability_events_source_created_at_idx".to_string(), true)]
    );
    let leaves = leaf_indexes(&db.pool, "observability_events").await;
    assert_eq!(leaves.len(), 3, "{leaves:?}");
    for (part, index, columns, valid) in &leaves {
        assert_eq!(index, &format!("{part}_source_created_at_idx"), "{part}: attached index");
        assert_eq!(columns, "source,created_at", "{part}");
        assert!(valid, "{part}: {index} is not valid");
        assert_eq!(own_indexes(&db.pool, part).await.len(), 1, "{part}: a second run built another index");
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT tableoid::regclass::text, count(*) FROM observability_events GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3, "rows in every partition: {rows:?}");

    // The exporter's poll, bound two minutes back, as a custom plan so that pruning happens at plan time.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET plan_cache_mode = force_custom_plan;
         PREPARE poll(text, timestamptz) AS
           SELECT id FROM observability_events WHERE source = $1 AND created_at >= $2 ORDER BY created_at",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let explain = format!("EXPLAIN EXECUTE poll('{SOURCE}', now() - interval '2 minutes')");
    let plan: Vec<String> = sqlx::query_scalar(&explain).fetch_all(&mut *conn).await.unwrap();
    let plan = plan.join("\n");
    let (scanned, indexes) = scans(&plan);
    let recent: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableoid::regclass::text FROM observability_events
          WHERE source = $1 AND created_at >= now() - interval '2 minutes'",
    )
    .bind(SOURCE)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    drop(conn);
    assert_eq!(recent, BTreeSet::from(["oe_recent".to_string()]), "the test's rows");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!scanned.is_empty(), "no scan in the plan:\n{plan}");
    for rel in &scanned {
        assert!(recent.contains(rel), "{rel} holds no recent rows but is scanned (not pruned):\n{plan}");
        assert!(indexes.contains(&format!("{rel}_source_created_at_idx")), "{rel} is not read by its index:\n{plan}");
    }

    // And the exporter counts the partitioned table exactly.
    let app = spawn_app(serve_config(&db.url, &[])).await;
    app.ready().await;
    db.events().event_type("coordinator.confirmed").count(5).insert().await;
    app.wait_totals_match(&db).await;
    app.stop().await;
}

#[tokio::test]
async fn deploy_sql_index_on_a_sub_partitioned_table_in_another_schema() {
    if !require_tool("psql") {
        return;
    }
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE SCHEMA app;
         CREATE TABLE app.events (id bigint GENERATED ALWAYS AS IDENTITY, source text NOT NULL, event_type text,
             context jsonb, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at);
         CREATE TABLE app.ev_old PARTITION OF app.events FOR VALUES FROM (MINVALUE) TO (now() - interval '1 day');
         CREATE TABLE app.ev_new PARTITION OF app.events FOR VALUES FROM (now() - interval '1 day') TO (MAXVALUE)
             PARTITION BY LIST (source);
         CREATE TABLE app.ev_new_coordinator PARTITION OF app.ev_new FOR VALUES IN ('assignment.coordinator');
         CREATE TABLE app.\"ev_new_everything_else_with_a_name_longer_than_the_limit\" PARTITION OF app.ev_new DEFAULT;
         INSERT INTO app.events (source, event_type, created_at)
         SELECT CASE WHEN g % 2 = 0 THEN 'assignment.coordinator' ELSE 'other' END, 'coordinator.start',
                now() - make_interval(secs => g * 60)
           FROM generate_series(0, 3 * 24 * 60) AS g;
         -- built by hand earlier, not yet attached: adopted, not built twice
         CREATE INDEX ev_old_source_created_at_idx ON app.ev_old (source, created_at);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    psql_script(&db, "index.sql", &[("events_table", "app.events")]);
    psql_script(&db, "index.sql", &[("events_table", "app.events")]);

    assert_eq!(own_indexes(&db.pool, "app.events").await, vec![("app.events_source_created_at_idx".to_string(), true)]);
    assert_eq!(
        own_indexes(&db.pool, "app.ev_new").await,
        vec![("app.ev_new_source_created_at_idx".to_string(), true)],
        "the intermediate level's index (ON ONLY) is valid"
    );
    let attached: Option<String> = sqlx::query_scalar(
        "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = 'app.ev_new_source_created_at_idx'::regclass",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(attached.as_deref(), Some("app.events_source_created_at_idx"));
    let leaves = leaf_indexes(&db.pool, "app.events").await;
    assert_eq!(leaves.len(), 3, "{leaves:?}");
    for (part, index, columns, valid) in &leaves {
        assert!(!index.is_empty() && columns == "source,created_at" && *valid, "{part}: {index} {columns} {valid}");
        assert_eq!(own_indexes(&db.pool, part).await.len(), 1, "{part}: more than one index");
    }
    assert!(leaves.iter().any(|l| l.1 == "app.ev_old_source_created_at_idx"), "{leaves:?}");
}

/// Drops the roles on drop (after the test database, which is declared later and so dropped first).
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        for role in &self.0 {
            let out = Command::new("psql")
                .args(["-X", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres", "-c"])
                .arg(format!("DROP ROLE IF EXISTS \"{role}\""))
                .output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("note: role {role} not dropped: {out:?}");
            }
        }
    }
}

#[tokio::test]
async fn deploy_sql_role_adds_a_read_policy_when_row_level_security_is_on() {
    if !require_tool("psql") {
        return;
    }
    let (exporter, app_role) = (unique("rex_exporter"), unique("rex_app_authenticated"));
    let _roles = Roles(vec![exporter.clone(), app_role.clone()]);
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(40).within_last_secs(600).insert().await;
    db.events().event_type("coordinator.confirmed").reason("lock").count(20).within_last_secs(600).insert().await;
    let owner_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM observability_events").fetch_one(&db.pool).await.unwrap();
    let role_url = format!("postgres://{exporter}@127.0.0.1:5432/{}", db.name);
    let count_as_role = || async {
        let pool = PgPoolOptions::new().max_connections(1).connect(&role_url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM observability_events").fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    };
    let policies = || async {
        sqlx::query_as::<_, (String, Vec<String>, String, bool)>(
            "SELECT polname::text, polroles::regrole[]::text[], polcmd::text, polpermissive FROM pg_policy
              WHERE polrelid = 'observability_events'::regclass ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let vars = [("exporter_role", exporter.as_str())];

    // Without RLS: no policy, and the role reads every row.
    psql_script(&db, "role.sql", &vars);
    assert!(policies().await.is_empty(), "a policy without RLS: {:?}", policies().await);
    assert_eq!(count_as_role().await, owner_count);

    // RLS switched on with the application's policies only (as Supabase's table editor leaves it): the
    // role silently reads nothing, until role.sql runs again and adds its policy.
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{app_role}\" NOLOGIN;
         ALTER TABLE observability_events ENABLE ROW LEVEL SECURITY;
         CREATE POLICY app_reads ON observability_events FOR SELECT TO \"{app_role}\" USING (true);"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(count_as_role().await, 0, "RLS hides every row from a role without a policy");
    let out = psql_script(&db, "role.sql", &vars);
    assert!(out.contains("rollout_exporter_read"), "role.sql says what it did:\n{out}");
    psql_script(&db, "role.sql", &vars); // idempotent
    assert_eq!(count_as_role().await, owner_count, "the exporter role reads every row");
    assert_eq!(
        policies().await,
        vec![
            ("app_reads".to_string(), vec![app_role.clone()], "r".to_string(), true),
            ("rollout_exporter_read".to_string(), vec![exporter.clone()], "r".to_string(), true),
        ]
    );

    // And the exporter, as that role, counts every row.
    let app = spawn_app(serve_config(&role_url, &[])).await;
    app.ready().await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals.values().sum::<u64>(), owner_count as u64);
    app.stop().await;
    drop(db); // the database before the roles
}
