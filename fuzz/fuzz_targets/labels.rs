//! Reason and event-type normalisation and the label caps: labels are bounded in length, derived
//! from the raw value (a prefix, then `…`), stable once given, and never more than the cap.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use rollout_exporter::events::{
    event_type_value, reason_value, LabelSet, EMPTY_REASON, KNOWN_EVENT_TYPES, MAX_REASON_CHARS, NULL_EVENT_TYPE,
    OTHER, RETRY,
};

fn check_value(raw: &str, v: &str) {
    assert!(v.chars().count() <= MAX_REASON_CHARS + 1, "{v:?}");
    if raw.chars().count() <= MAX_REASON_CHARS {
        assert_eq!(v, raw);
    } else {
        let kept = v.strip_suffix('…').expect("a cut value ends with …");
        assert!(raw.starts_with(kept) && kept.chars().count() == MAX_REASON_CHARS);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let cap = 1 + data.first().map_or(0, |b| (b % 4) as usize);

    assert_eq!(reason_value(None), "");
    assert_eq!(event_type_value(None), NULL_EVENT_TYPE);
    let r = reason_value(Some(&text));
    if text.is_empty() {
        assert_eq!(r, EMPTY_REASON);
    } else {
        check_value(&text, &r);
    }
    check_value(&text, &event_type_value(Some(&text)));

    // Every line a reason (and an event type) in turn, through one label set.
    let mut labels = LabelSet::new(cap, 8);
    let mut given: HashSet<String> = HashSet::new();
    let mut types: HashSet<String> = HashSet::new();
    for raw in text.split('\n') {
        let et = labels.event_type(Some(raw));
        assert!(et == OTHER || et == event_type_value(Some(raw)), "{raw:?} -> {et:?}");
        types.insert(et);
        let label = labels.reason(RETRY, Some(raw));
        assert!(label == OTHER || label == reason_value(Some(raw)), "{raw:?} -> {label:?}");
        if label != OTHER {
            given.insert(label.clone());
        }
        assert!(given.len() <= cap, "{} reason labels with cap {cap}", given.len());
        // A label once given stays.
        assert_eq!(labels.reason(RETRY, Some(raw)), label);
    }
    let unknown = types.iter().filter(|t| t.as_str() != OTHER && !KNOWN_EVENT_TYPES.contains(&t.as_str()));
    assert!(unknown.count() <= 1, "one unknown type fits beside the 7 known (cap 8)");
});
