//! rollout-exporter: the Assignment Pipeline V3 `observability_events` table as exact Prometheus
//! metrics and a go/no-go rollout gate.
//!
//! Layout, in the direction data flows:
//!
//! ```text
//! source (postgres poller | demo simulator) -> events -> tally -> rollout -> outputs
//! ```
//!
//! - [`config`]: command line and environment, validated once into typed settings.
//! - [`source`]: the PostgreSQL follower (aggregate load, then polls of new rows) and the demo.
//! - [`events`]: typed rows; reasons normalised and label cardinality capped.
//! - [`tally`]: all-time counters, per-minute buckets for windows, the booking state machine.
//! - [`rollout`]: flags -> phase; evidence -> criteria -> decision.
//! - [`state`]: the snapshots the source publishes and the HTTP side reads.
//! - [`metrics`], [`http`], [`verdict`]: the outputs (/metrics, /gate, /verdict, the CLI verdict).
//! - [`web`]: `--web-config-file` (TLS, basic auth) in the exporter-toolkit format.
//! - [`app`]: wiring and graceful shutdown.

pub mod app;
pub mod config;
pub mod events;
pub mod http;
pub mod metrics;
pub mod rollout;
pub mod source;
pub mod state;
pub mod tally;
pub mod verdict;
pub mod web;

/// Sets up logging: `RUST_LOG` (default `info`), text or JSON lines on stderr.
pub fn init_logging(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    // sqlx logs every statement at debug and unknown URL parameters with their values; keep it
    // at warn unless asked (the URL is validated before sqlx sees it).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
