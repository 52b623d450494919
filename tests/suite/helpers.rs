//! Test harness: a fresh database per test (dropped even when the test panics), the app on port 0
//! or the binary as a child process, one HTTP client, scrapes parsed into maps, and deadline-bound
//! waits. Real PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres).
//!
//! The harness reads the exporter only from the outside (HTTP and its process), so it does not
//! change when the library's internals do.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use clap::Parser;
use rollout_exporter::app::App;
use rollout_exporter::config::{Cli, ServeConfig, Validated};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const SOURCE: &str = "assignment.coordinator";

static LOG: Once = Once::new();

/// Logs only when TEST_LOG=1.
pub fn init_test_logging() {
    LOG.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            rollout_exporter::init_logging(rollout_exporter::config::LogFormat::Text);
        }
    });
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rollout-exporter")
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("unknown test").to_string()
}

/// True when `name` (a command on PATH, or a path) can be run. When it cannot: with CI=true the
/// test fails; otherwise it prints `SKIPPED: <test>: <tool> not installed` to stderr and the caller
/// returns (or skips the part that needs the tool). Never a silent pass.
pub fn require_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(r#"command -v "$1""#)
        .arg("sh")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let test = test_name();
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {name} is required in CI (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED: {test}: {name} not installed (scripts/test.sh installs it)");
    }
    found
}

/// Waits until `check` returns Some, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    format!("{prefix}_{}_{}_{}", std::process::id(), t % 1_000_000_000, n)
}

/// The events table with bigint ids, shared with bench/harness.py.
pub const SCHEMA_BIGINT: &str = include_str!("../sql/observability_events.sql");

pub const SCHEMA_UUID: &str = "CREATE TABLE observability_events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source text NOT NULL,
    event_type text,
    context jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// The `kind` labels of `rollout_exporter_poll_errors_total`, as docs/metrics.md lists them (kept
/// here rather than read from the library, so a kind the library drops fails a test).
pub const ERROR_KINDS: [&str; 5] = ["connect", "timeout", "query", "schema", "decode"];

/// `assignment_coordinator_events_total` as (event_type, reason) -> count.
pub type Totals = BTreeMap<(String, String), u64>;

/// A fresh database with the events table and the shipped index, dropped (`WITH (FORCE)`) when
/// the value is dropped, also when the test panics.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub admin_url: String,
}

/// Builds a [`TestDb`]: `TestDb::builder().schema(SCHEMA_UUID).port(cluster.port).build().await`.
pub struct TestDbBuilder {
    schema: String,
    port: u16,
}

impl TestDbBuilder {
    /// The table's DDL (default [`SCHEMA_BIGINT`]).
    pub fn schema(mut self, ddl: &str) -> Self {
        self.schema = ddl.to_string();
        self
    }

    /// The server on 127.0.0.1:`port` (default 5432), e.g. a throwaway cluster.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub async fn build(self) -> TestDb {
        init_test_logging();
        let name = unique("rex_test");
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let admin = admin_conn_try(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("admin connection to {admin_url} (scripts/test.sh starts PostgreSQL): {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:{}/{name}", self.port);
        // The guard exists before anything else can fail, so the database never outlives the test.
        let db = TestDb { pool: lazy_pool(&url), name, url, admin_url };
        sqlx::raw_sql(&self.schema).execute(&db.pool).await.expect("create table");
        // A psql script (\gset, \if, \gexec), so applied with psql as operators do; errors fail the test.
        run_ok(
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", &db.name, "-f"])
                .arg(repo_root().join("deploy/sql/index.sql")),
        );
        db
    }
}

fn lazy_pool(url: &str) -> PgPool {
    PgPoolOptions::new().max_connections(4).connect_lazy(url).expect("test database URL")
}

impl TestDb {
    pub fn builder() -> TestDbBuilder {
        TestDbBuilder { schema: SCHEMA_BIGINT.to_string(), port: 5432 }
    }

    /// `TestDb::builder().build()`: bigint ids on 127.0.0.1:5432.
    pub async fn new() -> TestDb {
        Self::builder().build().await
    }

    /// A new pool (the old one closed), e.g. after the server restarted.
    pub async fn reconnect(&mut self) {
        self.pool.close().await;
        self.pool = lazy_pool(&self.url);
    }

    /// Rows to insert: `db.events().event_type("coordinator.retry").reason("x").count(3).insert().await`.
    pub fn events(&self) -> Events<'_> {
        Events {
            db: self,
            source: SOURCE.to_string(),
            event_type: None,
            reason: None,
            context: None,
            at: None,
            within_last_secs: None,
            count: 1,
        }
    }

    /// Inserts one coordinator row with `context` given as JSON text (or None for SQL NULL).
    pub async fn insert(&self, event_type: Option<&str>, context: Option<&str>) {
        let e = self.events();
        let e = match event_type {
            Some(t) => e.event_type(t),
            None => e.null_event_type(),
        };
        match context {
            Some(json) => e.context(json),
            None => e.null_context(),
        }
        .insert()
        .await;
    }

    /// `assignment_coordinator_events_total` as SQL computes it, with the documented label rules.
    pub async fn sql_totals(&self) -> Totals {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT coalesce(event_type, '(null)'),
                    CASE WHEN context->>'reason' IS NULL THEN ''
                         WHEN context->>'reason' = '' THEN '(empty)'
                         WHEN char_length(context->>'reason') > 100 THEN left(context->>'reason', 100) || '…'
                         ELSE context->>'reason' END,
                    count(*)
             FROM observability_events WHERE source = $1 GROUP BY 1, 2",
        )
        .bind(SOURCE)
        .fetch_all(&self.pool)
        .await
        .expect("sql totals");
        let mut out = BTreeMap::new();
        for (e, r, n) in rows {
            *out.entry((e, r)).or_default() += n as u64;
        }
        out
    }
}

impl Drop for TestDb {
    /// Drops the database `WITH (FORCE)` (which also ends this pool's and any exporter's sessions).
    /// The test's runtime may be unwinding or is blocked in this call, so the statement runs on a
    /// thread with its own runtime and one plain connection; failures are printed, never panicked.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let work = async {
                    let opts: PgConnectOptions = admin_url.parse()?;
                    let mut admin = PgConnection::connect_with(&opts.disable_statement_logging()).await?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
                    admin.close().await
                };
                match tokio::time::timeout(Duration::from_secs(30), work).await {
                    Ok(r) => r.map_err(|e: sqlx::Error| e.to_string()),
                    Err(_) => Err("no answer within 30 s".to_string()),
                }
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("note: test database {} not dropped: {e}", self.name),
            Err(_) => eprintln!("note: test database {} not dropped: the dropping thread panicked", self.name),
        }
    }
}

/// Rows for [`TestDb::events`], inserted in one statement (`g` numbers them 1..=count). By default
/// each row is a coordinator event at `now()` with context `{"booking_id": "b<g>"}`.
pub struct Events<'a> {
    db: &'a TestDb,
    source: String,
    /// Unset (None) is a mistake; Some(None) is SQL NULL.
    event_type: Option<Option<String>>,
    reason: Option<String>,
    /// None: booking ids (and the reason); Some(None): SQL NULL; Some(Some(json)): that JSON.
    context: Option<Option<String>>,
    at: Option<String>,
    within_last_secs: Option<i64>,
    count: i64,
}

impl Events<'_> {
    pub fn source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }

    pub fn event_type(mut self, event_type: &str) -> Self {
        self.event_type = Some(Some(event_type.to_string()));
        self
    }

    pub fn null_event_type(mut self) -> Self {
        self.event_type = Some(None);
        self
    }

    /// `context.reason` next to the booking id.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// The context as JSON text, the same for every row (instead of booking ids).
    pub fn context(mut self, json: &str) -> Self {
        self.context = Some(Some(json.to_string()));
        self
    }

    pub fn null_context(mut self) -> Self {
        self.context = Some(None);
        self
    }

    /// `created_at` as an SQL expression, e.g. `now() - interval '1 hour'` (default `now()`).
    pub fn at(mut self, sql: &str) -> Self {
        self.at = Some(sql.to_string());
        self
    }

    /// `created_at` spread over the last `seconds`: row g at `now() - (g % seconds) s`.
    pub fn within_last_secs(mut self, seconds: i64) -> Self {
        self.within_last_secs = Some(seconds);
        self
    }

    pub fn count(mut self, n: i64) -> Self {
        self.count = n;
        self
    }

    pub async fn insert(self) {
        let event_type = self.event_type.clone().expect("events(): set event_type(..) or null_event_type()");
        assert!(
            self.reason.is_none() || self.context.is_none(),
            "events(): reason() goes with the booking-id context; put it inside context() instead"
        );
        assert!(self.at.is_none() || self.within_last_secs.is_none(), "events(): at() or within_last_secs(), not both");
        // Only parameters the statement uses are bound (PostgreSQL cannot type an unused one).
        let mut n = 2;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        let context = match &self.context {
            None => {
                format!("jsonb_strip_nulls(jsonb_build_object('booking_id', 'b' || g, 'reason', {}::text))", param())
            }
            Some(Some(_)) => format!("{}::jsonb", param()),
            Some(None) => "NULL::jsonb".to_string(),
        };
        let created_at = match (&self.at, self.within_last_secs) {
            (Some(sql), _) => format!("({sql})::timestamptz"),
            (None, Some(_)) => format!("now() - make_interval(secs => (g % greatest({}::int8, 1))::float8)", param()),
            (None, None) => "now()".to_string(),
        };
        let count = param();
        let sql = format!(
            "INSERT INTO observability_events (source, event_type, context, created_at)
             SELECT $1, $2, {context}, {created_at} FROM generate_series(1, {count}::int8) AS g"
        );
        let mut q = sqlx::query(&sql).bind(self.source.clone()).bind(event_type);
        match &self.context {
            None => q = q.bind(self.reason.clone()),
            Some(Some(json)) => q = q.bind(json.clone()),
            Some(None) => {}
        }
        if let (None, Some(secs)) = (&self.at, self.within_last_secs) {
            q = q.bind(secs);
        }
        q.bind(self.count).execute(&self.db.pool).await.unwrap_or_else(|e| panic!("insert events: {e}\n{sql}"));
    }
}

async fn admin_conn_try(url: &str) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    PgPoolOptions::new().max_connections(1).connect_with(opts.disable_statement_logging()).await
}

/// Parses CLI arguments exactly as the binary does.
pub fn serve_config(db_url: &str, extra: &[&str]) -> ServeConfig {
    let mut args = vec![
        "rollout-exporter",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db_url,
        "--poll-interval",
        "150ms",
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(&args).expect("valid test arguments");
    match cli.command.validate().expect("valid test configuration") {
        Validated::Serve(cfg) => cfg,
        _ => unreachable!(),
    }
}

/// Something serving the exporter's HTTP endpoints on a loopback port: the app in this process
/// ([`TestApp`]) or the binary as a child ([`Exporter`]). Everything here goes through HTTP.
#[allow(async_fn_in_trait)]
pub trait Target {
    fn port(&self) -> u16;

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port(), path).await
    }

    async fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    /// Waits for the first full load (`/readyz` 200), also while nothing listens yet.
    async fn ready(&self) {
        wait_ready(self.port()).await;
    }

    /// Polls so far, successful or not (`rollout_exporter_poll_duration_seconds_count`).
    async fn polls(&self) -> u64 {
        self.scrape().await.value("rollout_exporter_poll_duration_seconds_count", &[]) as u64
    }

    /// Waits until `n` more polls have happened.
    async fn wait_polls(&self, n: u64) {
        let target = self.polls().await + n;
        wait_for("more polls", Duration::from_secs(20), || async { (self.polls().await >= target).then_some(()) })
            .await;
    }

    /// Waits (20 s at most) until the scraped events_total equals SQL.
    async fn wait_totals_match(&self, db: &TestDb) -> Totals {
        self.wait_totals_match_within(db, Duration::from_secs(20)).await
    }

    /// Waits until the scraped events_total equals SQL; the panic shows both.
    async fn wait_totals_match_within(&self, db: &TestDb, deadline: Duration) -> Totals {
        let (mut last, mut sql) = (Totals::new(), Totals::new());
        let start = Instant::now();
        while start.elapsed() < deadline {
            sql = db.sql_totals().await;
            last = self.scrape().await.totals();
            if last == sql {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("events_total never matched SQL within {deadline:?}\nexporter: {last:#?}\nsql: {sql:#?}");
    }
}

/// The app running in this test's runtime on a free port (stopped with [`TestApp::stop`], aborted
/// on drop).
pub struct TestApp {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app(cfg: ServeConfig) -> TestApp {
    let app = App::build_serve(cfg).await.expect("build app");
    start(app)
}

pub fn start(app: App) -> TestApp {
    let port = app.port();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .expect("app ran");
    });
    TestApp { port, stop: Some(tx), handle: Some(handle) }
}

impl Target for TestApp {
    fn port(&self) -> u16 {
        self.port
    }
}

impl TestApp {
    /// Stops the app the way a signal would and waits (10 s at most) for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h).await.expect("app stops within 10 s").expect("app task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// How long [`http_request`] and friends wait for a whole answer.
pub const HTTP_DEADLINE: Duration = Duration::from_secs(10);

/// One HTTP/1.0 request over loopback (no client dependency) answered within `deadline`. Err,
/// never a panic, when nothing listens, the answer is not HTTP or the deadline passes.
pub async fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
) -> Result<(u16, String), String> {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let work = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .strip_prefix("HTTP/")
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or("no HTTP status line")?;
        Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    };
    tokio::time::timeout(deadline, work).await.map_err(|_| format!("no answer within {deadline:?}"))?
}

/// [`try_request`] within [`HTTP_DEADLINE`], failing the test when it fails.
pub async fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    try_request(port, method, path, headers, HTTP_DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{method} http://127.0.0.1:{port}{path}: {e}"))
}

pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[]).await
}

/// Like [`http_get`], but None instead of a failure (for waits on a starting process).
pub async fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    try_request(port, "GET", path, &[], HTTP_DEADLINE).await.ok()
}

/// Waits until `/readyz` on `port` answers 200.
pub async fn wait_ready(port: u16) {
    wait_for("readyz 200", Duration::from_secs(20), || async {
        try_get(port, "/readyz").await.filter(|r| r.0 == 200).map(|_| ())
    })
    .await;
}

/// A child process this test started: stderr captured as it comes (the child never blocks on a
/// full pipe), killed and reaped on drop. Only this child is ever signalled.
pub struct Process {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `cmd` with stdin and stdout on /dev/null and stderr captured.
    pub fn spawn(mut cmd: Command) -> Process {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (mut pipe, sink) = (child.stderr.take().expect("piped stderr"), stderr.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Process { child, stderr, reader: Some(reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to this child.
    pub fn signal(&self, signal: &str) {
        run_ok(Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()));
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL and reap (as on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit; returns the code and how long it took. Panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let child = &mut self.child;
        wait_for("the process to exit", deadline, || {
            let r = child.try_wait().expect("try_wait").map(|s| (s.code(), start.elapsed()));
            async move { r }
        })
        .await
    }

    /// What the process wrote on stderr: all of it once it has exited, so far while it runs.
    pub fn stderr(&mut self) -> String {
        if !self.is_running() {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc status")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The exporter binary as operators run it, on a free loopback port: a [`Process`] (signals,
/// stderr, RSS, killed on drop) that is also a [`Target`].
pub struct Exporter {
    pub process: Process,
    pub port: u16,
}

impl Exporter {
    /// `rollout-exporter <global...> <command> --listen 127.0.0.1:<free port> <args...>`, without
    /// DATABASE_URL(_FILE) from the test's environment, with `env` added.
    pub fn start(global: &[&str], command: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let port = free_port();
        let mut cmd = Command::new(bin());
        cmd.args(global)
            .args([command, "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_URL_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Exporter { process: Process::spawn(cmd), port }
    }

    /// `serve --database-url <db_url> <args...>`.
    pub fn serve(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut all = vec!["--database-url", db_url];
        all.extend_from_slice(args);
        Self::start(&[], "serve", &all, env)
    }

    /// `demo <args...>`.
    pub fn demo(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        Self::start(&[], "demo", args, env)
    }
}

impl Deref for Exporter {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Exporter {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Target for Exporter {
    fn port(&self) -> u16 {
        self.port
    }
}

/// Runs the binary to completion (no DATABASE_URL from the environment): (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .output()
        .expect("run the exporter binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A parsed scrape: series (name and sorted labels) -> value.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub series: BTreeMap<(String, Vec<(String, String)>), f64>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut series = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (name, labels, rest) = match line.find('{') {
                Some(i) => {
                    let (labels, after) = parse_labels(&line[i + 1..]);
                    (line[..i].to_string(), labels, after)
                }
                None => {
                    let (n, r) = line.split_once(' ').expect("sample line");
                    (n.to_string(), Vec::new(), r.to_string())
                }
            };
            let value: f64 = rest.split_whitespace().next().expect("value").parse().expect("numeric value");
            let mut labels = labels;
            labels.sort();
            series.insert((name, labels), value);
        }
        Scrape { series, text: text.to_string() }
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        self.series.get(&(name.to_string(), l)).copied()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in scrape"))
    }

    /// `assignment_coordinator_events_total` as (event_type, reason) -> count.
    pub fn totals(&self) -> Totals {
        self.series
            .iter()
            .filter(|((n, _), _)| n == "assignment_coordinator_events_total")
            .map(|((_, l), v)| {
                let get = |k: &str| l.iter().find(|(lk, _)| lk == k).map(|(_, v)| v.clone()).unwrap_or_default();
                ((get("event_type"), get("reason")), *v as u64)
            })
            .collect()
    }

    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }
}

/// Parses `k="v",k2="v2"} rest`, unescaping `\\`, `\"` and `\n`.
fn parse_labels(s: &str) -> (Vec<(String, String)>, String) {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c == '}' {
                break;
            }
            if c != ',' && c != ' ' {
                key.push(c);
            }
            chars.next();
        }
        match chars.next() {
            Some((i, '}')) => return (labels, s[i + 1..].to_string()),
            Some((_, '=')) => {}
            _ => panic!("bad label set: {s}"),
        }
        assert_eq!(chars.next().map(|c| c.1), Some('"'), "label value must be quoted: {s}");
        let mut value = String::new();
        loop {
            match chars.next().map(|c| c.1) {
                Some('\\') => match chars.next().map(|c| c.1) {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {s}"),
            }
        }
        labels.push((key, value));
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs a command, failing the test with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `promtool check metrics` on an exposition.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    if !require_tool("promtool") {
        eprintln!("(only the promtool check of {} was skipped; its other assertions ran)", test_name());
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics reported:\n{report}");
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The property tests' configuration: `cases` cases from a fixed seed, so that every CI run tries
/// the same inputs and a red run is reproducible. `PROPTEST_RNG_SEED=<u64>` explores other inputs,
/// `PROPTEST_CASES=<n>` tries more (proptest's own variables).
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let from_env = Config::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if set("PROPTEST_CASES") { from_env.cases } else { cases },
        rng_seed: if set("PROPTEST_RNG_SEED") { from_env.rng_seed } else { RngSeed::Fixed(0x5eed_2026) },
        failure_persistence: None,
        ..from_env
    }
}
