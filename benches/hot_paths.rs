//! Micro-benchmarks of the hot paths: folding polled rows into the tally (rows/s) and rendering
//! /metrics from a snapshot. `cargo bench --bench hot_paths`; bench/run.sh runs the end-to-end ones.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rollout_exporter::config::{RolloutConfig, TallyConfig, Window};
use rollout_exporter::events::{ContextKind, Row, KNOWN_EVENT_TYPES};
use rollout_exporter::outputs::metrics::{registry, render};
use rollout_exporter::outputs::Live;
use rollout_exporter::rollout::{Flags, PhaseView, Thresholds};
use rollout_exporter::snapshot::Snapshot;
use rollout_exporter::tally::Tally;
use rollout_exporter::time::UnixMicros;

const NOW_US: i64 = 1_800_000_000_000_000;

fn tally_config() -> TallyConfig {
    TallyConfig {
        windows: ["1h", "6h", "48h"]
            .iter()
            .map(|l| Window { label: l.to_string(), seconds: humantime::parse_duration(l).unwrap().as_secs() })
            .collect(),
        soak: Window { label: "48h".into(), seconds: 172_800 },
        active_within: Duration::from_secs(600),
        reason_cap: 50,
        event_type_cap: 50,
        stuck_after: Duration::from_secs(900),
        max_tracked_bookings: 100_000,
    }
}

/// A realistic batch: the event mix with reasons and booking ids, over the last `seconds`.
fn rows(n: usize, seconds: i64) -> Vec<Row> {
    let reasons = ["upstream_timeout", "no_driver_available", "rate_limited", "ambiguous_address"];
    (0..n)
        .map(|i| {
            let et = KNOWN_EVENT_TYPES[[0, 1, 0, 1, 2, 0, 1, 3, 6, 1][i % 10]];
            let reason = (et != KNOWN_EVENT_TYPES[0] && et != KNOWN_EVENT_TYPES[1]).then(|| reasons[i % 4].to_string());
            Row {
                id: format!("{i}"),
                event_type: Some(et.to_string()),
                reason_json_type: reason.as_ref().map(|_| "string".to_string()),
                reason,
                context: ContextKind::Object,
                booking_id: Some(format!("bk-{}", i / 3)),
                created_us: NOW_US - (seconds * 1_000_000) * (n - i) as i64 / n as i64,
                time: rollout_exporter::events::TimeClass::Dated,
                lossy_text: false,
                context_not_json: false,
            }
        })
        .collect()
}

fn fold(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold");
    let batch = rows(10_000, 60);
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("10k_rows_into_tally", |b| {
        b.iter_batched(
            || {
                let mut t = Tally::new(tally_config());
                t.advance(UnixMicros(NOW_US));
                (t, batch.clone())
            },
            |(mut t, mut rows)| {
                t.fold_rows(&mut rows);
                t
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn render_metrics(c: &mut Criterion) {
    let mut t = Tally::new(tally_config());
    t.advance(UnixMicros(NOW_US));
    t.fold_rows(&mut rows(200_000, 48 * 3600));
    let rollout = RolloutConfig {
        flags_file: None,
        environment: "bench".into(),
        phase_started_at: Some((NOW_US / 1_000_000 - 200_000) as f64),
        thresholds: Thresholds::default(),
        soak: Window { label: "48h".into(), seconds: 172_800 },
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
        max_staleness: None,
        links: Default::default(),
    };
    let phase = Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) }.phase();
    let started_at = rollout.phase_started_at.unwrap_or(0.0);
    let snapshot = Snapshot { ready: true, tally: t.view(), ..Snapshot::default() };
    let live = Live::fixed(snapshot, PhaseView { state: phase, started_at }, rollout);
    let reg = registry(&live).unwrap();
    c.bench_function("render_metrics", |b| b.iter(|| render(&reg)));
}

criterion_group!(benches, fold, render_metrics);
criterion_main!(benches);
