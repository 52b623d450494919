//! `rollout-exporter backfill`: what `serve` would have exported at every step of a past range, as
//! OpenMetrics text for `promtool tsdb create-blocks-from openmetrics` (docs/backfill.md).
//!
//! Each step is the [`Replay`] snapshot at that instant rendered by the same metric table and
//! stage functions as `/metrics`. The booking state machine's families are left out: they follow
//! single bookings, which per-minute aggregates cannot replay. Families must not interleave in
//! OpenMetrics, so each family's samples stream into its own temporary file and the files are
//! joined at the end: memory does not grow with the number of steps.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::proto::{MetricFamily, MetricType};

use super::metrics::{self, families, FAMILIES};
use super::Current;
use crate::config::BackfillConfig;
use crate::ingest::Replay;
use crate::rollout::phase::read_flags;
use crate::rollout::PhaseView;
use crate::source::postgres::{FollowConfig, PgSource};
use crate::source::SourceError;
use crate::time::UnixMicros;

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Families of single bookings, which aggregates cannot replay.
const NOT_REPLAYED: [&str; 6] = [
    metrics::INVALID_TRANSITIONS.name,
    metrics::STUCK_BOOKINGS.name,
    metrics::TRACKED_BOOKINGS.name,
    metrics::EVICTED_BOOKINGS.name,
    metrics::WITHOUT_BOOKING.name,
    metrics::TIME_TO_OUTCOME.name,
];

/// The families a backfill writes: the coordinator's and the rollout's, in table order.
pub fn backfilled() -> impl Iterator<Item = &'static metrics::Family> {
    FAMILIES.iter().copied().filter(|f| f.name.starts_with("assignment_") && !NOT_REPLAYED.contains(&f.name))
}

/// A label value escaped for the text formats.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Value of a sample in OpenMetrics (`+Inf`, `-Inf`, `NaN` spelled out).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The sample lines of one family at one instant.
fn samples(mf: &MetricFamily, extra: &[(String, String)], at: UnixMicros, out: &mut impl Write) -> std::io::Result<()> {
    let ts = at.0 / 1_000_000;
    for m in mf.get_metric() {
        let mut labels: Vec<String> =
            m.get_label().iter().map(|l| format!("{}=\"{}\"", l.name(), escape(l.value()))).collect();
        labels.extend(extra.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))));
        let set = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let value = match mf.get_field_type() {
            MetricType::COUNTER => m.get_counter().get_value(),
            _ => m.get_gauge().get_value(),
        };
        writeln!(out, "{}{set} {} {ts}", mf.name(), number(value))?;
    }
    Ok(())
}

/// Runs the backfill: one load, then every step rendered and streamed into per-family files.
pub async fn run(cfg: &BackfillConfig) -> Result<u64, BackfillError> {
    let source = PgSource::new(cfg.db.clone(), FollowConfig::replay(&cfg.tally, cfg.from, cfg.to, true))?;
    let loading = super::progress::spinner("loading per-minute aggregates");
    let mut replay = Replay::load(source, cfg.tally.clone(), cfg.from).await?;
    loading.finish_and_clear();
    let phase = Arc::new(PhaseView {
        state: read_flags(cfg.rollout.flags_file.as_ref()),
        started_at: cfg.rollout.phase_started_at.unwrap_or(0.0),
    });
    let rollout = Arc::new(cfg.rollout.clone());
    fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> BackfillError {
        let path = path.display().to_string();
        move |source| BackfillError::Io { path: path.clone(), source }
    }
    let parts_dir = cfg.output.with_extension("parts");
    std::fs::create_dir_all(&parts_dir).map_err(io(&parts_dir))?;
    let mut parts: Vec<(&'static metrics::Family, PathBuf, BufWriter<File>)> = Vec::new();
    for f in backfilled() {
        let path = parts_dir.join(f.name);
        let file = File::create(&path).map_err(io(&path))?;
        parts.push((f, path, BufWriter::new(file)));
    }
    let bar = super::progress::steps(cfg.from, cfg.to, cfg.step_us);
    let mut at = cfg.from;
    let mut steps = 0;
    while at <= cfg.to {
        bar.inc(1);
        let current = Current::at(Arc::new(replay.snapshot_at(at)), phase.clone(), rollout.clone(), at);
        for mf in families(&current) {
            if let Some((_, path, w)) = parts.iter_mut().find(|p| p.0.name == mf.name()) {
                samples(&mf, &cfg.labels, at, w).map_err(io(path))?;
            }
        }
        steps += 1;
        at = at.plus_us(cfg.step_us);
    }
    bar.finish_and_clear();
    join(cfg, parts).map_err(io(&cfg.output))?;
    std::fs::remove_dir_all(&parts_dir).map_err(io(&parts_dir))?;
    Ok(steps)
}

/// Writes the families one after the other, each with its metadata, and `# EOF`.
fn join(cfg: &BackfillConfig, parts: Vec<(&'static metrics::Family, PathBuf, BufWriter<File>)>) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(&cfg.output)?);
    for (f, path, w) in parts {
        drop(w.into_inner().map_err(|e| e.into_error())?);
        let (kind, name) = match f.kind {
            MetricType::COUNTER => ("counter", f.name.trim_end_matches("_total")),
            _ => ("gauge", f.name),
        };
        if std::fs::metadata(&path)?.len() == 0 {
            continue;
        }
        writeln!(out, "# HELP {name} {}", f.help)?;
        writeln!(out, "# TYPE {name} {kind}")?;
        std::io::copy(&mut File::open(&path)?, &mut out)?;
    }
    writeln!(out, "# EOF")?;
    out.flush()
}
