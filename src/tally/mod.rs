//! The tally: every number the exporter knows, kept in bounded memory.
//!
//! - all-time counters by (event type, reason), exact and monotonic;
//! - per-minute buckets by event type (count, and count without a reason), for the window gauges,
//!   kept for the longest window only;
//! - the newest `created_at` per event type;
//! - the booking state machine ([`bookings`]).
//!
//! The tally is owned by one task (the poller or the demo simulator); the HTTP side only ever sees
//! the immutable [`TallyView`] it produces.

pub mod bookings;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::{TallyConfig, Window};
use crate::events::{self, Group, LabelSet, Malformed, Row, KNOWN_EVENT_TYPES};

pub use bookings::{Bookings, BookingsView};

pub const US_PER_MINUTE: i64 = 60_000_000;
/// Rows dated further ahead than this share one "far future" bucket, so a writer with a broken clock
/// cannot grow the bucket map; they still count in every window, as `created_at >= start` does in SQL.
const FUTURE_HORIZON_MINUTES: i64 = 24 * 60;
const FAR_FUTURE: i64 = i64::MAX;

/// Counts of one event type in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    pub rows: u64,
    /// Rows whose `context->>'reason'` is NULL (the runbook's "success" rows).
    pub without_reason: u64,
}

/// Counts of one event type over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCount {
    pub event_type: String,
    pub rows: u64,
    pub without_reason: u64,
}

/// Every event type's counts in one window, evaluated at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    pub window: Window,
    pub counts: Vec<TypeCount>,
}

impl WindowView {
    pub fn rows(&self, event_type: &str) -> u64 {
        self.counts.iter().find(|c| c.event_type == event_type).map_or(0, |c| c.rows)
    }
}

/// An immutable picture of the tally at one instant.
#[derive(Debug, Clone, Default)]
pub struct TallyView {
    /// Unix microseconds the view was evaluated at (database time of the poll).
    pub now_us: i64,
    pub totals: Vec<(String, String, u64)>,
    pub windows: Vec<WindowView>,
    pub last_event_us: Vec<(String, i64)>,
    pub malformed: Vec<(&'static str, u64)>,
    pub bookings: BookingsView,
    /// Start of the 5-minute blocks (Unix minutes / 5) holding at least one coordinator.error,
    /// within the soak window.
    pub error_blocks: Vec<i64>,
    /// Rows of every event type created in the last `--active-within` (whole minutes, as the windows).
    pub recent_events: u64,
}

#[derive(Debug)]
pub struct Tally {
    cfg: TallyConfig,
    labels: LabelSet,
    totals: BTreeMap<(String, String), u64>,
    last_event_us: BTreeMap<String, i64>,
    /// Event-type labels by index, for the bucket vectors.
    types: Vec<String>,
    type_index: HashMap<String, usize>,
    /// Unix minute -> counts by type index. Holds the minutes of the longest window (and future ones).
    buckets: BTreeMap<i64, Vec<Cell>>,
    malformed: BTreeMap<Malformed, u64>,
    malformed_logged: HashSet<Malformed>,
    bookings: Bookings,
    /// The newest time the tally was advanced to; used to tell future-dated rows.
    now_us: i64,
}

pub fn minute_of(us: i64) -> i64 {
    us.div_euclid(US_PER_MINUTE)
}

/// First minute bucket of window `seconds` evaluated at `now_us` (see docs/metrics.md).
pub fn window_start_minute(now_us: i64, seconds: u64) -> i64 {
    (now_us.div_euclid(1_000_000) - seconds as i64).div_euclid(60)
}

impl Tally {
    pub fn new(cfg: TallyConfig) -> Self {
        let mut t = Tally {
            labels: LabelSet::new(cfg.reason_cap, cfg.event_type_cap),
            bookings: Bookings::new(cfg.max_tracked_bookings, cfg.stuck_after),
            cfg,
            totals: BTreeMap::new(),
            last_event_us: BTreeMap::new(),
            types: Vec::new(),
            type_index: HashMap::new(),
            buckets: BTreeMap::new(),
            malformed: BTreeMap::new(),
            malformed_logged: HashSet::new(),
            now_us: 0,
        };
        for et in KNOWN_EVENT_TYPES {
            t.type_idx(et);
        }
        t
    }

    pub fn config(&self) -> &TallyConfig {
        &self.cfg
    }

    fn type_idx(&mut self, label: &str) -> usize {
        if let Some(&i) = self.type_index.get(label) {
            return i;
        }
        self.types.push(label.to_string());
        self.type_index.insert(label.to_string(), self.types.len() - 1);
        self.types.len() - 1
    }

    fn longest_window_seconds(&self) -> u64 {
        self.cfg.windows.iter().map(|w| w.seconds).max().unwrap_or(0)
    }

    /// Oldest minute any window can still need at `now_us`.
    fn horizon_minute(&self, now_us: i64) -> i64 {
        window_start_minute(now_us, self.longest_window_seconds())
    }

    fn note_malformed(&mut self, kind: Malformed, n: u64, example_id: Option<&str>) {
        *self.malformed.entry(kind).or_default() += n;
        if self.malformed_logged.insert(kind) {
            tracing::warn!(
                kind = kind.label(),
                id = example_id.unwrap_or("(aggregated at start-up)"),
                "row with odd data counted normally; further rows of this kind are only counted \
                 in rollout_exporter_malformed_rows_total"
            );
        }
    }

    fn add_total(&mut self, raw_type: Option<&str>, raw_reason: Option<&str>, n: u64, last_us: i64) -> String {
        let et = self.labels.event_type(raw_type);
        let reason = self.labels.reason(&et, raw_reason);
        *self.totals.entry((et.clone(), reason)).or_default() += n;
        let last = self.last_event_us.entry(et.clone()).or_insert(last_us);
        *last = (*last).max(last_us);
        et
    }

    fn add_bucket(&mut self, et_label: &str, minute: i64, rows: u64, without_reason: u64) {
        let horizon = self.horizon_minute(self.now_us);
        if self.now_us != 0 && minute < horizon {
            return; // older than every window
        }
        let minute = if self.now_us != 0 && minute > minute_of(self.now_us) + FUTURE_HORIZON_MINUTES {
            FAR_FUTURE
        } else {
            minute
        };
        let idx = self.type_idx(et_label);
        let cells = self.buckets.entry(minute).or_default();
        if cells.len() <= idx {
            cells.resize(idx + 1, Cell::default());
        }
        cells[idx].rows += rows;
        cells[idx].without_reason += without_reason;
    }

    /// Folds the start-up aggregate of all-time counters. Groups must come most frequent first, so
    /// that the most frequent reasons win the labels.
    pub fn fold_groups(&mut self, groups: &[Group]) {
        for g in groups {
            self.add_total(g.event_type.as_deref(), g.reason.as_deref(), g.count, g.last_us);
            for kind in events::malformed_kinds(
                g.event_type.as_deref(),
                g.reason.as_deref(),
                g.reason_json_type.as_deref(),
                g.context,
            ) {
                self.note_malformed(kind, g.count, None);
            }
        }
    }

    /// Folds one start-up bucket aggregate (rows of one raw event type in one minute).
    pub fn fold_bucket(&mut self, raw_type: Option<&str>, minute: i64, rows: u64, without_reason: u64) {
        let et = self.labels.event_type(raw_type);
        self.add_bucket(&et, minute, rows, without_reason);
    }

    /// Folds single rows (a poll's new rows, or the demo's). Rows need not be sorted.
    pub fn fold_rows(&mut self, rows: &mut [Row]) {
        // Events of one transaction share created_at; order them as the state machine expects.
        rows.sort_by_key(|r| (r.created_us, bookings::rank(r.event_type.as_deref())));
        for row in rows.iter() {
            self.fold_row(row);
        }
    }

    fn fold_row(&mut self, row: &Row) {
        let et = self.add_total(row.event_type.as_deref(), row.reason.as_deref(), 1, row.created_us);
        let without = u64::from(row.reason.is_none());
        self.add_bucket(&et, minute_of(row.created_us), 1, without);
        for kind in events::malformed_kinds(
            row.event_type.as_deref(),
            row.reason.as_deref(),
            row.reason_json_type.as_deref(),
            row.context,
        ) {
            self.note_malformed(kind, 1, Some(&row.id));
        }
        if self.now_us != 0 && row.created_us > self.now_us {
            self.note_malformed(Malformed::FutureDated, 1, Some(&row.id));
        }
        self.bookings.observe(row.booking_id.as_deref(), &et, row.created_us);
    }

    /// Moves the clock forward: drops buckets no window needs and ages the booking state.
    pub fn advance(&mut self, now_us: i64) {
        self.now_us = self.now_us.max(now_us);
        let horizon = self.horizon_minute(self.now_us);
        self.buckets = self.buckets.split_off(&horizon);
        self.bookings.prune(self.now_us);
    }

    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// Sum of the buckets from `start_minute` on, by type index.
    fn sum_from(&self, start_minute: i64) -> Vec<Cell> {
        let mut sums = vec![Cell::default(); self.types.len()];
        for cells in self.buckets.range(start_minute..).map(|(_, c)| c) {
            for (i, c) in cells.iter().enumerate() {
                sums[i].rows += c.rows;
                sums[i].without_reason += c.without_reason;
            }
        }
        sums
    }

    fn window_view(&self, window: &Window) -> WindowView {
        let sums = self.sum_from(window_start_minute(self.now_us, window.seconds));
        let counts = self
            .types
            .iter()
            .zip(sums)
            .map(|(et, c)| TypeCount { event_type: et.clone(), rows: c.rows, without_reason: c.without_reason })
            .collect();
        WindowView { window: window.clone(), counts }
    }

    /// Rows of `event_type` created in the last `seconds` (whole minutes, as the windows).
    pub fn recent_rows(&self, seconds: u64, event_type: Option<&str>) -> u64 {
        let idx = event_type.and_then(|et| self.type_index.get(et).copied());
        let sums = self.sum_from(window_start_minute(self.now_us, seconds));
        match (event_type, idx) {
            (None, _) => sums.iter().map(|c| c.rows).sum(),
            (Some(_), Some(i)) => sums[i].rows,
            (Some(_), None) => 0,
        }
    }

    /// 5-minute blocks (Unix minute / 5) of the window that hold at least one coordinator.error.
    pub fn error_blocks(&self, seconds: u64) -> Vec<i64> {
        let Some(&idx) = self.type_index.get(events::ERROR) else { return Vec::new() };
        let mut blocks: Vec<i64> = self
            .buckets
            .range(window_start_minute(self.now_us, seconds)..)
            .filter(|(_, cells)| cells.get(idx).is_some_and(|c| c.rows > 0))
            .map(|(m, _)| m.div_euclid(5))
            .collect();
        blocks.dedup();
        blocks
    }

    /// The immutable view the metrics and the gate are rendered from.
    pub fn view(&self, soak_seconds: u64, active_within_seconds: u64) -> TallyView {
        TallyView {
            now_us: self.now_us,
            totals: self.totals.iter().map(|((e, r), n)| (e.clone(), r.clone(), *n)).collect(),
            windows: self.cfg.windows.iter().map(|w| self.window_view(w)).collect(),
            last_event_us: self.last_event_us.iter().map(|(e, t)| (e.clone(), *t)).collect(),
            malformed: Malformed::ALL
                .iter()
                .map(|k| (k.label(), self.malformed.get(k).copied().unwrap_or(0)))
                .collect(),
            bookings: self.bookings.view(self.now_us),
            error_blocks: self.error_blocks(soak_seconds),
            recent_events: self.recent_rows(active_within_seconds, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ContextKind, CONFIRMED, START};
    use std::time::Duration;

    fn cfg() -> TallyConfig {
        TallyConfig {
            windows: vec![
                Window { label: "1h".into(), seconds: 3600 },
                Window { label: "48h".into(), seconds: 172_800 },
            ],
            reason_cap: 50,
            event_type_cap: 50,
            stuck_after: Duration::from_secs(900),
            max_tracked_bookings: 1000,
        }
    }

    fn row(id: &str, et: &str, reason: Option<&str>, us: i64) -> Row {
        Row {
            id: id.into(),
            event_type: Some(et.into()),
            reason: reason.map(Into::into),
            reason_json_type: reason.map(|_| "string".into()),
            context: ContextKind::Object,
            booking_id: Some(format!("b-{id}")),
            created_us: us,
        }
    }

    const NOW: i64 = 1_800_000_000_000_000;

    #[test]
    fn windows_include_the_whole_edge_minute_and_future_rows() {
        let mut t = Tally::new(cfg());
        t.advance(NOW);
        let edge = NOW - 3600 * 1_000_000; // exactly now - 1h
        let mut rows = vec![
            row("1", START, None, edge - US_PER_MINUTE - 1), // the minute before the edge minute
            row("2", START, None, minute_of(edge) * US_PER_MINUTE), // first instant of the edge minute
            row("3", START, None, NOW + 3_600_000_000 * 48), // far future
        ];
        t.fold_rows(&mut rows);
        let v = t.view(172_800, 600);
        assert_eq!(v.windows[0].rows(START), 2);
        assert_eq!(v.windows[1].rows(START), 3);
        assert_eq!(v.malformed.iter().find(|m| m.0 == "future_dated").unwrap().1, 1);
    }

    #[test]
    fn totals_per_reason_sum_to_rows_and_old_buckets_are_dropped() {
        let mut t = Tally::new(cfg());
        t.advance(NOW);
        let mut rows: Vec<Row> =
            (0..10).map(|i| row(&i.to_string(), CONFIRMED, Some(["a", "b"][i % 2]), NOW - i as i64)).collect();
        t.fold_rows(&mut rows);
        t.advance(NOW + 49 * 3600 * 1_000_000);
        let v = t.view(172_800, 600);
        let sum: u64 = v.totals.iter().filter(|(e, _, _)| e == CONFIRMED).map(|t| t.2).sum();
        assert_eq!(sum, 10);
        assert_eq!(v.windows[1].rows(CONFIRMED), 0);
        assert!(t.buckets.is_empty());
    }
}
