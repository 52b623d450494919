//! Reading the events table: the start-up load, the polls, and the verdict's evidence.
//!
//! Every statement is an unnamed (non-persistent) prepared statement inside one explicit
//! transaction with `SET LOCAL statement_timeout`, so it works through a transaction-mode pooler
//! (PgBouncer on 6543), where named statements and session settings do not survive between
//! transactions. Every call also has a client-side deadline, because a paused pooler hangs instead
//! of failing. Transactions are READ ONLY; the exporter never writes.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row as _, Transaction};

/// A boxed, sendable database future; boxing at the creation site keeps `Send` provable.
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send>>;

use crate::config::{DatabaseConfig, TableSpec};
use crate::events::{ContextKind, Group, Row};

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
                    c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("28") => {
                        SourceError::Connect(format!("{msg} (SQLSTATE {code})"))
                    }
                    _ => SourceError::Query(format!("{msg} (SQLSTATE {code})")),
                }
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                SourceError::Decode(e.to_string())
            }
            // The pool retries refused or failed connects until --connect-timeout; with one
            // connection and one user, timing out means the database could not be reached.
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

/// The SQL, with the configured identifiers spliced in once (they are validated and quoted in
/// config; values are always bound).
#[derive(Debug, Clone)]
pub struct Queries {
    load: String,
    rows_since: String,
    rows_between: String,
    minute_counts: String,
    window_counts: String,
    error_blocks: String,
}

/// A bound Unix-microsecond parameter as a timestamptz, exactly (no float rounding).
fn ts(param: &str) -> String {
    format!("(timestamptz 'epoch' + ({param})::int8 * interval '1 microsecond')")
}

/// `created_at` as exact Unix microseconds (extract returns numeric on PostgreSQL 14+).
fn us(col: &str) -> String {
    format!("(extract(epoch FROM {col}) * 1000000)::int8")
}

impl Queries {
    pub fn new(spec: &TableSpec, count_since_us: Option<i64>) -> Self {
        let TableSpec { table, id, source_column: src, event_type: et, context: ctx, created_at: ca, .. } = spec;
        let since = match count_since_us {
            Some(v) => format!(" AND {ca} >= {}", ts(&v.to_string())),
            None => String::new(),
        };
        let ca_us = us(ca);
        let ts2 = ts("$2");
        let ts3 = ts("$3");
        let reason = format!("{ctx}::jsonb ->> 'reason'");
        Queries {
            // The start-up load in ONE scan with one plain GROUP BY (which PostgreSQL can run as
            // a parallel hash aggregate; GROUPING SETS cannot), for rows older than the part
            // streamed row by row ($2): by event type, reason, the shape of context and, for rows
            // of the longest window (from $3), the minute. The all-time counters and the
            // per-minute buckets are both sums of these groups. `date_bin` keeps the minute
            // arithmetic on timestamps (no numeric per row) and independent of the session time
            // zone; `r #>> '{}'` is `context->>'reason'` from the already extracted value.
            load: format!(
                "SELECT et, reason, reason_type, context_type, (extract(epoch FROM minute) / 60)::int8, n, {max_us} \
                 FROM (SELECT et, r #>> '{{}}' AS reason, jsonb_typeof(r) AS reason_type, ct AS context_type, \
                              CASE WHEN ca >= {ts3} THEN date_bin('1 minute', ca, timestamptz 'epoch') END AS minute, \
                              count(*)::int8 AS n, max(ca) AS last \
                       FROM (SELECT {et}::text AS et, {ctx}::jsonb -> 'reason' AS r, jsonb_typeof({ctx}::jsonb) AS ct, \
                                    {ca} AS ca \
                             FROM {table} WHERE {src} = $1 AND {ca} < {ts2}{since}) AS rows \
                       GROUP BY 1, 2, 3, 4, 5) AS groups",
                max_us = us("last"),
            ),
            // New rows: an index range scan on (source, created_at) from $2; cost proportional to
            // the rows in that range.
            rows_since: format!(
                "SELECT {id}::text, {et}::text, {reason}, \
                 jsonb_typeof({ctx}::jsonb -> 'reason'), jsonb_typeof({ctx}::jsonb), \
                 {ctx}::jsonb ->> 'booking_id', {ca_us} \
                 FROM {table} WHERE {src} = $1 AND {ca} >= {ts2}{since} ORDER BY {ca}"
            ),
            // The rows of [$2, $3), for reconciliation.
            rows_between: format!(
                "SELECT {id}::text, {et}::text, {reason}, \
                 jsonb_typeof({ctx}::jsonb -> 'reason'), jsonb_typeof({ctx}::jsonb), \
                 {ctx}::jsonb ->> 'booking_id', {ca_us} \
                 FROM {table} WHERE {src} = $1 AND {ca} >= {ts2} AND {ca} < {ts3}{since} ORDER BY {ca}"
            ),
            // Rows per minute in [$2, $3): an index-only range scan, no row is transferred. It tells
            // whether the overlap or an older minute holds rows the exporter has not counted.
            // `date_bin` per index entry, the numeric division per group only: the numeric
            // `extract(epoch)` on every entry made this count 5x slower (7.8 ms -> 1.6 ms on 5,242
            // overlap rows, docs/benchmarks.md).
            minute_counts: format!(
                "SELECT (extract(epoch FROM m) / 60)::int8, n FROM (SELECT date_bin('1 minute', {ca}, timestamptz 'epoch') AS m, \
                 count(*)::int8 AS n FROM {table} \
                 WHERE {src} = $1 AND {ca} >= {ts2} AND {ca} < {ts3}{since} GROUP BY 1) AS per_minute"
            ),
            // The verdict's counts over a window, with the runbook's "no reason" share.
            window_counts: format!(
                "SELECT {et}::text, count(*)::int8, (count(*) FILTER (WHERE {reason} IS NULL))::int8 \
                 FROM {table} WHERE {src} = $1 AND {ca} >= {ts2}{since} GROUP BY 1 ORDER BY 1"
            ),
            // 5-minute blocks holding a coordinator.error, for "sustained errors".
            error_blocks: format!(
                "SELECT DISTINCT floor(extract(epoch FROM {ca}) / 300)::int8 AS b \
                 FROM {table} WHERE {src} = $1 AND {et} = 'coordinator.error' AND {ca} >= {ts2}{since} ORDER BY b"
            ),
        }
    }

    /// The poll statement, for EXPLAIN in tests.
    pub fn rows_since(&self) -> &str {
        &self.rows_since
    }
}

/// First statement of every transaction: sets the statement timeout for this transaction only
/// (`set_config(..., true)` is `SET LOCAL`, which survives transaction pooling where a session `SET`
/// does not) and returns the transaction's database time in exact Unix microseconds.
const NOW_US: &str =
    "SELECT (extract(epoch FROM now()) * 1000000)::int8 FROM (SELECT set_config('statement_timeout', $1, true)) AS timeout";

/// Planner settings for the start-up load's transaction only (`set_config(..., true)` is
/// `SET LOCAL`). PostgreSQL cannot estimate how many distinct values the JSON expressions take, so
/// it guesses hundreds of thousands of groups and sorts every row by five keys (about 3x slower
/// than hashing the real ~40,000 groups); free tuple transfer lets the JSON extraction run in
/// parallel workers; JIT compilation costs more than it saves on one scan. Measured on 1M rows:
/// 1.5 s with the defaults, 0.45 s with these (docs/benchmarks.md).
const LOAD_PLANNER_HINTS: &str = "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true), \
     set_config('parallel_tuple_cost', '0', true), set_config('parallel_setup_cost', '0', true)";

/// How a transaction starts.
struct Setup {
    begin: &'static str,
    /// e.g. `10000ms`, bound into [`NOW_US`].
    statement_timeout: String,
}

/// A pool of one connection, rebuilt after a connection-level failure.
pub struct Db {
    options: PgConnectOptions,
    pool: PgPool,
    cfg: DatabaseConfig,
    queries: Arc<Queries>,
}

/// What the start-up load found.
pub struct Loaded {
    pub now_us: i64,
    pub groups: Vec<Group>,
    /// (raw event type, minute, rows, rows without reason)
    pub buckets: Vec<(Option<String>, i64, u64, u64)>,
    /// Rows at or after `now - stream_back`, one by one.
    pub rows: Vec<Row>,
}

/// What one poll read.
pub struct Polled {
    pub now_us: i64,
    /// Rows per minute of the checked range, as the database counts them.
    pub counts: Vec<(i64, u64)>,
    pub rows: Vec<Row>,
}

/// What a poll asks for: the range whose rows are counted, and where to read rows from.
#[derive(Debug, Clone, Copy)]
pub struct PollPlan {
    /// Count rows per minute in [count_from, count_to) (the overlap, or a reconciliation range).
    pub count_from_us: i64,
    pub count_to_us: i64,
    /// Read rows from here on.
    pub rows_from_us: i64,
}

/// Opens a read-only transaction, sets its statement timeout and returns its database time.
async fn begin(pool: &PgPool, setup: &Setup) -> Result<(Transaction<'static, Postgres>, i64), sqlx::Error> {
    let mut tx = pool.begin_with(setup.begin).await?;
    let now_us: i64 =
        sqlx::query_scalar(NOW_US).persistent(false).bind(&setup.statement_timeout).fetch_one(&mut *tx).await?;
    Ok((tx, now_us))
}

/// Runs a row query (`rows_since`, `rows_between`) with its microsecond bounds.
async fn fetch_rows(
    tx: &mut Transaction<'static, Postgres>,
    sql: &str,
    source: &str,
    bounds: &[i64],
) -> Result<Vec<Row>, sqlx::Error> {
    let mut query = sqlx::query(sql).persistent(false).bind(source);
    for b in bounds {
        query = query.bind(*b);
    }
    query.fetch_all(&mut **tx).await?.iter().map(decode_row).collect()
}

fn decode_row(r: &PgRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        id: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
        event_type: r.try_get(1)?,
        reason: r.try_get(2)?,
        reason_json_type: r.try_get(3)?,
        context: ContextKind::from_jsonb_typeof(r.try_get::<Option<String>, _>(4)?.as_deref()),
        booking_id: r.try_get(5)?,
        created_us: r.try_get(6)?,
    })
}

fn pool_for(options: &PgConnectOptions, cfg: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(cfg.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .test_before_acquire(true)
        .connect_lazy_with(options.clone())
}

impl Db {
    /// Prepares a lazily connecting pool; nothing touches the network yet.
    pub fn new(cfg: DatabaseConfig) -> Result<Self, SourceError> {
        let options = PgConnectOptions::from_str(cfg.url.expose_secret())
            // Not a secret-bearing message: sqlx's URL errors name the part, not the input.
            .map_err(|e| SourceError::Connect(format!("invalid database URL {}: {e}", cfg.url.redacted())))?
            // PgBouncer refuses unknown startup parameters such as extra_float_digits.
            .extra_float_digits(None)
            .application_name("rollout-exporter");
        let pool = pool_for(&options, &cfg);
        let queries = Arc::new(Queries::new(&cfg.spec, cfg.count_since_us));
        Ok(Db { options, pool, cfg, queries })
    }

    pub fn queries(&self) -> &Queries {
        &self.queries
    }

    /// Drops the current connection(s) so the next call reconnects.
    fn reset(&mut self) {
        let old = std::mem::replace(&mut self.pool, pool_for(&self.options, &self.cfg));
        tokio::spawn(async move { old.close().await });
    }

    /// How a transaction starts: read-only, its isolation, and its statement timeout.
    fn setup(&self, timeout_factor: u32, repeatable: bool) -> Setup {
        Setup {
            begin: if repeatable {
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
            } else {
                "BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY"
            },
            statement_timeout: format!("{}ms", (self.cfg.statement_timeout * timeout_factor).as_millis().max(1)),
        }
    }

    /// Awaits `work` under the overall deadline; throws the connection away after a
    /// connection-level failure or a timeout (it may be mid-protocol).
    async fn guard<T>(&mut self, timeout_factor: u32, work: BoxFuture<T>) -> Result<T, SourceError> {
        let deadline = self.cfg.statement_timeout * timeout_factor + self.cfg.connect_timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r.map_err(SourceError::from),
            Err(_) => Err(SourceError::Timeout(format!("no answer within {}", humantime::format_duration(deadline)))),
        };
        if let Err(e) = &result {
            if e.poisons_connection() {
                self.reset();
            }
        }
        result
    }

    /// What a transaction's future needs, owned, so it borrows nothing from `self`.
    fn parts(&self, timeout_factor: u32, repeatable: bool) -> (String, PgPool, Arc<Queries>, Setup) {
        (self.cfg.spec.source.clone(), self.pool.clone(), self.queries.clone(), self.setup(timeout_factor, repeatable))
    }

    /// The start-up load, in one REPEATABLE READ snapshot: aggregates for rows older than
    /// `now - stream_back`, rows one by one from there on (they seed the overlap de-duplication and
    /// the booking state machine).
    pub async fn load(&mut self, stream_back: Duration, longest_window: u64) -> Result<Loaded, SourceError> {
        let (source, pool, q, setup) = self.parts(10, true);
        let stream_back_us = stream_back.as_micros() as i64;
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, now_us) = begin(&pool, &setup).await?;
            let stream_from = now_us - stream_back_us;
            let horizon_us = crate::tally::window_start_minute(now_us, longest_window) * crate::tally::US_PER_MINUTE;
            sqlx::query(LOAD_PLANNER_HINTS).persistent(false).execute(&mut *tx).await?;
            let found = sqlx::query(&q.load)
                .persistent(false)
                .bind(&source)
                .bind(stream_from)
                .bind(horizon_us)
                .fetch_all(&mut *tx)
                .await?;
            // Sum the (type, reason, shape, minute) groups into all-time groups and minute buckets.
            type GroupKey = (Option<String>, Option<String>, Option<String>, Option<String>);
            let mut totals: HashMap<GroupKey, (u64, i64)> = HashMap::new();
            let mut minutes: HashMap<(Option<String>, i64), (u64, u64)> = HashMap::new();
            for r in &found {
                let event_type: Option<String> = r.try_get(0)?;
                let reason: Option<String> = r.try_get(1)?;
                let count = r.try_get::<i64, _>(5)?.max(0) as u64;
                let last_us = r.try_get::<Option<i64>, _>(6)?.unwrap_or(0);
                if let Some(minute) = r.try_get::<Option<i64>, _>(4)? {
                    let cell = minutes.entry((event_type.clone(), minute)).or_default();
                    cell.0 += count;
                    cell.1 += if reason.is_none() { count } else { 0 };
                }
                let key = (event_type, reason, r.try_get(2)?, r.try_get(3)?);
                let total = totals.entry(key).or_insert((0, i64::MIN));
                total.0 += count;
                total.1 = total.1.max(last_us);
            }
            let mut groups: Vec<Group> = totals
                .into_iter()
                .map(|((event_type, reason, reason_json_type, context), (count, last_us))| Group {
                    event_type,
                    reason,
                    reason_json_type,
                    context: ContextKind::from_jsonb_typeof(context.as_deref()),
                    count,
                    last_us,
                })
                .collect();
            // Most frequent first, so they win the capped labels; ties in a stable order.
            groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
            let buckets =
                minutes.into_iter().map(|((et, minute), (rows, without))| (et, minute, rows, without)).collect();
            let rows = fetch_rows(&mut tx, &q.rows_since, &source, &[stream_from]).await?;
            tx.commit().await?;
            Ok(Loaded { now_us, groups, buckets, rows })
        });
        self.guard(10, work).await
    }

    /// One poll, in one REPEATABLE READ snapshot: the database time, the rows per minute of the
    /// checked range, and the rows from `plan.rows_from_us` on.
    pub async fn poll(&mut self, plan: PollPlan) -> Result<Polled, SourceError> {
        let (source, pool, q, setup) = self.parts(1, true);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, now_us) = begin(&pool, &setup).await?;
            let counts = if plan.count_from_us < plan.count_to_us {
                sqlx::query_as::<_, (i64, i64)>(&q.minute_counts)
                    .persistent(false)
                    .bind(&source)
                    .bind(plan.count_from_us)
                    .bind(plan.count_to_us)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|(m, n)| (m, n.max(0) as u64))
                    .collect()
            } else {
                Vec::new()
            };
            let rows = fetch_rows(&mut tx, &q.rows_since, &source, &[plan.rows_from_us]).await?;
            tx.commit().await?;
            Ok(Polled { now_us, counts, rows })
        });
        self.guard(1, work).await
    }

    /// The rows of `[from_us, to_us)`, for minutes whose count says something was missed.
    pub async fn rows_between(&mut self, from_us: i64, to_us: i64) -> Result<Vec<Row>, SourceError> {
        let (source, pool, q, setup) = self.parts(1, false);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, _now) = begin(&pool, &setup).await?;
            let rows = fetch_rows(&mut tx, &q.rows_between, &source, &[from_us, to_us]).await?;
            tx.commit().await?;
            Ok(rows)
        });
        self.guard(1, work).await
    }

    /// The verdict's evidence over a window, computed in SQL in one snapshot:
    /// (now, per-type (rows, rows without reason), error blocks).
    pub async fn window_evidence(
        &mut self,
        window_seconds: u64,
    ) -> Result<(i64, Vec<(Option<String>, u64, u64)>, Vec<i64>), SourceError> {
        let (source, pool, q, setup) = self.parts(10, true);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, now_us) = begin(&pool, &setup).await?;
            let start_us = crate::tally::window_start_minute(now_us, window_seconds) * crate::tally::US_PER_MINUTE;
            let counts = sqlx::query(&q.window_counts)
                .persistent(false)
                .bind(&source)
                .bind(start_us)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<Option<String>, _>(0)?,
                        r.try_get::<i64, _>(1)?.max(0) as u64,
                        r.try_get::<i64, _>(2)?.max(0) as u64,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let blocks = sqlx::query_scalar::<_, i64>(&q.error_blocks)
                .persistent(false)
                .bind(&source)
                .bind(start_us)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok((now_us, counts, blocks))
        });
        self.guard(10, work).await
    }
}
