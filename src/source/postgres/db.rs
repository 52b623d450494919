//! Database access: connections, read-only transactions with deadlines, and the calls the
//! follower makes (the start-up load, the polls, re-reading a range).
//!
//! Every statement is an unnamed (non-persistent) prepared statement inside one explicit
//! transaction with `SET LOCAL statement_timeout`, so it works through a transaction-mode pooler
//! (PgBouncer on 6543), where named statements and session settings do not survive between
//! transactions. Every call also has a client-side deadline, because a paused pooler hangs instead
//! of failing. Transactions are READ ONLY; the exporter never writes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row as _, Transaction};

/// A boxed, sendable database future; boxing at the creation site keeps `Send` provable.
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send>>;

use super::queries::{Queries, BIN_SECONDS, LOAD_PLANNER_HINTS, NOW_US};
use crate::config::DatabaseConfig;
use crate::events::{ContextKind, Group, Row};
use crate::time::{minute_start, window_start_minute, UnixMicros, MINUTE};

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
    pub now: UnixMicros,
    /// Aggregates of the rows before `now - stream_back`, with the minute inside the longest window.
    pub groups: Vec<Group>,
    /// Rows at or after `now - stream_back`, one by one.
    pub rows: Vec<Row>,
}

/// What one poll read.
pub struct Polled {
    pub now: UnixMicros,
    /// Rows per Unix minute of the checked range, as the database counts them.
    pub counts: Vec<MinuteCount>,
    pub rows: Vec<Row>,
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
    /// Count rows per minute in [count_from, count_to) (the overlap, or a reconciliation range).
    pub count_from: UnixMicros,
    pub count_to: UnixMicros,
    /// Read rows from here on.
    pub rows_from: UnixMicros,
}

/// Opens a read-only transaction, sets its statement timeout and returns its database time.
async fn begin(pool: &PgPool, setup: &Setup) -> Result<(Transaction<'static, Postgres>, UnixMicros), sqlx::Error> {
    let mut tx = pool.begin_with(setup.begin).await?;
    let now_us: i64 =
        sqlx::query_scalar(NOW_US).persistent(false).bind(&setup.statement_timeout).fetch_one(&mut *tx).await?;
    Ok((tx, UnixMicros(now_us)))
}

/// Runs a row query (`rows_since`, `rows_between`) with its microsecond bounds.
async fn fetch_rows(
    tx: &mut Transaction<'static, Postgres>,
    sql: &str,
    source: &str,
    bounds: &[UnixMicros],
) -> Result<Vec<Row>, sqlx::Error> {
    let mut query = sqlx::query(sql).persistent(false).bind(source);
    for b in bounds {
        query = query.bind(b.0);
    }
    query.fetch_all(&mut **tx).await?.iter().map(decode_row).collect()
}

fn decode_group(r: &PgRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        event_type: r.try_get(0)?,
        reason: r.try_get(1)?,
        reason_json_type: r.try_get(2)?,
        context: ContextKind::from_jsonb_typeof(r.try_get::<Option<String>, _>(3)?.as_deref()),
        minute: r.try_get::<Option<i64>, _>(4)?.map(|us| UnixMicros(us).minute()),
        count: r.try_get::<i64, _>(5)?.max(0) as u64,
        last_us: r.try_get::<Option<i64>, _>(6)?.unwrap_or(0),
    })
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

    /// The statements, for EXPLAIN in tests.
    #[cfg(feature = "testing")]
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
    /// the booking state machine). `longest_window` (seconds) bounds the minutes returned.
    pub async fn load(&mut self, stream_back: Duration, longest_window: u64) -> Result<Loaded, SourceError> {
        let (source, pool, q, setup) = self.parts(10, true);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, now) = begin(&pool, &setup).await?;
            let stream_from = now.minus(stream_back);
            let horizon = minute_start(window_start_minute(now, longest_window));
            sqlx::query(LOAD_PLANNER_HINTS).persistent(false).execute(&mut *tx).await?;
            let groups = sqlx::query(&q.load)
                .persistent(false)
                .bind(&source)
                .bind(stream_from.0)
                .bind(horizon.0)
                .bind(BIN_SECONDS)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(decode_group)
                .collect::<Result<Vec<_>, _>>()?;
            let rows = fetch_rows(&mut tx, &q.rows_since, &source, &[stream_from]).await?;
            tx.commit().await?;
            Ok(Loaded { now, groups, rows })
        });
        self.guard(10, work).await
    }

    /// One poll, in one REPEATABLE READ snapshot: the database time, the rows per minute of the
    /// checked range, and the rows from `plan.rows_from_us` on.
    pub async fn poll(&mut self, plan: PollPlan) -> Result<Polled, SourceError> {
        let (source, pool, q, setup) = self.parts(1, true);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, now) = begin(&pool, &setup).await?;
            let counts = if plan.count_from < plan.count_to {
                sqlx::query_as::<_, (i64, i64)>(&q.minute_counts)
                    .persistent(false)
                    .bind(&source)
                    .bind(plan.count_from.0)
                    .bind(plan.count_to.0)
                    .bind(BIN_SECONDS)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|(m, n)| MinuteCount { minute: m.div_euclid(MINUTE), rows: n.max(0) as u64 })
                    .collect()
            } else {
                Vec::new()
            };
            let rows = fetch_rows(&mut tx, &q.rows_since, &source, &[plan.rows_from]).await?;
            tx.commit().await?;
            Ok(Polled { now, counts, rows })
        });
        self.guard(1, work).await
    }

    /// The rows of `[from_us, to_us)`, for minutes whose count says something was missed.
    pub async fn rows_between(&mut self, from: UnixMicros, to: UnixMicros) -> Result<Vec<Row>, SourceError> {
        let (source, pool, q, setup) = self.parts(1, false);
        let work: BoxFuture<_> = Box::pin(async move {
            let (mut tx, _now) = begin(&pool, &setup).await?;
            let rows = fetch_rows(&mut tx, &q.rows_between, &source, &[from, to]).await?;
            tx.commit().await?;
            Ok(rows)
        });
        self.guard(1, work).await
    }
}
