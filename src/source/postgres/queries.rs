//! The SQL. Identifiers are validated and quoted in config and spliced in once; every value,
//! including the bucket width ([`MINUTE`]), is bound as a parameter. The statements are built for
//! the table as the start-up probe found it ([`Shape`]): no statement casts a whole column to a
//! type a single row's value could fail (a text context to jsonb, an enum compared with text, an
//! infinite timestamp to an integer), so one bad value cannot abort a load or a poll.

use crate::config::TableSpec;
use crate::time::{MINUTE, US_PER_SECOND};

/// `$4` as the bucket width interval of `date_bin`: [`MINUTE`] bound in seconds.
const BIN_4: &str = "make_interval(secs => $4::float8)";

/// The bucket width bound into `$4` of the load and the minute counts, seconds.
pub(super) const BIN_SECONDS: f64 = (MINUTE / US_PER_SECOND) as f64;

/// Instants from here on are "far future" (year 100000: still exact in int8 microseconds).
const FAR_FUTURE: &str = "'100000-01-01 00:00:00+00'";

/// How the source column is compared with `--source` (bound as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMatch {
    /// A text column: `source = $1` (the index serves it).
    Text,
    /// An enum that has the value: `source = $1::text::<enum>` (the index serves it).
    Enum(String),
    /// Anything else, or an enum without the value: `source::text = $1` (no row can match an enum
    /// without the value; `check` says so).
    AsText,
}

/// The type of the context column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextColumn {
    Jsonb,
    Json,
    /// Text (or another type read as text): parsed tolerantly in Rust, row by row.
    Text,
}

/// What the statements must know of the table and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub source: SourceMatch,
    pub context: ContextColumn,
    /// `created_at` is `timestamp without time zone`: read in the writers' zone (SET LOCAL TimeZone).
    pub timestamp_without_zone: bool,
    /// The server encoding is SQL_ASCII: text goes out as raw bytes and is decoded lossily.
    pub raw_text: bool,
    /// An index serves ranges of `created_at` ([`super::probe::Probe::index_on_created_at`], or
    /// `index_on_source_created_at` with the source compared as text or its enum): the
    /// start-up load reads the table in time slices ([`LOAD_SLICES`]).
    pub created_at_index: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            source: SourceMatch::Text,
            context: ContextColumn::Jsonb,
            timestamp_without_zone: false,
            raw_text: false,
            created_at_index: false,
        }
    }
}

/// Time slices of each of the two ranges the sliced start-up load reads: the minutes of the longest
/// window (`[horizon, now)`) and the rows before them (`[oldest, horizon)`). Each slice is one
/// GROUP BY over an index range, and PostgreSQL's Parallel Append runs the slices in its parallel
/// workers at once: the aggregation is shared out, where the planner otherwise hashes every row in
/// the leader (it cannot estimate how many groups the JSON and minute expressions make, so it
/// never aggregates partially in the workers). Six per range keeps three processes (the default
/// two workers and the leader) busy to the end; 3 to 12 measured the same at 10M rows.
pub const LOAD_SLICES: usize = 6;

/// The SQL for one table shape.
#[derive(Debug, Clone)]
pub struct Queries {
    pub(super) shape: Shape,
    pub(super) load: String,
    /// The load without reason texts (`backtest`): reasons folded into `other`.
    pub(super) load_lean: String,
    /// For a load read in time slices (`created_at` ranges are index scans): the statement that
    /// finds where the old range starts, bound into the load's `$6`. None: one scan.
    pub(super) oldest: Option<String>,
    pub(super) rows_since: String,
    pub(super) rows_page: String,
    pub(super) rows_between: String,
    pub(super) minute_counts: String,
}

/// A bound Unix-microsecond parameter as a timestamptz, exactly (no float rounding).
fn ts(param: &str) -> String {
    format!("(timestamptz 'epoch' + ({param})::int8 * interval '1 microsecond')")
}

/// A timestamptz as exact Unix microseconds (extract returns numeric on PostgreSQL 14+).
fn us(col: &str) -> String {
    format!("(extract(epoch FROM {col}) * 1000000)::int8")
}

/// Builds the expressions of one shape.
struct Sql<'a> {
    spec: &'a TableSpec,
    shape: &'a Shape,
}

impl Sql<'_> {
    /// A text value as it goes out: raw bytes in a SQL_ASCII database.
    fn out(&self, e: &str) -> String {
        if self.shape.raw_text {
            format!("textsend({e})")
        } else {
            e.to_string()
        }
    }

    fn source_is_param(&self) -> String {
        let src = &self.spec.source_column;
        match &self.shape.source {
            SourceMatch::Text => format!("{src} = $1"),
            SourceMatch::Enum(t) => format!("{src} = $1::text::{t}"),
            SourceMatch::AsText => format!("{src}::text = $1"),
        }
    }

    /// `created_at` as a timestamptz (a zone-less column in the session zone the load sets).
    fn created(&self) -> String {
        let ca = &self.spec.created_at;
        if self.shape.timestamp_without_zone {
            format!("{ca}::timestamptz")
        } else {
            ca.clone()
        }
    }

    /// `created_at <op> bound`, with the bound converted to the column's type so the index serves it.
    fn compare(&self, op: &str, bound: &str) -> String {
        let ca = &self.spec.created_at;
        if self.shape.timestamp_without_zone {
            format!("{ca} {op} ({bound})::timestamp")
        } else {
            format!("{ca} {op} {bound}")
        }
    }

    /// 0 dated, 1 NULL, 2 far future (incl. infinity), 3 -infinity.
    fn time_class(&self) -> String {
        let ca = &self.spec.created_at;
        format!(
            "(CASE WHEN {ca} IS NULL THEN 1 WHEN {ca} = '-infinity' THEN 3 WHEN {c} >= timestamptz {FAR_FUTURE} THEN 2 ELSE 0 END)",
            c = self.created()
        )
    }

    /// `created_at` in microseconds for dated rows, `i64::MAX` for far-future ones, else NULL.
    fn created_us(&self) -> String {
        format!(
            "(CASE {class} WHEN 0 THEN {us} WHEN 2 THEN 9223372036854775807 END)",
            class = self.time_class(),
            us = us(&self.created())
        )
    }

    fn since(&self, count_since_us: Option<i64>) -> String {
        match count_since_us {
            Some(v) => format!(" AND {}", self.compare(">=", &ts(&v.to_string()))),
            None => String::new(),
        }
    }

    /// The JSON functions of the context column's type.
    fn typeof_fn(&self) -> &'static str {
        if self.shape.context == ContextColumn::Json {
            "json_typeof"
        } else {
            "jsonb_typeof"
        }
    }

    /// The row columns: id, event type, then either (reason, reason type, context type, booking
    /// id) from JSON or the raw context text, then the time class and microseconds.
    fn row_columns(&self) -> String {
        let TableSpec { id, event_type: et, context: ctx, .. } = self.spec;
        let context = if self.shape.context == ContextColumn::Text {
            format!("NULL::text, NULL::text, NULL::text, NULL::text, {}", self.out(&format!("{ctx}::text")))
        } else {
            let t = self.typeof_fn();
            format!(
                "{reason}, {t}({ctx} -> 'reason'), {t}({ctx}), {booking}, NULL::text",
                reason = self.out(&format!("({ctx} ->> 'reason')")),
                booking = self.out(&format!("({ctx} ->> 'booking_id')")),
            )
        };
        format!(
            "{idt}, {ett}, {context}, {class}::int4, {cus}",
            idt = self.out(&format!("{id}::text")),
            ett = self.out(&format!("{et}::text")),
            class = self.time_class(),
            cus = self.created_us(),
        )
    }

    /// The start-up load for a JSON context column, in ONE scan with plain GROUP BYs (which
    /// PostgreSQL can run as parallel hash aggregates; GROUPING SETS cannot), for rows older than
    /// the part streamed row by row ($2) and rows without an instant: by event type, reason (cut at
    /// 101 characters on the way out: labels keep 100), the shape of context, the time class and, for rows of the
    /// longest window (from $3), the minute. Reasons are ranked per event type in SQL and only the
    /// top `$5` (`--reason-cap`) come out by name; the rest come out summed as `folded`, so memory
    /// is bounded by the caps, not by distinct reason texts. `date_bin` keeps the minute arithmetic
    /// on timestamps and independent of the session time zone. `g` is MATERIALIZED so that it is
    /// planned on its own, as the hash aggregate the load's planner hints ask for: inlined, the
    /// ranking's window functions made every plan sort, and the planner sorted all rows by six keys
    /// (1M rows: 1.9-3.3 s instead of 0.9-1.5 s, bench/run.sh and EXPLAIN ANALYZE). The ranking is
    /// computed over the distinct (event type, reason) pairs only and hash-joined back on NULL-safe
    /// keys, where it used to sort every group twice (1M rows, psql: about 0.77 s instead of 1.05 s).
    /// (Grouping by the reason's JSON value instead of its text would merge `1` and `1.0`.)
    fn load(&self, since: &str) -> String {
        let TableSpec { table, event_type: et, context: ctx, .. } = self.spec;
        let t = self.typeof_fn();
        format!(
            "WITH g AS MATERIALIZED (\
               SELECT et, r #>> '{{}}' AS reason, {t}(r) AS reason_type, ct, class, \
                      CASE WHEN class = 0 AND ca >= {ts3} THEN date_bin({BIN_4}, ca, timestamptz 'epoch') END AS minute, \
                      count(*)::int8 AS n, max(ca) FILTER (WHERE class = 0) AS last, \
                      min(id::text) FILTER (WHERE class <> 0 OR ct IS DISTINCT FROM 'object' OR et IS NULL) AS example \
               FROM (SELECT {id} AS id, {et}::text AS et, {ctx} -> 'reason' AS r, {t}({ctx}) AS ct, {ca} AS ca, \
                            {class} AS class \
                     FROM {table} WHERE {src} AND ({raw_ca} IS NULL OR {before}){since}) AS rows \
               GROUP BY 1, 2, 3, 4, 5, 6), \
             {rest}",
            ca = self.created(),
            raw_ca = self.spec.created_at,
            class = self.time_class(),
            src = self.source_is_param(),
            before = self.compare("<", &ts("$2")),
            ts3 = ts("$3"),
            id = self.spec.id,
            rest = self.ranked_output(),
        )
    }

    /// The load for `backtest`, which judges the soak and reads no reason text: by event type,
    /// whether `context->>'reason'` is NULL (the runbook's success test), the time class and the
    /// minute; rows with a reason come out `folded` (summed into `other`). Nothing a verdict does
    /// not read is computed per row: no reason text, context shape, newest `created_at` or example
    /// id (the context comes out as an object; `$5` is unused).
    fn load_lean(&self, since: &str) -> String {
        let TableSpec { table, event_type: et, context: ctx, .. } = self.spec;
        let minute = format!(
            "CASE WHEN class = 0 AND ca >= {ts3} THEN date_bin({BIN_4}, ca, timestamptz 'epoch') END",
            ts3 = ts("$3")
        );
        format!(
            "SELECT {et_out}, {null_out}, NULL::text, 'object'::text, class, {minute_us}, count(*)::int8, NULL::int8, \
                    with_reason, {null_out} \
             FROM (SELECT {et}::text AS et, ({ctx} ->> 'reason') IS NOT NULL AS with_reason, {ca} AS ca, \
                          {class} AS class, $5::int8 AS unused \
                   FROM {table} WHERE {src} AND ({raw_ca} IS NULL OR {before}){since}) AS rows \
             GROUP BY et, with_reason, class, {minute}",
            et_out = self.out("et"),
            null_out = self.out("NULL::text"),
            minute_us = us(&minute),
            ca = self.created(),
            raw_ca = self.spec.created_at,
            class = self.time_class(),
            src = self.source_is_param(),
            before = self.compare("<", &ts("$2")),
        )
    }

    /// A bound Unix-microsecond parameter in the column's own type (a zone-less column: as wall
    /// time in the session zone).
    fn bound(&self, param: &str) -> String {
        if self.shape.timestamp_without_zone {
            format!("({})::timestamp", ts(param))
        } else {
            ts(param)
        }
    }

    /// Boundary `i` of `k` equal slices of `[lo, hi)` (bound parameters), in the column's type:
    /// the ends exactly; between them `lo` plus a fraction of the span in seconds (an interval of
    /// seconds only: no days, so no zone arithmetic),
    /// which never decreases as `i` grows. Slice `i` ends where slice `i + 1` begins, in the
    /// same expression, so every row of `[lo, hi)` is in exactly one slice.
    fn boundary(&self, lo: &str, hi: &str, i: usize, k: usize) -> String {
        let (lo, hi) = (self.bound(lo), self.bound(hi));
        if i == 0 {
            lo
        } else if i == k {
            hi
        } else {
            format!("({lo} + make_interval(secs => extract(epoch FROM {hi} - {lo})::float8 * {i} / {k}))")
        }
    }

    /// The sliced load's branches: `(condition on created_at, time class, with minutes)`. The rows
    /// without an instant or before `$6` (the oldest finite `created_at` before the horizon, or the
    /// horizon when there is none; `-infinity` is below it) with their time class; [`LOAD_SLICES`]
    /// slices of `[$6, $3)`, dated, without minutes; [`LOAD_SLICES`] slices of `[$3, $2)`, the
    /// minutes of the longest window. Together: every row before `$2` (now) exactly once.
    fn slices(&self) -> Vec<(String, String, bool)> {
        let ca = &self.spec.created_at;
        let mut out = vec![(format!("({ca} IS NULL OR {ca} < {})", self.bound("$6")), self.time_class(), false)];
        for (lo, hi, minutes) in [("$6", "$3", false), ("$3", "$2", true)] {
            for i in 0..LOAD_SLICES {
                let from = self.boundary(lo, hi, i, LOAD_SLICES);
                let to = self.boundary(lo, hi, i + 1, LOAD_SLICES);
                out.push((format!("{ca} >= {from} AND {ca} < {to}"), "0".into(), minutes));
            }
        }
        out
    }

    /// The minute of a slice's rows (`ca`, a timestamptz), or NULL for a slice without minutes.
    fn slice_minute(minutes: bool) -> String {
        if minutes {
            format!("date_bin({BIN_4}, ca, timestamptz 'epoch')")
        } else {
            "NULL::timestamptz".into()
        }
    }

    /// [`Sql::load`] read in time slices, for a table whose `created_at` ranges an index serves:
    /// the same groups, ranking and output, with `$6` (see [`Sql::slices`]). Each slice is its
    /// own GROUP BY over an index range, so the parallel workers aggregate (Parallel Append runs
    /// whole slices) where the single scan hashed every row in the leader: at 10M rows, 1.8 s
    /// instead of 4.0 s in psql, the runbook's 48 h query taking 1.15 s (docs/benchmarks.md).
    fn load_sliced(&self, since: &str) -> String {
        let TableSpec { table, event_type: et, context: ctx, id, .. } = self.spec;
        let t = self.typeof_fn();
        // jsonb: the key test spares most rows (those without a reason) a second lookup that
        // copies the value out (7% of the statement at 10M rows); json has no `?`.
        let reason_type = if self.shape.context == ContextColumn::Jsonb {
            format!("CASE WHEN {ctx} ? 'reason' THEN {t}({ctx} -> 'reason') END")
        } else {
            format!("{t}({ctx} -> 'reason')")
        };
        let branches: Vec<String> = self
            .slices()
            .into_iter()
            .map(|(range, class, minutes)| {
                format!(
                    "SELECT et, reason, reason_type, ct, class, {minute} AS minute, count(*)::int8 AS n, \
                        max(ca) FILTER (WHERE class = 0) AS last, \
                        min(id::text) FILTER (WHERE class <> 0 OR ct IS DISTINCT FROM 'object' OR et IS NULL) AS example \
                        FROM (SELECT {id} AS id, {et}::text AS et, ({ctx} ->> 'reason') AS reason, \
                        {reason_type} AS reason_type, {t}({ctx}) AS ct, {ca} AS ca, {class} AS class \
                        FROM {table} WHERE {src} AND {range}{since}) AS rows \
                        GROUP BY 1, 2, 3, 4, 5, 6",
                    minute = Self::slice_minute(minutes),
                    ca = self.created(),
                    src = self.source_is_param(),
                )
            })
            .collect();
        format!(
            "WITH g AS MATERIALIZED ({union}), {rest}",
            union = branches.join(" UNION ALL "),
            rest = self.ranked_output()
        )
    }

    /// What follows the groups `g` in both loads: the reasons ranked per event type over the
    /// distinct (event type, reason) pairs, hash-joined back on NULL-safe keys, the ones below
    /// `$5` folded, and the output columns.
    fn ranked_output(&self) -> String {
        format!(
            "ranks AS (SELECT et IS NULL AS et_null, coalesce(et, '') AS et_key, \
                              reason IS NULL AS reason_null, coalesce(reason, '') AS reason_key, \
                              dense_rank() OVER (PARTITION BY et ORDER BY sum(n) DESC, reason COLLATE \"C\" NULLS FIRST) AS rk \
                       FROM g GROUP BY et, reason), \
             capped AS (SELECT g.et, CASE WHEN rk <= $5 OR g.reason = '' THEN g.reason END AS reason, reason_type, ct, \
                               class, minute, n, last, rk > $5 AS folded, example \
                        FROM g JOIN ranks ON et_null = (g.et IS NULL) AND et_key = coalesce(g.et, '') \
                                         AND reason_null = (g.reason IS NULL) AND reason_key = coalesce(g.reason, '')) \
             SELECT {et_out}, {reason_out}, reason_type, ct, class, {minute_us}, sum(n)::int8, {last_us}, folded, \
                    {example_out} \
             FROM capped GROUP BY et, reason, reason_type, ct, class, minute, folded",
            et_out = self.out("et"),
            reason_out = self.out("left(reason, 101)"),
            minute_us = us("minute"),
            last_us = us("max(last)"),
            example_out = self.out("min(example)"),
        )
    }

    /// [`Sql::load_lean`] read in time slices (see [`Sql::load_sliced`]); minutes that two slices
    /// share are summed on the way out.
    fn load_lean_sliced(&self, since: &str) -> String {
        let TableSpec { table, event_type: et, context: ctx, .. } = self.spec;
        let branches: Vec<String> = self
            .slices()
            .into_iter()
            .map(|(range, class, minutes)| {
                format!(
                    "SELECT et, with_reason, class, {minute} AS minute, count(*)::int8 AS n \
                        FROM (SELECT {et}::text AS et, ({ctx} ->> 'reason') IS NOT NULL AS with_reason, {ca} AS ca, \
                        {class} AS class \
                        FROM {table} WHERE {src} AND {range}{since}) AS rows \
                        GROUP BY 1, 2, 3, 4",
                    minute = Self::slice_minute(minutes),
                    ca = self.created(),
                    src = self.source_is_param(),
                )
            })
            .collect();
        format!(
            "SELECT {et_out}, {null_out}, NULL::text, 'object'::text, class, {minute_us}, sum(n)::int8, NULL::int8, \
                        with_reason, {null_out} \
                        FROM (SELECT *, $5::int8 AS unused FROM ({union}) AS u) AS g \
                        GROUP BY et, with_reason, class, minute",
            et_out = self.out("et"),
            null_out = self.out("NULL::text"),
            minute_us = us("minute"),
            union = branches.join(" UNION ALL "),
        )
    }

    /// The oldest finite `created_at` before `$2`, in Unix microseconds (NULL: none): the lower
    /// end of the sliced load's old range. `min()` of the indexed column, one index probe.
    fn oldest(&self, since: &str) -> String {
        let TableSpec { table, created_at: ca, .. } = self.spec;
        let oldest =
            if self.shape.timestamp_without_zone { format!("min({ca})::timestamptz") } else { format!("min({ca})") };
        format!(
            "SELECT {oldest_us} FROM {table} WHERE {src} AND {ca} > '-infinity' AND {before}{since}",
            oldest_us = us(&oldest),
            src = self.source_is_param(),
            before = self.compare("<", &ts("$2")),
        )
    }

    /// The start-up load for a text context column: the rows before $2 (and those without an
    /// instant) one by one, parsed and summed in Rust as they stream ($3 to $5 are unused).
    fn load_text(&self, since: &str) -> String {
        let TableSpec { table, event_type: et, context: ctx, .. } = self.spec;
        format!(
            "SELECT {ett}, {ctxt}, {class}::int4, {cus}, {idt}, $3::int8, $4::float8, $5::int8 \
             FROM {table} WHERE {src} AND ({raw_ca} IS NULL OR {before}){since}",
            ett = self.out(&format!("{et}::text")),
            ctxt = self.out(&format!("{ctx}::text")),
            idt = self.out(&format!("{}::text", self.spec.id)),
            class = self.time_class(),
            cus = self.created_us(),
            raw_ca = self.spec.created_at,
            src = self.source_is_param(),
            before = self.compare("<", &ts("$2")),
        )
    }
}

impl Queries {
    /// The statements for a table of `shape`.
    pub fn new(spec: &TableSpec, count_since_us: Option<i64>, shape: Shape) -> Self {
        let sql = Sql { spec, shape: &shape };
        let TableSpec { table, created_at: ca, .. } = spec;
        let since = sql.since(count_since_us);
        let src = sql.source_is_param();
        let columns = sql.row_columns();
        let (from2, to3) = (sql.compare(">=", &ts("$2")), sql.compare("<", &ts("$3")));
        // A text context is summed from the row stream in Rust: one scan, nothing to share out.
        let sliced = shape.created_at_index && shape.context != ContextColumn::Text;
        Queries {
            load: match (shape.context, sliced) {
                (ContextColumn::Text, _) => sql.load_text(&since),
                (_, true) => sql.load_sliced(&since),
                (_, false) => sql.load(&since),
            },
            load_lean: match (shape.context, sliced) {
                (ContextColumn::Text, _) => sql.load_text(&since),
                (_, true) => sql.load_lean_sliced(&since),
                (_, false) => sql.load_lean(&since),
            },
            oldest: sliced.then(|| sql.oldest(&since)),
            // Rows dated from $2 (the database's now()) on, at most $3: the few a writer dated
            // ahead; they come back every poll and are skipped as already counted.
            rows_since: format!("SELECT {columns} FROM {table} WHERE {src} AND {from2}{since} ORDER BY {ca} LIMIT $3"),
            // The poll: new rows, an index range scan on (source, created_at) over [$2, $3), at most
            // $4 of them in `created_at` order (a poll reads a burst page by page); cost proportional to
            // the rows returned.
            // ... and, in the same statement (one round trip for an idle poll), the rows dated from
            // $5 (the database's now()) on, at most $6.
            rows_page: format!(
                "(SELECT {columns} FROM {table} WHERE {src} AND {from2} AND {to3}{since} ORDER BY {ca} LIMIT $4) \
                 UNION ALL \
                 (SELECT {columns} FROM {table} WHERE {src} AND {from5}{since} ORDER BY {ca} LIMIT $6)",
                from5 = sql.compare(">=", &ts("$5")),
            ),
            // The rows of [$2, $3), for reconciliation.
            rows_between: format!(
                "SELECT {columns} FROM {table} WHERE {src} AND {from2} AND {to3}{since} ORDER BY {ca}"
            ),
            // Rows per minute in [$2, $3): an index-only range scan, no row is transferred. It tells
            // whether the overlap or an older minute holds rows the exporter has not counted.
            // `date_bin` per index entry, the numeric division per group only: the numeric
            // `extract(epoch)` on every entry made this count 5x slower (7.8 ms -> 1.6 ms on 5,242
            // overlap rows, docs/benchmarks.md).
            minute_counts: format!(
                "SELECT {m_us}, n FROM (SELECT date_bin({BIN_4}, {c}, timestamptz 'epoch') AS m, \
                 count(*)::int8 AS n FROM {table} WHERE {src} AND {from2} AND {to3}{since} GROUP BY 1) AS per_minute",
                m_us = us("m"),
                c = sql.created(),
            ),
            shape,
        }
    }

    /// The poll's page statement, for EXPLAIN in tests.
    #[cfg(feature = "testing")]
    pub fn rows_page(&self) -> &str {
        &self.rows_page
    }
}

/// First statement of every transaction: sets the statement timeout ($1), the time zone the
/// writers of a zone-less `created_at` used ($2) and the client encoding ($3, `SQL_ASCII` to take
/// raw bytes from a SQL_ASCII database) for this transaction only (`set_config(..., true)` is
/// `SET LOCAL`, which survives transaction pooling where a session `SET` does not; nothing depends
/// on the session's own zone), and returns the transaction's database time in exact Unix
/// microseconds, as of what the server has replayed: on a hot standby that is still applying WAL
/// it received, rows become visible when replay reaches them, so the time is the last replayed
/// commit's, and the replay lag (microseconds, NULL on a primary) comes back with it. The time is
/// NULL when WAL waits to be replayed and no commit has been replayed since the standby started:
/// then nobody can say how current the data is (the caller refuses to advance).
pub(super) const NOW_US: &str = "SELECT (extract(epoch FROM as_of) * 1000000)::int8, \
       CASE WHEN standby THEN (extract(epoch FROM (now() - as_of)) * 1000000)::int8 END \
     FROM (SELECT CASE WHEN pg_is_in_recovery() \
                        AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() \
                       THEN nullif(least(now(), coalesce(pg_last_xact_replay_timestamp(), '-infinity')), '-infinity') \
                       ELSE now() END AS as_of, \
                  pg_is_in_recovery() AS standby \
           FROM (SELECT set_config('statement_timeout', $1, true), set_config('TimeZone', $2, true), \
                        set_config('client_encoding', $3, true)) AS settings) AS t";

/// Planner settings for the start-up load's transaction only (`set_config(..., true)` is
/// `SET LOCAL`). PostgreSQL cannot estimate how many distinct values the JSON expressions take, so
/// it guesses hundreds of thousands of groups and sorts every row by five keys (about 3x slower
/// than hashing the real ~40,000 groups); free tuple transfer lets the JSON extraction run in
/// parallel workers; JIT compilation costs more than it saves on one scan. Measured on 1M rows:
/// 1.5 s with the defaults, 0.45 s with these (docs/benchmarks.md). `work_mem` 64MB keeps the
/// groups' hash table in memory, so the workers aggregate partially instead of the leader spilling
/// (1M rows with the reason ranking: 28 MB spilled in 65 batches without it).
pub(super) const LOAD_PLANNER_HINTS: &str =
    "SELECT set_config('work_mem', '64MB', true), set_config('enable_sort', 'off', true), set_config('jit', 'off', true), \
     set_config('parallel_tuple_cost', '0', true), set_config('parallel_setup_cost', '0', true)";

/// More planner settings for a load read in time slices (with [`LOAD_PLANNER_HINTS`]): every
/// slice an index range scan, and no parallel scan inside a slice, so that the parallel workers
/// take whole slices (Parallel Append) and aggregate them, instead of each slice gathering its
/// rows into the leader to be hashed there (the plan PostgreSQL picks otherwise: 4.2 s instead
/// of 1.8 s at 10M rows, psql EXPLAIN ANALYZE).
pub(super) const LOAD_SLICED_HINTS: &str = "SELECT set_config('enable_seqscan', 'off', true), \
     set_config('min_parallel_table_scan_size', '1TB', true), set_config('min_parallel_index_scan_size', '1TB', true)";
