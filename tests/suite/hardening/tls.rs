//! TLS to PostgreSQL against throwaway clusters with a self-signed CA made by the openssl CLI, and
//! the shipped read-only role (deploy/sql/role.sql) proven unable to write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::*;
use crate::faults::{chown_postgres, Cluster};
use crate::helpers::*;

/// A CA and a server certificate for CN/SAN localhost and 127.0.0.1, in `dir`.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn create(prefix: &str) -> Pki {
        let dir = TempDir::new(prefix);
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let at = |f: &str| dir.path().join(f);
        run_ok(Command::new("openssl").args(["req", "-x509"]).args(ec).args([
            "-days",
            "2",
            "-subj",
            "/CN=rollout-exporter test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            at("ca.key").to_str().unwrap(),
            "-out",
            at("ca.crt").to_str().unwrap(),
        ]));
        std::fs::write(
            at("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run_ok(Command::new("openssl").arg("req").args(ec).args([
            "-subj",
            "/CN=localhost",
            "-keyout",
            at("server.key").to_str().unwrap(),
            "-out",
            at("server.csr").to_str().unwrap(),
        ]));
        run_ok(Command::new("openssl").args(["x509", "-req", "-days", "2", "-CAcreateserial"]).args([
            "-in",
            at("server.csr").to_str().unwrap(),
            "-CA",
            at("ca.crt").to_str().unwrap(),
            "-CAkey",
            at("ca.key").to_str().unwrap(),
            "-extfile",
            at("server.ext").to_str().unwrap(),
            "-out",
            at("server.crt").to_str().unwrap(),
        ]));
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// A throwaway cluster with `ssl = on` and the server certificate of `pki` (None when PostgreSQL's
/// server binaries are missing: the test is skipped).
fn tls_cluster(pki: &Pki) -> Option<Cluster> {
    let cluster = Cluster::create()?;
    let data = cluster.dir.path().join("data");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(pki.dir.path().join(f), data.join(f)).unwrap();
    }
    run_ok(Command::new("chmod").arg("600").arg(data.join("server.key")));
    chown_postgres(&data);
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    cluster.stop();
    cluster.start();
    Some(cluster)
}

/// Whether the exporter's connection to this database is encrypted (None while not connected).
async fn exporter_ssl(pool: &PgPool) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'rollout-exporter' AND a.datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .expect("pg_stat_ssl")
}

fn url_for(db: &TestDb, host: &str, port: u16, params: &str) -> String {
    format!("postgres://postgres@{host}:{port}/{}?{params}", db.name)
}

#[tokio::test]
async fn hardening_sslmode_require_and_verify_full_with_the_right_ca_connect_encrypted() {
    if !require_tool("openssl") {
        return;
    }
    let pki = Pki::create("rex_pki");
    let Some(cluster) = tls_cluster(&pki) else { return };
    let db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(60).within_last_secs(600).insert().await;
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let urls = [
        url_for(&db, "127.0.0.1", cluster.port, "sslmode=require"),
        url_for(&db, "127.0.0.1", cluster.port, &format!("sslmode=verify-full&sslrootcert={ca}")),
        url_for(&db, "localhost", cluster.port, &format!("sslmode=verify-full&sslrootcert={ca}")),
    ];
    for url in &urls {
        let app = spawn_app(serve_config(url, &["--connect-timeout", "2s"])).await;
        app.ready().await;
        db.insert(Some("coordinator.confirmed"), Some("{}")).await;
        app.wait_totals_match(&db).await;
        let s = app.scrape().await;
        assert_eq!(s.value("rollout_exporter_database_up", &[]), 1.0, "{url}");
        assert_eq!(errors(&s).values().sum::<u64>(), 0, "{url}: {:?}", errors(&s));
        let ssl = wait_for("the exporter's backend", Duration::from_secs(10), || exporter_ssl(&db.pool)).await;
        assert!(ssl, "{url}: the exporter's connection is not encrypted");
        app.stop().await;
    }
}

#[tokio::test]
async fn hardening_verify_full_with_a_wrong_ca_fails_visibly_and_never_leaks_the_password() {
    if !require_tool("openssl") {
        return;
    }
    let sentinel = "Tls-S3ntinel-9d2e";
    let pki = Pki::create("rex_pki");
    let impostor_ca = Pki::create("rex_pki_other");
    let Some(cluster) = tls_cluster(&pki) else { return };
    let db = TestDb::builder().port(cluster.port).build().await;
    let url = format!(
        "postgres://postgres:{sentinel}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        db.name,
        impostor_ca.ca().display()
    );
    let mut exporter = Exporter::serve(&url, &["--connect-timeout", "500ms"], &[("RUST_LOG", "debug")]);
    let s = wait_for("two failed start-up loads", Duration::from_secs(20), || async {
        let (_, body) = try_get(exporter.port, "/metrics").await?;
        let s = Scrape::parse(&body);
        (errors(&s)["connect"] >= 2).then_some(s)
    })
    .await;
    assert_eq!(s.value("rollout_exporter_database_up", &[]), 0.0);
    assert_eq!(errors(&s).values().sum::<u64>(), errors(&s)["connect"], "a TLS failure is a connect error");
    assert_eq!(exporter_ssl(&db.pool).await, None, "no session was established");
    let mut seen = String::new();
    for path in ["/", "/metrics", "/gate", "/verdict", "/readyz", "/healthz"] {
        seen.push_str(&http_get(exporter.port, path).await.1);
    }
    exporter.sigterm();
    assert_eq!(exporter.wait_exit(Duration::from_secs(5)).await.0, Some(0));
    let stderr = exporter.stderr();
    assert!(stderr.contains("start-up load failed"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "the log names the certificate problem: {stderr}");
    seen.push_str(&stderr);
    assert!(!seen.contains(sentinel), "the password leaked:\n{seen}");
}

#[tokio::test]
async fn hardening_the_default_sslmode_prefer_falls_back_to_plain_text_and_require_refuses_it() {
    let Some(cluster) = Cluster::create() else { return }; // no TLS at all, as an impostor or a misconfigured server
    let db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(5).within_last_secs(60).insert().await;
    // No sslmode: sqlx's `prefer` connects in plain text without a word.
    let app = spawn_app(serve_config(&url_for(&db, "127.0.0.1", cluster.port, "application_name=x"), &[])).await;
    app.ready().await;
    let ssl: Option<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'rollout-exporter'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(ssl, Some(false), "prefer fell back to plain text");
    app.stop().await;
    // `require` refuses the same server.
    let app = spawn_app(serve_config(
        &url_for(&db, "127.0.0.1", cluster.port, "sslmode=require"),
        &["--connect-timeout", "500ms"],
    ))
    .await;
    wait_for("require refused a server without TLS", Duration::from_secs(20), || async {
        let s = app.scrape().await;
        (errors(&s)["connect"] >= 1 && s.value("rollout_exporter_database_up", &[]) == 0.0).then_some(())
    })
    .await;
    assert_eq!(app.get("/readyz").await.0, 503);
    app.stop().await;
}

/// Applies deploy/sql/role.sql with psql, as the operator would, for a role named `role`.
fn apply_role_sql(port: u16, database: &str, role: &str) {
    let script = repo_root().join("deploy/sql/role.sql");
    run_ok(
        Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-v", &format!("exporter_role={role}")])
            .args(["-v", "events_table=public.observability_events", "-v", "events_schema=public", "-f"])
            .arg(Path::new(&script)),
    );
}

fn sqlstate(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.code().unwrap_or_default().to_string(),
        other => panic!("expected a database error, got {other}"),
    }
}

#[tokio::test]
async fn hardening_the_shipped_read_only_role_cannot_write_even_in_a_read_write_transaction() {
    if !require_tool("psql") {
        return;
    }
    let Some(cluster) = Cluster::create() else { return }; // roles are per cluster: keep this one away from 5432
    let db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(30).within_last_secs(600).insert().await;
    apply_role_sql(cluster.port, &db.name, "rollout_exporter");
    apply_role_sql(cluster.port, &db.name, "rollout_exporter"); // idempotent
    let role_url = format!("postgres://rollout_exporter@127.0.0.1:{}/{}", cluster.port, db.name);
    let ro = PgPoolOptions::new().max_connections(1).connect(&role_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM observability_events").fetch_one(&ro).await.unwrap();
    assert_eq!(n, 30, "the role can read");

    let mut conn = ro.acquire().await.unwrap();
    let writes = [
        "INSERT INTO observability_events (source, event_type) VALUES ('assignment.coordinator', 'forged')",
        "UPDATE observability_events SET event_type = 'forged'",
        "DELETE FROM observability_events",
        "TRUNCATE observability_events",
        "CREATE TABLE public.planted (i int)",
    ];
    for sql in writes {
        // The client overrides default_transaction_read_only: only the privileges stand in the way.
        sqlx::raw_sql("BEGIN READ WRITE").execute(&mut *conn).await.unwrap();
        let mode: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(mode, "off", "the transaction is READ WRITE");
        let err = sqlx::raw_sql(sql).execute(&mut *conn).await.expect_err(sql);
        assert_eq!(sqlstate(err), "42501", "{sql} must fail with insufficient_privilege");
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    ro.close().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM observability_events").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 30, "nothing was written");

    // And the exporter runs as that role.
    let app = spawn_app(serve_config(&role_url, &[])).await;
    app.ready().await;
    db.insert(Some("coordinator.confirmed"), Some("{}")).await;
    app.wait_totals_match(&db).await;
    assert_eq!(errors(&app.scrape().await).values().sum::<u64>(), 0);
    app.stop().await;
}
