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

/// Where a row's `created_at` places it in time (docs/metrics.md, "Rows the exporter cannot use
/// as they are").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeClass {
    /// An ordinary instant: `created_us` holds it.
    #[default]
    Dated,
    /// NULL: counted in the all-time counters, in no window (SQL's `created_at >= x` is not true).
    Null,
    /// `'infinity'` or past year 100000: in the all-time counters and, as SQL's `>=` has it, in
    /// every window (the far-future bucket).
    FarFuture,
    /// `'-infinity'`: in the all-time counters, in no window.
    FarPast,
}

impl TimeClass {
    /// The class code the SQL computes (0 dated, 1 NULL, 2 far future, 3 far past).
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => TimeClass::Null,
            2 => TimeClass::FarFuture,
            3 => TimeClass::FarPast,
            _ => TimeClass::Dated,
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
    /// `created_at` in Unix microseconds (`i64::MAX` for [`TimeClass::FarFuture`], 0 for the
    /// classes without an instant).
    pub created_us: i64,
    pub time: TimeClass,
    /// Some text of the row was not valid UTF-8 and was decoded with replacement characters.
    pub lossy_text: bool,
    /// The context column is text and did not hold JSON.
    pub context_not_json: bool,
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
    pub time: TimeClass,
    /// The source ranked this reason below `--reason-cap` and summed it into `other`.
    pub folded: bool,
    pub lossy_text: bool,
    pub context_not_json: bool,
    pub count: u64,
    /// Newest `created_at` in the group, Unix microseconds (None: no dated row).
    pub last_us: Option<i64>,
    /// The id of one row of the group that the malformed-row accounting reports (if any is odd).
    pub example_id: Option<String>,
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
    CreatedAtNull,
    CreatedAtOutOfRange,
    NotUtf8,
    ContextNotJson,
    LabelIsMarker,
}

impl Malformed {
    pub const ALL: [Malformed; 11] = [
        Malformed::ContextNull,
        Malformed::ContextNotObject,
        Malformed::ReasonNotString,
        Malformed::ReasonEmpty,
        Malformed::EventTypeNull,
        Malformed::FutureDated,
        Malformed::CreatedAtNull,
        Malformed::CreatedAtOutOfRange,
        Malformed::NotUtf8,
        Malformed::ContextNotJson,
        Malformed::LabelIsMarker,
    ];

    /// This kind as one bit of a `u16` set (its position in [`Malformed::ALL`]).
    pub fn bit(self) -> u16 {
        1 << Malformed::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::ContextNull => "context_null",
            Malformed::ContextNotObject => "context_not_object",
            Malformed::ReasonNotString => "reason_not_string",
            Malformed::ReasonEmpty => "reason_empty",
            Malformed::EventTypeNull => "event_type_null",
            Malformed::FutureDated => "future_dated",
            Malformed::CreatedAtNull => "created_at_null",
            Malformed::CreatedAtOutOfRange => "created_at_out_of_range",
            Malformed::NotUtf8 => "not_utf8",
            Malformed::ContextNotJson => "context_not_json",
            Malformed::LabelIsMarker => "label_is_marker",
        }
    }

    /// The column a kind is about, for the log line that names the row.
    pub fn column(self) -> &'static str {
        match self {
            Malformed::ContextNull | Malformed::ContextNotObject | Malformed::ContextNotJson => "context",
            Malformed::ReasonNotString | Malformed::ReasonEmpty => "context->'reason'",
            Malformed::EventTypeNull => "event_type",
            Malformed::FutureDated | Malformed::CreatedAtNull | Malformed::CreatedAtOutOfRange => "created_at",
            Malformed::NotUtf8 => "event_type, context or id (text)",
            Malformed::LabelIsMarker => "event_type or context->>'reason'",
        }
    }
}

/// What the malformed-row accounting needs to know of a row or group.
#[derive(Debug, Clone, Copy)]
pub struct Oddities<'a> {
    pub event_type: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub reason_json_type: Option<&'a str>,
    pub context: ContextKind,
    pub time: TimeClass,
    pub lossy_text: bool,
    pub context_not_json: bool,
}

impl<'a> Oddities<'a> {
    pub fn of_row(r: &'a Row) -> Self {
        Oddities {
            event_type: r.event_type.as_deref(),
            reason: r.reason.as_deref(),
            reason_json_type: r.reason_json_type.as_deref(),
            context: r.context,
            time: r.time,
            lossy_text: r.lossy_text,
            context_not_json: r.context_not_json,
        }
    }

    pub fn of_group(g: &'a Group) -> Self {
        Oddities {
            event_type: g.event_type.as_deref(),
            reason: g.reason.as_deref(),
            reason_json_type: g.reason_json_type.as_deref(),
            context: g.context,
            time: g.time,
            lossy_text: g.lossy_text,
            context_not_json: g.context_not_json,
        }
    }
}

/// A real value that equals one of the exporter's own marker labels (`(null)`, `(empty)`,
/// `other`): it is counted under that label, merged with what the marker stands for, and reported.
fn is_marker(value: Option<&str>, markers: &[&str]) -> bool {
    value.is_some_and(|v| markers.contains(&v))
}

/// The malformed kinds a row or group shows (future dating is judged by the caller, who knows now).
pub fn malformed_kinds(o: Oddities<'_>) -> impl Iterator<Item = Malformed> {
    let mut kinds = [None; 8];
    if o.event_type.is_none() {
        kinds[0] = Some(Malformed::EventTypeNull);
    }
    match o.context {
        ContextKind::Null => kinds[1] = Some(Malformed::ContextNull),
        ContextKind::NotObject if !o.context_not_json => kinds[1] = Some(Malformed::ContextNotObject),
        _ => {}
    }
    if matches!(o.reason_json_type, Some(t) if t != "string" && t != "null") {
        kinds[2] = Some(Malformed::ReasonNotString);
    }
    if o.reason == Some("") {
        kinds[3] = Some(Malformed::ReasonEmpty);
    }
    kinds[4] = match o.time {
        TimeClass::Null => Some(Malformed::CreatedAtNull),
        TimeClass::FarFuture | TimeClass::FarPast => Some(Malformed::CreatedAtOutOfRange),
        TimeClass::Dated => None,
    };
    if o.lossy_text {
        kinds[5] = Some(Malformed::NotUtf8);
    }
    if o.context_not_json {
        kinds[6] = Some(Malformed::ContextNotJson);
    }
    if is_marker(o.event_type, &[NULL_EVENT_TYPE, OTHER]) || is_marker(o.reason, &[EMPTY_REASON, OTHER]) {
        kinds[7] = Some(Malformed::LabelIsMarker);
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
        let base = Oddities {
            event_type: Some(RETRY),
            reason: Some("42"),
            reason_json_type: Some("number"),
            context: ContextKind::Object,
            time: TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        };
        assert_eq!(malformed_kinds(base).collect::<Vec<_>>(), vec![Malformed::ReasonNotString]);
        let odd = Oddities {
            event_type: None,
            reason: None,
            reason_json_type: None,
            context: ContextKind::NotObject,
            ..base
        };
        assert_eq!(
            malformed_kinds(odd).collect::<Vec<_>>(),
            vec![Malformed::EventTypeNull, Malformed::ContextNotObject]
        );
        let null_time =
            Oddities { reason: Some("other"), reason_json_type: Some("string"), time: TimeClass::Null, ..base };
        assert_eq!(
            malformed_kinds(null_time).collect::<Vec<_>>(),
            vec![Malformed::CreatedAtNull, Malformed::LabelIsMarker]
        );
    }
}
