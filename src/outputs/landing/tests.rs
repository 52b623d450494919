use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{Links, RolloutConfig, Thresholds, Window};
use crate::events::{CIRCUIT_OPEN, CONFIRMED, MANUAL_REVIEW, RETRY, START};
use crate::rollout::{CriterionKind as K, Flags, PhaseView};
use crate::snapshot::{Happening, HappeningKind, Snapshot};
use crate::tally::{MinuteCounts, TallyView, Total, TypeCount, WindowView};
use crate::time::UnixMicros;

const NOW: f64 = 1_800_000_000.0;
const SOAK: u64 = 172_800;

fn cfg() -> RolloutConfig {
    RolloutConfig {
        flags_file: None,
        environment: "staging<&>".into(),
        phase_started_at: None,
        thresholds: Thresholds::default(),
        soak: Window { label: "48h".into(), seconds: SOAK },
        active_within: Duration::from_secs(600),
        circuit_hold: Duration::from_secs(300),
        max_staleness: Some(Duration::from_secs(30)),
        links: Links { grafana: Some("https://grafana.example/d/soak?orgId=1".into()), ..Links::default() },
    }
}

fn count(et: &str, rows: u64) -> TypeCount {
    TypeCount { event_type: et.into(), rows, without_reason: rows }
}

/// A soak 31 h 12 m in, with 12,345 starts, `confirmed` confirmed and 45 manual reviews.
fn current(confirmed: u64, circuit: u64, reason: &str) -> Current {
    let now = UnixMicros::from_seconds(NOW);
    let mut snap = Snapshot { ready: true, generation: 7, ..Snapshot::default() };
    snap.health.database_up = true;
    snap.health.last_success = Some(now);
    snap.health.fresh_at = Some(now.plus_us(-4_000_000));
    snap.tally = TallyView {
        now,
        windows: vec![WindowView {
            window: cfg().soak,
            counts: vec![
                count(START, 12_345),
                count(CONFIRMED, confirmed),
                count(MANUAL_REVIEW, 45),
                count(CIRCUIT_OPEN, circuit),
            ],
        }],
        totals: vec![
            Total { event_type: RETRY.into(), reason: reason.into(), rows: 1_234_567 },
            Total { event_type: RETRY.into(), reason: "rate_limited".into(), rows: 3 },
        ],
        soak_minutes: (0..96)
            .map(|i| MinuteCounts {
                minute: now.minute() - 2880 + i * 30,
                starts: 130,
                confirmed: 129,
                // The trips three hours ago (minute index 90 of 96).
                circuit_opens: if i == 90 { circuit } else { 0 },
                ..MinuteCounts::default()
            })
            .collect(),
        ..TallyView::default()
    };
    snap.journal = vec![Happening { at: now, kind: HappeningKind::CircuitTrip, text: format!("trip {reason}") }];
    let full = Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) };
    let phase = PhaseView { state: full.phase(), started_at: NOW - (31.0 * 3600.0 + 12.0 * 60.0) };
    Current::at(Arc::new(snap), Arc::new(phase), Arc::new(cfg()), now)
}

#[test]
fn strings_from_the_database_and_the_configuration_are_escaped() {
    let html = page(&current(12_300, 0, "<script>alert(1)</script>"));
    assert!(!html.contains("<script>alert"), "a reason became markup");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(html.matches("<script>").count(), 1, "only the page's own refresh script");
    assert!(html.contains("staging&lt;&amp;&gt;") && !html.contains("staging<&>"));
}

#[test]
fn numbers_are_for_people() {
    let html = page(&current(12_300, 0, "upstream_timeout"));
    for expected in [
        "12,300 of 12,345 confirmed",
        "45 of 12,345 reviewed",
        "1,234,567",
        "99.6% <span",
        "0.4% <span",
        "31 h 12 m</b> of 48 h 0 m elapsed",
        "16 h 48 m</b> remaining",
        "PENDING</h1>",
        "Pending because too early",
        "80 more manual reviews would fail it.",
        "lang=\"en\"",
        "http-equiv=\"refresh\" content=\"10\"",
    ] {
        assert!(html.contains(expected), "missing {expected:?}");
    }
    assert!(!html.contains("172800") && !html.contains("0.996"), "raw seconds or ratios");
    // The Grafana link is pinned to the phase: from its start to its due time, in milliseconds.
    let from = (NOW - (31.0 * 3600.0 + 12.0 * 60.0)) as u64 * 1000;
    assert!(html.contains(&format!("orgId=1&amp;from={from}&amp;to={}", from + SOAK * 1000)), "grafana link");
}

#[test]
fn a_failing_criterion_says_fail_in_words_and_links_its_runbook_section() {
    let html = page(&current(11_000, 2, "x"));
    assert!(html.contains("\u{2717}</span> NO-GO</h1>"));
    assert!(html.contains("Failing: Success ratio, No circuit-breaker trips."));
    assert!(html.contains("runbook#rolloutsoaksuccessratiobelowthreshold"));
    assert!(html.contains("runbook#rolloutcircuitbreakeropen"));
    assert!(
        html.contains(
            "Needs 32,489 more confirmed bookings in a row to pass: more than the 12,345 the window holds, so it \
             passes only as the failing bookings leave the 48h window."
        ),
        "{html}"
    );
    // The trips were 3 hours ago, in minute 07:00 of 2027-01-15: they leave the window 48 h after it ends.
    assert!(
        html.contains("Passes again about 2027-01-17 05:01 UTC if there is no further trip: the last trip leaves the 48h window then."),
        "{html}"
    );
    assert!(html.contains("2 trips") && html.contains("How sure: conclusive."), "{html}");
    assert!(html.contains("Error budget spent"));
}

#[test]
fn stale_numbers_say_so() {
    let mut cur = current(12_300, 0, "x");
    let snap = Arc::make_mut(&mut cur.snapshot);
    snap.health.database_up = false;
    snap.health.fresh_at = Some(UnixMicros::from_seconds(NOW - 95.0));
    let cur = Current::at(cur.snapshot.clone(), cur.phase.clone(), cur.rollout_config.clone(), cur.now);
    let html = page(&cur);
    assert!(html.contains("Stale: stale data"), "{html}");
    assert!(html.contains("1 m 35 s ago"));
    assert!(html.contains("DOWN: polls are failing"));
}

#[test]
fn every_runbook_link_of_the_page_names_a_section_of_the_served_runbook() {
    // The rendered /runbook (docs/runbook.md with GitHub's anchors): the default link target, and
    // the same anchors as the repository's copy.
    let page = crate::outputs::runbook::PAGE.as_str();
    let mut linked: Vec<&str> = K::ALL.iter().filter_map(|&k| sections::runbook_anchor(k)).collect();
    // The freshness section's links (database down, polls stale).
    linked.extend(["rolloutexporterdatabasedown", "rolloutexporterpollsstale"]);
    for a in linked {
        assert!(page.contains(&format!(" id=\"{a}\">")), "#{a} is no heading of /runbook");
    }
}

#[test]
fn weak_evidence_says_which_ratio_could_be_chance_and_an_error_run_says_when_it_passes_again() {
    let mut cur = current(12_300, 0, "x");
    let snap = Arc::make_mut(&mut cur.snapshot);
    // 195 of 200 confirmed (97.5%) and 1 of 200 reviewed (0.5%): both pass, neither conclusively.
    snap.tally.windows[0].counts = vec![count(START, 200), count(CONFIRMED, 195), count(MANUAL_REVIEW, 1)];
    // coordinator.error in three consecutive 5-minute blocks, the newest run starting 2 h ago.
    let first = (NOW as i64 / 60 - 120) / 5;
    snap.tally.error_blocks = vec![first - 10, first, first + 1, first + 2];
    let cur = Current::at(cur.snapshot.clone(), cur.phase.clone(), cur.rollout_config.clone(), cur.now);
    let html = page(&cur);
    assert!(html.contains("<b>How sure: inconclusive</b> for the success ratio (95% interval"), "{html}");
    assert!(html.contains("straddles 97%: its PASS could be chance); the manual-review ratio (95% interval"), "{html}");
    assert!(html.contains("more bookings may change the result"), "{html}");
    // The run's first block (06:00..06:05) leaves the 48 h window at 06:05 two days on.
    assert!(
        html.contains(
            "Passes again about 2027-01-17 06:05 UTC if there are no more errors: the newest run of 3 error blocks \
             is no longer whole inside the 48h window then."
        ),
        "{html}"
    );
    assert!(html.contains("longest run 3 blocks"), "{html}");
}

#[test]
fn a_no_go_that_is_not_decided_says_it_can_still_become_go() {
    // 31 h in, the success ratio failing today (89%), no trip: a no-go, not decided.
    let html = page(&current(11_000, 0, "x"));
    assert!(html.contains("NO-GO <span class=\"qualifier\">not decided: it can still become GO</span></h1>"), "{html}");
    // With a trip inside the window judged at the due time the no-go is decided: no qualifier.
    let html = page(&current(11_000, 2, "x"));
    assert!(html.contains("NO-GO</h1>") && !html.contains("qualifier\">"), "{html}");
}
