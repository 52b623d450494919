//! The one place the poller and the HTTP side meet.
//!
//! Writers (the poller or the demo simulator, and the flags watcher) replace whole immutable
//! snapshots; readers (handlers, the metrics collector) clone an `Arc` and never hold a lock while
//! they work.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{RolloutConfig, Window};
use crate::events::{self, CIRCUIT_OPEN};
use crate::metrics::ExporterMetrics;
use crate::rollout::{self, Context, Evidence, PhaseState, PhaseTracker, RunbookRow, Verdict};
use crate::tally::{minute_of, TallyView};

/// Health of the source, replaced after every poll.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Health {
    /// The last poll (or load) succeeded.
    pub database_up: bool,
    /// Database `now()` of the last successful poll, Unix seconds (0 before the first).
    pub last_success: f64,
    /// Wall time of the last full load, seconds.
    pub load_seconds: f64,
}

/// The phase and when it began.
#[derive(Debug, Clone)]
pub struct PhaseView {
    pub state: PhaseState,
    pub started_at: f64,
}

/// The rollout gauges derived from a tally view and the phase.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub phase: PhaseView,
    pub verdict: Verdict,
    pub active: bool,
    pub circuit_open: bool,
    pub errors_sustained: bool,
    pub shadow_leak_events: u64,
}

#[derive(Debug)]
struct Inner {
    tally: RwLock<Arc<TallyView>>,
    phase: RwLock<Arc<PhaseView>>,
    tracker: RwLock<PhaseTracker>,
    health: RwLock<Health>,
    /// Set once, after the first full load; never cleared.
    ready: AtomicBool,
    /// Bumped by every write, so a rendering of an unchanged state can be reused.
    generation: AtomicU64,
    rollout: RolloutConfig,
    metrics: ExporterMetrics,
}

/// Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct State(Arc<Inner>);

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl State {
    pub fn new(rollout: RolloutConfig, initial_phase: PhaseState, metrics: ExporterMetrics) -> Self {
        let now = unix_now();
        let tracker = PhaseTracker::new(initial_phase.phase, rollout.phase_started_at, now);
        let phase = PhaseView { state: initial_phase, started_at: tracker.started_at };
        State(Arc::new(Inner {
            tally: RwLock::new(Arc::new(TallyView::default())),
            phase: RwLock::new(Arc::new(phase)),
            tracker: RwLock::new(tracker),
            health: RwLock::new(Health::default()),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            rollout,
            metrics,
        }))
    }

    pub fn metrics(&self) -> &ExporterMetrics {
        &self.0.metrics
    }

    pub fn rollout_config(&self) -> &RolloutConfig {
        &self.0.rollout
    }

    /// Changes whenever anything observable changed (a snapshot, the health, the phase).
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn tally(&self) -> Arc<TallyView> {
        self.0.tally.read().expect("tally lock poisoned").clone()
    }

    pub fn publish_tally(&self, view: TallyView) {
        *self.0.tally.write().expect("tally lock poisoned") = Arc::new(view);
        self.bump();
    }

    pub fn health(&self) -> Health {
        *self.0.health.read().expect("health lock poisoned")
    }

    pub fn set_health(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.0.health.write().expect("health lock poisoned"));
        self.bump();
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    pub fn mark_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
        self.bump();
    }

    pub fn phase(&self) -> Arc<PhaseView> {
        self.0.phase.read().expect("phase lock poisoned").clone()
    }

    /// Records the flags now in force (from the watcher); logs a phase change or invalid flags.
    pub fn publish_phase(&self, state: PhaseState) {
        let now = unix_now();
        let started_at = {
            let mut tracker = self.0.tracker.write().expect("tracker lock poisoned");
            if tracker.observe(state.phase, now) {
                tracing::info!(phase = state.phase.label(), "rollout phase changed");
            }
            tracker.started_at
        };
        if !state.invalid_reasons.is_empty() {
            let previous = self.phase();
            if previous.state.invalid_reasons != state.invalid_reasons {
                tracing::warn!(reasons = ?state.invalid_reasons, flags = ?state.flags, "rollout flags are invalid");
            }
        }
        *self.0.phase.write().expect("phase lock poisoned") = Arc::new(PhaseView { state, started_at });
        self.bump();
    }

    /// The rollout view: verdict and gauges, from the latest tally view and phase.
    pub fn rollout(&self) -> RolloutView {
        rollout_view(&self.tally(), &self.phase(), &self.0.rollout)
    }
}

/// The soak window's evidence from a tally view.
pub fn evidence(view: &TallyView, soak: &Window) -> Evidence {
    let Some(w) = view.windows.iter().find(|w| w.window.seconds == soak.seconds) else {
        return Evidence::default();
    };
    let mut runbook: Vec<RunbookRow> = w
        .counts
        .iter()
        .filter(|c| c.rows > 0)
        .map(|c| RunbookRow::new(c.event_type.clone(), c.rows, c.without_reason))
        .collect();
    runbook.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    Evidence {
        starts: w.rows(events::START),
        confirmed: w.rows(events::CONFIRMED),
        manual_review: w.rows(events::MANUAL_REVIEW),
        error_blocks: view.error_blocks.clone(),
        circuit_opens: w.rows(CIRCUIT_OPEN),
        runbook,
    }
}

pub fn rollout_view(view: &TallyView, phase: &PhaseView, cfg: &RolloutConfig) -> RolloutView {
    // Before the first load there is no database time yet: judge at the wall clock, with no data.
    let now_us = if view.now_us > 0 { view.now_us } else { (unix_now() * 1e6) as i64 };
    let now = now_us as f64 / 1e6;
    let ev = evidence(view, &cfg.soak);
    let verdict = rollout::decide(
        &ev,
        &Context {
            environment: &cfg.environment,
            phase: &phase.state,
            phase_started_at: Some(phase.started_at),
            window_label: &cfg.soak.label,
            window_seconds: cfg.soak.seconds,
            now,
            thresholds: cfg.thresholds,
        },
    );
    let newest = view
        .last_event_us
        .iter()
        .filter(|(et, _)| events::KNOWN_EVENT_TYPES.contains(&et.as_str()))
        .map(|(_, t)| *t)
        .max();
    let active_us = cfg.active_within.as_micros() as i64;
    let active = newest.is_some_and(|t| t >= now_us - active_us);
    let circuit_open = view
        .last_event_us
        .iter()
        .any(|(et, t)| et == CIRCUIT_OPEN && *t >= now_us - cfg.circuit_hold.as_micros() as i64);
    let block = minute_of(now_us).div_euclid(5);
    let errors_sustained = (1..=3).all(|k| view.error_blocks.binary_search(&(block - k)).is_ok());
    let leak_phase = matches!(phase.state.phase, rollout::Phase::Shadow | rollout::Phase::Legacy);
    RolloutView {
        phase: phase.clone(),
        verdict,
        active,
        circuit_open,
        errors_sustained,
        shadow_leak_events: if leak_phase { view.recent_events } else { 0 },
    }
}
