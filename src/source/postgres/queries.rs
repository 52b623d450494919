//! The SQL. Identifiers are validated and quoted in config and spliced in once; every value,
//! including the bucket width ([`MINUTE`]), is bound as a parameter.

use crate::config::TableSpec;
use crate::time::{MINUTE, US_PER_SECOND};

/// `$4` as the bucket width interval of `date_bin`: [`MINUTE`] bound in seconds.
const BIN_4: &str = "make_interval(secs => $4::float8)";

/// The bucket width bound into `$4` of the load and the minute counts, seconds.
pub(super) const BIN_SECONDS: f64 = (MINUTE / US_PER_SECOND) as f64;

/// The SQL, with the configured identifiers spliced in once (they are validated and quoted in
/// config; values are always bound).
#[derive(Debug, Clone)]
pub struct Queries {
    pub(super) load: String,
    pub(super) rows_since: String,
    pub(super) rows_between: String,
    pub(super) minute_counts: String,
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
                "SELECT et, reason, reason_type, context_type, {minute_us}, n, {max_us} \
                 FROM (SELECT et, r #>> '{{}}' AS reason, jsonb_typeof(r) AS reason_type, ct AS context_type, \
                              CASE WHEN ca >= {ts3} THEN date_bin({bin}, ca, timestamptz 'epoch') END AS minute, \
                              count(*)::int8 AS n, max(ca) AS last \
                       FROM (SELECT {et}::text AS et, {ctx}::jsonb -> 'reason' AS r, jsonb_typeof({ctx}::jsonb) AS ct, \
                                    {ca} AS ca \
                             FROM {table} WHERE {src} = $1 AND {ca} < {ts2}{since}) AS rows \
                       GROUP BY 1, 2, 3, 4, 5) AS groups",
                max_us = us("last"),
                minute_us = us("minute"),
                bin = BIN_4,
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
                "SELECT {m_us}, n FROM (SELECT date_bin({bin}, {ca}, timestamptz 'epoch') AS m, \
                 count(*)::int8 AS n FROM {table} \
                 WHERE {src} = $1 AND {ca} >= {ts2} AND {ca} < {ts3}{since} GROUP BY 1) AS per_minute",
                m_us = us("m"),
                bin = BIN_4,
            ),
        }
    }

    /// The poll statement, for EXPLAIN in tests.
    #[cfg(feature = "testing")]
    pub fn rows_since(&self) -> &str {
        &self.rows_since
    }
}

/// First statement of every transaction: sets the statement timeout for this transaction only
/// (`set_config(..., true)` is `SET LOCAL`, which survives transaction pooling where a session `SET`
/// does not) and returns the transaction's database time in exact Unix microseconds.
pub(super) const NOW_US: &str =
    "SELECT (extract(epoch FROM now()) * 1000000)::int8 FROM (SELECT set_config('statement_timeout', $1, true)) AS timeout";

/// Planner settings for the start-up load's transaction only (`set_config(..., true)` is
/// `SET LOCAL`). PostgreSQL cannot estimate how many distinct values the JSON expressions take, so
/// it guesses hundreds of thousands of groups and sorts every row by five keys (about 3x slower
/// than hashing the real ~40,000 groups); free tuple transfer lets the JSON extraction run in
/// parallel workers; JIT compilation costs more than it saves on one scan. Measured on 1M rows:
/// 1.5 s with the defaults, 0.45 s with these (docs/benchmarks.md).
pub(super) const LOAD_PLANNER_HINTS: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true), \
     set_config('parallel_tuple_cost', '0', true), set_config('parallel_setup_cost', '0', true)";
