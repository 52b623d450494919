//! The tally: every number the exporter knows, kept in bounded memory.
//!
//! - all-time counters by (event type, reason), exact and monotonic;
//! - per-minute buckets by event type (count, and count without a reason), for the window gauges,
//!   kept for the longest window only;
//! - the newest `created_at` per event type;
//! - the booking state machine ([`bookings`]);
//! - for the seconds the source may still re-read (late commits), what each second's rows added,
//!   by label set: a re-read second adds only the difference ([`Tally::count_late_rows`]).
//!
//! The tally is owned by the ingest loop alone; outputs only ever see the immutable [`TallyView`]
//! it produces. The `verdict` command builds a tally from the same start-up aggregates, so both
//! judge from the same numbers.

pub mod bookings;
mod histogram;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::{TallyConfig, Window};
use crate::events::{self, Group, LabelSet, Malformed, Oddities, Row, TimeClass, KNOWN_EVENT_TYPES, OTHER};
use crate::time::{error_block, window_start_minute, UnixMicros};

pub use bookings::{Bookings, BookingsView, InvalidTransition, WithoutBooking};
pub use histogram::Histogram;

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

/// Counts of one event type (its label) over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCount {
    pub event_type: String,
    pub rows: u64,
    pub without_reason: u64,
}

/// Every event type's counts in one window, evaluated at the view's `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    pub window: Window,
    pub counts: Vec<TypeCount>,
}

impl WindowView {
    /// Rows of one event type label in the window (0 when absent).
    pub fn rows(&self, event_type: &str) -> u64 {
        self.counts.iter().find(|c| c.event_type == event_type).map_or(0, |c| c.rows)
    }
}

/// One all-time counter series: rows of (event type label, reason label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub event_type: String,
    pub reason: String,
    pub rows: u64,
}

/// The newest `created_at` of an event type label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEvent {
    pub event_type: String,
    pub at: UnixMicros,
}

/// Rows of one malformed kind counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedCount {
    pub kind: Malformed,
    pub rows: u64,
}

/// Bookings of one step of the soak chart ([`series`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesStep {
    /// First Unix minute of the step.
    pub start_minute: i64,
    pub starts: u64,
    pub confirmed: u64,
    pub manual_review: u64,
}

/// Steps of the soak chart: about 96 across the soak window, whole minutes (48 h: 30 minutes).
pub fn series_step_minutes(soak_seconds: u64) -> i64 {
    ((soak_seconds / 60).div_ceil(96) as i64).max(1)
}

/// The soak window's starts, confirmations and manual reviews in chart steps of
/// [`series_step_minutes`], oldest first, from the gate's per-minute counts
/// ([`TallyView::soak_minutes`]) as of `now`; steps without bookings are zero.
pub fn series(minutes: &[MinuteCounts], now: UnixMicros, soak_seconds: u64) -> Vec<SeriesStep> {
    if now.0 == 0 {
        return Vec::new();
    }
    let step = series_step_minutes(soak_seconds);
    let (first, last) = (window_start_minute(now, soak_seconds), now.minute());
    let mut out: Vec<SeriesStep> = (0..=(last - first).max(0) / step)
        .map(|i| SeriesStep { start_minute: first + i * step, ..SeriesStep::default() })
        .collect();
    for m in minutes.iter().filter(|m| (first..=last).contains(&m.minute)) {
        let p = &mut out[((m.minute - first) / step) as usize];
        p.starts += m.starts;
        p.confirmed += m.confirmed;
        p.manual_review += m.manual_review;
    }
    out
}

/// The gate's counts in one minute of the soak window (only minutes holding at least one of them
/// are listed). The verdict's `decided` and `projection` are computed from these: which failures
/// will still be inside the window judged at the due time, and the rates since the phase began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix minute (`i64::MAX` for the one bucket of rows dated more than a day ahead, which every
    /// window counts).
    pub minute: i64,
    pub starts: u64,
    pub confirmed: u64,
    pub manual_review: u64,
    pub errors: u64,
    pub circuit_opens: u64,
}

/// An immutable picture of the tally at one instant.
#[derive(Debug, Clone, Default)]
pub struct TallyView {
    /// The instant the view was evaluated at (database time of the poll or load).
    pub now: UnixMicros,
    pub totals: Vec<Total>,
    /// One entry per window of the configuration, shortest first.
    pub windows: Vec<WindowView>,
    /// The newest `created_at` of each event type label, by label.
    pub last_event: Vec<LastEvent>,
    /// Every [`Malformed`] kind, in [`Malformed::ALL`] order.
    pub malformed: Vec<MalformedCount>,
    pub bookings: BookingsView,
    /// 5-minute blocks (Unix minute / 5) of the soak window holding at least one coordinator.error,
    /// ascending.
    pub error_blocks: Vec<i64>,
    /// The soak window's minutes with gate events, ascending ([`MinuteCounts`]).
    pub soak_minutes: Vec<MinuteCounts>,
    /// Rows of every event type created in the last `--active-within` (whole minutes, as windows).
    pub recent_events: u64,
}

impl TallyView {
    /// The view of a window of exactly `seconds`, if the tally keeps one.
    pub fn window(&self, seconds: u64) -> Option<&WindowView> {
        self.windows.iter().find(|w| w.window.seconds == seconds)
    }
}

#[derive(Debug)]
pub struct Tally {
    cfg: TallyConfig,
    labels: LabelSet,
    totals: BTreeMap<(String, String), u64>,
    last_event: BTreeMap<String, UnixMicros>,
    /// Event-type labels by index, for the bucket vectors.
    types: Vec<String>,
    type_index: HashMap<String, usize>,
    /// Unix minute -> counts by type index. Holds the minutes of the longest window (and future ones).
    buckets: BTreeMap<i64, Vec<Cell>>,
    malformed: BTreeMap<Malformed, u64>,
    malformed_logged: HashSet<Malformed>,
    bookings: Bookings,
    /// The newest time the tally was advanced to; used to tell future-dated rows (0: not yet).
    now: UnixMicros,
    /// Per Unix second from [`Tally::reconcile_from`] on: the rows counted, by what they added.
    /// Memory: seconds of the reconciliation range x label sets, never rows.
    recent: BTreeMap<i64, HashMap<RowKey, u64>>,
    /// The oldest Unix second the source may still re-read (None: it never does; nothing is kept).
    recent_from: Option<i64>,
    /// Rows counted at or after the clock (`created_at`, Unix microseconds): added to `recent`
    /// when the clock passes them. As many as the source's rows ahead of its watermark.
    ahead: Vec<(i64, RowKey)>,
}

/// What one counted row added: its labels, its malformed kinds (bits in [`Malformed::ALL`]
/// order) and whether it lacked a booking id. Rows with the same key are interchangeable for
/// every counter, so per-second sums of keys tell exactly what a re-read second adds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RowKey {
    event_type: String,
    reason: String,
    malformed: u16,
    without_reason: bool,
    without_booking: bool,
}

/// A raw (event type, reason) pair of the start-up load.
type RawPair<'a> = (Option<&'a str>, Option<&'a str>);

impl Tally {
    pub fn new(cfg: TallyConfig) -> Self {
        let mut t = Tally {
            labels: LabelSet::new(cfg.reason_cap, cfg.event_type_cap),
            bookings: Bookings::new(cfg.max_tracked_bookings, cfg.stuck_after),
            cfg,
            totals: BTreeMap::new(),
            last_event: BTreeMap::new(),
            types: Vec::new(),
            type_index: HashMap::new(),
            buckets: BTreeMap::new(),
            malformed: BTreeMap::new(),
            malformed_logged: HashSet::new(),
            now: UnixMicros(0),
            recent: BTreeMap::new(),
            recent_from: None,
            ahead: Vec::new(),
        };
        for et in KNOWN_EVENT_TYPES {
            t.type_idx(et);
        }
        t
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

    /// Oldest minute any window can still need at `now`.
    fn horizon_minute(&self, now: UnixMicros) -> i64 {
        window_start_minute(now, self.longest_window_seconds())
    }

    /// Counts odd rows by kind; the first of each kind is logged with its id and column.
    fn note_malformed(&mut self, kind: Malformed, n: u64, example_id: Option<&str>) {
        *self.malformed.entry(kind).or_default() += n;
        if self.malformed_logged.insert(kind) {
            tracing::warn!(
                kind = kind.label(),
                column = kind.column(),
                id = example_id.unwrap_or("(counted in the start-up aggregates: no single row id)"),
                "row with odd data counted as docs/metrics.md places it; further rows of this kind \
                 are only counted in rollout_exporter_malformed_rows_total"
            );
        }
    }

    /// Adds `n` rows to the all-time counter of their labels; `last` (a dated row's `created_at`)
    /// moves the newest-event time. `folded`: the source already summed this reason into `other`.
    fn add_total(
        &mut self,
        raw: (Option<&str>, Option<&str>),
        folded: bool,
        n: u64,
        last: Option<UnixMicros>,
    ) -> String {
        let et = self.labels.event_type(raw.0);
        let reason = if folded { OTHER.to_string() } else { self.labels.reason(&et, raw.1) };
        *self.totals.entry((et.clone(), reason)).or_default() += n;
        if let Some(last) = last {
            let newest = self.last_event.entry(et.clone()).or_insert(last);
            *newest = (*newest).max(last);
        }
        et
    }

    fn add_bucket(&mut self, et_label: &str, minute: i64, rows: u64, without_reason: u64) {
        let started = self.now.0 != 0;
        if started && minute < self.horizon_minute(self.now) {
            return; // older than every window
        }
        let far =
            minute == FAR_FUTURE || (started && minute > self.now.minute().saturating_add(FUTURE_HORIZON_MINUTES));
        let minute = if far { FAR_FUTURE } else { minute };
        let idx = self.type_idx(et_label);
        let cells = self.buckets.entry(minute).or_default();
        if cells.len() <= idx {
            cells.resize(idx + 1, Cell::default());
        }
        cells[idx].rows += rows;
        cells[idx].without_reason += without_reason;
    }

    /// Hands out the labels as a fresh exporter does, the same for `serve` and `verdict` whatever
    /// part of the load came aggregated and what part row by row: event types by rows (most first,
    /// then by value), then the reasons of each type the same way, so the most frequent values win
    /// the capped labels.
    pub fn rank_labels(&mut self, groups: &[Group], rows: &[Row]) {
        let mut per_type: HashMap<Option<&str>, u64> = HashMap::new();
        let mut per_reason: HashMap<RawPair<'_>, u64> = HashMap::new();
        // Every row counts for its event type; a reason the source already folded into `other`
        // (past `--reason-cap`, or a load that reads no reason texts) ranks no reason.
        let pairs = groups
            .iter()
            .map(|g| (g.event_type.as_deref(), g.reason.as_deref(), g.count, g.folded))
            .chain(rows.iter().map(|r| (r.event_type.as_deref(), r.reason.as_deref(), 1, false)));
        for (et, reason, n, folded) in pairs {
            *per_type.entry(et).or_default() += n;
            if !folded {
                *per_reason.entry((et, reason)).or_default() += n;
            }
        }
        let mut types: Vec<_> = per_type.into_iter().collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (raw, _) in types {
            self.labels.event_type(raw);
        }
        let mut reasons: Vec<_> = per_reason.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for ((raw_type, raw_reason), _) in reasons {
            let et = self.labels.event_type(raw_type);
            self.labels.reason(&et, raw_reason);
        }
    }

    /// Folds a start-up load: aggregates, and rows one by one. Labels are ranked over all of it.
    /// Groups of minutes from `rows_from_second` (a minute start) on are ranked only: the source hands their rows
    /// over one by one in the polls that follow (the load's catch-up), and they count then.
    pub fn fold_load(&mut self, groups: &[Group], rows: &mut [Row], rows_from_second: Option<i64>) {
        self.rank_labels(groups, rows);
        let secs_per_minute = crate::time::MINUTE / crate::time::US_PER_SECOND;
        let before = |g: &&Group| match (g.minute, rows_from_second) {
            (Some(m), Some(from)) => m * secs_per_minute < from,
            _ => true,
        };
        self.fold_groups(groups.iter().filter(before));
        if let Some(from) = rows_from_second {
            self.reconcile_from(from);
        }
        self.fold_rows(rows);
    }

    /// Folds aggregates whose labels [`Tally::rank_labels`] already handed out (a backtest folds
    /// the minutes of a long load step by step).
    pub fn fold_groups<'g>(&mut self, groups: impl IntoIterator<Item = &'g Group>) {
        for g in groups {
            let raw = (g.event_type.as_deref(), g.reason.as_deref());
            let last = g.last_us.filter(|_| g.time == TimeClass::Dated).map(UnixMicros);
            let et = self.add_total(raw, g.folded, g.count, last);
            let minute = match g.time {
                TimeClass::Dated => g.minute,
                TimeClass::FarFuture => Some(FAR_FUTURE),
                TimeClass::Null | TimeClass::FarPast => None,
            };
            if let Some(minute) = minute {
                let without = if g.reason.is_none() && !g.folded { g.count } else { 0 };
                self.add_bucket(&et, minute, g.count, without);
            }
            for kind in events::malformed_kinds(Oddities::of_group(g)) {
                self.note_malformed(kind, g.count, g.example_id.as_deref());
            }
        }
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
        let at = UnixMicros(row.created_us);
        let dated = row.time == TimeClass::Dated;
        let et = self.add_total((row.event_type.as_deref(), row.reason.as_deref()), false, 1, dated.then_some(at));
        let without = u64::from(row.reason.is_none());
        match row.time {
            TimeClass::Dated => self.add_bucket(&et, at.minute(), 1, without),
            TimeClass::FarFuture => self.add_bucket(&et, FAR_FUTURE, 1, without),
            TimeClass::Null | TimeClass::FarPast => {}
        }
        for kind in events::malformed_kinds(Oddities::of_row(row)) {
            self.note_malformed(kind, 1, Some(&row.id));
        }
        if dated && self.now.0 != 0 && at > self.now {
            self.note_malformed(Malformed::FutureDated, 1, Some(&row.id));
        }
        if dated {
            self.bookings.observe(row.booking_id.as_deref(), &et, row.created_us, bookings::fingerprint(&row.id));
            if self.recent_from.is_some_and(|from| at.second() >= from) {
                let key = self.row_key(et, row);
                // A row at or after the watermark joins its second's sums when the clock passes it:
                // until then a re-read of that second does not reach it.
                if at >= self.now {
                    self.ahead.push((at.0, key));
                } else {
                    *self.recent.entry(at.second()).or_default().entry(key).or_default() += 1;
                }
            }
        }
    }

    /// From this Unix second on, the source may re-read seconds ([`Tally::count_late_rows`]):
    /// what the rows of each such second added is kept; older seconds are forgotten. Moves forward only.
    pub fn reconcile_from(&mut self, second: i64) {
        let from = self.recent_from.map_or(second, |f| f.max(second));
        self.recent_from = Some(from);
        self.recent = self.recent.split_off(&from);
    }

    /// Rows of one Unix second below the watermark (`[second start, min(second end, watermark))`),
    /// re-read because the database holds more of them than were counted: they committed after
    /// a poll had passed their `created_at`. The counters and the window buckets get what the
    /// rows hold beyond what was counted, label set by label set, and the booking state machine
    /// the rows it has not seen (a tracked booking knows its last rows by fingerprint). Counters
    /// never go down: rows deleted meanwhile are left to [`Tally::rebuild_minute`]. The source
    /// re-reads only seconds from [`Tally::reconcile_from`] on; an older second changes nothing.
    pub fn count_late_rows(&mut self, second: i64, rows: &[Row]) {
        if self.recent_from.is_none_or(|from| second < from) {
            tracing::debug!(second, "late rows of a second no longer re-readable: left to the window check");
            return;
        }
        let minute = second.div_euclid(crate::time::MINUTE / crate::time::US_PER_SECOND);
        let mut now_held: HashMap<RowKey, (u64, Option<&str>)> = HashMap::new();
        for row in rows.iter().filter(|r| r.time == TimeClass::Dated) {
            let et = self.labels.event_type(row.event_type.as_deref());
            let e = now_held.entry(self.row_key(et, row)).or_insert((0, Some(&row.id)));
            e.0 += 1;
        }
        let counted = self.recent.remove(&second).unwrap_or_default();
        for (key, (n, example)) in &now_held {
            let added = n.saturating_sub(counted.get(key).copied().unwrap_or(0));
            if added == 0 {
                continue;
            }
            *self.totals.entry((key.event_type.clone(), key.reason.clone())).or_default() += added;
            self.add_bucket(&key.event_type, minute, added, if key.without_reason { added } else { 0 });
            for kind in Malformed::ALL.iter().filter(|k| key.malformed & k.bit() != 0) {
                self.note_malformed(*kind, added, *example);
            }
            if key.without_booking {
                self.bookings.count_without_booking(&key.event_type, added);
            }
        }
        let mut sorted: Vec<&Row> = rows.iter().filter(|r| r.time == TimeClass::Dated).collect();
        sorted.sort_by_key(|r| (r.created_us, bookings::rank(r.event_type.as_deref())));
        for row in sorted {
            let et = self.labels.event_type(row.event_type.as_deref());
            let newest = self.last_event.entry(et.clone()).or_insert(UnixMicros(row.created_us));
            *newest = (*newest).max(UnixMicros(row.created_us));
            if let Some(id) = row.booking_id.as_deref() {
                self.bookings.observe_again(id, &et, row.created_us, bookings::fingerprint(&row.id));
            }
        }
        self.recent.insert(second, now_held.into_iter().map(|(k, (n, _))| (k, n)).collect());
    }

    /// What a counted row adds, as a key of the per-second sums.
    fn row_key(&mut self, event_type: String, row: &Row) -> RowKey {
        let reason = self.labels.reason(&event_type, row.reason.as_deref());
        RowKey {
            event_type,
            reason,
            malformed: events::malformed_kinds(Oddities::of_row(row)).fold(0, |bits, k| bits | k.bit()),
            without_reason: row.reason.is_none(),
            without_booking: row.booking_id.is_none(),
        }
    }

    /// Rebuilds one minute's buckets from every row it holds now (rows were deleted, or appeared
    /// long after their `created_at`). The all-time counters are left alone: a counter never goes
    /// down.
    pub fn rebuild_minute(&mut self, minute: i64, rows: &[Row]) {
        if self.now.0 != 0 && minute < self.horizon_minute(self.now) {
            return;
        }
        self.buckets.remove(&minute);
        for row in rows.iter().filter(|r| r.time == TimeClass::Dated) {
            let et = self.labels.event_type(row.event_type.as_deref());
            self.add_bucket(&et, minute, 1, u64::from(row.reason.is_none()));
        }
        // Deleted rows: what the minute's re-readable seconds hold now is what a later re-read
        // compares with.
        let secs_per_minute = crate::time::MINUTE / crate::time::US_PER_SECOND;
        let (first, last) = (minute * secs_per_minute, (minute + 1) * secs_per_minute);
        if self.recent.range(first..last).next().is_some() {
            let stale: Vec<i64> = self.recent.range(first..last).map(|(s, _)| *s).collect();
            for s in stale {
                self.recent.remove(&s);
            }
            for row in rows.iter().filter(|r| r.time == TimeClass::Dated) {
                let at = UnixMicros(row.created_us);
                if self.recent_from.is_some_and(|from| at.second() >= from) {
                    let et = self.labels.event_type(row.event_type.as_deref());
                    let key = self.row_key(et, row);
                    *self.recent.entry(at.second()).or_default().entry(key).or_default() += 1;
                }
            }
        }
    }

    /// Moves the clock forward: drops buckets no window needs and ages the booking state.
    pub fn advance(&mut self, now: UnixMicros) {
        self.now = self.now.max(now);
        if !self.ahead.is_empty() {
            let (passed, ahead): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.ahead).into_iter().partition(|(at, _)| *at < self.now.0);
            self.ahead = ahead;
            for (at, key) in passed {
                *self.recent.entry(UnixMicros(at).second()).or_default().entry(key).or_default() += 1;
            }
        }
        let horizon = self.horizon_minute(self.now);
        self.buckets = self.buckets.split_off(&horizon);
        // A finished booking stays tracked while a second of its rows may still be re-read.
        let keep_from = self.recent_from.map(|s| s.saturating_mul(crate::time::US_PER_SECOND));
        self.bookings.prune(self.now.0, keep_from);
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
        let sums = self.sum_from(window_start_minute(self.now, window.seconds));
        let counts = self
            .types
            .iter()
            .zip(sums)
            .map(|(et, c)| TypeCount { event_type: et.clone(), rows: c.rows, without_reason: c.without_reason })
            .collect();
        WindowView { window: window.clone(), counts }
    }

    /// Rows of every type created in the last `seconds` (whole minutes, as the windows).
    fn recent_rows(&self, seconds: u64) -> u64 {
        self.sum_from(window_start_minute(self.now, seconds)).iter().map(|c| c.rows).sum()
    }

    /// 5-minute blocks (Unix minute / 5) of the last `seconds` that hold at least one coordinator.error.
    fn error_blocks(&self, seconds: u64) -> Vec<i64> {
        let Some(&idx) = self.type_index.get(events::ERROR) else { return Vec::new() };
        let mut blocks: Vec<i64> = self
            .buckets
            .range(window_start_minute(self.now, seconds)..)
            .filter(|(_, cells)| cells.get(idx).is_some_and(|c| c.rows > 0))
            .map(|(m, _)| error_block(*m))
            .collect();
        blocks.dedup();
        blocks
    }

    /// The gate's counts per minute of the last `seconds`, minutes without any left out.
    fn gate_minutes(&self, seconds: u64) -> Vec<MinuteCounts> {
        let idx = |et: &str| self.type_index.get(et).copied();
        let [start, confirmed, manual, error, circuit] =
            [events::START, events::CONFIRMED, events::MANUAL_REVIEW, events::ERROR, events::CIRCUIT_OPEN].map(idx);
        let rows = |cells: &[Cell], i: Option<usize>| i.and_then(|i| cells.get(i)).map_or(0, |c| c.rows);
        self.buckets
            .range(window_start_minute(self.now, seconds)..)
            .map(|(&minute, cells)| MinuteCounts {
                minute,
                starts: rows(cells, start),
                confirmed: rows(cells, confirmed),
                manual_review: rows(cells, manual),
                errors: rows(cells, error),
                circuit_opens: rows(cells, circuit),
            })
            .filter(|m| m.starts + m.confirmed + m.manual_review + m.errors + m.circuit_opens > 0)
            .collect()
    }

    /// The immutable view the outputs are rendered from.
    pub fn view(&self) -> TallyView {
        TallyView {
            now: self.now,
            totals: self
                .totals
                .iter()
                .map(|((e, r), n)| Total { event_type: e.clone(), reason: r.clone(), rows: *n })
                .collect(),
            windows: self.cfg.windows.iter().map(|w| self.window_view(w)).collect(),
            last_event: self.last_event.iter().map(|(e, t)| LastEvent { event_type: e.clone(), at: *t }).collect(),
            malformed: Malformed::ALL
                .iter()
                .map(|k| MalformedCount { kind: *k, rows: self.malformed.get(k).copied().unwrap_or(0) })
                .collect(),
            bookings: self.bookings.view(self.now.0),
            error_blocks: self.error_blocks(self.cfg.soak.seconds),
            soak_minutes: self.gate_minutes(self.cfg.soak.seconds),
            recent_events: self.recent_rows(self.cfg.active_within.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ContextKind, CONFIRMED, START};
    use crate::time::MINUTE;
    use std::time::Duration;

    fn cfg() -> TallyConfig {
        TallyConfig {
            windows: vec![
                Window { label: "1h".into(), seconds: 3600 },
                Window { label: "48h".into(), seconds: 172_800 },
            ],
            soak: Window { label: "48h".into(), seconds: 172_800 },
            active_within: Duration::from_secs(600),
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
            time: crate::events::TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        }
    }

    const NOW: i64 = 1_800_000_000_000_000;

    #[test]
    fn windows_include_the_whole_edge_minute_and_future_rows() {
        let mut t = Tally::new(cfg());
        t.advance(UnixMicros(NOW));
        let edge = NOW - 3600 * 1_000_000; // exactly now - 1h
        let mut rows = vec![
            row("1", START, None, edge - MINUTE - 1), // the minute before the edge minute
            row("2", START, None, UnixMicros(edge).minute() * MINUTE), // first instant of the edge minute
            row("3", START, None, NOW + 3_600_000_000 * 48), // far future
        ];
        t.fold_rows(&mut rows);
        let v = t.view();
        assert_eq!(v.windows[0].rows(START), 2);
        assert_eq!(v.windows[1].rows(START), 3);
        assert_eq!(v.malformed.iter().find(|m| m.kind == Malformed::FutureDated).unwrap().rows, 1);
    }

    #[test]
    fn totals_per_reason_sum_to_rows_and_old_buckets_are_dropped() {
        let mut t = Tally::new(cfg());
        t.advance(UnixMicros(NOW));
        let mut rows: Vec<Row> =
            (0..10).map(|i| row(&i.to_string(), CONFIRMED, Some(["a", "b"][i % 2]), NOW - i as i64)).collect();
        t.fold_rows(&mut rows);
        t.advance(UnixMicros(NOW + 49 * 3600 * 1_000_000));
        let v = t.view();
        let sum: u64 = v.totals.iter().filter(|t| t.event_type == CONFIRMED).map(|t| t.rows).sum();
        assert_eq!(sum, 10);
        assert_eq!(v.windows[1].rows(CONFIRMED), 0);
        assert!(t.buckets.is_empty());
    }

    fn total(v: &TallyView, et: &str, reason: &str) -> u64 {
        v.totals.iter().find(|t| t.event_type == et && t.reason == reason).map_or(0, |t| t.rows)
    }

    #[test]
    fn a_re_read_second_adds_only_the_rows_beyond_what_was_counted_and_never_replays_a_booking() {
        let mut t = Tally::new(cfg());
        let second = UnixMicros(NOW).second() - 180;
        t.reconcile_from(second - 600);
        t.advance(UnixMicros(NOW));
        let at = second * 1_000_000;
        let mut outcome = row("2", CONFIRMED, None, at + 2);
        outcome.booking_id = Some("b-1".into());
        let counted = vec![row("1", START, None, at + 1), outcome];
        t.fold_rows(&mut counted.clone());
        // The same second re-read with a late retry of booking 1 and a late start of booking 3.
        let mut all = counted;
        all.push(row("3", START, None, at + 3));
        let mut retry = row("4", crate::events::RETRY, Some("slow"), at + 1);
        retry.booking_id = Some("b-1".into());
        all.push(retry);
        t.count_late_rows(second, &all);
        t.count_late_rows(second, &all); // twice: nothing more
        let v = t.view();
        assert_eq!(total(&v, START, ""), 2);
        assert_eq!(total(&v, CONFIRMED, ""), 1);
        assert_eq!(total(&v, crate::events::RETRY, "slow"), 1);
        assert_eq!(v.windows[0].rows(START), 2);
        assert!(v.bookings.invalid.is_empty(), "no row replayed into the state machine: {:?}", v.bookings.invalid);
        assert_eq!(v.bookings.tracked, 2);
    }

    #[test]
    fn a_row_ahead_of_the_clock_joins_its_seconds_sums_only_when_the_clock_passes_it() {
        let mut t = Tally::new(cfg());
        let second = UnixMicros(NOW).second();
        t.reconcile_from(second - 600);
        t.advance(UnixMicros(NOW + 500_000));
        // Counted ahead of the watermark, in the watermark's own second.
        t.fold_rows(&mut [row("ahead", START, None, NOW + 700_000)]);
        // The second re-read below the watermark holds one late row and not the ahead one.
        t.count_late_rows(second, &[row("late", START, None, NOW + 100_000)]);
        assert_eq!(total(&t.view(), START, ""), 2);
        t.advance(UnixMicros(NOW + 800_000));
        t.count_late_rows(second, &[row("late", START, None, NOW + 100_000), row("ahead", START, None, NOW + 700_000)]);
        assert_eq!(total(&t.view(), START, ""), 2, "the ahead row was counted once");
    }

    #[test]
    fn the_series_covers_the_soak_window_in_steps() {
        let mut t = Tally::new(cfg());
        t.advance(UnixMicros(NOW));
        let mut rows = vec![
            row("1", START, None, NOW - 60 * MINUTE),
            row("2", CONFIRMED, None, NOW - 60 * MINUTE),
            row("3", START, None, NOW - 47 * 60 * MINUTE),
        ];
        t.fold_rows(&mut rows);
        let v = t.view();
        let series = series(&v.soak_minutes, v.now, 172_800);
        assert_eq!(series_step_minutes(172_800), 30);
        assert_eq!(series.len(), 97, "48 h in 30-minute steps, the newest partial");
        assert_eq!(series.iter().map(|s| s.starts).sum::<u64>(), 2);
        assert_eq!(series.iter().map(|s| s.confirmed).sum::<u64>(), 1);
        assert!(series.windows(2).all(|w| w[1].start_minute - w[0].start_minute == 30));
    }
}
