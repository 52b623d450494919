//! The demo: simulated coordinator traffic through the same tally, no database needed.
//!
//! At start the simulator back-fills the longest window with per-minute aggregates (the same path
//! as the PostgreSQL start-up load), then emits rows every second: a start per booking, retries and
//! lock contention with reasons, and one outcome a tick later. `healthy` passes the gate
//! (about 99.6% confirmed, 0.4% manual review, an isolated error every two hours); `degraded` fails it (about 90% confirmed, 3% manual
//! review, sustained errors, circuit-breaker trips).

use std::time::Duration;

use tokio::sync::watch;

use crate::config::{DemoConfig, Scenario};
use crate::events::{
    ContextKind, Group, Row, CIRCUIT_OPEN, CONFIRMED, ERROR, LOCK_CONTENTION, MANUAL_REVIEW, RETRY, START,
};
use crate::state::{unix_now, State};
use crate::tally::{Tally, US_PER_MINUTE};

use super::sleep_or_shutdown;

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

/// Runs the simulator until shutdown, publishing a snapshot every second.
pub async fn run(cfg: DemoConfig, state: State, mut shutdown: watch::Receiver<bool>) {
    let m = mix(cfg.scenario);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tally = Tally::new(cfg.tally.clone());
    let now_us = (unix_now() * 1e6) as i64;
    tally.advance(now_us);
    backfill(&mut tally, &cfg, &m, now_us);
    state.set_health(|h| {
        h.database_up = true;
        h.last_success = now_us as f64 / 1e6;
    });
    let rc = state.rollout_config().clone();
    state.publish_tally(tally.view(rc.soak.seconds, rc.active_within.as_secs()));
    state.mark_ready();
    tracing::info!(scenario = ?cfg.scenario, rate = cfg.rate, "demo traffic started");

    let mut next_id: u64 = 0;
    let mut pending: Vec<String> = Vec::new();
    loop {
        if sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await {
            return;
        }
        let now_us = (unix_now() * 1e6) as i64;
        tally.advance(now_us);
        let mut rows = Vec::new();
        let mut push = |rows: &mut Vec<Row>, et: &str, reason: Option<&str>, booking: Option<&str>| {
            next_id += 1;
            rows.push(Row {
                id: format!("demo-{next_id}"),
                event_type: Some(et.to_string()),
                reason: reason.map(str::to_string),
                reason_json_type: reason.map(|_| "string".to_string()),
                context: ContextKind::Object,
                booking_id: booking.map(str::to_string),
                created_us: now_us,
            });
        };
        // Outcomes for the bookings started a tick ago.
        for booking in pending.drain(..) {
            let u = rng.unit();
            if u < m.manual_review {
                let r = rng.pick(&REVIEW_REASONS);
                push(&mut rows, MANUAL_REVIEW, Some(r), Some(&booking));
            } else if u < m.manual_review + m.error {
                let r = rng.pick(&ERROR_REASONS);
                push(&mut rows, ERROR, Some(r), Some(&booking));
            } else {
                push(&mut rows, CONFIRMED, None, Some(&booking));
            }
        }
        for _ in 0..cfg.rate {
            let booking = format!("bk-{}", rng.next() % 1_000_000_000_000);
            push(&mut rows, START, None, Some(&booking));
            if rng.unit() < m.retry {
                let r = rng.pick(&RETRY_REASONS);
                push(&mut rows, RETRY, Some(r), Some(&booking));
            }
            if rng.unit() < m.lock_contention {
                let r = rng.pick(&LOCK_REASONS);
                push(&mut rows, LOCK_CONTENTION, Some(r), Some(&booking));
            }
            pending.push(booking);
        }
        if rng.unit() < m.circuit_per_minute / 60.0 * 4.0 {
            push(&mut rows, CIRCUIT_OPEN, Some("pricing_service_unavailable"), None);
        }
        if m.anomalies {
            // A degraded coordinator also misbehaves: an outcome for a booking it never started,
            // and a start without a booking id.
            if rng.unit() < 0.2 {
                let orphan = format!("orphan-{}", rng.next() % 1_000_000);
                push(&mut rows, CONFIRMED, None, Some(&orphan));
            }
            if rng.unit() < 0.1 {
                push(&mut rows, START, None, None);
            }
        }
        // A tick is the demo's poll: time it and count its rows like one.
        let timer = state.metrics().poll_duration.start_timer();
        state.metrics().polled_rows.inc_by(rows.len() as u64);
        tally.fold_rows(&mut rows);
        timer.observe_duration();
        state.set_health(|h| h.last_success = now_us as f64 / 1e6);
        state.publish_tally(tally.view(rc.soak.seconds, rc.active_within.as_secs()));
    }
}

/// Aggregated history for the longest window, folded as the database load folds it.
fn backfill(tally: &mut Tally, cfg: &DemoConfig, m: &Mix, now_us: i64) {
    let longest = cfg.tally.windows.iter().map(|w| w.seconds).max().unwrap_or(3600) as i64;
    let minutes = longest / 60;
    let per_minute = u64::from(cfg.rate) * 60;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut groups: std::collections::BTreeMap<(&str, Option<&str>), u64> = Default::default();
    let first_minute = now_us.div_euclid(US_PER_MINUTE) - minutes;
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
            if n == 0 {
                continue;
            }
            let without = if reasons.is_empty() { n } else { 0 };
            tally.fold_bucket(Some(et), minute, n, without);
            if reasons.is_empty() {
                *groups.entry((et, None)).or_default() += n;
            } else {
                // Spread over the reasons, exactly.
                let share = n / reasons.len() as u64;
                for (i, r) in reasons.iter().enumerate() {
                    let extra = u64::from((i as u64) < n % reasons.len() as u64);
                    *groups.entry((et, Some(r))).or_default() += share + extra;
                }
            }
        }
    }
    let last_us = now_us - 1;
    let mut groups: Vec<Group> = groups
        .into_iter()
        .map(|((et, reason), count)| Group {
            event_type: Some(et.to_string()),
            reason: reason.map(str::to_string),
            reason_json_type: reason.map(|_| "string".to_string()),
            context: ContextKind::Object,
            count,
            last_us,
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    tally.fold_groups(&groups);
}
