//! Typed rows, and the rules that turn raw values into bounded label values.
//!
//! A source hands the tally either single [`Row`]s (polls, the demo) or pre-aggregated [`Group`]s
//! (the start-up load). Both carry the raw values; [`LabelSet`] maps them to label values with the
//! caps applied, so the sum over labels always equals the number of rows.

use std::collections::{HashMap, HashSet};

pub const START: &str = "coordinator.start";
pub const CONFIRMED: &str = "coordinator.confirmed";
pub const RETRY: &str = "coordinator.retry";
pub const MANUAL_REVIEW: &str = "coordinator.manual_review";
pub const ERROR: &str = "coordinator.error";
pub const CIRCUIT_OPEN: &str = "coordinator.circuit_open";
pub const LOCK_CONTENTION: &str = "coordinator.lock_contention";

/// The coordinator's own event types: always labelled, and always present in window gauges.
pub const KNOWN_EVENT_TYPES: [&str; 7] = [START, CONFIRMED, RETRY, MANUAL_REVIEW, ERROR, CIRCUIT_OPEN, LOCK_CONTENTION];

/// Label for values folded away by a cap.
pub const OTHER: &str = "other";
/// Label of an empty-string reason (`""` is not NULL, which is `reason=""`).
pub const EMPTY_REASON: &str = "(empty)";
/// Label of a NULL event type.
pub const NULL_EVENT_TYPE: &str = "(null)";
/// Reasons longer than this many characters are truncated (and get a trailing `…`).
pub const MAX_REASON_CHARS: usize = 100;

/// What `jsonb_typeof(context)` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    Object,
    /// SQL NULL.
    Null,
    /// A JSON string, array, number, boolean or null: `->>` yields NULL for it.
    NotObject,
}

impl ContextKind {
    pub fn from_jsonb_typeof(t: Option<&str>) -> Self {
        match t {
            Some("object") => ContextKind::Object,
            None => ContextKind::Null,
            Some(_) => ContextKind::NotObject,
        }
    }
}

/// One row of the events table, already filtered to the configured source.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Primary key as text (opaque).
    pub id: String,
    pub event_type: Option<String>,
    /// `context->>'reason'`: NULL when absent, JSON text when not a string.
    pub reason: Option<String>,
    /// `jsonb_typeof(context->'reason')`, for the malformed-row counter.
    pub reason_json_type: Option<String>,
    pub context: ContextKind,
    /// `context->>'booking_id'`.
    pub booking_id: Option<String>,
    /// `created_at` in Unix microseconds.
    pub created_us: i64,
}

/// Rows aggregated by the source at start-up: by event type, reason, the shape of context and,
/// for rows inside the longest window, the minute of `created_at`. The all-time counters and the
/// per-minute buckets are both sums of these groups (the tally does the summing).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub event_type: Option<String>,
    pub reason: Option<String>,
    pub reason_json_type: Option<String>,
    pub context: ContextKind,
    /// Unix minute of `created_at`; None for rows older than every window.
    pub minute: Option<i64>,
    pub count: u64,
    /// Newest `created_at` in the group, Unix microseconds.
    pub last_us: i64,
}

/// Odd data worth a counter and one log line; the row is still counted normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    ContextNull,
    ContextNotObject,
    ReasonNotString,
    ReasonEmpty,
    EventTypeNull,
    FutureDated,
}

impl Malformed {
    pub const ALL: [Malformed; 6] = [
        Malformed::ContextNull,
        Malformed::ContextNotObject,
        Malformed::ReasonNotString,
        Malformed::ReasonEmpty,
        Malformed::EventTypeNull,
        Malformed::FutureDated,
    ];

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::ContextNull => "context_null",
            Malformed::ContextNotObject => "context_not_object",
            Malformed::ReasonNotString => "reason_not_string",
            Malformed::ReasonEmpty => "reason_empty",
            Malformed::EventTypeNull => "event_type_null",
            Malformed::FutureDated => "future_dated",
        }
    }
}

/// The malformed kinds a row or group shows (future dating is judged by the caller, who knows now).
pub fn malformed_kinds(
    event_type: Option<&str>,
    reason: Option<&str>,
    reason_json_type: Option<&str>,
    context: ContextKind,
) -> impl Iterator<Item = Malformed> {
    let mut kinds = [None; 4];
    if event_type.is_none() {
        kinds[0] = Some(Malformed::EventTypeNull);
    }
    match context {
        ContextKind::Null => kinds[1] = Some(Malformed::ContextNull),
        ContextKind::NotObject => kinds[1] = Some(Malformed::ContextNotObject),
        ContextKind::Object => {}
    }
    if matches!(reason_json_type, Some(t) if t != "string" && t != "null") {
        kinds[2] = Some(Malformed::ReasonNotString);
    }
    if reason == Some("") {
        kinds[3] = Some(Malformed::ReasonEmpty);
    }
    kinds.into_iter().flatten()
}

/// The label value of a raw reason before the cap: NULL is `""`, the empty string `(empty)`,
/// long values are cut at [`MAX_REASON_CHARS`] characters.
pub fn reason_value(raw: Option<&str>) -> String {
    match raw {
        None => String::new(),
        Some("") => EMPTY_REASON.to_string(),
        Some(s) => truncate(s),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_REASON_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// The label value of a raw event type before the cap.
pub fn event_type_value(raw: Option<&str>) -> String {
    match raw {
        None => NULL_EVENT_TYPE.to_string(),
        Some(s) => truncate(s),
    }
}

/// Assigns bounded label values. A value that got its own label keeps it for the life of the
/// process, so no counter series ever goes down; new values get a label while there is room, and
/// fold into `other` after that.
#[derive(Debug)]
pub struct LabelSet {
    reason_cap: usize,
    event_type_cap: usize,
    event_types: HashSet<String>,
    reasons: HashMap<String, HashSet<String>>,
}

impl LabelSet {
    pub fn new(reason_cap: usize, event_type_cap: usize) -> Self {
        let event_types = KNOWN_EVENT_TYPES.iter().map(|s| s.to_string()).collect();
        LabelSet { reason_cap, event_type_cap, event_types, reasons: HashMap::new() }
    }

    /// The label for a raw event type.
    pub fn event_type(&mut self, raw: Option<&str>) -> String {
        let value = event_type_value(raw);
        if self.event_types.contains(&value) {
            return value;
        }
        // `other` itself always exists as a fold target, so the cap counts real types only.
        if value != OTHER && self.event_types.len() < self.event_type_cap {
            self.event_types.insert(value.clone());
            return value;
        }
        OTHER.to_string()
    }

    /// The label for a raw reason of an event type (given as its label).
    pub fn reason(&mut self, event_type_label: &str, raw: Option<&str>) -> String {
        let value = reason_value(raw);
        let set = self.reasons.entry(event_type_label.to_string()).or_default();
        if set.contains(&value) {
            return value;
        }
        if value != OTHER && set.len() < self.reason_cap {
            set.insert(value.clone());
            return value;
        }
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_empty_and_long_reasons_get_distinct_labels() {
        assert_eq!(reason_value(None), "");
        assert_eq!(reason_value(Some("")), EMPTY_REASON);
        let long = "é".repeat(150);
        let v = reason_value(Some(&long));
        assert_eq!(v.chars().count(), MAX_REASON_CHARS + 1);
        assert!(v.ends_with('…'));
    }

    #[test]
    fn reasons_beyond_the_cap_fold_into_other_and_labels_never_move() {
        let mut labels = LabelSet::new(2, 50);
        assert_eq!(labels.reason(RETRY, Some("a")), "a");
        assert_eq!(labels.reason(RETRY, Some("b")), "b");
        assert_eq!(labels.reason(RETRY, Some("c")), OTHER);
        assert_eq!(labels.reason(RETRY, Some("a")), "a");
        // Caps are per event type.
        assert_eq!(labels.reason(ERROR, Some("c")), "c");
    }

    #[test]
    fn unknown_event_types_are_bounded_but_known_ones_always_labelled() {
        let mut labels = LabelSet::new(50, 8);
        assert_eq!(labels.event_type(Some("x.one")), "x.one");
        assert_eq!(labels.event_type(Some("x.two")), OTHER);
        assert_eq!(labels.event_type(Some(START)), START);
        assert_eq!(labels.event_type(None), OTHER);
    }

    #[test]
    fn malformed_kinds_follow_postgres_semantics() {
        let k: Vec<_> = malformed_kinds(Some(RETRY), Some("42"), Some("number"), ContextKind::Object).collect();
        assert_eq!(k, vec![Malformed::ReasonNotString]);
        let k: Vec<_> = malformed_kinds(None, None, None, ContextKind::NotObject).collect();
        assert_eq!(k, vec![Malformed::EventTypeNull, Malformed::ContextNotObject]);
    }
}
