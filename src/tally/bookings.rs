//! The booking state machine, keyed by `context->>'booking_id'`, in bounded memory.
//!
//! ```text
//! none --start--> started --(retry | lock_contention)*--> started --confirmed|manual_review|error--> outcome
//! ```
//! Anything else is an invalid transition, counted by (from, to). A booking stays tracked until its
//! outcome is `stuck_after` old (so events after an outcome are still caught), or, without an
//! outcome, for 24 hours; past `max_tracked` the oldest are evicted first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::Duration;

use super::Histogram;
use crate::events::{CONFIRMED, ERROR, LOCK_CONTENTION, MANUAL_REVIEW, RETRY, START};

/// Upper bounds (seconds) of the time-to-outcome histogram.
pub const OUTCOME_BUCKETS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
pub const OUTCOMES: [&str; 3] = ["confirmed", "manual_review", "error"];
const UNFINISHED_RETENTION_US: i64 = 24 * 3600 * 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Started,
    /// Index into [`OUTCOMES`] (a byte keeps [`Booking`] at 56 bytes).
    Outcome(u8),
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Started => "started",
            State::Outcome(i) => OUTCOMES[i as usize],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Start,
    Progress(&'static str),
    Outcome(usize),
}

fn step(event_type: &str) -> Option<Step> {
    Some(match event_type {
        START => Step::Start,
        RETRY => Step::Progress("retry"),
        LOCK_CONTENTION => Step::Progress("lock_contention"),
        CONFIRMED => Step::Outcome(0),
        MANUAL_REVIEW => Step::Outcome(1),
        ERROR => Step::Outcome(2),
        _ => return None,
    })
}

fn step_label(s: Step) -> &'static str {
    match s {
        Step::Start => "start",
        Step::Progress(p) => p,
        Step::Outcome(i) => OUTCOMES[i],
    }
}

/// Sort rank of an event type among rows with the same `created_at` (one transaction).
pub fn rank(event_type: Option<&str>) -> u8 {
    match event_type.and_then(step) {
        Some(Step::Start) => 0,
        Some(Step::Progress(_)) => 1,
        Some(Step::Outcome(_)) => 2,
        None => 1,
    }
}

/// One tracked booking: 56 bytes (64 with its key in the table).
#[derive(Debug, Clone, Copy)]
struct Booking {
    state: State,
    /// When the booking's start was seen, or [`NO_START`] when it began with another event.
    started_us: i64,
    first_us: i64,
    last_us: i64,
    /// [`fingerprint`]s of the booking's last rows (0: none), newest at `fingerprints[0]`: a row
    /// of a re-read minute that is among them was already applied.
    fingerprints: [u64; FINGERPRINTS],
}

/// Rows remembered per tracked booking: a start, a retry or lock contention, and an outcome.
const FINGERPRINTS: usize = 3;

/// [`Booking::started_us`] of a booking whose start was not seen.
const NO_START: i64 = i64::MIN;

impl Booking {
    fn started(&self) -> Option<i64> {
        (self.started_us != NO_START).then_some(self.started_us)
    }

    fn remember(&mut self, fp: u64) {
        self.fingerprints.rotate_right(1);
        self.fingerprints[0] = fp;
    }
}

/// A row's fingerprint: its id hashed to 64 bits (fixed keys; never 0).
pub fn fingerprint(row_id: &str) -> u64 {
    key(row_id).max(1)
}

/// Booking events that broke the state machine: from a state, by an event, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTransition {
    pub from: &'static str,
    pub to: &'static str,
    pub count: u64,
}

/// Coordinator events of a type that carried no `booking_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithoutBooking {
    pub event_type: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BookingsView {
    pub invalid: Vec<InvalidTransition>,
    pub without_booking: Vec<WithoutBooking>,
    pub stuck: u64,
    pub tracked: u64,
    pub evicted: u64,
    /// One histogram per entry of [`OUTCOMES`], against [`OUTCOME_BUCKETS`] (seconds).
    pub time_to_outcome: Vec<Histogram>,
}

/// Booking ids are kept as 64-bit hashes (fixed keys, so deterministic): 64 bytes per tracked
/// booking instead of the id's text twice. Two ids colliding among 100,000 has a chance near 3e-10.
fn key(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

#[derive(Debug)]
pub struct Bookings {
    map: HashMap<u64, Booking>,
    /// Booking keys in first-seen order, for eviction; entries whose booking is gone are skipped.
    order: VecDeque<(i64, u64)>,
    invalid: BTreeMap<(&'static str, &'static str), u64>,
    without_booking: BTreeMap<String, u64>,
    time_to_outcome: [Histogram; 3],
    evicted: u64,
    max_tracked: usize,
    /// The table has had room for `max_tracked` bookings (see [`Bookings::make_room`]).
    full_size: bool,
    stuck_after_us: i64,
}

impl Bookings {
    pub fn new(max_tracked: usize, stuck_after: Duration) -> Self {
        Bookings {
            map: HashMap::new(),
            order: VecDeque::new(),
            invalid: BTreeMap::new(),
            without_booking: BTreeMap::new(),
            time_to_outcome: Default::default(),
            evicted: 0,
            max_tracked,
            full_size: false,
            stuck_after_us: stuck_after.as_micros() as i64,
        }
    }

    /// Applies one event of a booking. `event_type` is the label (unknown types are ignored);
    /// `fp` the row's [`fingerprint`].
    pub fn observe(&mut self, booking_id: Option<&str>, event_type: &str, at_us: i64, fp: u64) {
        let Some(step) = step(event_type) else { return };
        let Some(id) = booking_id else {
            *self.without_booking.entry(event_type.to_string()).or_default() += 1;
            return;
        };
        let id = key(id);
        match self.map.get_mut(&id) {
            None => {
                let (state, started_us) = match step {
                    Step::Start => (State::Started, at_us),
                    Step::Progress(_) => {
                        *self.invalid.entry(("none", step_label(step))).or_default() += 1;
                        (State::Started, NO_START)
                    }
                    Step::Outcome(i) => {
                        *self.invalid.entry(("none", step_label(step))).or_default() += 1;
                        (State::Outcome(i as u8), NO_START)
                    }
                };
                // Room first: the table never holds more than `max_tracked`.
                self.evict_down_to(self.max_tracked.saturating_sub(1));
                self.make_room();
                self.order.push_back((at_us, id));
                let mut b =
                    Booking { state, started_us, first_us: at_us, last_us: at_us, fingerprints: [0; FINGERPRINTS] };
                b.remember(fp);
                self.map.insert(id, b);
                self.full_size |= self.map.capacity() >= self.max_tracked;
            }
            Some(b) => {
                b.last_us = b.last_us.max(at_us);
                b.remember(fp);
                match (b.state, step) {
                    (State::Started, Step::Progress(_)) => {}
                    (State::Started, Step::Outcome(i)) => {
                        if let Some(start) = b.started() {
                            self.time_to_outcome[i].observe(&OUTCOME_BUCKETS, (at_us - start).max(0) as f64 / 1e6);
                        }
                        b.state = State::Outcome(i as u8);
                    }
                    (from, to) => {
                        *self.invalid.entry((from.label(), step_label(to))).or_default() += 1;
                    }
                }
            }
        }
    }

    /// A row of a minute re-read after late commits: applied unless this booking's state already
    /// holds it. A tracked booking knows its last rows by fingerprint; a retry or lock contention
    /// no later than the booking's newest event changes nothing in order, so it is not applied
    /// twice either. An untracked booking (evicted past `max_tracked`) takes the row as new.
    pub fn observe_again(&mut self, booking_id: &str, event_type: &str, at_us: i64, fp: u64) {
        let Some(s) = step(event_type) else { return };
        if let Some(b) = self.map.get(&key(booking_id)) {
            if b.fingerprints.contains(&fp) || (matches!(s, Step::Progress(_)) && at_us <= b.last_us) {
                return;
            }
        }
        self.observe(Some(booking_id), event_type, at_us, fp);
    }

    /// Rows of a booking event type without a booking id, counted from a re-read minute's sums.
    pub fn count_without_booking(&mut self, event_type: &str, rows: u64) {
        if step(event_type).is_some() {
            *self.without_booking.entry(event_type.to_string()).or_default() += rows;
        }
    }

    /// Evicts the first-seen bookings until at most `limit` remain.
    fn evict_down_to(&mut self, limit: usize) {
        while self.map.len() > limit {
            let Some((first, id)) = self.order.pop_front() else { break };
            if self.map.get(&id).is_some_and(|b| b.first_us == first) {
                self.map.remove(&id);
                self.evicted += 1;
            }
        }
    }

    /// A removed booking leaves a tombstone in the hash table, which uses up a free slot until the
    /// table is rebuilt; when none is left the next insert grows the table, and at the table's
    /// full size that doubles it (100,000 bookings: 21 MB besides the 10.6 MB being copied, which
    /// a burst of new bookings reached, heaptrack). Once the table has had room for
    /// `max_tracked`, it is rebuilt at that size instead (tombstones dropped; 8.5 MB at 100,000).
    fn make_room(&mut self) {
        if self.full_size && self.map.len() >= self.map.capacity() {
            let mut fresh = HashMap::with_capacity(self.max_tracked);
            fresh.extend(self.map.drain());
            self.map = fresh;
        }
    }

    /// Forgets finished bookings older than `stuck_after` (and than `keep_from_us`, the start of
    /// the minutes that may still be re-read) and unfinished ones older than 24 h.
    pub fn prune(&mut self, now_us: i64, keep_from_us: Option<i64>) {
        let finished_from = (now_us - self.stuck_after_us).min(keep_from_us.unwrap_or(i64::MAX));
        self.map.retain(|_, b| match b.state {
            State::Outcome(_) => b.last_us >= finished_from,
            State::Started => b.last_us >= now_us - UNFINISHED_RETENTION_US,
        });
        let map = &self.map;
        self.order.retain(|(first, id)| map.get(id).is_some_and(|b| b.first_us == *first));
    }

    pub fn view(&self, now_us: i64) -> BookingsView {
        let stuck = self
            .map
            .values()
            .filter(|b| b.state == State::Started && b.started().unwrap_or(b.first_us) < now_us - self.stuck_after_us)
            .count() as u64;
        BookingsView {
            invalid: self
                .invalid
                .iter()
                .map(|((from, to), count)| InvalidTransition { from, to, count: *count })
                .collect(),
            without_booking: self
                .without_booking
                .iter()
                .map(|(et, count)| WithoutBooking { event_type: et.clone(), count: *count })
                .collect(),
            stuck,
            tracked: self.map.len() as u64,
            evicted: self.evicted,
            time_to_outcome: self.time_to_outcome.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn bookings() -> Bookings {
        Bookings::new(100, Duration::from_secs(900))
    }

    #[test]
    fn a_normal_booking_is_valid_and_times_its_outcome() {
        let mut b = bookings();
        b.observe(Some("b1"), START, 0, 1);
        b.observe(Some("b1"), RETRY, S, 2);
        b.observe(Some("b1"), LOCK_CONTENTION, 2 * S, 3);
        b.observe(Some("b1"), CONFIRMED, 3 * S, 4);
        let v = b.view(4 * S);
        assert!(v.invalid.is_empty(), "{:?}", v.invalid);
        assert_eq!(v.time_to_outcome[0].count, 1);
        assert_eq!(v.time_to_outcome[0].sum, 3.0);
    }

    #[test]
    fn outcome_without_start_and_events_after_outcome_are_invalid() {
        let mut b = bookings();
        b.observe(Some("b1"), CONFIRMED, 0, 5);
        b.observe(Some("b2"), START, 0, 6);
        b.observe(Some("b2"), ERROR, S, 7);
        b.observe(Some("b2"), RETRY, 2 * S, 8);
        b.observe(Some("b2"), START, 3 * S, 9);
        let v = b.view(4 * S);
        let invalid: Vec<_> = v.invalid.iter().map(|t| ((t.from, t.to), t.count)).collect();
        assert_eq!(invalid, vec![(("error", "retry"), 1), (("error", "start"), 1), (("none", "confirmed"), 1)]);
    }

    #[test]
    fn stuck_bookings_are_counted_after_stuck_after_and_memory_is_bounded() {
        let mut b = Bookings::new(2, Duration::from_secs(900));
        b.observe(Some("b1"), START, 0, 10);
        b.observe(Some("b2"), START, 0, 11);
        assert_eq!(b.view(900 * S).stuck, 0);
        assert_eq!(b.view(901 * S).stuck, 2);
        b.observe(Some("b3"), START, S, 12);
        let v = b.view(S);
        assert_eq!((v.tracked, v.evicted), (2, 1));
        b.observe(None, START, S, 13);
        assert_eq!(b.view(S).without_booking, vec![WithoutBooking { event_type: START.to_string(), count: 1 }]);
    }

    #[test]
    fn a_stream_of_new_bookings_past_the_cap_keeps_the_table_at_its_size() {
        assert_eq!(std::mem::size_of::<Booking>(), 56);
        let mut b = Bookings::new(1000, Duration::from_secs(900));
        for i in 0..20_000i64 {
            b.observe(Some(&format!("b{i}")), START, i * S, i as u64 + 1);
            assert!(b.map.len() <= 1000);
        }
        // 1000 bookings fit 2048 buckets (room for 1792); doubled, the table would have room for 3584.
        assert!(b.map.capacity() < 2048, "capacity {}", b.map.capacity());
        let v = b.view(20_000 * S);
        assert_eq!((v.tracked, v.evicted), (1000, 19_000));
        // The newest are the ones tracked: b19999's confirmation is valid, b0's is not.
        b.observe(Some("b19999"), CONFIRMED, 20_001 * S, 99_999);
        b.observe(Some("b0"), CONFIRMED, 20_001 * S, 99_998);
        let invalid: Vec<_> = b.view(20_002 * S).invalid.iter().map(|t| ((t.from, t.to), t.count)).collect();
        assert_eq!(invalid, vec![(("none", "confirmed"), 1)]);
    }
}
