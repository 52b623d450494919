//! Real components broken on purpose: a throwaway PostgreSQL cluster stopped and started, the
//! database away at start, a real PgBouncer in transaction mode in front.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a PostgreSQL or PgBouncer binary as the postgres user when we are root (both refuse root).
pub fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

pub fn pg_bin(name: &str) -> String {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .map_or(name.to_string(), |p| p.display().to_string())
}

pub fn chown_postgres(path: &std::path::Path) {
    if is_root() {
        run_ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(path));
    }
}

/// A throwaway PostgreSQL cluster on a free loopback port.
pub struct Cluster {
    pub dir: TempDir,
    pub port: u16,
}

impl Cluster {
    /// None (after [`require_tool`] printed SKIPPED) when PostgreSQL's server binaries are missing.
    pub fn create() -> Option<Cluster> {
        let initdb = pg_bin("initdb");
        if !require_tool(&initdb) || !require_tool(&pg_bin("pg_ctl")) {
            return None;
        }
        let dir = TempDir::new("rex_cluster");
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        run_ok(as_postgres(&initdb).args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data));
        let c = Cluster { dir, port: free_port() };
        c.start();
        Some(c)
    }

    /// A hot standby of `primary` (which must be running): `pg_basebackup -R -X stream` into a new
    /// directory, started on another free port. None (after [`require_tool`] printed SKIPPED) when
    /// pg_basebackup is missing. Stopped on drop like any cluster.
    pub fn replica_of(primary: &Cluster) -> Option<Cluster> {
        let basebackup = pg_bin("pg_basebackup");
        if !require_tool(&basebackup) {
            return None;
        }
        let dir = TempDir::new("rex_replica");
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        run_ok(
            as_postgres(&basebackup)
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-D"])
                .arg(&data),
        );
        let c = Cluster { dir, port: free_port() };
        c.start();
        Some(c)
    }

    pub fn start(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        run_ok(
            as_postgres(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &opts, "-w", "-t", "30", "start"]),
        );
    }

    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        run_ok(as_postgres(&pg_bin("pg_ctl")).arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn a_database_restart_mid_run_loses_nothing_and_counts_nothing_twice() {
    let Some(cluster) = Cluster::create() else { return };
    let mut db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(200).within_last_secs(3600).insert().await;
    let app = spawn_app(serve_config(&db.url, &["--connect-timeout", "1s", "--statement-timeout", "2s"])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    db.pool.close().await;

    cluster.stop();
    wait_for("database_up 0", Duration::from_secs(20), || async {
        (app.scrape().await.value("rollout_exporter_database_up", &[]) == 0.0).then_some(())
    })
    .await;
    let s = app.scrape().await; // /metrics answers while the database is away, with the last values
    assert_eq!(
        s.value("assignment_coordinator_events_total", &[("event_type", "coordinator.start"), ("reason", "")]),
        200.0
    );
    let errors: f64 = ["connect", "timeout", "query"]
        .iter()
        .map(|k| s.value("rollout_exporter_poll_errors_total", &[("kind", k)]))
        .sum();
    assert!(errors >= 1.0, "poll errors were not counted");
    assert_eq!(app.get("/readyz").await.0, 200, "readiness stays once loaded");

    cluster.start();
    db.reconnect().await;
    db.events().event_type("coordinator.confirmed").context("{}").count(37).insert().await;
    wait_for("database_up 1", Duration::from_secs(30), || async {
        (app.scrape().await.value("rollout_exporter_database_up", &[]) == 1.0).then_some(())
    })
    .await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.confirmed".into(), "".into())], 37);
    app.stop().await;
}

#[tokio::test]
async fn the_database_down_at_start_is_retried_and_metrics_are_served_meanwhile() {
    let Some(cluster) = Cluster::create() else { return };
    let mut db = TestDb::builder().port(cluster.port).build().await;
    db.events().event_type("coordinator.start").count(42).within_last_secs(60).insert().await;
    db.pool.close().await;
    cluster.stop();

    let app = spawn_app(serve_config(&db.url, &["--connect-timeout", "1s"])).await;
    wait_for("a failed start-up load", Duration::from_secs(20), || async {
        let s = app.scrape().await;
        let errors: f64 =
            ["connect", "timeout"].iter().map(|k| s.value("rollout_exporter_poll_errors_total", &[("kind", k)])).sum();
        (errors >= 1.0).then_some(())
    })
    .await;
    assert_eq!(app.get("/readyz").await.0, 503);
    let s = app.scrape().await;
    assert_eq!(s.value("rollout_exporter_database_up", &[]), 0.0);
    assert_eq!(s.value("rollout_exporter_ready", &[]), 0.0);
    assert_eq!(app.get("/healthz").await.0, 200);

    cluster.start();
    app.ready().await;
    db.reconnect().await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals[&("coordinator.start".into(), "".into())], 42);
    app.stop().await;
}

/// A real PgBouncer on a free port in transaction mode with a pool of 2 server connections.
pub struct Bouncer {
    pub process: Process,
    pub port: u16,
    pub dir: TempDir,
}

impl Bouncer {
    /// None (after [`require_tool`] printed SKIPPED) when pgbouncer is not installed.
    pub async fn start(upstream_port: u16) -> Option<Bouncer> {
        if !require_tool("pgbouncer") {
            return None;
        }
        let dir = TempDir::new("rex_pgbouncer");
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {dir}/userlist.txt\n\
                 pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 100\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\nadmin_users = postgres\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        chown_postgres(dir.path());
        let b = Bouncer { process: Self::spawn(dir.path()), port, dir };
        b.wait_listening().await;
        Some(b)
    }

    fn spawn(dir: &std::path::Path) -> Process {
        let mut cmd = Command::new("pgbouncer");
        if is_root() {
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(dir.join("pgbouncer.ini"));
        Process::spawn(cmd)
    }

    async fn wait_listening(&self) {
        let port = self.port;
        wait_for("pgbouncer listening", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// The same pooler, same configuration, same port, after [`Process::kill`]. Does not wait for
    /// it to listen (clients must cope with the gap).
    pub fn respawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join("pgbouncer.pid"));
        self.process = Self::spawn(self.dir.path());
    }
}

#[tokio::test]
async fn polls_work_through_pgbouncer_in_transaction_mode() {
    let db = TestDb::new().await;
    let Some(bouncer) = Bouncer::start(5432).await else { return };
    db.events().event_type("coordinator.start").count(120).within_last_secs(4 * 3600).insert().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", bouncer.port, db.name);
    // Two exporters share the pool of two server connections, so statements of one client land on
    // connections another client used: named statements would collide or vanish here.
    let a = spawn_app(serve_config(&url, &[])).await;
    let b = spawn_app(serve_config(&url, &[])).await;
    a.ready().await;
    b.ready().await;
    for i in 0..5 {
        db.events().event_type("coordinator.confirmed").count(10 + i).insert().await;
        db.events().event_type("coordinator.retry").reason("upstream_timeout").count(3).insert().await;
        a.wait_totals_match(&db).await;
        b.wait_totals_match(&db).await;
    }
    a.wait_polls(5).await;
    let s = a.scrape().await;
    for kind in ERROR_KINDS {
        assert_eq!(
            s.value("rollout_exporter_poll_errors_total", &[("kind", kind)]),
            0.0,
            "{kind} errors through PgBouncer"
        );
    }
    assert_eq!(s.totals(), db.sql_totals().await);
    // The verdict CLI works through the pooler too.
    let (_, out, _) = run_bin(&["verdict", "--database-url", &url, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("verdict JSON through PgBouncer");
    assert_eq!(v["criteria"][0]["denominator"], 120);
    a.stop().await;
    b.stop().await;
    drop(bouncer);
}
