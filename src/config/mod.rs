//! Command line and environment, parsed once into validated types.
//!
//! Every flag has an environment fallback (12-factor) and a doc comment that becomes `--help`.
//! [`Command::validate`] turns the raw strings into [`ServeConfig`], [`DemoConfig`] or
//! [`VerdictConfig`]; nothing downstream sees an unvalidated value. Errors name the flag and exit 2.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod url;
pub mod web;

use url::database_url;
pub use url::{redact_url, DatabaseUrl};
pub use web::{BasicAuth, WebConfig};

/// Gate thresholds (defaults: the runbook's 97% / 1% and 100 starts) and the confidence level of
/// the ratio criteria's intervals.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Thresholds {
    /// `success_ratio` passes at or above (ratio 0..1).
    pub min_success_ratio: f64,
    /// `manual_review_ratio` passes strictly below (ratio 0..1).
    pub max_manual_review_ratio: f64,
    /// Fewer coordinator.start rows in the soak window is `pending`.
    pub min_starts: u64,
    /// Confidence level of the ratio criteria's Wilson score intervals (ratio, 0 < c < 1); it
    /// decides `evidence`, never pass or fail.
    pub confidence: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { min_success_ratio: 0.97, max_manual_review_ratio: 0.01, min_starts: 100, confidence: 0.95 }
    }
}

/// Exporter default port. The Prometheus port registry (9100-9999) is full; 9864 is not used by any
/// widely deployed exporter we know of. Change it with `--listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9864";

/// Turns the Assignment Pipeline V3 `observability_events` table into Prometheus metrics and a
/// go/no-go rollout gate.
#[derive(Debug, Parser)]
#[command(name = "rollout-exporter", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow the events table in PostgreSQL and serve /metrics, /gate and /verdict.
    Serve(Box<ServeArgs>),
    /// Serve simulated coordinator traffic through the same aggregation (no database needed).
    Demo(Box<DemoArgs>),
    /// Compute the soak verdict directly in SQL, print the evidence, exit 0 go, 1 no_go, 3 pending.
    Verdict(Box<VerdictArgs>),
    /// Connect as `serve` would and check the table, the role and the server: one line per item
    /// (ok / warn / FAIL) with the fix; exit 0 when nothing fails, 1 when something does.
    Check(Box<CheckArgs>),
    /// Replay the soak over a past range: the verdict at every step from --from to --to, from one
    /// load (jsonl, csv or a markdown timeline). What-if thresholds change the judgement, not the data.
    Backtest(Box<BacktestArgs>),
    /// Write what `serve` would have exported at every step of a past range as OpenMetrics text for
    /// `promtool tsdb create-blocks-from openmetrics` (docs/backfill.md).
    Backfill(Box<BackfillArgs>),
}

/// Where the database is and how the events table is shaped. `Debug` shows the URL redacted.
#[derive(Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://exporter@db:6543/app?sslmode=verify-full (percent-encode
    /// `/ ? # @ %` in the password), or a libpq key=value string (host=db port=6543 user=exporter
    /// password='...' dbname=app). Never logged; errors show it with the password as `***`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, allow_hyphen_values = true)]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL or key=value string (a mounted secret); used when
    /// --database-url is not given.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Events table, optionally schema-qualified. As in psql: unquoted names fold to lower case,
    /// double-quoted names keep their case (`--table 'app."Events"'`).
    #[arg(long, env = "EXPORTER_TABLE", default_value = "observability_events")]
    pub table: String,
    /// Value of the source column that marks coordinator events.
    #[arg(long, env = "EXPORTER_SOURCE", default_value = "assignment.coordinator")]
    pub source: String,
    /// Primary-key column (uuid or bigint; treated as opaque text). This and the other column
    /// names: unquoted fold to lower case, double-quoted keep their case (`'"CreatedAt"'`).
    #[arg(long, env = "EXPORTER_ID_COLUMN", default_value = "id")]
    pub id_column: String,
    /// Source column.
    #[arg(long, env = "EXPORTER_SOURCE_COLUMN", default_value = "source")]
    pub source_column: String,
    /// Event-type column.
    #[arg(long, env = "EXPORTER_EVENT_TYPE_COLUMN", default_value = "event_type")]
    pub event_type_column: String,
    /// JSON context column (reason and booking_id are read from it).
    #[arg(long, env = "EXPORTER_CONTEXT_COLUMN", default_value = "context")]
    pub context_column: String,
    /// Creation-time column (timestamptz, or timestamp without time zone: see --created-at-time-zone).
    #[arg(long, env = "EXPORTER_CREATED_AT_COLUMN", default_value = "created_at")]
    pub created_at_column: String,
    /// Zone in which the writers of a `timestamp without time zone` created_at wrote it (e.g.
    /// America/New_York); default: the database's or the role's TimeZone setting, else the server's.
    #[arg(long, env = "CREATED_AT_TIME_ZONE")]
    pub created_at_time_zone: Option<String>,
    /// Per-statement timeout, applied with SET LOCAL inside each transaction (the start-up load gets 10x).
    #[arg(long, env = "STATEMENT_TIMEOUT", default_value = "10s")]
    pub statement_timeout: String,
    /// Deadline for connecting and for acquiring a connection.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "5s")]
    pub connect_timeout: String,
    /// Count only rows created at or after this time (RFC 3339). Use it when a retention job deletes
    /// old rows, so a restart does not seed a lower counter.
    #[arg(long, env = "COUNT_SINCE")]
    pub count_since: Option<String>,
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("database_url_file", &self.database_url_file)
            .field("table", &self.table)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The rollout: flags, phase and gate.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// dotenv file with the FEATURE_ASSIGNMENT_PIPELINE_V3* flags (as `vercel env pull` writes it);
    /// without it the exporter's own environment is read. Re-read on change and on SIGHUP.
    #[arg(long, env = "FLAGS_FILE")]
    pub flags_file: Option<PathBuf>,
    /// Environment name shown in the verdict and the status page (metrics get it from target labels).
    #[arg(long, env = "ROLLOUT_ENVIRONMENT", default_value = "unknown")]
    pub environment: String,
    /// When the active phase began (RFC 3339); default: when this exporter saw it begin.
    #[arg(long, env = "PHASE_STARTED_AT")]
    pub phase_started_at: Option<String>,
    /// Minimum coordinator success ratio over the soak window (passes at or above).
    #[arg(long, env = "GATE_MIN_SUCCESS_RATIO", default_value = "0.97")]
    pub min_success_ratio: String,
    /// Manual-review ratio over the soak window must stay strictly below this.
    #[arg(long, env = "GATE_MAX_MANUAL_REVIEW_RATIO", default_value = "0.01")]
    pub max_manual_review_ratio: String,
    /// Fewer coordinator.start events than this in the soak window gives `pending`.
    #[arg(long, env = "GATE_MIN_STARTS", default_value = "100")]
    pub min_starts: String,
    /// Confidence level of the Wilson score interval each ratio criterion carries (0 < c < 1); the
    /// interval says whether the evidence is conclusive, it does not change pass or fail.
    #[arg(long, env = "GATE_CONFIDENCE", default_value = "0.95")]
    pub confidence: String,
    /// The coordinator counts as active when an event arrived within this (also the shadow-leak window).
    #[arg(long, env = "ACTIVE_WITHIN", default_value = "10m")]
    pub active_within: String,
    /// A coordinator.circuit_open event holds the circuit gauge at 1 for this long.
    #[arg(long, env = "CIRCUIT_HOLD", default_value = "5m")]
    pub circuit_hold: String,
}

/// Label cardinality caps, shared by `serve`, `demo` and `verdict` (the runbook table folds event
/// types past the cap into `other` in both, so the live gate and the command agree).
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Reasons per event type that keep their own label; the rest become reason="other".
    #[arg(long, env = "EXPORTER_REASON_CAP", default_value = "50")]
    pub reason_cap: String,
    /// Event types that keep their own label; the rest become event_type="other".
    #[arg(long, env = "EXPORTER_EVENT_TYPE_CAP", default_value = "50")]
    pub event_type_cap: String,
}

/// Options shared by `serve` and `demo`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Listen address of the HTTP server (`--web.listen-address`, as exporter-toolkit spells it, works too).
    #[arg(long, env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN, alias = "web.listen-address")]
    pub listen: String,
    /// Windows of the window gauges and ratios (humantime list); the soak window is always added.
    #[arg(long, env = "EXPORTER_WINDOWS", default_value = "1h,6h,48h")]
    pub windows: String,
    /// Soak window of the gate.
    #[arg(long, env = "SOAK_WINDOW", default_value = "48h")]
    pub soak: String,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// A started booking without an outcome after this is stuck.
    #[arg(long, env = "STUCK_AFTER", default_value = "15m")]
    pub stuck_after: String,
    /// Memory bound of the booking state machine.
    #[arg(long, env = "MAX_TRACKED_BOOKINGS", default_value = "100000")]
    pub max_tracked_bookings: String,
    /// TLS and basic-auth configuration in the Prometheus exporter-toolkit format
    /// (`--web.config.file` works too).
    #[arg(long, env = "WEB_CONFIG_FILE", alias = "web.config.file")]
    pub web_config_file: Option<PathBuf>,
    /// The gate, /verdict and the decision gauge say `pending` instead of `go` when the last
    /// successful poll is older than this (default: the larger of 3 poll intervals and 30s).
    #[arg(long, env = "MAX_STALENESS")]
    pub max_staleness: Option<String>,
    /// Paths served without basic auth when --web-config-file sets users (comma-separated).
    #[arg(long, env = "WEB_OPEN_PATHS", default_value = "/healthz,/readyz")]
    pub web_open_paths: String,
    /// The Grafana soak dashboard (http or https URL) the status page at / links to, pinned to
    /// the phase's time range (`from` and `to` are added). Default: no link.
    #[arg(long, env = "GRAFANA_URL")]
    pub grafana_url: Option<String>,
    /// docs/runbook.md as on-call reads it (http or https URL): the status page links each
    /// failing criterion to its section there (`#anchor` appended). Default: the copy this
    /// exporter serves at /runbook (works air-gapped, matches this version).
    #[arg(long, env = "RUNBOOK_URL")]
    pub runbook_url: Option<String>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Time between polls.
    #[arg(long, env = "POLL_INTERVAL", default_value = "5s")]
    pub poll_interval: String,
    /// How far below the database's now() a poll stops reading rows (as Kafka Connect's JDBC
    /// source `timestamp.delay.interval.ms`): a writer transaction that commits within it is never
    /// late, so no second is read again for it. The numbers lag the table by this much more.
    #[arg(long, env = "TIMESTAMP_DELAY", default_value = "1s")]
    pub timestamp_delay: String,
    /// Margin below the previous poll's time that each poll checks (an indexed count per second,
    /// rows re-read only where it differs), to count late commits exactly once.
    #[arg(long, env = "POLL_OVERLAP", default_value = "2m")]
    pub overlap: String,
    /// How often a poll checks the whole reconciliation window instead of the overlap only.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "1m")]
    pub reconcile_interval: String,
    /// How far back reconciliation finds rows whose transactions committed after the overlap
    /// (memory: the ids of this window's rows are kept).
    #[arg(long, env = "RECONCILE_WINDOW", default_value = "10m")]
    pub reconcile_window: String,
    /// How often a poll also counts the rows per minute over the longest window and re-reads the
    /// minutes whose count changed (deleted rows leave the window gauges and the gate; at most 15m).
    #[arg(long, env = "WINDOW_RECONCILE_INTERVAL", default_value = "5m")]
    pub window_reconcile_interval: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated traffic: `healthy` or `degraded`.
    #[arg(long, env = "DEMO_SCENARIO", value_enum, default_value = "healthy")]
    pub scenario: Scenario,
    /// Bookings per second the simulator starts.
    #[arg(long, env = "DEMO_RATE", default_value = "20")]
    pub rate: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct VerdictArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Soak window to judge.
    #[arg(long, env = "SOAK_WINDOW", default_value = "48h")]
    pub window: String,
    /// Output: `markdown` (for the verification record) or `json`.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: VerdictFormat,
    /// Judge the soak as of this past instant (RFC 3339): the window ends here and rows count by
    /// `created_at` before it. Default: the database's now().
    #[arg(long)]
    pub at: Option<String>,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Healthy,
    Degraded,
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// First step (RFC 3339, a whole minute).
    #[arg(long)]
    pub from: String,
    /// Last step (RFC 3339, a whole minute; included).
    #[arg(long)]
    pub to: String,
    /// Time between steps (whole minutes).
    #[arg(long, default_value = "5m")]
    pub step: String,
    /// Soak window to judge at each step.
    #[arg(long, env = "SOAK_WINDOW", default_value = "48h")]
    pub soak: String,
    /// Output: `jsonl` (one verdict per step), `csv`, or `markdown` (a timeline).
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: BacktestFormat,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// First step (RFC 3339, a whole minute).
    #[arg(long)]
    pub from: String,
    /// Last step (RFC 3339, a whole minute; included; at least 3h ago: Prometheus' head block
    /// owns the last 3 hours).
    #[arg(long)]
    pub to: String,
    /// Time between samples (whole minutes; use the scrape interval's order of magnitude).
    #[arg(long, default_value = "1m")]
    pub step: String,
    /// Label added to every sample, as the live scrape's target labels (job, instance,
    /// environment): repeat it, e.g. --label job=rollout-exporter --label environment=staging.
    #[arg(long = "label", value_name = "NAME=VALUE")]
    pub labels_added: Vec<String>,
    /// OpenMetrics file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Windows of the window gauges, as `serve` was run with.
    #[arg(long, env = "EXPORTER_WINDOWS", default_value = "1h,6h,48h")]
    pub windows: String,
    /// Soak window of the gate, as `serve` was run with.
    #[arg(long, env = "SOAK_WINDOW", default_value = "48h")]
    pub soak: String,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BacktestFormat {
    Jsonl,
    Csv,
    Markdown,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Output: `text` (one line per item) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CheckFormat,
    #[command(flatten)]
    pub labels: LabelArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictFormat {
    Markdown,
    Json,
}

/// A configuration error: the flag and what is wrong with it. Printed as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { flag, message: message.into() }
}

/// Names of the events table and its columns, validated as SQL identifiers and quoted once.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: String,
    pub id: String,
    pub source_column: String,
    pub event_type: String,
    pub context: String,
    pub created_at: String,
    /// The source value to count (bound as a parameter, never spliced into SQL).
    pub source: String,
}

/// Database settings shared by `serve` and `verdict`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub spec: TableSpec,
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    /// Unix microseconds; rows created before it are not counted.
    pub count_since_us: Option<i64>,
    /// `--created-at-time-zone`, checked by the server at the first load.
    pub created_at_time_zone: Option<String>,
}

/// A window of the window gauges: its label as written and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub label: String,
    pub seconds: u64,
}

/// Rollout settings shared by every command.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    pub flags_file: Option<PathBuf>,
    pub environment: String,
    /// Unix seconds.
    pub phase_started_at: Option<f64>,
    pub thresholds: Thresholds,
    pub soak: Window,
    pub active_within: Duration,
    pub circuit_hold: Duration,
    /// The gate never says `go` from data older than this (None: the `verdict` command, whose
    /// data is read just now).
    pub max_staleness: Option<Duration>,
    /// Where the status page links to.
    pub links: Links,
}

/// The runbook the status page links to without `--runbook-url`: the exporter's own `/runbook`,
/// relative to `/` (so it also works behind a path prefix).
pub const DEFAULT_RUNBOOK_URL: &str = "runbook";

/// The status page's links out (`--grafana-url`, `--runbook-url`): never loaded by the page, only
/// followed by the reader.
#[derive(Debug, Clone, PartialEq)]
pub struct Links {
    pub grafana: Option<String>,
    pub runbook: String,
}

impl Default for Links {
    fn default() -> Self {
        Links { grafana: None, runbook: DEFAULT_RUNBOOK_URL.to_string() }
    }
}

/// An http(s) URL without spaces, quotes or angle brackets (it is written into the page).
fn link_url(flag: &'static str, raw: &str) -> Result<String, ConfigError> {
    let url = raw.trim();
    let scheme = url.starts_with("https://") || url.starts_with("http://");
    if !scheme || url.len() > 2000 || url.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'<>`".contains(c)) {
        return Err(bad(flag, "must be an http:// or https:// URL without spaces or quotes"));
    }
    Ok(url.to_string())
}

/// The HTTP side: where to listen, TLS and basic auth.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub web: Option<WebConfig>,
    pub open_paths: Vec<String>,
}

/// What the tally needs, for `serve`, `demo` and `verdict` alike.
#[derive(Debug, Clone)]
pub struct TallyConfig {
    /// Sorted by length, soak window included, no duplicates.
    pub windows: Vec<Window>,
    /// The soak window: its error blocks are kept for "sustained errors".
    pub soak: Window,
    /// `--active-within`: the recent-rows count of the shadow-leak gauge.
    pub active_within: Duration,
    pub reason_cap: usize,
    pub event_type_cap: usize,
    pub stuck_after: Duration,
    pub max_tracked_bookings: usize,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub http: HttpConfig,
    pub db: DatabaseConfig,
    pub poll_interval: Duration,
    /// `--timestamp-delay`: a poll reads rows up to the database's now() less this.
    pub timestamp_delay: Duration,
    pub overlap: Duration,
    pub reconcile_interval: Duration,
    pub reconcile_window: Duration,
    pub window_reconcile_interval: Duration,
    pub tally: TallyConfig,
    pub rollout: RolloutConfig,
}

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub http: HttpConfig,
    pub scenario: Scenario,
    pub rate: u32,
    pub tally: TallyConfig,
    pub rollout: RolloutConfig,
}

#[derive(Debug, Clone)]
pub struct VerdictConfig {
    pub db: DatabaseConfig,
    /// The soak window only, with the label caps.
    pub tally: TallyConfig,
    pub format: VerdictFormat,
    pub rollout: RolloutConfig,
    /// `--at`: judge as of this instant instead of now.
    pub at: Option<crate::time::UnixMicros>,
}

/// A validated command: what `main` dispatches on. Built once at start, so its size is no concern.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Validated {
    Serve(ServeConfig),
    Demo(DemoConfig),
    Verdict(VerdictConfig),
    Check(CheckConfig),
    Backtest(BacktestConfig),
    Backfill(BackfillConfig),
}

/// `backfill`: the live exporter's settings, a past range and where to write.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    pub db: DatabaseConfig,
    pub tally: TallyConfig,
    pub rollout: RolloutConfig,
    pub from: crate::time::UnixMicros,
    pub to: crate::time::UnixMicros,
    /// Microseconds, a whole number of minutes.
    pub step_us: i64,
    /// (name, value) added to every sample.
    pub labels: Vec<(String, String)>,
    pub output: PathBuf,
}

/// `backtest`: the verdict's settings over a range of past instants.
#[derive(Debug, Clone)]
pub struct BacktestConfig {
    pub db: DatabaseConfig,
    /// The soak window only, with the label caps.
    pub tally: TallyConfig,
    pub rollout: RolloutConfig,
    pub from: crate::time::UnixMicros,
    pub to: crate::time::UnixMicros,
    /// Microseconds, a whole number of minutes.
    pub step_us: i64,
    pub format: BacktestFormat,
}

/// `check`: the database settings of `serve`, and what the load needs to count malformed rows.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub db: DatabaseConfig,
    pub tally: TallyConfig,
    pub format: CheckFormat,
}

pub fn parse_duration(flag: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| bad(flag, format!("{raw:?} is not a duration like 5s, 2m or 48h ({e})")))?;
    Ok(d)
}

fn positive_duration(flag: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(flag, raw)?;
    if d.is_zero() {
        return Err(bad(flag, "must be greater than zero"));
    }
    Ok(d)
}

fn window(flag: &'static str, raw: &str) -> Result<Window, ConfigError> {
    let label = raw.trim().to_string();
    let d = positive_duration(flag, &label)?;
    if d.as_secs() < 60 || d.subsec_nanos() != 0 || d.as_secs() % 60 != 0 {
        return Err(bad(flag, format!("{label:?}: windows are whole minutes, at least 1m")));
    }
    if d.as_secs() > 90 * 86_400 {
        return Err(bad(flag, format!("{label:?}: windows are at most 90 days")));
    }
    Ok(Window { label, seconds: d.as_secs() })
}

fn parse_num<T: FromStr>(flag: &'static str, raw: &str, what: &str) -> Result<T, ConfigError> {
    raw.trim().parse::<T>().map_err(|_| bad(flag, format!("{raw:?} is not {what}")))
}

/// RFC 3339 to Unix microseconds, without a date-time dependency: humantime parses RFC 3339 in UTC
/// (`Z`); numeric offsets are applied here.
pub fn parse_rfc3339_us(flag: &'static str, raw: &str) -> Result<i64, ConfigError> {
    let s = raw.trim();
    let err = || bad(flag, format!("{raw:?} is not an RFC 3339 time like 2026-11-13T09:32:00Z"));
    // Split a trailing offset (+hh:mm / -hh:mm) from the date-time.
    let (base, offset_secs): (String, i64) = if s.ends_with('Z') || s.ends_with('z') {
        (format!("{}Z", &s[..s.len() - 1]), 0)
    } else if s.len() > 6 {
        let (b, off) = s.split_at(s.len() - 6);
        let ob = off.as_bytes();
        if (ob[0] == b'+' || ob[0] == b'-') && ob[3] == b':' {
            let h: i64 = off[1..3].parse().map_err(|_| err())?;
            let m: i64 = off[4..6].parse().map_err(|_| err())?;
            let sign = if ob[0] == b'+' { 1 } else { -1 };
            (format!("{b}Z"), sign * (h * 3600 + m * 60))
        } else {
            return Err(err());
        }
    } else {
        return Err(err());
    };
    let t = humantime::parse_rfc3339_weak(&base).map_err(|_| err())?;
    let since = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| err())?;
    let us = i64::try_from(since.as_micros()).map_err(|_| err())?;
    Ok(us - offset_secs * 1_000_000)
}

/// A table or column name as psql reads it, returned double-quoted for splicing into SQL.
///
/// Unquoted names are folded to lower case (`Observability_Events` is `"observability_events"`)
/// and must be plain SQL names (a letter or `_`, then letters, digits, `_` or `$`); double-quoted
/// names keep their case and may hold any character but NUL, `""` standing for one `"`. With
/// `qualified`, a schema may precede the name (`Public."MyTable"` is `"public"."MyTable"`). Each name
/// is at most 63 bytes (PostgreSQL would truncate a longer one). Anything else is refused, so
/// nothing but a quoted name ever reaches the SQL.
fn ident(flag: &'static str, raw: &str, qualified: bool) -> Result<String, ConfigError> {
    let s = raw.trim();
    let mut parts: Vec<String> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(bad(flag, format!("{raw:?}: unterminated double-quoted name"))),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some('\0') => return Err(bad(flag, format!("{raw:?}: a name cannot contain NUL"))),
                    Some(c) => name.push(c),
                }
            }
            if name.is_empty() {
                return Err(bad(flag, format!("{raw:?}: a quoted name cannot be empty")));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
            if !ok {
                return Err(bad(
                    flag,
                    format!(
                        "{raw:?} is not a SQL name: unquoted names are letters, digits, _ and $ (folded to \
                         lower case); double-quote any other name, e.g. '\"My Table\"'"
                    ),
                ));
            }
            name.make_ascii_lowercase();
        }
        if name.len() > 63 {
            return Err(bad(flag, format!("{raw:?}: a name is at most 63 bytes")));
        }
        parts.push(format!("\"{}\"", name.replace('"', "\"\"")));
        match chars.next() {
            None => break,
            Some('.') if qualified && parts.len() < 2 => continue,
            Some('.') if qualified => {
                return Err(bad(flag, format!("{raw:?} has too many dots (schema.table at most)")))
            }
            Some('.') => {
                return Err(bad(flag, format!("{raw:?}: a column name has no schema (quote a name with a dot)")))
            }
            Some(_) => return Err(bad(flag, format!("{raw:?}: unexpected text after a double-quoted name"))),
        }
    }
    Ok(parts.join("."))
}

impl DatabaseArgs {
    fn validate(&self) -> Result<DatabaseConfig, ConfigError> {
        let spec = TableSpec {
            table: ident("--table", &self.table, true)?,
            id: ident("--id-column", &self.id_column, false)?,
            source_column: ident("--source-column", &self.source_column, false)?,
            event_type: ident("--event-type-column", &self.event_type_column, false)?,
            context: ident("--context-column", &self.context_column, false)?,
            created_at: ident("--created-at-column", &self.created_at_column, false)?,
            source: self.source.clone(),
        };
        let statement_timeout = positive_duration("--statement-timeout", &self.statement_timeout)?;
        if statement_timeout < Duration::from_millis(1) {
            return Err(bad("--statement-timeout", "must be at least 1ms"));
        }
        Ok(DatabaseConfig {
            url: database_url(self)?,
            spec,
            statement_timeout,
            connect_timeout: positive_duration("--connect-timeout", &self.connect_timeout)?,
            count_since_us: self.count_since.as_deref().map(|s| parse_rfc3339_us("--count-since", s)).transpose()?,
            created_at_time_zone: match self.created_at_time_zone.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(z) if z.len() <= 64 && z.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-:".contains(c)) => {
                    Some(z.to_string())
                }
                Some(z) => return Err(bad("--created-at-time-zone", format!("{z:?} is not a time zone name"))),
            },
        })
    }
}

impl RolloutArgs {
    fn validate(&self, soak: Window) -> Result<RolloutConfig, ConfigError> {
        let min_success: f64 = parse_num("--min-success-ratio", &self.min_success_ratio, "a ratio")?;
        if !(0.0..=1.0).contains(&min_success) {
            return Err(bad("--min-success-ratio", "must be between 0 and 1"));
        }
        let max_manual: f64 = parse_num("--max-manual-review-ratio", &self.max_manual_review_ratio, "a ratio")?;
        if !(0.0..=1.0).contains(&max_manual) {
            return Err(bad("--max-manual-review-ratio", "must be between 0 and 1"));
        }
        let min_starts: u64 = parse_num("--min-starts", &self.min_starts, "a whole number")?;
        if min_starts == 0 {
            // With no booking the ratios are undefined and would pass vacuously: "go" on no data.
            return Err(bad("--min-starts", "must be at least 1: a soak without bookings shows nothing"));
        }
        let confidence: f64 = parse_num("--confidence", &self.confidence, "a ratio")?;
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(bad("--confidence", "must be strictly between 0 and 1 (e.g. 0.95)"));
        }
        if let Some(path) = &self.flags_file {
            if path.as_os_str().is_empty() {
                return Err(bad("--flags-file", "empty path"));
            }
        }
        if self.environment.trim().is_empty() || self.environment.len() > 64 {
            return Err(bad("--environment", "must be 1 to 64 characters"));
        }
        Ok(RolloutConfig {
            flags_file: self.flags_file.clone(),
            environment: self.environment.trim().to_string(),
            phase_started_at: self
                .phase_started_at
                .as_deref()
                .map(|s| parse_rfc3339_us("--phase-started-at", s).map(|us| us as f64 / 1e6))
                .transpose()?,
            thresholds: Thresholds {
                min_success_ratio: min_success,
                max_manual_review_ratio: max_manual,
                min_starts,
                confidence,
            },
            soak,
            active_within: positive_duration("--active-within", &self.active_within)?,
            circuit_hold: positive_duration("--circuit-hold", &self.circuit_hold)?,
            max_staleness: None,
            links: Links::default(),
        })
    }
}

/// A step range: whole minutes, `from` not after `to`, `to` not after `latest`.
fn step_range(
    from: &str,
    to: &str,
    step: &str,
    latest: crate::time::UnixMicros,
    too_late: &str,
) -> Result<(crate::time::UnixMicros, crate::time::UnixMicros, i64), ConfigError> {
    use crate::time::{UnixMicros, MINUTE};
    let instant = |flag: &'static str, raw: &str| -> Result<UnixMicros, ConfigError> {
        let us = parse_rfc3339_us(flag, raw)?;
        if us % MINUTE != 0 {
            return Err(bad(flag, format!("{raw:?}: steps are whole minutes (seconds 00)")));
        }
        Ok(UnixMicros(us))
    };
    let (from, to) = (instant("--from", from)?, instant("--to", to)?);
    if from > to {
        return Err(bad("--to", "must not be before --from"));
    }
    if to > latest {
        return Err(bad("--to", too_late.to_string()));
    }
    let step = window("--step", step)?;
    Ok((from, to, step.seconds as i64 * 1_000_000))
}

/// Windows as `serve` builds them: the list, the soak window added, sorted, no duplicates.
fn windows_with_soak(flag: &'static str, raw: &str, soak: &Window) -> Result<Vec<Window>, ConfigError> {
    let mut windows: Vec<Window> = Vec::new();
    for part in raw.split(',').filter(|w| !w.trim().is_empty()) {
        let w = window(flag, part)?;
        if !windows.iter().any(|x| x.seconds == w.seconds) {
            windows.push(w);
        }
    }
    if !windows.iter().any(|x| x.seconds == soak.seconds) {
        windows.push(soak.clone());
    }
    windows.sort_by_key(|w| w.seconds);
    Ok(windows)
}

impl BackfillArgs {
    fn validate(&self) -> Result<BackfillConfig, ConfigError> {
        let latest = crate::time::UnixMicros::now().minus(Duration::from_secs(3 * 3600));
        let (from, to, step_us) = step_range(
            &self.from,
            &self.to,
            &self.step,
            latest,
            "is inside the last 3 hours, which Prometheus' head block owns: backfill up to 3 hours ago and let the live scrape cover the rest",
        )?;
        let soak = window("--soak", &self.soak)?;
        let mut rollout = self.rollout.validate(soak.clone())?;
        if rollout.phase_started_at.is_none() {
            return Err(bad("--phase-started-at", "required: the backfilled gate needs to know when the phase began"));
        }
        rollout.max_staleness = None;
        let windows = windows_with_soak("--windows", &self.windows, &soak)?;
        let tally = self.labels.judging_tally(windows, soak, rollout.active_within)?;
        let mut labels = Vec::new();
        for raw in &self.labels_added {
            let Some((name, value)) = raw.split_once('=') else {
                return Err(bad("--label", format!("{raw:?} is not name=value")));
            };
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with("__");
            if !valid || labels.iter().any(|(n, _): &(String, String)| n == name) {
                return Err(bad("--label", format!("{name:?} is not a valid, unique label name")));
            }
            labels.push((name.to_string(), value.to_string()));
        }
        Ok(BackfillConfig {
            db: self.db.validate()?,
            tally,
            rollout,
            from,
            to,
            step_us,
            labels,
            output: self.output.clone(),
        })
    }
}

impl BacktestArgs {
    fn validate(&self) -> Result<BacktestConfig, ConfigError> {
        let (from, to, step_us) =
            step_range(&self.from, &self.to, &self.step, crate::time::UnixMicros::now(), "is in the future")?;
        let soak = window("--soak", &self.soak)?;
        let rollout = self.rollout.validate(soak.clone())?;
        let tally = self.labels.judging_tally(vec![soak.clone()], soak, rollout.active_within)?;
        Ok(BacktestConfig { db: self.db.validate()?, tally, rollout, from, to, step_us, format: self.format })
    }
}

impl LabelArgs {
    /// The tally of a command that judges from one load (no booking state machine to speak of):
    /// `windows` (the soak window among them), the caps, `active_within`.
    fn judging_tally(
        &self,
        windows: Vec<Window>,
        soak: Window,
        active_within: Duration,
    ) -> Result<TallyConfig, ConfigError> {
        let (reason_cap, event_type_cap) = self.validate()?;
        Ok(TallyConfig {
            windows,
            soak,
            active_within,
            reason_cap,
            event_type_cap,
            stuck_after: Duration::from_secs(900),
            max_tracked_bookings: 1,
        })
    }

    /// (reason cap, event type cap).
    fn validate(&self) -> Result<(usize, usize), ConfigError> {
        let reason_cap: usize = parse_num("--reason-cap", &self.reason_cap, "a whole number")?;
        if !(1..=1000).contains(&reason_cap) {
            return Err(bad("--reason-cap", "must be between 1 and 1000"));
        }
        let event_type_cap: usize = parse_num("--event-type-cap", &self.event_type_cap, "a whole number")?;
        if !(7..=1000).contains(&event_type_cap) {
            return Err(bad("--event-type-cap", "must be between 7 (the coordinator's own types) and 1000"));
        }
        Ok((reason_cap, event_type_cap))
    }
}

impl CommonArgs {
    /// `default_staleness`: `--max-staleness` when not given (it depends on the poll interval).
    fn validate(&self, default_staleness: Duration) -> Result<(HttpConfig, TallyConfig, RolloutConfig), ConfigError> {
        let listen: SocketAddr = self
            .listen
            .trim()
            .parse()
            .map_err(|_| bad("--listen", format!("{:?} is not an address like 0.0.0.0:9864", self.listen)))?;
        let soak = window("--soak", &self.soak)?;
        let mut windows: Vec<Window> = Vec::new();
        let mut seen = BTreeSet::new();
        for raw in self.windows.split(',').filter(|w| !w.trim().is_empty()) {
            let w = window("--windows", raw)?;
            if seen.insert(w.seconds) {
                windows.push(w);
            }
        }
        if windows.is_empty() {
            return Err(bad("--windows", "needs at least one window"));
        }
        if seen.insert(soak.seconds) {
            windows.push(soak.clone());
        }
        windows.sort_by_key(|w| w.seconds);
        let (reason_cap, event_type_cap) = self.labels.validate()?;
        let max_tracked_bookings: usize =
            parse_num("--max-tracked-bookings", &self.max_tracked_bookings, "a whole number")?;
        if max_tracked_bookings == 0 {
            return Err(bad("--max-tracked-bookings", "must be greater than zero"));
        }
        let mut rollout = self.rollout.validate(soak.clone())?;
        rollout.max_staleness = Some(match self.max_staleness.as_deref().map(str::trim) {
            None | Some("") => default_staleness,
            Some(raw) => positive_duration("--max-staleness", raw)?,
        });
        rollout.links = Links {
            grafana: self
                .grafana_url
                .as_deref()
                .filter(|u| !u.trim().is_empty())
                .map(|u| link_url("--grafana-url", u))
                .transpose()?,
            runbook: match self.runbook_url.as_deref().map(str::trim) {
                None | Some("") => DEFAULT_RUNBOOK_URL.to_string(),
                Some(u) => link_url("--runbook-url", u)?,
            },
        };
        let tally = TallyConfig {
            windows,
            soak,
            active_within: rollout.active_within,
            reason_cap,
            event_type_cap,
            stuck_after: positive_duration("--stuck-after", &self.stuck_after)?,
            max_tracked_bookings,
        };
        let web = match &self.web_config_file {
            None => None,
            Some(path) => Some(WebConfig::load(path).map_err(|e| bad("--web-config-file", e.to_string()))?),
        };
        let open_paths = self
            .web_open_paths
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>();
        if let Some(p) = open_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(bad("--web-open-paths", format!("{p:?} must start with /")));
        }
        Ok((HttpConfig { listen, web, open_paths }, tally, rollout))
    }
}

impl Command {
    /// Validates every value once; the result cannot hold an unchecked setting.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        match self {
            Command::Serve(a) => {
                let poll_interval = positive_duration("--poll-interval", &a.poll_interval)?;
                let (http, tally, rollout) = a.common.validate((poll_interval * 3).max(Duration::from_secs(30)))?;
                let overlap = parse_duration("--overlap", &a.overlap)?;
                if overlap > Duration::from_secs(86_400) {
                    return Err(bad("--overlap", "must be at most 24h"));
                }
                let timestamp_delay = parse_duration("--timestamp-delay", &a.timestamp_delay)?;
                if timestamp_delay > Duration::from_secs(60) {
                    return Err(bad("--timestamp-delay", "must be at most 1m (the numbers lag the table by it)"));
                }
                if rollout.max_staleness.is_some_and(|max| max <= poll_interval + timestamp_delay) {
                    return Err(bad(
                        "--max-staleness",
                        "must be longer than --poll-interval plus --timestamp-delay (the numbers are that old just \
                         before each poll, so the gate would fail closed between polls)",
                    ));
                }
                let reconcile_interval = positive_duration("--reconcile-interval", &a.reconcile_interval)?;
                let reconcile_window = parse_duration("--reconcile-window", &a.reconcile_window)?;
                if reconcile_window < overlap || reconcile_window > Duration::from_secs(86_400) {
                    return Err(bad("--reconcile-window", "must be at least --overlap and at most 24h"));
                }
                let window_reconcile_interval =
                    positive_duration("--window-reconcile-interval", &a.window_reconcile_interval)?;
                if window_reconcile_interval > Duration::from_secs(900) {
                    return Err(bad("--window-reconcile-interval", "must be at most 15m"));
                }
                Ok(Validated::Serve(ServeConfig {
                    http,
                    db: a.db.validate()?,
                    poll_interval,
                    timestamp_delay,
                    overlap,
                    reconcile_interval,
                    reconcile_window,
                    window_reconcile_interval,
                    tally,
                    rollout,
                }))
            }
            Command::Demo(a) => {
                let (http, tally, rollout) = a.common.validate(Duration::from_secs(30))?;
                let rate: u32 = parse_num("--rate", &a.rate, "a whole number")?;
                if !(1..=10_000).contains(&rate) {
                    return Err(bad("--rate", "must be between 1 and 10000 bookings per second"));
                }
                Ok(Validated::Demo(DemoConfig { http, scenario: a.scenario, rate, tally, rollout }))
            }
            Command::Verdict(a) => {
                let soak = window("--window", &a.window)?;
                let rollout = a.rollout.validate(soak.clone())?;
                let tally = a.labels.judging_tally(vec![soak.clone()], soak, rollout.active_within)?;
                let at = match a.at.as_deref() {
                    None => None,
                    Some(raw) => {
                        let us = parse_rfc3339_us("--at", raw)?;
                        if us > crate::time::UnixMicros::now().0 + 60_000_000 {
                            return Err(bad(
                                "--at",
                                format!("{raw:?} is in the future; the verdict as of now needs no --at"),
                            ));
                        }
                        Some(crate::time::UnixMicros(us))
                    }
                };
                Ok(Validated::Verdict(VerdictConfig { db: a.db.validate()?, tally, format: a.format, rollout, at }))
            }
            Command::Backtest(a) => Ok(Validated::Backtest(a.validate()?)),
            Command::Backfill(a) => Ok(Validated::Backfill(a.validate()?)),
            Command::Check(a) => {
                let soak = Window { label: "48h".into(), seconds: 172_800 };
                let tally = a.labels.judging_tally(vec![soak.clone()], soak, Duration::from_secs(600))?;
                Ok(Validated::Check(CheckConfig { db: a.db.validate()?, tally, format: a.format }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets_is_exact() {
        let z = parse_rfc3339_us("--x", "2026-11-13T09:32:00Z").unwrap();
        let plus = parse_rfc3339_us("--x", "2026-11-13T10:32:00+01:00").unwrap();
        assert_eq!(z, plus);
        assert_eq!(z % 1_000_000, 0);
        assert!(parse_rfc3339_us("--x", "yesterday").is_err());
    }

    #[test]
    fn identifiers_are_quoted_and_injection_is_refused() {
        assert_eq!(ident("--table", "public.events", true).unwrap(), "\"public\".\"events\"");
        assert!(ident("--table", "events; drop table x", true).is_err());
        assert!(ident("--id-column", "a.b", false).is_err());
    }

    #[test]
    fn identifiers_fold_like_psql() {
        let t = |raw: &str| ident("--table", raw, true);
        let c = |raw: &str| ident("--created-at-column", raw, false);
        // Unquoted names fold to lower case; quoted names keep their case.
        assert_eq!(t("Observability_Events").unwrap(), "\"observability_events\"");
        assert_eq!(t("\"Events\"").unwrap(), "\"Events\"");
        assert_eq!(t("Public.\"MyTable\"").unwrap(), "\"public\".\"MyTable\"");
        assert_eq!(t("\"Public\".MyTable").unwrap(), "\"Public\".\"mytable\"");
        assert_eq!(t("  events  ").unwrap(), "\"events\"");
        assert_eq!(c("\"CreatedAt\"").unwrap(), "\"CreatedAt\"");
        assert_eq!(c("CreatedAt").unwrap(), "\"createdat\"");
        assert_eq!(c("a$1").unwrap(), "\"a$1\"");
        // A quoted name holds anything but NUL; "" is one quote, and is doubled again in the output.
        assert_eq!(t("\"a \"\"b\"\"; drop table x; --\"").unwrap(), "\"a \"\"b\"\"; drop table x; --\"");
        assert_eq!(t("\"s.x\".\"t.y\"").unwrap(), "\"s.x\".\"t.y\"");
        assert_eq!(c("\"a.b\"").unwrap(), "\"a.b\"");
        assert_eq!(c("\"Ünïcødé 名\"").unwrap(), "\"Ünïcødé 名\"");
        assert_eq!(c(&format!("\"{}\"", "x".repeat(63))).unwrap().len(), 65);
        for refused in [
            "",
            "\"\"",
            "\"unterminated",
            "\"a\"b",
            "\"a\"\"",
            "\"a\0b\"",
            "events; drop table x",
            "events\"; drop table x; --",
            "1events",
            "ev ents",
            "évents",
            "a.b.c",
            "a.",
            ".a",
            "a..b",
            "\"a\".",
            "\"a\" . \"b\"",
        ] {
            assert!(t(refused).is_err(), "{refused:?} accepted as {:?}", t(refused));
        }
        assert!(c("s.t").is_err());
        assert!(c(&format!("\"{}\"", "x".repeat(64))).is_err());
        assert!(c(&"x".repeat(64)).is_err());
        // 63 bytes, not characters.
        assert!(c(&format!("\"{}\"", "é".repeat(32))).is_err());
    }

    #[test]
    fn windows_must_be_whole_minutes() {
        assert!(window("--windows", "90s").is_err());
        assert_eq!(window("--windows", "48h").unwrap().seconds, 172_800);
    }
}
