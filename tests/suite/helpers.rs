//! Test harness: a fresh database per test, the app on port 0, scrapes parsed into maps, and
//! deadline-bound waits. Real PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use clap::Parser;
use rollout_exporter::app::App;
use rollout_exporter::config::{Cli, ServeConfig, Validated};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
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

/// True when a command exists on PATH. Under CI=true a missing tool fails the test.
pub fn require_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is required in CI (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED: {name} is not installed (run scripts/test.sh, which installs it)");
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

pub const SCHEMA_BIGINT: &str = "CREATE TABLE observability_events (
    id bigserial PRIMARY KEY,
    source text NOT NULL,
    event_type text,
    context jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    note text
)";

pub const SCHEMA_UUID: &str = "CREATE TABLE observability_events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source text NOT NULL,
    event_type text,
    context jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// A fresh database with the events table and the shipped index.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::with_schema(SCHEMA_BIGINT).await
    }

    pub async fn with_schema(schema: &str) -> TestDb {
        Self::on_server(ADMIN_URL, "127.0.0.1", 5432, schema).await
    }

    /// A database on another server (e.g. a throwaway cluster).
    pub async fn on_server(admin_url: &str, host: &str, port: u16, schema: &str) -> TestDb {
        init_test_logging();
        let name = unique("rex_test");
        let admin = admin_conn(admin_url).await;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        admin.close().await;
        let url = format!("postgres://postgres@{host}:{port}/{name}");
        let pool = PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect test db");
        sqlx::raw_sql(schema).execute(&pool).await.expect("create table");
        let index = std::fs::read_to_string(repo_root().join("deploy/sql/index.sql")).expect("deploy/sql/index.sql");
        sqlx::raw_sql(&index).execute(&pool).await.expect("create shipped index");
        TestDb { name, url, pool, admin_url: admin_url.to_string() }
    }

    /// Inserts one coordinator row with `context` given as JSON text (or None for SQL NULL).
    pub async fn insert(&self, event_type: Option<&str>, context: Option<&str>) {
        self.insert_at(SOURCE, event_type, context, None).await;
    }

    /// Inserts a row; `created_at` is an SQL expression (default now()).
    pub async fn insert_at(
        &self,
        source: &str,
        event_type: Option<&str>,
        context: Option<&str>,
        created_at: Option<&str>,
    ) {
        let sql = format!(
            "INSERT INTO observability_events (source, event_type, context, created_at) VALUES ($1, $2, $3::jsonb, {})",
            created_at.unwrap_or("now()")
        );
        sqlx::query(&sql).bind(source).bind(event_type).bind(context).execute(&self.pool).await.expect("insert");
    }

    /// Inserts `n` coordinator rows of one type in one statement, spread over the last `spread`.
    pub async fn insert_many(&self, n: i64, event_type: &str, reason: Option<&str>, spread_seconds: i64) {
        sqlx::query(
            "INSERT INTO observability_events (source, event_type, context, created_at)
             SELECT $1, $2,
                    CASE WHEN $3::text IS NULL THEN jsonb_build_object('booking_id', 'b' || g)
                         ELSE jsonb_build_object('booking_id', 'b' || g, 'reason', $3::text) END,
                    now() - make_interval(secs => (g % greatest($5::int8, 1))::float8)
             FROM generate_series(1, $4::int8) AS g",
        )
        .bind(SOURCE)
        .bind(event_type)
        .bind(reason)
        .bind(n)
        .bind(spread_seconds)
        .execute(&self.pool)
        .await
        .expect("insert many");
    }

    /// `assignment_coordinator_events_total` as SQL computes it, with the documented label rules.
    pub async fn sql_totals(&self) -> BTreeMap<(String, String), u64> {
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

    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = admin_conn_try(&self.admin_url).await {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&admin).await;
            admin.close().await;
        }
    }
}

async fn admin_conn_try(url: &str) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    PgPoolOptions::new().max_connections(1).connect_with(opts.disable_statement_logging()).await
}

async fn admin_conn(url: &str) -> PgPool {
    admin_conn_try(url).await.expect("admin connection to PostgreSQL on 127.0.0.1:5432 (scripts/test.sh starts it)")
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

/// A running app on a free port.
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

impl TestApp {
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).await
    }

    pub async fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    /// Waits for the first full load.
    pub async fn ready(&self) {
        wait_for("readyz 200", Duration::from_secs(20), || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    }

    /// Number of polls so far, successful or not (the poll histogram's count, from a scrape).
    pub async fn polls(&self) -> u64 {
        self.scrape().await.value("rollout_exporter_poll_duration_seconds_count", &[]) as u64
    }

    /// Waits until `n` more polls have happened.
    pub async fn wait_polls(&self, n: u64) {
        let target = self.polls().await + n;
        wait_for("more polls", Duration::from_secs(20), || async { (self.polls().await >= target).then_some(()) })
            .await;
    }

    /// Waits until the scraped events_total equals SQL.
    pub async fn wait_totals_match(&self, db: &TestDb) -> BTreeMap<(String, String), u64> {
        let mut last = BTreeMap::new();
        let mut sql = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            sql = db.sql_totals().await;
            last = self.scrape().await.totals();
            if last == sql {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("events_total never matched SQL\nexporter: {last:#?}\nsql: {sql:#?}");
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h).await.expect("app stops within 10 s").expect("app task");
        }
    }
}

/// A minimal HTTP/1.0 GET over loopback (no client dependency).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[]).await
}

/// Like [`http_get`], but None while nothing listens yet (for waits on a starting process).
pub async fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    Some(http_get(port, path).await)
}

/// Waits until `/readyz` on `port` answers 200.
pub async fn wait_ready(port: u16) {
    wait_for("readyz 200", Duration::from_secs(20), || async {
        try_get(port, "/readyz").await.filter(|r| r.0 == 200).map(|_| ())
    })
    .await;
}

pub async fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to app");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
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
    pub fn totals(&self) -> BTreeMap<(String, String), u64> {
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
