//! The journal: what this process saw happen (circuit trips, sustained-error runs, phase and
//! decision changes, the database going away and coming back), newest first, at most
//! [`JOURNAL_CAP`] entries. The ingest loop updates it before every publication, judging the
//! snapshot as the live outputs do, so the status page lists it without querying anything.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::RolloutConfig;
use crate::events::CIRCUIT_OPEN;
use crate::human::{count as n, plural};
use crate::rollout::{self, Decision, Freshness, Phase, PhaseView, SUSTAINED_ERROR_BLOCKS};
use crate::snapshot::{Happening, HappeningKind, Snapshot, JOURNAL_CAP};
use crate::time::{minute_start, UnixMicros, ERROR_BLOCK_MINUTES};

/// Circuit trips closer together than this share one journal entry.
const TRIP_BURST_US: i64 = 10 * 60 * 1_000_000;

/// What the journal needs to judge a snapshot as the live outputs do.
#[derive(Debug, Clone)]
pub struct Judge {
    pub phases: watch::Receiver<Arc<PhaseView>>,
    pub rollout: Arc<RolloutConfig>,
}

/// The journal's memory of what it saw last; bounded (the entries by [`JOURNAL_CAP`], the error
/// blocks by the soak window).
#[derive(Debug, Default)]
pub struct Journal {
    entries: VecDeque<Happening>,
    circuit_opens: Option<u64>,
    /// When the newest circuit-trip entry's burst began and its trips: trips less than
    /// [`TRIP_BURST_US`] apart update one entry instead of filling the journal.
    trip_burst: Option<(UnixMicros, u64)>,
    /// Error blocks of the runs already reported, so a run is reported once as it grows.
    reported_blocks: BTreeSet<i64>,
    phase: Option<(Phase, f64)>,
    /// The decision and what it hinges on (why pending, or the failing criteria).
    decision: Option<(Decision, String)>,
    database_up: Option<bool>,
}

impl Journal {
    /// The entries, newest first.
    pub fn entries(&self) -> Vec<Happening> {
        self.entries.iter().cloned().collect()
    }

    /// Adds an entry in time order (newest first; a later entry goes before an equal time) and
    /// drops the oldest past the cap.
    fn push(&mut self, at: UnixMicros, kind: HappeningKind, text: String) {
        let pos = self.entries.iter().position(|e| e.at <= at).unwrap_or(self.entries.len());
        self.entries.insert(pos, Happening { at, kind, text });
        self.entries.truncate(JOURNAL_CAP);
    }

    /// Compares the snapshot about to be published with what was seen before and records the
    /// differences. `now`: the exporter's clock.
    pub fn observe(&mut self, snap: &Snapshot, phase: &PhaseView, cfg: &RolloutConfig, now: UnixMicros) {
        self.observe_database(snap.health.database_up, now);
        self.observe_phase(phase);
        // Before the first full load (and its catch-up) there is no decision to record: the
        // first one is what the loaded data says.
        if !snap.ready {
            return;
        }
        self.observe_circuit(snap, cfg, now);
        self.observe_error_runs(snap, cfg);
        let fresh = Freshness {
            ready: snap.ready,
            database_up: snap.health.database_up,
            data_age_seconds: snap.health.fresh_at.map(|t| ((now.0 - t.0) as f64 / 1e6).max(0.0)),
        };
        let view = rollout::view(&snap.tally, phase, cfg, &fresh);
        let v = &view.verdict;
        let why = match v.decision {
            Decision::Pending => {
                let reason = v.pending_reason.as_deref().unwrap_or("");
                reason.split(':').next().unwrap_or(reason).to_string()
            }
            Decision::NoGo => {
                let failing: Vec<&str> =
                    v.criteria.iter().filter(|c| !c.pass && !c.name.only_delays()).map(|c| c.name.title()).collect();
                format!("failing: {}", failing.join(", "))
            }
            Decision::Go => "every criterion passes".to_string(),
        };
        let key = (v.decision, why);
        if self.decision.as_ref() != Some(&key) {
            let word = key.0.label().replace('_', "-").to_uppercase();
            let text = match &self.decision {
                None => format!("{word} ({}) when this exporter began judging", key.1),
                // The same decision for another reason (another set of failing criteria).
                Some((before, _)) if *before == key.0 => format!("{word}, now {}", key.1),
                Some((before, _)) => {
                    format!("{} \u{2192} {word} ({})", before.label().replace('_', "-").to_uppercase(), key.1)
                }
            };
            self.push(now, HappeningKind::DecisionChange, text);
            self.decision = Some(key);
        }
    }

    fn observe_database(&mut self, up: bool, now: UnixMicros) {
        match self.database_up {
            Some(before) if before != up => {
                let text = if up { "the database answers again" } else { "the database stopped answering: polls fail" };
                self.push(now, HappeningKind::Database, text.to_string());
            }
            None if !up => self.push(now, HappeningKind::Database, "the database does not answer".to_string()),
            _ => {}
        }
        self.database_up = Some(up);
    }

    fn observe_phase(&mut self, phase: &PhaseView) {
        let now = (phase.state.phase, phase.started_at);
        match self.phase {
            Some((before, _)) if before != now.0 => {
                let text = format!("{} \u{2192} {}", before.label(), now.0.label());
                self.push(UnixMicros::from_seconds(now.1), HappeningKind::PhaseChange, text);
            }
            None => {
                let text = format!("{} (in force when this exporter started)", now.0.label());
                self.push(UnixMicros::from_seconds(now.1), HappeningKind::PhaseChange, text);
            }
            _ => {}
        }
        self.phase = Some(now);
    }

    fn observe_circuit(&mut self, snap: &Snapshot, cfg: &RolloutConfig, now: UnixMicros) {
        let tally = &snap.tally;
        let count = tally.window(cfg.soak.seconds).map_or(0, |w| w.rows(CIRCUIT_OPEN));
        let newest = tally.last_event.iter().find(|l| l.event_type == CIRCUIT_OPEN).map_or(now, |l| l.at);
        match self.circuit_opens {
            None if count > 0 => {
                let text = format!(
                    "{} in the soak window when this exporter started",
                    plural(count, "circuit-breaker trip", "circuit-breaker trips")
                );
                self.push(newest, HappeningKind::CircuitTrip, text);
            }
            Some(before) if count > before => {
                let mut trips = count - before;
                let mut since = newest;
                let last = self.entries.iter().position(|e| e.kind == HappeningKind::CircuitTrip);
                if let (Some(i), Some((start, earlier))) = (last, self.trip_burst) {
                    if newest.0 - self.entries[i].at.0 < TRIP_BURST_US {
                        self.entries.remove(i);
                        (trips, since) = (trips + earlier, start);
                    }
                }
                let text = match trips {
                    1 => format!("1 circuit-breaker trip; {} in the soak window", n(count)),
                    _ => format!(
                        "{} circuit-breaker trips since {}; {} in the soak window",
                        n(trips),
                        crate::human::instant(since),
                        n(count)
                    ),
                };
                self.push(newest, HappeningKind::CircuitTrip, text);
                self.trip_burst = Some((since, trips));
            }
            _ => {}
        }
        self.circuit_opens = Some(count);
    }

    fn observe_error_runs(&mut self, snap: &Snapshot, cfg: &RolloutConfig) {
        let blocks = &snap.tally.error_blocks;
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let run = &blocks[i..j];
            let seen = run.iter().any(|b| self.reported_blocks.contains(b));
            if run.len() as u64 >= SUSTAINED_ERROR_BLOCKS {
                if !seen {
                    let third = run[SUSTAINED_ERROR_BLOCKS as usize - 1];
                    let at = minute_start((third + 1) * ERROR_BLOCK_MINUTES);
                    let text = format!(
                        "coordinator.error in {SUSTAINED_ERROR_BLOCKS} consecutive 5-minute blocks from {}",
                        crate::human::instant(minute_start(run[0] * ERROR_BLOCK_MINUTES))
                    );
                    self.push(at, HappeningKind::SustainedErrors, text);
                }
                self.reported_blocks.extend(run.iter().copied());
            }
            i = j;
        }
        let oldest = crate::time::error_block(crate::time::window_start_minute(snap.tally.now, cfg.soak.seconds));
        self.reported_blocks.retain(|b| *b >= oldest);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Thresholds, Window};
    use crate::events::{CONFIRMED, START};
    use crate::rollout::Flags;
    use crate::tally::{TallyView, TypeCount, WindowView};

    const T0: f64 = 1_800_000_000.0;

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            flags_file: None,
            environment: "test".into(),
            phase_started_at: None,
            thresholds: Thresholds::default(),
            soak: Window { label: "48h".into(), seconds: 172_800 },
            active_within: Duration::from_secs(600),
            circuit_hold: Duration::from_secs(300),
            max_staleness: Some(Duration::from_secs(30)),
            links: Default::default(),
        }
    }

    fn phase() -> PhaseView {
        let full = Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) };
        PhaseView { state: full.phase(), started_at: T0 - 200_000.0 }
    }

    fn snap(at: f64, circuit: u64) -> Snapshot {
        let now = UnixMicros::from_seconds(at);
        let c = |et: &str, rows| TypeCount { event_type: et.into(), rows, without_reason: rows };
        let mut s = Snapshot { ready: true, ..Snapshot::default() };
        s.health.database_up = true;
        s.health.fresh_at = Some(now);
        s.tally = TallyView {
            now,
            windows: vec![WindowView {
                window: cfg().soak,
                counts: vec![c(START, 1000), c(CONFIRMED, 1000), c(CIRCUIT_OPEN, circuit)],
            }],
            ..TallyView::default()
        };
        s
    }

    #[test]
    fn trips_and_decision_changes_are_recorded_once_newest_first() {
        let mut j = Journal::default();
        let at = |s: f64| UnixMicros::from_seconds(s);
        j.observe(&snap(T0, 0), &phase(), &cfg(), at(T0));
        let texts: Vec<String> = j.entries().iter().map(|e| e.text.clone()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].starts_with("GO (every criterion passes)"), "{texts:?}");
        assert!(texts[1].starts_with("full (in force"), "{texts:?}");
        j.observe(&snap(T0 + 60.0, 2), &phase(), &cfg(), at(T0 + 60.0));
        j.observe(&snap(T0 + 65.0, 2), &phase(), &cfg(), at(T0 + 65.0));
        let e = j.entries();
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[0].text, "GO \u{2192} NO-GO (failing: No circuit-breaker trips)");
        assert_eq!(e[1].kind, HappeningKind::CircuitTrip);
        assert!(e[1].text.starts_with("2 circuit-breaker trips since "), "{e:?}");
        // A burst of trips updates its one entry.
        j.observe(&snap(T0 + 120.0, 3), &phase(), &cfg(), at(T0 + 120.0));
        let trips: Vec<_> = j.entries().into_iter().filter(|e| e.kind == HappeningKind::CircuitTrip).collect();
        assert_eq!(trips.len(), 1, "{trips:?}");
        assert!(trips[0].text.starts_with("3 circuit-breaker trips since "), "{trips:?}");
        assert!(e.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    }

    #[test]
    fn the_journal_keeps_the_newest_entries_only() {
        let mut j = Journal::default();
        for i in 0..(JOURNAL_CAP * 3) {
            let mut s = snap(T0 + i as f64, 0);
            s.health.database_up = i % 2 == 0;
            j.observe(&s, &phase(), &cfg(), UnixMicros::from_seconds(T0 + i as f64));
        }
        let e = j.entries();
        assert_eq!(e.len(), JOURNAL_CAP);
        assert_eq!(e[0].at, UnixMicros::from_seconds(T0 + (JOURNAL_CAP * 3 - 1) as f64));
    }
}
