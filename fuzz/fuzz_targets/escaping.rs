//! Label escaping: render the real registry with the fuzz input as a reason (and as an event type)
//! and check that every line of the exposition parses and the labels read back exactly.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rollout_exporter::config::{RolloutConfig, TallyConfig, Window};
use rollout_exporter::events::{reason_value, ContextKind, Row, RETRY};
use rollout_exporter::metrics::{registry, render, ExporterMetrics};
use rollout_exporter::rollout::{Flags, Thresholds};
use rollout_exporter::state::State;
use rollout_exporter::tally::Tally;

const NOW_US: i64 = 1_800_000_000_000_000;

/// Parses `name{k="v",...} value` with the text format's escapes; None when malformed.
fn parse_line(line: &str) -> Option<(String, Vec<(String, String)>, f64)> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some((n.to_string(), Vec::new(), v.trim().parse().ok()?));
        }
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return None;
    }
    let mut labels = Vec::new();
    let mut chars = rest.char_indices();
    loop {
        let mut key = String::new();
        let close = loop {
            match chars.next()? {
                (_, '=') => break None,
                (i, '}') if key.is_empty() => break Some(i),
                (_, ',') if key.is_empty() => {}
                (_, c) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                _ => return None,
            }
        };
        if let Some(i) = close {
            let value = rest[i + 1..].trim().parse().ok()?;
            return Some((name.to_string(), labels, value));
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    _ => return None,
                },
                '"' => break,
                '\n' => return None,
                c => value.push(c),
            }
        }
        labels.push((key, value));
    }
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data).into_owned();
    let cfg = TallyConfig {
        windows: vec![Window { label: "48h".into(), seconds: 172_800 }],
        reason_cap: 5,
        event_type_cap: 8,
        stuck_after: Duration::from_secs(900),
        max_tracked_bookings: 10,
    };
    let mut t = Tally::new(cfg);
    t.advance(NOW_US);
    let row = |id: &str, et: &str| Row {
        id: id.into(),
        event_type: Some(et.to_string()),
        reason: Some(raw.clone()),
        reason_json_type: Some("string".into()),
        context: ContextKind::Object,
        booking_id: Some(raw.clone()),
        created_us: NOW_US - 1,
    };
    t.fold_rows(&mut vec![row("1", RETRY), row("2", &raw)]);
    let rollout = RolloutConfig {
        flags_file: None,
        environment: "fuzz".into(),
        phase_started_at: Some((NOW_US / 1_000_000 - 200_000) as f64),
        thresholds: Thresholds::default(),
        soak: Window { label: "48h".into(), seconds: 172_800 },
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
    };
    let phase = Flags { v3: Some(raw.clone()), shadow: Some("false".into()), max_parallel: None }.phase();
    let state = State::new(rollout, phase, ExporterMetrics::new());
    state.publish_tally(t.view(172_800, 600));
    let text = render(&registry(&state).expect("registry"));

    let want = reason_value(Some(&raw));
    let mut found = false;
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, labels, _) = parse_line(line).unwrap_or_else(|| panic!("unparseable line {line:?}"));
        if name == "assignment_coordinator_events_total" && labels.iter().any(|(k, v)| k == "event_type" && v == RETRY)
        {
            found |= labels.iter().any(|(k, v)| k == "reason" && *v == want);
        }
    }
    assert!(found, "the reason {want:?} did not read back from:\n{text}");
});
