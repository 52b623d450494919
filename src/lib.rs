//! rollout-exporter: the Assignment Pipeline V3 `observability_events` table as exact Prometheus
//! metrics and a go/no-go rollout gate.
//!
//! Layout, in the direction data flows; each module imports only modules listed above it (a unit
//! test below checks it):
//!
//! ```text
//! source (postgres follower | demo simulator) -- trait Source
//!   -> ingest   (owns the tally; backoff, health, self-metrics)
//!   -> snapshot (immutable, on a watch channel; the phase comes from the flags watcher)
//!   -> outputs  (pure functions of a snapshot: /metrics, /gate, /verdict, /, the verdict command)
//! ```
//!
//! - [`time`]: Unix microseconds, the minute and the 5-minute error block, defined once.
//! - [`human`]: counts, percentages, durations and instants as people read them.
//! - [`config`]: command line and environment, validated once into typed settings.
//! - [`events`]: typed rows and groups; reasons normalised and label cardinality capped.
//! - [`tally`]: all-time counters, per-minute buckets for windows, the booking state machine.
//! - [`snapshot`]: the immutable picture the ingest loop publishes.
//! - [`rollout`]: flags -> phase (and its watcher); evidence -> criteria -> decision.
//! - [`source`]: the [`source::Source`] trait; the PostgreSQL follower and the demo simulator.
//! - [`ingest`]: the loop that drives a source, folds batches and publishes snapshots.
//! - [`outputs`]: /metrics, the HTTP endpoints, the status page and the `verdict` command.
//! - [`app`]: wiring and graceful shutdown.

pub mod time;

pub mod human;

pub mod config;

pub mod events;

pub mod tally;

pub mod snapshot;

pub mod rollout;

pub mod source;

pub mod ingest;

pub mod outputs;

pub mod app;

use std::time::Duration;

use tokio::sync::watch;

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

/// Hands memory freed after a large batch (a page of rows, a re-read second, the start-up load)
/// back to the kernel: glibc keeps freed chunks in its arenas otherwise, and RSS stays at the
/// burst's high-water mark although nothing holds the memory (bench/run.sh: after a
/// 300,000-row burst).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free memory at the top of the heaps and unused pages of
    // free chunks to the kernel; it touches no live allocation and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// No-op where the allocator is not glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}

/// Waits for `d`, or returns true early when shutdown is signalled.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
    let stopped = *shutdown.borrow();
    stopped
}

#[cfg(test)]
mod layout {
    /// The modules in the order the layout above lists them.
    const ORDER: [&str; 11] =
        ["time", "human", "config", "events", "tally", "snapshot", "rollout", "source", "ingest", "outputs", "app"];

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn imports_go_one_way() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        for (rank, module) in ORDER.iter().enumerate() {
            let mut paths = vec![src.join(format!("{module}.rs"))];
            if src.join(module).is_dir() {
                files(&src.join(module), &mut paths);
            }
            for path in paths.iter().filter(|p| p.exists()) {
                let text = std::fs::read_to_string(path).unwrap();
                for (later, other) in ORDER.iter().enumerate().skip(rank + 1) {
                    if text.contains(&format!("crate::{other}::")) || text.contains(&format!("crate::{other};")) {
                        bad.push(format!("{} imports {other} ({} -> {})", path.display(), rank, later));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "imports against the flow:\n{}", bad.join("\n"));
    }
}
