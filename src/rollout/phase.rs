//! The phase and since when: read from the flags, tracked across changes, and published by the
//! flags watcher on a `watch` channel (outputs read the latest [`PhaseView`], never a lock).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::flags::{Flags, Phase, PhaseState};
use crate::time::UnixMicros;

/// How often the flags file is compared with what was last read (changes show within 10 s).
const FLAGS_RECHECK: Duration = Duration::from_secs(2);

/// The phase in force and when it began.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseView {
    pub state: PhaseState,
    /// Unix seconds.
    pub started_at: f64,
}

/// Reads the flags: from the file when configured (an unreadable file is an invalid phase, not a
/// crash), else from the environment.
pub fn read_flags(file: Option<&PathBuf>) -> PhaseState {
    match file {
        None => Flags::from_env().phase(),
        Some(path) => match Flags::from_file(path) {
            Ok(flags) => flags.phase(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the flags file");
                PhaseState {
                    phase: Phase::Invalid,
                    invalid_reasons: vec!["flags_file_unreadable"],
                    max_parallel: None,
                    flags: Flags::default(),
                }
            }
        },
    }
}

/// When the active phase began. `--phase-started-at` is the start of the phase that is active when
/// the exporter starts; without it, the exporter's own start time is used (so a restart restarts
/// the soak clock: set PHASE_STARTED_AT in the deployment). A phase change seen while running
/// starts the clock at the moment it was seen.
#[derive(Debug, Clone)]
pub struct PhaseTracker {
    view: PhaseView,
}

impl PhaseTracker {
    /// `configured_start` and `now` in Unix seconds.
    pub fn new(initial: PhaseState, configured_start: Option<f64>, now: f64) -> Self {
        PhaseTracker { view: PhaseView { state: initial, started_at: configured_start.unwrap_or(now) } }
    }

    pub fn view(&self) -> &PhaseView {
        &self.view
    }

    /// Records the flags now in force; logs a phase change or newly invalid flags. Returns true
    /// when anything observable changed.
    pub fn observe(&mut self, state: PhaseState, now: f64) -> bool {
        if state == self.view.state {
            return false;
        }
        if state.phase != self.view.state.phase {
            tracing::info!(phase = state.phase.label(), "rollout phase changed");
            self.view.started_at = now;
        }
        if !state.invalid_reasons.is_empty() && state.invalid_reasons != self.view.state.invalid_reasons {
            tracing::warn!(reasons = ?state.invalid_reasons, flags = ?state.flags, "rollout flags are invalid");
        }
        self.view.state = state;
        true
    }
}

/// Re-reads the flags file when its content changes (checked every 2 s) and on SIGHUP, and
/// publishes the phase. SIGHUP is handled even without a flags file (then it only logs), so a
/// reload never kills the exporter. Returns when `shutdown` turns true.
pub async fn watch_flags(
    file: Option<PathBuf>,
    mut tracker: PhaseTracker,
    tx: watch::Sender<Arc<PhaseView>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = file.as_ref().and_then(|p| std::fs::read(p).ok());
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup_fired = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fired = std::future::pending::<()>();
        let forced = tokio::select! {
            stop = crate::sleep_or_shutdown(FLAGS_RECHECK, &mut shutdown) => {
                if stop { return; }
                false
            }
            _ = hup_fired => true,
        };
        let Some(path) = &file else {
            if forced {
                tracing::info!("SIGHUP: no --flags-file; the flags come from the environment, which cannot change");
            }
            continue;
        };
        let now = std::fs::read(path).ok();
        if forced || now != last {
            if forced {
                tracing::info!(path = %path.display(), "SIGHUP: re-reading the flags file");
            }
            last = now;
            if tracker.observe(read_flags(Some(path)), UnixMicros::now().seconds()) {
                tx.send_replace(Arc::new(tracker.view().clone()));
            }
        }
    }
}
