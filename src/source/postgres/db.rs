//! Database access: one connection, read-only transactions with deadlines, and the calls the
//! follower makes (the probe and the start-up load, the polls, re-reading a range).
//!
//! Every statement is an unnamed (non-persistent) prepared statement inside one explicit
//! transaction with `SET LOCAL statement_timeout`, so it works through a transaction-mode pooler
//! (PgBouncer on 6543), where named statements and session settings do not survive between
//! transactions. Every call also has a client-side deadline, because a paused pooler hangs instead
//! of failing. Transactions are READ ONLY; the exporter never writes.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, Transaction};

use super::decode::{self, TextLoad};
use super::dedup::MAX_AHEAD;
use super::probe::{probe, Probe};
use super::queries::{ContextColumn, Queries, Shape, BIN_SECONDS, LOAD_PLANNER_HINTS, LOAD_SLICED_HINTS, NOW_US};
use crate::config::DatabaseConfig;
use crate::events::{Group, Row, TimeClass};
use crate::time::{minute_start, window_start_minute, UnixMicros, MINUTE, US_PER_SECOND};

/// A transaction's work: it owns the connection and hands it back with the result, so a
/// deadline can drop both, and it borrows nothing from the caller (`Send`, `'static`).
type Work<T> = Pin<Box<dyn Future<Output = (PgConnection, Result<T, SourceError>)> + Send>>;

/// Why a database call failed. `metric_label` is the bounded `kind` of
/// `rollout_exporter_poll_errors_total`. Messages never contain the connection string.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database call exceeded its deadline: {0}")]
    Timeout(String),
    #[error("the events table does not look as configured: {0}")]
    Schema(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("cannot decode a row: {0}")]
    Decode(String),
}

impl SourceError {
    /// Every `kind` label value, in the order of [`SourceError::kind_index`].
    pub const KINDS: [&'static str; 5] = ["connect", "timeout", "query", "schema", "decode"];

    /// Index of this error's kind in [`SourceError::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            SourceError::Connect(_) => 0,
            SourceError::Timeout(_) => 1,
            SourceError::Query(_) => 2,
            SourceError::Schema(_) => 3,
            SourceError::Decode(_) => 4,
        }
    }

    /// The bounded `kind` label of `rollout_exporter_poll_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::Connect(_) => "connect",
            SourceError::Timeout(_) => "timeout",
            SourceError::Schema(_) => "schema",
            SourceError::Query(_) => "query",
            SourceError::Decode(_) => "decode",
        }
    }

    /// Whether the connection should be thrown away (it may be mid-protocol or dead).
    fn poisons_connection(&self) -> bool {
        matches!(self, SourceError::Connect(_) | SourceError::Timeout(_))
    }
}

impl From<sqlx::Error> for SourceError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let msg = db.message().to_string();
                match code.as_ref() {
                    // query_canceled (statement_timeout), lock_not_available
                    "57014" | "55P03" => SourceError::Timeout(msg),
                    // undefined_table, undefined_column, undefined_function, datatype_mismatch,
                    // invalid_schema_name, insufficient_privilege
                    "42P01" | "42703" | "42883" | "42804" | "3F000" | "42501" => {
                        SourceError::Schema(format!("{msg} (SQLSTATE {code})"))
                    }
                    // connection_exception, operator_intervention (shutdown), invalid_authorization,
                    // invalid_catalog_name (the database does not exist): the database refuses us.
                    c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("28") || c.starts_with("3D") => {
                        SourceError::Connect(format!("{msg} (SQLSTATE {code})"))
                    }
                    _ => SourceError::Query(format!("{msg} (SQLSTATE {code})")),
                }
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                SourceError::Decode(e.to_string())
            }
            sqlx::Error::PoolTimedOut => {
                SourceError::Connect("no connection within --connect-timeout (database unreachable?)".into())
            }
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => {
                SourceError::Connect(e.to_string())
            }
            _ => SourceError::Query(e.to_string()),
        }
    }
}

/// How a transaction starts.
#[derive(Clone)]
struct Setup {
    begin: &'static str,
    /// e.g. `10000ms`, bound into [`NOW_US`].
    statement_timeout: String,
    /// The zone of a zone-less `created_at`, bound into [`NOW_US`].
    zone: String,
    /// `UTF8`, or `SQL_ASCII` to take raw bytes from a SQL_ASCII database.
    client_encoding: &'static str,
}

/// One connection, opened when needed and dropped after a connection-level failure. A refused
/// connection fails at once (no pool retrying until a timeout), so `database_up` follows the
/// database within one poll.
pub struct Db {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    cfg: DatabaseConfig,
    /// The statements for the table as the last probe found it.
    queries: Arc<Queries>,
    /// What the last probe found (None before the first load).
    probe: Option<Probe>,
}

/// What a start-up load reads.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Groups of the minutes from `now - stream_back` (down to the minute) on are returned for
    /// ranking labels only: the polls that follow hand their rows over one by one.
    pub stream_back: Duration,
    /// Seconds of the longest window: minutes are returned this far back.
    pub longest_window: u64,
    /// `--reason-cap`: reasons returned by name per event type.
    pub reason_cap: usize,
    /// As of this past instant (`verdict --at`): only rows created before it, nothing streamed.
    pub as_of: Option<UnixMicros>,
    /// Read reason texts (false: `backtest`, whose verdicts use none; every reason counts as `other`).
    pub reasons: bool,
}

/// What the start-up load found.
pub struct Loaded {
    pub now: UnixMicros,
    /// Replay lag on a hot standby, microseconds.
    pub lag_us: Option<i64>,
    /// Aggregates of the rows before `now` (and of the rows without an instant), with the minute
    /// inside the longest window.
    pub groups: Vec<Group>,
    /// Rows dated at or after `now` (at most [`super::dedup::MAX_AHEAD`], earliest first), one by one.
    pub rows: Vec<Row>,
    /// The start of the minute `stream_back` before `now`: rows from here on come one by one.
    pub rows_from: UnixMicros,
}

/// What one poll read.
pub struct Polled {
    pub now: UnixMicros,
    /// Replay lag on a hot standby, microseconds.
    pub lag_us: Option<i64>,
    /// `now() - settle` (never below where the page starts): the page's upper bound.
    pub upto: UnixMicros,
    /// Rows per Unix second of the checked range, as the database counts them.
    pub counts: Vec<SecondCount>,
    /// At most `limit` rows of `[rows_from, upto)`, in `created_at` order.
    pub rows: Vec<Row>,
    /// Rows dated at or after `now` (at most [`MAX_AHEAD`]), in `created_at` order.
    pub ahead: Vec<Row>,
}

/// Rows the database holds in one Unix second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondCount {
    pub second: i64,
    pub rows: u64,
}

/// Rows the database holds in one Unix minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCount {
    pub minute: i64,
    pub rows: u64,
}

/// What a poll asks for: the range whose rows are counted, and where to read rows from.
#[derive(Debug, Clone, Copy)]
pub struct PollPlan {
    /// Count rows per second in [count_from, count_to) (the overlap, or a reconciliation range).
    pub count_from: UnixMicros,
    pub count_to: UnixMicros,
    /// Read rows from here on, in `created_at` order, up to `now() - settle`...
    pub rows_from: UnixMicros,
    pub settle: Duration,
    /// ...but never less far than this (the load's `now()`: the catch-up reaches it).
    pub at_least_to: UnixMicros,
    /// ...at most this many.
    pub limit: usize,
}

/// The time a transaction reads as of.
#[derive(Debug, Clone, Copy)]
struct AsOf {
    /// Database `now()`, or on a standby still replaying, the last replayed commit's time (None:
    /// a standby with WAL to replay and no commit replayed since it started: unknown).
    now: Option<UnixMicros>,
    /// Replay lag on a hot standby, microseconds (None on a primary).
    lag_us: Option<i64>,
}

/// Opens a read-only transaction, applies its settings and returns the time it reads as of.
async fn begin_as_of<'c>(
    conn: &'c mut PgConnection,
    setup: &Setup,
) -> Result<(Transaction<'c, Postgres>, AsOf), sqlx::Error> {
    let mut tx = conn.begin_with(setup.begin).await?;
    let (now_us, lag_us): (Option<i64>, Option<i64>) = sqlx::query_as(NOW_US)
        .persistent(false)
        .bind(&setup.statement_timeout)
        .bind(&setup.zone)
        .bind(setup.client_encoding)
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, AsOf { now: now_us.map(UnixMicros), lag_us }))
}

impl AsOf {
    /// The time, or why it cannot be known (a transient state of a freshly started standby).
    fn known(&self) -> Result<UnixMicros, SourceError> {
        self.now.ok_or_else(|| {
            SourceError::Timeout(
                "the hot standby has WAL to replay and has replayed no commit since it started: how current its \
                 data is cannot be known yet"
                    .into(),
            )
        })
    }
}

/// [`begin_as_of`] for calls that need only the time.
async fn begin<'c>(
    conn: &'c mut PgConnection,
    setup: &Setup,
) -> Result<(Transaction<'c, Postgres>, UnixMicros), sqlx::Error> {
    let (tx, as_of) = begin_as_of(conn, setup).await?;
    Ok((tx, as_of.now.unwrap_or_default()))
}

/// Runs a row query with its microsecond bounds and, for `rows_since` and `rows_page`, a row
/// limit: `rows_between` and `rows_page` take `[from, to)`, `rows_since` `from`.
async fn fetch_rows(
    tx: &mut Transaction<'_, Postgres>,
    q: &Queries,
    sql: &str,
    source: &str,
    bounds: &[UnixMicros],
    limit: Option<usize>,
) -> Result<Vec<Row>, sqlx::Error> {
    let mut query = sqlx::query(sql).persistent(false).bind(source);
    for b in bounds {
        query = query.bind(b.0);
    }
    if let Some(limit) = limit {
        query = query.bind(limit as i64);
    }
    let raw = q.shape.raw_text;
    // Decoded as they arrive: the driver's rows are never all held beside the decoded ones.
    let mut rows = Vec::new();
    let mut stream = query.fetch(&mut **tx);
    while let Some(r) = stream.try_next().await? {
        rows.push(decode::row(&r, raw)?);
    }
    Ok(rows)
}

/// The load's aggregates: from SQL for a JSON context, summed from the row stream for a text one.
async fn load_groups(
    tx: &mut Transaction<'_, Postgres>,
    q: &Queries,
    source: &str,
    bounds: (UnixMicros, UnixMicros),
    reason_cap: usize,
    reasons: bool,
) -> Result<Vec<Group>, sqlx::Error> {
    let mut query = sqlx::query(if reasons { &q.load } else { &q.load_lean })
        .persistent(false)
        .bind(source)
        .bind(bounds.0 .0)
        .bind(bounds.1 .0)
        .bind(BIN_SECONDS)
        .bind(reason_cap as i64);
    if let Some(oldest) = &q.oldest {
        let oldest: Option<i64> =
            sqlx::query_scalar(oldest).persistent(false).bind(source).bind(bounds.1 .0).fetch_one(&mut **tx).await?;
        query = query.bind(oldest.map_or(bounds.1 .0, |o| o.min(bounds.1 .0)));
    }
    let raw = q.shape.raw_text;
    if q.shape.context != ContextColumn::Text {
        let mut groups = Vec::new();
        let mut rows = query.fetch(&mut **tx);
        while let Some(r) = rows.try_next().await? {
            groups.push(decode::group(&r, raw)?);
        }
        return Ok(groups);
    }
    let mut sums = TextLoad::default();
    let mut rows = query.fetch(&mut **tx);
    while let Some(r) = rows.try_next().await? {
        sums.add(&r, raw, bounds.1)?;
    }
    Ok(sums.finish(reason_cap))
}

impl Db {
    /// Prepares the connection options; nothing touches the network yet.
    pub fn new(cfg: DatabaseConfig) -> Result<Self, SourceError> {
        let options = PgConnectOptions::from_str(cfg.url.expose_secret())
            // Not a secret-bearing message: sqlx's URL errors name the part, not the input.
            .map_err(|e| SourceError::Connect(format!("invalid database URL {}: {e}", cfg.url.redacted())))?
            // PgBouncer refuses unknown startup parameters such as extra_float_digits.
            .extra_float_digits(None)
            .application_name("rollout-exporter")
            .disable_statement_logging();
        let queries = Arc::new(Queries::new(&cfg.spec, cfg.count_since_us, Shape::default()));
        Ok(Db { options, conn: None, cfg, queries, probe: None })
    }

    /// The statements, for EXPLAIN in tests.
    #[cfg(feature = "testing")]
    pub fn queries(&self) -> &Queries {
        &self.queries
    }

    /// What the last probe found (None before the first load).
    pub fn probe(&self) -> Option<&Probe> {
        self.probe.as_ref()
    }

    /// How a transaction starts: read-only, its isolation, its statement timeout and session settings.
    fn setup(&self, timeout_factor: u32, repeatable: bool) -> Setup {
        Setup {
            begin: if repeatable {
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
            } else {
                "BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY"
            },
            statement_timeout: format!("{}ms", (self.cfg.statement_timeout * timeout_factor).as_millis().max(1)),
            zone: self.probe.as_ref().map_or_else(|| "UTC".to_string(), |p| p.zone.name.clone()),
            client_encoding: if self.queries.shape.raw_text { "SQL_ASCII" } else { "UTF8" },
        }
    }

    async fn connect(&self) -> Result<PgConnection, SourceError> {
        match tokio::time::timeout(self.cfg.connect_timeout, self.options.connect()).await {
            Ok(r) => r.map_err(SourceError::from),
            Err(_) => Err(SourceError::Connect(format!(
                "no connection within --connect-timeout ({})",
                humantime::format_duration(self.cfg.connect_timeout)
            ))),
        }
    }

    /// The open connection if it still answers a ping (the server may have closed it while
    /// idle), else a new one.
    async fn connection(&mut self) -> Result<PgConnection, SourceError> {
        if let Some(mut conn) = self.conn.take() {
            if let Ok(Ok(())) = tokio::time::timeout(self.cfg.connect_timeout, conn.ping()).await {
                return Ok(conn);
            }
        }
        self.connect().await
    }

    /// Runs `work` on the connection under the overall deadline. A connection-level failure or a
    /// timeout drops the connection (it may be mid-protocol); the next call reconnects.
    async fn run<T: Send + 'static>(
        &mut self,
        timeout_factor: u32,
        work: impl FnOnce(PgConnection) -> Work<T>,
    ) -> Result<T, SourceError> {
        let deadline = self.cfg.statement_timeout * timeout_factor + self.cfg.connect_timeout + Duration::from_secs(1);
        let conn = self.connection().await?;
        match tokio::time::timeout(deadline, work(conn)).await {
            Ok((conn, r)) => {
                if !matches!(&r, Err(e) if e.poisons_connection()) {
                    self.conn = Some(conn);
                }
                r
            }
            Err(_) => Err(SourceError::Timeout(format!("no answer within {}", humantime::format_duration(deadline)))),
        }
    }

    /// The start-up load, in one REPEATABLE READ snapshot: first the probe (the table's shape, the
    /// zone, the role's access: an error says what to fix), then aggregates of the rows before
    /// `now` and of the rows without an instant, and the rows dated at or after `now` one by one
    /// (they are counted on sight; the polls skip them). `longest_window` (seconds) bounds the
    /// minutes returned; `reason_cap` the reasons returned by name. Nothing of the size of the
    /// table is held: the groups are bounded by the caps and the minutes of the longest window.
    pub async fn load(&mut self, plan: LoadPlan) -> Result<Loaded, SourceError> {
        let setup = self.setup(10, true);
        let cfg = self.cfg.clone();
        let (loaded, probe, queries) = self
            .run(10, move |mut conn| {
                Box::pin(async move {
                    let r = load_in(&mut conn, setup, cfg, plan).await;
                    (conn, r)
                })
            })
            .await?;
        self.probe = Some(probe);
        self.queries = queries;
        Ok(loaded)
    }

    /// One poll, in one REPEATABLE READ snapshot: the database time, the rows per second of the
    /// checked range, a page of the rows of `[plan.rows_from, now() - plan.settle)`, and the rows
    /// dated at or after `now()`.
    pub async fn poll(&mut self, plan: PollPlan) -> Result<Polled, SourceError> {
        let (source, q, setup) = (self.cfg.spec.source.clone(), self.queries.clone(), self.setup(1, true));
        self.run(1, move |mut conn| {
            Box::pin(async move {
                let r = async {
                    let (mut tx, as_of) = begin_as_of(&mut conn, &setup).await?;
                    let now = as_of.known()?;
                    let counts = if plan.count_from < plan.count_to {
                        sqlx::query_as::<_, (i64, i64)>(&q.minute_counts)
                            .persistent(false)
                            .bind(&source)
                            .bind(plan.count_from.0)
                            .bind(plan.count_to.0)
                            .bind(1.0f64)
                            .fetch_all(&mut *tx)
                            .await?
                            .into_iter()
                            .map(|(s, n)| SecondCount { second: s.div_euclid(US_PER_SECOND), rows: n.max(0) as u64 })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    // Up to now() - settle: a transaction that commits within the margin is never late.
                    let upto = now.minus(plan.settle).max(plan.at_least_to.min(now)).max(plan.rows_from);
                    let raw = q.shape.raw_text;
                    // The two parts, decoded as they arrive: the page (below `upto`, so below
                    // now) and the rows dated ahead.
                    let (mut rows, mut ahead) = (Vec::new(), Vec::new());
                    let mut stream = sqlx::query(&q.rows_page)
                        .persistent(false)
                        .bind(&source)
                        .bind(plan.rows_from.0)
                        .bind(upto.0)
                        .bind(plan.limit as i64)
                        .bind(now.0)
                        .bind(MAX_AHEAD as i64)
                        .fetch(&mut *tx);
                    while let Some(r) = stream.try_next().await? {
                        let row = decode::row(&r, raw)?;
                        if row.time == TimeClass::Dated && row.created_us < now.0 {
                            rows.push(row);
                        } else {
                            ahead.push(row);
                        }
                    }
                    drop(stream);
                    rows.sort_by_key(|r| r.created_us);
                    ahead.sort_by_key(|r| if r.time == TimeClass::Dated { r.created_us } else { i64::MAX });
                    tx.commit().await?;
                    Ok::<_, SourceError>(Polled { now, upto, lag_us: as_of.lag_us, counts, rows, ahead })
                }
                .await;
                (conn, r)
            })
        })
        .await
    }

    /// Rows per minute of `[from, to)` (an index-only scan), in its own READ COMMITTED transaction.
    pub async fn minute_counts(&mut self, from: UnixMicros, to: UnixMicros) -> Result<Vec<MinuteCount>, SourceError> {
        let (source, q, setup) = (self.cfg.spec.source.clone(), self.queries.clone(), self.setup(1, false));
        self.run(1, move |mut conn| {
            Box::pin(async move {
                let r = async {
                    let (mut tx, _now) = begin(&mut conn, &setup).await?;
                    let counts = sqlx::query_as::<_, (i64, i64)>(&q.minute_counts)
                        .persistent(false)
                        .bind(&source)
                        .bind(from.0)
                        .bind(to.0)
                        .bind(BIN_SECONDS)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .map(|(m, n)| MinuteCount { minute: m.div_euclid(MINUTE), rows: n.max(0) as u64 })
                        .collect();
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(counts)
                }
                .await
                .map_err(SourceError::from);
                (conn, r)
            })
        })
        .await
    }

    /// The rows of `[from, to)`, for minutes whose count says something was missed.
    pub async fn rows_between(&mut self, from: UnixMicros, to: UnixMicros) -> Result<Vec<Row>, SourceError> {
        let (source, q, setup) = (self.cfg.spec.source.clone(), self.queries.clone(), self.setup(1, false));
        self.run(1, move |mut conn| {
            Box::pin(async move {
                let r = async {
                    let (mut tx, _now) = begin(&mut conn, &setup).await?;
                    let rows = fetch_rows(&mut tx, &q, &q.rows_between, &source, &[from, to], None).await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(rows)
                }
                .await
                .map_err(SourceError::from);
                (conn, r)
            })
        })
        .await
    }
}

/// What `check` needs beyond the probe.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub probe: Probe,
    /// The statements' shape, or why the table cannot be followed (with the fix).
    pub shape: Result<Shape, String>,
    /// EXPLAIN of the poll for the last two minutes (empty when the shape was refused).
    pub poll_plan: String,
    pub server_version: String,
    /// The role's own `statement_timeout` (the session default, before the exporter's SET LOCAL).
    pub role_statement_timeout: String,
    /// Two transactions in a row ran on different backends: a transaction-mode pooler.
    pub backend_changed: bool,
    pub table_bytes: i64,
    /// `pg_class.reltuples` of the table (and its partitions): the planner's row estimate.
    pub estimated_rows: f64,
    pub lag_us: Option<i64>,
}

/// The inspection's transaction.
async fn inspect_in(
    conn: &mut PgConnection,
    setup: Setup,
    cfg: DatabaseConfig,
) -> Result<(Inspection, i32), SourceError> {
    let (mut tx, as_of) = begin_as_of(conn, &setup).await?;
    let probe = probe(&mut tx, &cfg.spec, cfg.created_at_time_zone.as_deref()).await?;
    let shape = probe.shape(&cfg.spec).map_err(|e| e.to_string());
    let (version, timeout, pid, bytes, rows): (String, String, i32, i64, f64) = sqlx::query_as(
        "SELECT current_setting('server_version'), \
                (SELECT reset_val || CASE WHEN reset_val = '0' THEN '' ELSE coalesce(' ' || unit, '') END \
                 FROM pg_settings WHERE name = 'statement_timeout'), \
                pg_backend_pid(), \
                coalesce((SELECT sum(pg_total_relation_size(relid))::int8 FROM \
                          (SELECT relid FROM pg_partition_tree(to_regclass($1)) UNION SELECT to_regclass($1)) t), 0), \
                coalesce((SELECT sum(greatest(c.reltuples, 0))::float8 FROM \
                          (SELECT relid FROM pg_partition_tree(to_regclass($1)) UNION SELECT to_regclass($1)) t \
                          JOIN pg_class c ON c.oid = t.relid), 0)",
    )
    .persistent(false)
    .bind(&cfg.spec.table)
    .fetch_one(&mut *tx)
    .await?;
    let mut poll_plan = String::new();
    if let Ok(shape) = &shape {
        let q = Queries::new(&cfg.spec, cfg.count_since_us, shape.clone());
        // Whether the poll CAN use the index: on a small table the planner rightly prefers a
        // sequential scan, which says nothing about the table the exporter will follow.
        sqlx::query("SELECT set_config('enable_seqscan', 'off', true)").persistent(false).execute(&mut *tx).await?;
        let now = as_of.now.unwrap_or_else(UnixMicros::now);
        let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", q.rows_page))
            .persistent(false)
            .bind(&cfg.spec.source)
            .bind(now.minus(Duration::from_secs(120)).0)
            .bind(now.0)
            .bind(super::PAGE_ROWS as i64)
            .bind(now.0)
            .bind(MAX_AHEAD as i64)
            .fetch_all(&mut *tx)
            .await?;
        poll_plan = lines.join("\n");
    }
    tx.commit().await?;
    let inspection = Inspection {
        probe,
        shape,
        poll_plan,
        server_version: version,
        role_statement_timeout: timeout,
        backend_changed: false,
        table_bytes: bytes,
        estimated_rows: rows,
        lag_us: as_of.lag_us,
    };
    Ok((inspection, pid))
}

impl Db {
    /// For `check`: the probe, the poll's plan, the role's settings and the table's size, and
    /// whether a second transaction lands on another backend (a transaction-mode pooler).
    pub async fn inspect(&mut self) -> Result<Inspection, SourceError> {
        let setup = self.setup(1, false);
        let cfg = self.cfg.clone();
        let first_setup = setup.clone();
        let (mut inspection, pid) = self
            .run(1, move |mut conn| {
                Box::pin(async move {
                    let r = inspect_in(&mut conn, first_setup, cfg).await;
                    (conn, r)
                })
            })
            .await?;
        let second: i32 = self
            .run(1, move |mut conn| {
                Box::pin(async move {
                    let r = async {
                        let (mut tx, _) = begin(&mut conn, &setup).await?;
                        let pid: i32 =
                            sqlx::query_scalar("SELECT pg_backend_pid()").persistent(false).fetch_one(&mut *tx).await?;
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(pid)
                    }
                    .await
                    .map_err(SourceError::from);
                    (conn, r)
                })
            })
            .await?;
        inspection.backend_changed = second != pid;
        Ok(inspection)
    }
}

/// The load's transaction: probe, settings, aggregates, recent rows.
async fn load_in(
    conn: &mut PgConnection,
    mut setup: Setup,
    cfg: DatabaseConfig,
    plan: LoadPlan,
) -> Result<(Loaded, Probe, Arc<Queries>), SourceError> {
    let LoadPlan { stream_back, longest_window, reason_cap, as_of: at, reasons } = plan;
    let (mut tx, as_of) = begin_as_of(conn, &setup).await?;
    let now = match at {
        // As of a past instant: rows created before it, the windows ending at it.
        Some(at) => at.min(as_of.known()?),
        None => as_of.known()?,
    };
    let found = probe(&mut tx, &cfg.spec, cfg.created_at_time_zone.as_deref()).await?;
    let shape = found.shape(&cfg.spec)?;
    let q = Arc::new(Queries::new(&cfg.spec, cfg.count_since_us, shape));
    setup.zone = found.zone.name.clone();
    setup.client_encoding = if q.shape.raw_text { "SQL_ASCII" } else { "UTF8" };
    sqlx::query("SELECT set_config('TimeZone', $1, true), set_config('client_encoding', $2, true)")
        .persistent(false)
        .bind(&setup.zone)
        .bind(setup.client_encoding)
        .execute(&mut *tx)
        .await
        .map_err(|e| match SourceError::from(e) {
            SourceError::Query(m) => {
                SourceError::Schema(format!("time zone {:?} ({}): {m}", setup.zone, found.zone.source))
            }
            other => other,
        })?;
    let rows_from = minute_start(now.minus(stream_back).minute());
    let horizon = minute_start(window_start_minute(now, longest_window));
    sqlx::query(LOAD_PLANNER_HINTS).persistent(false).execute(&mut *tx).await?;
    if q.oldest.is_some() {
        sqlx::query(LOAD_SLICED_HINTS).persistent(false).execute(&mut *tx).await?;
    }
    let groups = load_groups(&mut tx, &q, &cfg.spec.source, (now, horizon), reason_cap, reasons).await?;
    let rows = match at {
        Some(_) => Vec::new(),
        None => fetch_rows(&mut tx, &q, &q.rows_since, &cfg.spec.source, &[now], Some(MAX_AHEAD)).await?,
    };
    tx.commit().await?;
    if found.zone.source != "default" && q.shape.timestamp_without_zone {
        tracing::info!(zone = %found.zone.name, from = found.zone.source, "created_at has no time zone: read in this zone");
    }
    Ok((Loaded { now, lag_us: as_of.lag_us, groups, rows, rows_from }, found, q))
}
