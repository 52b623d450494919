//! The sections of the status page, each a pure function of [`Current`], in page order.

use std::fmt::Write;

use super::super::chart::{self, Panel, Span};
use super::super::Current;
use super::decision_word;
use crate::events::{CIRCUIT_OPEN, ERROR, MANUAL_REVIEW, RETRY};
use crate::human::{
    count, duration, elapsed_and_remaining, escape, instant, manual_review_margin, percent, percent_bounds, plural,
    signed, success_margin, threshold_percent,
};
use crate::rollout::{Criterion, CriterionKind as K, Decision, Strength, SUSTAINED_ERROR_BLOCKS};
use crate::time::{minute_start, window_start_minute, UnixMicros, ERROR_BLOCK_MINUTES};

/// The runbook section (GitHub anchor of its heading) for a failing criterion.
pub fn runbook_anchor(kind: K) -> Option<&'static str> {
    match kind {
        K::SuccessRatio => Some("rolloutsoaksuccessratiobelowthreshold"),
        K::ManualReviewRatio => Some("rolloutmanualreviewratiotoohigh"),
        K::NoSustainedErrors => Some("rolloutcoordinatorerrorssustained"),
        K::NoCircuitTrips => Some("rolloutcircuitbreakeropen"),
        K::PhaseFull => Some("rolloutflagsinvalid"),
        K::SoakElapsed => Some("phase-start-after-a-restart"),
        K::MinStarts => None,
    }
}

fn soak_seconds(cur: &Current) -> f64 {
    cur.rollout_config.soak.seconds as f64
}

/// The decision as a word, a symbol and a colour, why, and the environment, phase and since when.
pub fn banner(cur: &Current) -> String {
    let v = &cur.rollout.verdict;
    let (word, symbol) = decision_word(v.decision);
    let why = match v.decision {
        Decision::Go => format!("Every criterion passes over the last {}.", escape(&v.window)),
        Decision::NoGo => {
            let failing: Vec<&str> =
                v.criteria.iter().filter(|c| !c.pass && !c.name.only_delays()).map(|c| c.name.title()).collect();
            format!("Failing: {}.", failing.join(", "))
        }
        Decision::Pending => {
            format!("Pending because {}.", escape(v.pending_reason.as_deref().unwrap_or("the decision waits")))
        }
    };
    let phase = &cur.rollout.phase;
    format!(
        "<section class=\"banner {class}\" aria-labelledby=\"decision\"><h1 id=\"decision\">\
         <span aria-hidden=\"true\">{symbol}</span> {word}{qualifier}</h1><p class=\"sub\">{why}</p>{certainty}{sure}\
         <ul class=\"facts\"><li>Environment <b>{env}</b>{unset}</li><li>Phase <b>{phase_label}</b> since {since}</li>\
         <li>Window {window}</li></ul></section>",
        class = v.decision.label(),
        certainty = certainty(cur),
        sure = how_sure(cur),
        // A no-go that is not decided is today's failure, not the due time's verdict.
        qualifier = if v.decision == Decision::NoGo && !v.decided {
            " <span class=\"qualifier\">not decided: it can still become GO</span>"
        } else {
            ""
        },
        env = escape(&v.environment),
        unset = if v.environment == "unknown" { " <span class=\"muted\">(not set: --environment)</span>" } else { "" },
        phase_label = phase.state.phase.label(),
        since = instant(UnixMicros::from_seconds(phase.started_at)),
        window = escape(&v.window),
    )
}

/// Whether the decision is already certain (`decided`) and, while it is not, the projection: what
/// the due-time verdict would be if the rates since the phase began continue.
fn certainty(cur: &Current) -> String {
    let v = &cur.rollout.verdict;
    let due_at = cur.rollout.phase.started_at + soak_seconds(cur);
    if v.decided && v.decision == Decision::NoGo && cur.now.seconds() < due_at {
        let what: Vec<&str> = v
            .criteria
            .iter()
            .filter(|c| !c.pass && c.name.zero_tolerance())
            .map(|c| if c.name == K::NoCircuitTrips { "a circuit-breaker trip" } else { "sustained errors" })
            .collect();
        return format!(
            "<p class=\"decided\"><b>Decided: this NO-GO is already certain.</b> There was {} inside the window \
             that will be judged at the due time ({}); waiting cannot make it a go.</p>",
            what.join(" and "),
            instant(UnixMicros::from_seconds(due_at))
        );
    }
    if v.decided {
        return "<p class=\"decided\"><b>Decided:</b> the soak window has elapsed.</p>".to_string();
    }
    match &v.projection {
        Some(p) => format!(
            "<p>Not decided yet. If the rates since the phase began continue: about <b>{}</b> starts and \
             <b>{}</b>{} at the due time (the window judged then holds only the phase's own bookings).</p>",
            count(p.starts_at_due),
            decision_word(p.decision_at_due).0,
            if p.failing_at_due.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = p.failing_at_due.iter().map(|k| k.title()).collect();
                format!(" (failing: {})", names.join(", "))
            }
        ),
        None => String::new(),
    }
}

/// How sure the ratios are, in one line: conclusive when each ratio's interval lies wholly on one
/// side of its threshold, else which ratio's PASS or FAIL could still be chance.
fn how_sure(cur: &Current) -> String {
    let ratios: Vec<&Criterion> = cur.rollout.verdict.criteria.iter().filter(|c| c.interval.is_some()).collect();
    let Some(confidence) = ratios.first().and_then(|c| c.interval).map(|i| i.confidence) else {
        return String::new();
    };
    let weak: Vec<String> = ratios
        .iter()
        .filter(|c| c.evidence == Some(Strength::Inconclusive))
        .filter_map(|c| {
            let i = c.interval?;
            if c.denominator == Some(0) {
                return Some(format!("the {} (no bookings yet)", c.name.title().to_lowercase()));
            }
            Some(format!(
                "the {} ({} interval {} straddles {}: its {} could be chance)",
                c.name.title().to_lowercase(),
                percent(i.confidence, None),
                percent_bounds(i.low, i.high),
                threshold_percent(c.threshold),
                if c.pass { "PASS" } else { "FAIL" }
            ))
        })
        .collect();
    if weak.is_empty() {
        format!(
            "<p><b>How sure: conclusive.</b> Each ratio's {} interval lies wholly on one side of its threshold.</p>",
            percent(confidence, None)
        )
    } else {
        format!("<p><b>How sure: inconclusive</b> for {}.</p>", weak.join("; "))
    }
}

/// The interval of a ratio criterion and whether it settles the comparison, in words.
fn interval_text(c: &Criterion, decided: bool) -> String {
    let straddles = if decided {
        " (it straddles the threshold: the result could be chance)"
    } else {
        " (it straddles the threshold: more bookings may change the result)"
    };
    match (&c.interval, c.evidence) {
        (Some(i), Some(e)) => format!(
            "<p>{} interval {}: <b>{}</b>{}</p>",
            percent(i.confidence, None),
            percent_bounds(i.low, i.high),
            e.label(),
            if e == Strength::Inconclusive { straddles } else { "" }
        ),
        _ => String::new(),
    }
}

/// Elapsed, remaining and due time of the soak, with a bar.
pub fn progress(cur: &Current) -> String {
    let started = cur.rollout.phase.started_at;
    let soak = soak_seconds(cur);
    let elapsed = (cur.now.seconds() - started).max(0.0);
    let remaining = (soak - elapsed).max(0.0);
    let (shown_elapsed, shown_remaining) = elapsed_and_remaining(elapsed, soak);
    let done = (elapsed / soak.max(1.0)).min(1.0);
    let due = UnixMicros::from_seconds(started + soak);
    let left = if remaining > 0.0 {
        format!("<b>{}</b> remaining, due {}", duration(shown_remaining), instant(due))
    } else {
        // The soak card shows the whole time since the phase began (it may be past the soak).
        let began = duration(elapsed_and_remaining(elapsed, f64::MAX).0);
        if began == duration(soak) {
            format!("complete since {}", instant(due))
        } else {
            format!("complete since {} (the phase began {began} ago)", instant(due))
        }
    };
    format!(
        "<section aria-labelledby=\"progress\"><h2 id=\"progress\">Soak progress</h2>\
         <p><b>{elapsed}</b> of {soak_text} elapsed ({pct}) \u{b7} {left}</p>\
         <div class=\"bar\" role=\"progressbar\" aria-label=\"soak elapsed\" aria-valuemin=\"0\" aria-valuemax=\"100\" \
         aria-valuenow=\"{now:.0}\"><span style=\"width:{now:.1}%\"></span></div></section>",
        elapsed = duration(shown_elapsed),
        soak_text = duration(soak),
        pct = percent(done, None),
        now = done * 100.0,
    )
}

/// The observed value, the threshold and the margin of one criterion, in words.
fn describe(c: &Criterion, cur: &Current) -> (String, String, String) {
    let t = &cur.rollout_config.thresholds;
    let (num, den) = (c.numerator.unwrap_or(0), c.denominator.unwrap_or(0));
    let value = |v: Option<f64>| v.map_or("no data".to_string(), |v| percent(v, Some(c.threshold)));
    match c.name {
        K::SuccessRatio => {
            let margin = match success_margin(den, num, t.min_success_ratio) {
                _ if den == 0 => "No bookings in the window yet.".to_string(),
                Some(n) if c.pass => {
                    format!(
                        "{} more {} without confirmation would fail it.",
                        count(n),
                        if n == 1 { "booking" } else { "bookings" }
                    )
                }
                Some(n) if n > den => format!(
                    "Needs {} more confirmed bookings in a row to pass: more than the {} the window holds, so it \
                     passes only as the failing bookings leave the {} window.",
                    count(n),
                    count(den),
                    escape(&cur.rollout_config.soak.label)
                ),
                Some(n) => format!("Needs {} more confirmed bookings in a row to pass.", count(n)),
                None => "Cannot pass at this threshold.".to_string(),
            };
            (
                format!(
                    "{} <span class=\"muted\">({} of {} confirmed)</span>",
                    value(c.observed),
                    count(num),
                    count(den)
                ),
                format!("at least {}", threshold_percent(c.threshold)),
                margin,
            )
        }
        K::ManualReviewRatio => {
            let margin = match manual_review_margin(den, num, t.max_manual_review_ratio) {
                Some(n) if c.pass => format!(
                    "{} more {} would fail it.",
                    count(n),
                    if n == 1 { "manual review" } else { "manual reviews" }
                ),
                Some(n) if n > den => format!(
                    "Needs {} more bookings without manual review to pass: more than the {} the window holds, so \
                     it passes only as the reviewed bookings leave the {} window.",
                    count(n),
                    count(den),
                    escape(&cur.rollout_config.soak.label)
                ),
                Some(n) => format!("Needs {} more bookings without manual review to pass.", count(n)),
                None => "Cannot pass at this threshold.".to_string(),
            };
            (
                format!(
                    "{} <span class=\"muted\">({} of {} reviewed)</span>",
                    value(c.observed),
                    count(num),
                    count(den)
                ),
                format!("below {}", threshold_percent(c.threshold)),
                margin,
            )
        }
        _ => describe_other(c, cur),
    }
}

fn describe_other(c: &Criterion, cur: &Current) -> (String, String, String) {
    let observed = c.observed.unwrap_or(0.0);
    match c.name {
        K::NoSustainedErrors => (
            format!("longest run {}", plural(observed as u64, "block", "blocks")),
            format!("fewer than {SUSTAINED_ERROR_BLOCKS} consecutive 5-minute blocks with a coordinator.error"),
            if c.pass {
                format!("{SUSTAINED_ERROR_BLOCKS} consecutive 5-minute blocks with an error would fail it.")
            } else {
                passes_again(
                    cur,
                    last_sustained_run_start(cur).map(|m| (m, ERROR_BLOCK_MINUTES)),
                    "there are no more errors",
                    &format!("the newest run of {SUSTAINED_ERROR_BLOCKS} error blocks is no longer whole inside"),
                )
            },
        ),
        K::NoCircuitTrips => (
            plural(observed as u64, "trip", "trips"),
            "no trip allowed".to_string(),
            if c.pass {
                "One trip would fail it.".to_string()
            } else {
                passes_again(
                    cur,
                    last_trip_minute(cur).map(|m| (m, 1)),
                    "there is no further trip",
                    "the last trip leaves",
                )
            },
        ),
        K::PhaseFull => (
            cur.rollout.phase.state.phase.label().to_string(),
            "full".to_string(),
            if c.pass {
                "The flags select phase full.".to_string()
            } else {
                "The soak counts only in phase full.".to_string()
            },
        ),
        K::SoakElapsed => (
            duration(observed),
            format!("at least {}", duration(c.threshold)),
            if c.pass {
                "The whole window has elapsed.".to_string()
            } else {
                format!("{} to go.", duration(elapsed_and_remaining(observed, c.threshold).1))
            },
        ),
        K::MinStarts => (
            format!("{} starts", count(observed as u64)),
            format!("at least {}", count(c.threshold as u64)),
            if c.pass {
                "Enough bookings to judge.".to_string()
            } else {
                format!("{} more starts needed.", count((c.threshold - observed).max(0.0) as u64))
            },
        ),
        K::SuccessRatio | K::ManualReviewRatio => unreachable!("described with their fractions"),
    }
}

/// Unix minute of the newest circuit trip in the soak window (rows dated more than a day ahead,
/// which every window counts, have no minute).
fn last_trip_minute(cur: &Current) -> Option<i64> {
    let minutes = &cur.snapshot.tally.soak_minutes;
    minutes.iter().filter(|m| m.circuit_opens > 0 && m.minute != i64::MAX).map(|m| m.minute).max()
}

/// First Unix minute of the newest run of [`SUSTAINED_ERROR_BLOCKS`] consecutive error blocks: when
/// that block leaves the window, no such run is left (if no new errors come).
fn last_sustained_run_start(cur: &Current) -> Option<i64> {
    let n = SUSTAINED_ERROR_BLOCKS as usize;
    let blocks = &cur.snapshot.tally.error_blocks;
    blocks.windows(n).filter(|w| w[n - 1] == w[0] + n as i64 - 1).map(|w| w[0] * ERROR_BLOCK_MINUTES).max()
}

/// "Passes again about T if ...": `width` minutes after `minute`, plus the soak, the failure has
/// left the window (minute granularity, as the window is kept); `why` ends the sentence.
fn passes_again(cur: &Current, at: Option<(i64, i64)>, unless: &str, why: &str) -> String {
    let w = escape(&cur.rollout_config.soak.label);
    match at {
        Some((minute, width)) => format!(
            "Passes again about {} if {unless}: {why} the {w} window then.",
            instant(minute_start(minute + width).plus_us(cur.rollout_config.soak.seconds as i64 * 1_000_000)),
        ),
        None => format!("Fails until the failure leaves the {w} window."),
    }
}

/// Each criterion as a card: value, threshold, PASS / FAIL / WAITING in words, the margin.
pub fn criteria(cur: &Current) -> String {
    let mut out = String::from("<section aria-labelledby=\"criteria\"><h2 id=\"criteria\">Criteria</h2>");
    let started = cur.rollout.phase.started_at;
    let due = started + soak_seconds(cur);
    if started > cur.now.seconds() - soak_seconds(cur) && cur.now.seconds() < due {
        let _ = write!(
            out,
            "<p class=\"muted\">These count the last {w}, of which {before} are before this phase began ({since}); \
             the verdict at the due time ({due}) judges only the phase's own {w}.</p>",
            // The window's part before the phase is the soak's remaining part, shown alike.
            before = duration(elapsed_and_remaining(cur.now.seconds() - started, soak_seconds(cur)).1),
            w = escape(&cur.rollout_config.soak.label),
            since = instant(UnixMicros::from_seconds(started)),
            due = instant(UnixMicros::from_seconds(due)),
        );
    }
    out.push_str("<div class=\"grid\">");
    for c in &cur.rollout.verdict.criteria {
        let (value, threshold, margin) = describe(c, cur);
        let (class, word) = match (c.pass, c.name.only_delays()) {
            (true, _) => ("pass", "\u{2713} PASS"),
            (false, true) => ("wait", "\u{2026} WAITING"),
            (false, false) => ("fail", "\u{2717} FAIL"),
        };
        let runbook = match runbook_anchor(c.name) {
            Some(anchor) if class == "fail" => format!(
                "<p><a href=\"{}#{anchor}\">Runbook: what to do</a></p>",
                escape(&cur.rollout_config.links.runbook)
            ),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<article class=\"card {class}\" data-criterion=\"{label}\"><h3><span>{title}</span>\
             <span class=\"verdict-word\">{word}</span></h3><p class=\"value\">{value}</p>\
             <p>Threshold: {threshold}</p>{interval}<p>{margin}</p>{runbook}</article>",
            interval = interval_text(c, cur.rollout.verdict.decided),
            label = c.name.label(),
            title = c.name.title(),
        );
    }
    out.push_str("</div>");
    let budget = cur.rollout.verdict.error_budget_remaining_bookings;
    let _ = write!(
        out,
        "<p id=\"budget\">{}</p></section>",
        if budget == 0 {
            "No error budget left: one more booking without confirmation fails the success ratio.".to_string()
        } else if budget > 0 {
            format!(
                "Error budget left: <b>{}</b> more {} may end without confirmation and the success ratio still passes.",
                signed(budget),
                if budget == 1 { "booking" } else { "bookings" }
            )
        } else {
            format!(
                "Error budget spent: <b>{}</b> bookings over (the success ratio would pass with that many fewer \
                 unconfirmed bookings in the window).",
                signed(-budget)
            )
        }
    );
    out
}

/// The soak window charted: success and manual-review ratio per step, with the thresholds.
pub fn chart(cur: &Current) -> String {
    let tally = &cur.snapshot.tally;
    let cfg = &cur.rollout_config;
    let span = Span {
        first_minute: window_start_minute(tally.now, cfg.soak.seconds),
        now: tally.now,
        soak_seconds: cfg.soak.seconds,
        phase_started_at: cur.rollout.phase.started_at,
    };
    let step = crate::tally::series_step_minutes(cfg.soak.seconds);
    let series = crate::tally::series(&tally.soak_minutes, tally.now, cfg.soak.seconds);
    let success = Panel {
        title: "Success ratio",
        part: |s| s.confirmed,
        threshold: cfg.thresholds.min_success_ratio,
        fails: |v, t| v < t,
        floor: (0.9, 1.0),
    };
    let review = Panel {
        title: "Manual-review ratio",
        part: |s| s.manual_review,
        threshold: cfg.thresholds.max_manual_review_ratio,
        fails: |v, t| v >= t,
        floor: (0.0, 0.02),
    };
    format!(
        "<section aria-labelledby=\"chart\"><h2 id=\"chart\">The last {window}, per {step} minutes</h2>\
         <p class=\"muted\">One point per {step} minutes with bookings; the dashed line is the threshold, \
         a cross marks a step beyond it; the open circle is the current {step} minutes, still filling \
         (bookings started in it may not have ended yet), and is not judged.{phase}</p><div class=\"charts\">\
         <figure><figcaption>Success ratio (at least {s})</figcaption>{a}</figure>\
         <figure><figcaption>Manual-review ratio (below {m})</figcaption>{b}</figure></div></section>",
        window = escape(&cfg.soak.label),
        phase = if span.phase_started_at > crate::time::minute_start(span.first_minute).seconds() {
            format!(
                " The dotted vertical line is the phase start ({}).",
                instant(UnixMicros::from_seconds(span.phase_started_at))
            )
        } else {
            String::new()
        },
        s = threshold_percent(success.threshold),
        m = threshold_percent(review.threshold),
        a = chart::panel(&series, &span, &success),
        b = chart::panel(&series, &span, &review),
    )
}

/// What this process saw happen, newest first.
pub fn happenings(cur: &Current) -> String {
    let mut out = String::from("<section aria-labelledby=\"happened\"><h2 id=\"happened\">What happened</h2>");
    if cur.snapshot.journal.is_empty() {
        out.push_str("<p>Nothing yet since this exporter started.</p>");
    }
    out.push_str("<ol class=\"journal\">");
    for h in &cur.snapshot.journal {
        let _ = write!(
            out,
            "<li><time datetime=\"{}\">{}</time> \u{b7} <span class=\"kind\">{}</span>: <span class=\"wrap\">{}</span></li>",
            h.at.rfc3339(),
            instant(h.at),
            h.kind.label(),
            escape(&h.text)
        );
    }
    out.push_str(
        "</ol><p class=\"muted\">Seen by this exporter process since it started (the newest 50).</p></section>",
    );
    out
}

/// The most frequent reasons of retries, manual reviews and errors (all-time counters).
pub fn reasons(cur: &Current) -> String {
    let mut out =
        String::from("<section aria-labelledby=\"reasons\"><h2 id=\"reasons\">Top reasons</h2><div class=\"grid\">");
    for (title, et) in
        [("Retries", RETRY), ("Manual reviews", MANUAL_REVIEW), ("Errors", ERROR), ("Circuit trips", CIRCUIT_OPEN)]
    {
        let mut rows: Vec<_> = cur.snapshot.tally.totals.iter().filter(|t| t.event_type == et && t.rows > 0).collect();
        rows.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.reason.cmp(&b.reason)));
        let _ = write!(out, "<div class=\"card\"><h3>{title} <code class=\"muted\">{et}</code></h3>");
        if rows.is_empty() {
            out.push_str("<p>None.</p></div>");
            continue;
        }
        out.push_str("<table><thead><tr><th scope=\"col\">reason</th><th scope=\"col\" class=\"num\">events</th></tr></thead><tbody>");
        for t in rows.iter().take(5) {
            let reason = if t.reason.is_empty() { "(no reason)".to_string() } else { escape(&t.reason) };
            let _ = write!(out, "<tr><td class=\"wrap\">{reason}</td><td class=\"num\">{}</td></tr>", count(t.rows));
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str(
        "</div><p class=\"muted\">Every event the exporter has counted in the events table (all-time counters, \
         not only the soak window), most first.</p></section>",
    );
    out
}

/// How current the numbers are: the last successful poll and its age, the database, replica lag.
pub fn freshness(cur: &Current) -> String {
    let s = &cur.snapshot;
    let v = &cur.rollout.verdict;
    let last = match s.health.last_success {
        Some(at) => format!("{} ({} ago)", instant(at), duration(v.data_age_seconds)),
        None => "none yet: the first load has not finished".to_string(),
    };
    let db = if s.health.database_up {
        "\u{2713} up".to_string()
    } else {
        format!("<span class=\"warn\">\u{2717} DOWN: polls are failing</span> (<a href=\"{}#rolloutexporterdatabasedown\">runbook</a>)", escape(&cur.rollout_config.links.runbook))
    };
    let stale = v.pending_reason.as_deref().filter(|r| r.starts_with("stale")).map_or(String::new(), |r| {
        format!(
            "<p class=\"warn\">\u{26a0} Stale: {} (<a href=\"{}#rolloutexporterpollsstale\">runbook</a>)</p>",
            escape(r),
            escape(&cur.rollout_config.links.runbook)
        )
    });
    let lag =
        s.health.replica_lag_seconds.map_or(String::new(), |l| format!("<li>Replica lag <b>{}</b></li>", duration(l)));
    format!(
        "<section aria-labelledby=\"freshness\"><h2 id=\"freshness\">Freshness</h2>{stale}<ul>\
         <li>Last successful poll <b>{last}</b></li><li>Database {db}</li>{lag}</ul></section>"
    )
}

/// /metrics, /verdict, /gate, Grafana pinned to the phase, the runbook.
pub fn links(cur: &Current) -> String {
    let cfg = &cur.rollout_config;
    let started = cur.rollout.phase.started_at;
    let grafana = cfg.links.grafana.as_ref().map_or(String::new(), |base| {
        let due = started + soak_seconds(cur);
        let to = if due > cur.now.seconds() { format!("{:.0}", due * 1000.0) } else { "now".to_string() };
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}from={:.0}&to={to}", started * 1000.0);
        format!("<li><a href=\"{}\">Grafana soak dashboard</a> (this phase)</li>", escape(&url))
    });
    format!(
        "<section aria-labelledby=\"links\"><h2 id=\"links\">Links</h2><ul>\
         <li><a href=\"metrics\">/metrics</a> (Prometheus)</li><li><a href=\"verdict\">/verdict</a> (JSON)</li>\
         <li><a href=\"gate\">/gate</a> (200 go, 412 otherwise)</li>\
         <li><a href=\"gate/rollback\">/gate/rollback</a> (200 only for a decided no-go)</li>{grafana}<li><a href=\"{runbook}\">Runbook</a></li></ul></section>",
        runbook = escape(&cfg.links.runbook),
    )
}
