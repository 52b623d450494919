//! Properties of the tally and the exposition over arbitrary rows (proptest, no fork or timeout):
//! per-reason counters sum to the total, window counts never exceed totals, and the exposition
//! parses (our parser per case, `promtool check metrics` once per batch) whatever a reason holds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rollout_exporter::config::{RolloutConfig, TallyConfig, Window};
use rollout_exporter::events::{ContextKind, Row, KNOWN_EVENT_TYPES};
use rollout_exporter::outputs::metrics::{registry, render};
use rollout_exporter::rollout::{Flags, Thresholds};
use rollout_exporter::snapshot::Snapshot;
use rollout_exporter::tally::Tally;
use rollout_exporter::time::{window_start_minute, UnixMicros};

use crate::helpers::*;
use crate::live_outputs;

const NOW_US: i64 = 1_800_000_000_000_000;
const SOAK: u64 = 172_800;

fn tally_config(reason_cap: usize) -> TallyConfig {
    TallyConfig {
        windows: [("1h", 3600), ("6h", 21_600), ("48h", SOAK)]
            .iter()
            .map(|(l, s)| Window { label: l.to_string(), seconds: *s })
            .collect(),
        soak: Window { label: "48h".into(), seconds: SOAK },
        active_within: Duration::from_secs(600),
        reason_cap,
        event_type_cap: 9,
        stuck_after: Duration::from_secs(900),
        max_tracked_bookings: 50,
    }
}

/// Characters that break naive escaping, plus some ordinary ones.
const TRICKY: &[char] =
    &['\\', '"', '\n', '\r', '\t', '{', '}', '=', ',', ' ', '#', 'a', 'z', 'é', '…', '\u{0}', '\u{2028}', '\u{feff}'];

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        prop::collection::vec(prop::sample::select(TRICKY), 0..24).prop_map(|v| v.into_iter().collect()),
        prop::collection::vec(prop::sample::select(TRICKY), 95..130).prop_map(|v| v.into_iter().collect()),
    ]
}

fn event_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => prop::sample::select(&KNOWN_EVENT_TYPES[..]).prop_map(|s| Some(s.to_string())),
        1 => Just(None),
        1 => "[a-z]{1,3}\\.[a-z]{1,3}".prop_map(Some),
        1 => any_text().prop_map(Some),
    ]
}

fn reason() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(String::new())),
        2 => prop::sample::select(vec!["upstream_timeout", "rate_limited", "other", "(empty)", "x"])
            .prop_map(|s| Some(s.to_string())),
        3 => any_text().prop_map(Some),
    ]
}

/// Raw event type, raw reason, offset of `created_at` from the batch's `now` (µs), booking number.
type RawRow = (Option<String>, Option<String>, i64, Option<u8>);

/// One row: raw values, and its time as an offset from the batch's `now` (50 h back to 2 h ahead).
fn row() -> impl Strategy<Value = RawRow> {
    (event_type(), reason(), -180_000_000_000i64..7_200_000_000, prop::option::of(any::<u8>()))
}

fn make_row(i: usize, (et, reason, offset, booking): &RawRow, now: i64) -> Row {
    Row {
        id: i.to_string(),
        event_type: et.clone(),
        reason_json_type: reason.as_ref().map(|_| "string".to_string()),
        reason: reason.clone(),
        context: ContextKind::Object,
        booking_id: booking.map(|b| format!("b{b}")),
        created_us: now + offset,
        time: rollout_exporter::events::TimeClass::Dated,
        lossy_text: false,
        context_not_json: false,
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(crate::helpers::proptest_config(cases))
}

#[test]
fn hardening_per_reason_counters_sum_to_the_total_and_windows_never_exceed_totals() {
    let batches = prop::collection::vec((prop::collection::vec(row(), 0..40), 0i64..900_000_000), 1..6);
    runner(128)
        .run(&(batches, 1usize..5), |(batches, cap)| {
            let mut t = Tally::new(tally_config(cap));
            let mut now = NOW_US;
            let mut folded: Vec<Row> = Vec::new();
            for (rows, step) in batches {
                now += step;
                t.advance(UnixMicros(now));
                let mut batch: Vec<Row> =
                    rows.iter().enumerate().map(|(i, r)| make_row(folded.len() + i, r, now)).collect();
                folded.extend(batch.iter().cloned());
                t.fold_rows(&mut batch);
                let v = t.view();

                // Every row is in exactly one (event_type, reason) counter.
                let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
                let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
                for t in &v.totals {
                    *by_type.entry(&t.event_type).or_default() += t.rows;
                    if t.reason != "other" {
                        *reasons.entry(&t.event_type).or_default() += 1;
                    }
                }
                prop_assert_eq!(by_type.values().sum::<u64>(), folded.len() as u64);
                for known in KNOWN_EVENT_TYPES {
                    let rows = folded.iter().filter(|r| r.event_type.as_deref() == Some(known)).count() as u64;
                    prop_assert_eq!(by_type.get(known).copied().unwrap_or(0), rows, "{}", known);
                }
                for (et, n) in &reasons {
                    prop_assert!(*n <= cap, "{} has {} reason labels with cap {}", et, n, cap);
                }
                prop_assert!(by_type.len() <= 9 + 1, "event types beyond the cap: {:?}", by_type.keys());

                // Windows: never above the totals, nested, and exact for the coordinator's types.
                for w in &v.windows {
                    let start = window_start_minute(UnixMicros(now), w.window.seconds);
                    for c in &w.counts {
                        let total = by_type.get(c.event_type.as_str()).copied().unwrap_or(0);
                        prop_assert!(c.rows <= total, "{} {}: {} > {}", w.window.label, c.event_type, c.rows, total);
                        prop_assert!(c.without_reason <= c.rows);
                    }
                    for known in KNOWN_EVENT_TYPES {
                        let expected = folded
                            .iter()
                            .filter(|r| {
                                r.event_type.as_deref() == Some(known) && UnixMicros(r.created_us).minute() >= start
                            })
                            .count() as u64;
                        prop_assert_eq!(w.rows(known), expected, "{} {}", w.window.label, known);
                    }
                }
                for pair in v.windows.windows(2) {
                    for c in &pair[0].counts {
                        prop_assert!(c.rows <= pair[1].rows(&c.event_type));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

fn rollout_config() -> RolloutConfig {
    RolloutConfig {
        flags_file: None,
        environment: "proptest".into(),
        phase_started_at: Some((NOW_US / 1_000_000 - 200_000) as f64),
        thresholds: Thresholds::default(),
        soak: Window { label: "48h".into(), seconds: SOAK },
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
        max_staleness: None,
        links: Default::default(),
    }
}

/// Renders /metrics for a tally holding `rows`, as the exporter would serve it.
fn exposition(rows: &[RawRow]) -> (String, Vec<(String, String, u64)>) {
    let mut t = Tally::new(tally_config(3));
    t.advance(UnixMicros(NOW_US));
    let mut rows: Vec<Row> = rows.iter().enumerate().map(|(i, r)| make_row(i, r, NOW_US)).collect();
    t.fold_rows(&mut rows);
    let view = t.view();
    let totals = view.totals.iter().map(|t| (t.event_type.clone(), t.reason.clone(), t.rows)).collect();
    let phase = Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) }.phase();
    let snapshot = Snapshot { ready: true, tally: view, ..Snapshot::default() };
    let (live, _tx) = live_outputs(rollout_config(), phase, snapshot);
    (render(&registry(&live).expect("registry")), totals)
}

/// Prefixes every metric name of an exposition, so many cases fit in one promtool run.
fn prefixed(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4096);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            out.push_str(&line[..7]);
            out.push_str(prefix);
            out.push_str(rest);
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push_str(prefix);
            out.push_str(line);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn hardening_the_exposition_parses_whatever_bytes_a_reason_holds() {
    let texts = RefCell::new(Vec::new());
    runner(64)
        .run(&prop::collection::vec(row(), 1..30), |rows| {
            let (text, totals) = exposition(&rows);
            // Our line parser (it panics on a malformed line) must read back every label exactly.
            let parsed = std::panic::catch_unwind(|| Scrape::parse(&text))
                .map_err(|_| TestCaseError::fail(format!("unparseable exposition:\n{text}")))?;
            let expected: BTreeMap<(String, String), u64> = totals.into_iter().map(|(e, r, n)| ((e, r), n)).collect();
            prop_assert_eq!(parsed.totals(), expected);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                prop_assert!(!line.contains('\n') && !line.is_empty(), "a raw newline split a sample line");
            }
            texts.borrow_mut().push(text);
            Ok(())
        })
        .unwrap();
    let texts = texts.into_inner();
    let batch: String = texts.iter().enumerate().map(|(i, t)| prefixed(t, &format!("case{i}_"))).collect();
    if std::panic::catch_unwind(|| promtool_check_metrics(&batch)).is_err() {
        // Name the first case promtool refuses on its own.
        for t in &texts {
            promtool_check_metrics(t);
        }
        panic!("promtool refused the batch but no single case");
    }
}
