//! The demo: simulated coordinator traffic through the same tally, no database needed.
//!
//! The demo only generates traffic: its load back-fills the longest window with per-minute
//! aggregates (the shape the PostgreSQL load returns), then each call emits one second of rows: a start per booking, retries and
//! lock contention with reasons, and one outcome a tick later. `healthy` passes the gate
//! (about 99.6% confirmed, 0.4% manual review, an isolated error every two hours); `degraded` fails it (about 90% confirmed, 3% manual
//! review, sustained errors, circuit-breaker trips).

use std::future::Future;
use std::time::Duration;

use super::{Batch, BatchStats, Source, SourceError};
use crate::config::{DemoConfig, Scenario};
use crate::events::{
    ContextKind, Group, Row, CIRCUIT_OPEN, CONFIRMED, ERROR, LOCK_CONTENTION, MANUAL_REVIEW, RETRY, START,
};
use crate::time::{minute_start, UnixMicros};

/// A small deterministic generator (xorshift64*); the demo needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

struct Mix {
    manual_review: f64,
    /// Share of bookings ending in coordinator.error; the rest are confirmed.
    error: f64,
    /// Back-filled history: one isolated error every this many minutes (0: use `error`).
    sparse_error_minutes: i64,
    retry: f64,
    lock_contention: f64,
    /// circuit_open events per minute
    circuit_per_minute: f64,
    /// Orphan outcomes and starts without a booking id.
    anomalies: bool,
}

fn mix(s: Scenario) -> Mix {
    match s {
        Scenario::Healthy => Mix {
            manual_review: 0.004,
            error: 0.0,
            sparse_error_minutes: 120,
            retry: 0.08,
            lock_contention: 0.02,
            circuit_per_minute: 0.0,
            anomalies: false,
        },
        Scenario::Degraded => Mix {
            manual_review: 0.03,
            error: 0.07,
            sparse_error_minutes: 0,
            retry: 0.35,
            lock_contention: 0.12,
            circuit_per_minute: 1.0,
            anomalies: true,
        },
    }
}

const RETRY_REASONS: [&str; 3] = ["upstream_timeout", "no_driver_available", "rate_limited"];
const REVIEW_REASONS: [&str; 2] = ["ambiguous_address", "vip_customer"];
const ERROR_REASONS: [&str; 2] = ["unexpected_exception", "db_deadlock"];
const LOCK_REASONS: [&str; 1] = ["booking_locked"];

/// The simulator as a [`Source`]: the load back-fills the longest window, every `next` is one
/// second of traffic at the wall clock.
pub struct DemoSource {
    cfg: DemoConfig,
    mix: Mix,
    rng: Rng,
    next_id: u64,
    /// Bookings started in the previous tick, whose outcome comes in the next.
    pending: Vec<String>,
}

impl DemoSource {
    pub fn new(cfg: DemoConfig) -> Self {
        let mix = mix(cfg.scenario);
        DemoSource { cfg, mix, rng: Rng(0x9E37_79B9_7F4A_7C15), next_id: 0, pending: Vec::new() }
    }

    fn row(&mut self, et: &str, reason: Option<&str>, booking: Option<&str>, now: UnixMicros) -> Row {
        self.next_id += 1;
        Row {
            id: format!("demo-{}", self.next_id),
            event_type: Some(et.to_string()),
            reason: reason.map(str::to_string),
            reason_json_type: reason.map(|_| "string".to_string()),
            context: ContextKind::Object,
            booking_id: booking.map(str::to_string),
            created_us: now.0,
            time: crate::events::TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        }
    }

    /// Outcomes for the bookings started a tick ago.
    fn outcomes(&mut self, now: UnixMicros, rows: &mut Vec<Row>) {
        for booking in std::mem::take(&mut self.pending) {
            let u = self.rng.unit();
            let row = if u < self.mix.manual_review {
                let r = self.rng.pick(&REVIEW_REASONS);
                self.row(MANUAL_REVIEW, Some(r), Some(&booking), now)
            } else if u < self.mix.manual_review + self.mix.error {
                let r = self.rng.pick(&ERROR_REASONS);
                self.row(ERROR, Some(r), Some(&booking), now)
            } else {
                self.row(CONFIRMED, None, Some(&booking), now)
            };
            rows.push(row);
        }
    }

    /// New bookings with their retries and lock contention.
    fn starts(&mut self, now: UnixMicros, rows: &mut Vec<Row>) {
        for _ in 0..self.cfg.rate {
            let booking = format!("bk-{}", self.rng.next() % 1_000_000_000_000);
            rows.push(self.row(START, None, Some(&booking), now));
            if self.rng.unit() < self.mix.retry {
                let r = self.rng.pick(&RETRY_REASONS);
                rows.push(self.row(RETRY, Some(r), Some(&booking), now));
            }
            if self.rng.unit() < self.mix.lock_contention {
                let r = self.rng.pick(&LOCK_REASONS);
                rows.push(self.row(LOCK_CONTENTION, Some(r), Some(&booking), now));
            }
            self.pending.push(booking);
        }
    }

    /// Circuit trips and, when degraded, the coordinator's misbehaviour: an outcome for a booking
    /// it never started, and a start without a booking id.
    fn incidents(&mut self, now: UnixMicros, rows: &mut Vec<Row>) {
        if self.rng.unit() < self.mix.circuit_per_minute / 60.0 * 4.0 {
            rows.push(self.row(CIRCUIT_OPEN, Some("pricing_service_unavailable"), None, now));
        }
        if self.mix.anomalies {
            if self.rng.unit() < 0.2 {
                let orphan = format!("orphan-{}", self.rng.next() % 1_000_000);
                rows.push(self.row(CONFIRMED, None, Some(&orphan), now));
            }
            if self.rng.unit() < 0.1 {
                rows.push(self.row(START, None, None, now));
            }
        }
    }
}

impl Source for DemoSource {
    const NAME: &'static str = "demo simulator";

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn load(&mut self) -> impl Future<Output = Result<Batch, SourceError>> + Send {
        let now = UnixMicros::now();
        let groups = backfill(&self.cfg, &self.mix, now);
        tracing::info!(scenario = ?self.cfg.scenario, rate = self.cfg.rate, "demo traffic started");
        std::future::ready(Ok(Batch { now, groups, ..Batch::default() }))
    }

    fn next(&mut self) -> impl Future<Output = Result<Batch, SourceError>> + Send {
        let now = UnixMicros::now();
        let mut rows = Vec::new();
        self.outcomes(now, &mut rows);
        self.starts(now, &mut rows);
        self.incidents(now, &mut rows);
        let stats = BatchStats { read_rows: rows.len() as u64, ..BatchStats::default() };
        std::future::ready(Ok(Batch { now, rows, stats, ..Batch::default() }))
    }
}

/// Aggregated history for the longest window, as the database load returns it: one group per
/// (event type, reason, minute).
fn backfill(cfg: &DemoConfig, m: &Mix, now: UnixMicros) -> Vec<Group> {
    let longest = cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(3600) as i64;
    let minutes = longest / 60;
    let per_minute = u64::from(cfg.rate) * 60;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut groups = Vec::new();
    let first_minute = now.minute() - minutes;
    for k in 0..minutes {
        let minute = first_minute + k;
        let jitter = |rng: &mut Rng, p: f64| ((per_minute as f64) * p * (0.9 + 0.2 * rng.unit())).round() as u64;
        let starts = per_minute;
        let manual = jitter(&mut rng, m.manual_review);
        let errors = if m.sparse_error_minutes > 0 {
            u64::from(minute % m.sparse_error_minutes == 0)
        } else {
            jitter(&mut rng, m.error)
        };
        let confirmed = starts.saturating_sub(manual + errors);
        let retries = jitter(&mut rng, m.retry);
        let locks = jitter(&mut rng, m.lock_contention);
        let circuit = u64::from(rng.unit() < m.circuit_per_minute);
        for (et, n, reasons) in [
            (START, starts, &[][..]),
            (CONFIRMED, confirmed, &[][..]),
            (MANUAL_REVIEW, manual, &REVIEW_REASONS[..]),
            (ERROR, errors, &ERROR_REASONS[..]),
            (RETRY, retries, &RETRY_REASONS[..]),
            (LOCK_CONTENTION, locks, &LOCK_REASONS[..]),
            (CIRCUIT_OPEN, circuit, &["pricing_service_unavailable"][..]),
        ] {
            spread(&mut groups, et, n, reasons, minute, minute_start(minute + 1).plus_us(-1));
        }
    }
    groups
}

/// Spreads `n` rows of a minute over the reasons, exactly (no reason when `reasons` is empty).
fn spread(groups: &mut Vec<Group>, et: &str, n: u64, reasons: &[&str], minute: i64, last: UnixMicros) {
    let group = |reason: Option<&str>, count: u64| Group {
        event_type: Some(et.to_string()),
        reason: reason.map(str::to_string),
        reason_json_type: reason.map(|_| "string".to_string()),
        context: ContextKind::Object,
        minute: Some(minute),
        time: crate::events::TimeClass::Dated,
        folded: false,
        lossy_text: false,
        context_not_json: false,
        count,
        last_us: Some(last.0),
        example_id: None,
    };
    if reasons.is_empty() {
        if n > 0 {
            groups.push(group(None, n));
        }
        return;
    }
    let share = n / reasons.len() as u64;
    for (i, r) in reasons.iter().enumerate() {
        let count = share + u64::from((i as u64) < n % reasons.len() as u64);
        if count > 0 {
            groups.push(group(Some(r), count));
        }
    }
}
