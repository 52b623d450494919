//! The status page at `/`: what on-call needs at 3 a.m., in order of importance: the decision and
//! why, the soak's progress, each criterion with its margin in bookings, the chart of the soak,
//! the error budget, what happened, the top reasons, how fresh the numbers are, and links.
//!
//! Server-rendered from one [`Current`] (a pure function: no query, no clock of its own), with
//! inline CSS, SVG and favicon: nothing is loaded from anywhere else, so it works air-gapped. It
//! refreshes itself every [`REFRESH_SECONDS`] by fetching itself and swapping the `<main>` (the
//! reader's scroll position and selection stay); without JavaScript a `<noscript>` meta refresh
//! reloads it. Every string that comes from the database or the configuration is escaped.

mod sections;

use std::fmt::Write;

use super::Current;
use crate::human::{clock, escape};
use crate::rollout::Decision;

/// How often the page refreshes itself, seconds (the issue asks for at least every 15 s).
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("refresh.js");
/// The favicon, inline (a data: URL), so the browser never asks for /favicon.ico.
pub const FAVICON_SVG: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>\
<rect width='16' height='16' rx='3' fill='#0969da'/><path d='M3 12l3-4 3 2 4-6' stroke='#fff' \
stroke-width='2' fill='none'/></svg>";

/// The Content-Security-Policy the page is served with: nothing from elsewhere, inline style,
/// script and images only, fetches to the exporter itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The decision as the page shows it: a word, a symbol (never colour alone) and a CSS class.
pub fn decision_word(d: Decision) -> (&'static str, &'static str) {
    match d {
        Decision::Go => ("GO", "\u{2713}"),
        Decision::NoGo => ("NO-GO", "\u{2717}"),
        Decision::Pending => ("PENDING", "\u{2026}"),
    }
}

/// The page as HTML: a pure function of the current view.
pub fn page(cur: &Current) -> String {
    let v = &cur.rollout.verdict;
    let (word, _) = decision_word(v.decision);
    let mut html = String::with_capacity(32 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{word} \u{b7} {env} \u{b7} rollout-exporter</title>\
         <link rel=\"icon\" href=\"data:image/svg+xml,{icon}\">\
         <noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"></noscript>\
         <style>{STYLE}</style></head><body>",
        env = escape(&cur.rollout_config.environment),
        icon = FAVICON_SVG.replace('#', "%23").replace('<', "%3C").replace('>', "%3E"),
    );
    let _ = write!(html, "<main id=\"page\" data-generation=\"{}\">", cur.snapshot.generation);
    for section in [
        sections::banner,
        sections::progress,
        sections::criteria,
        sections::chart,
        sections::happenings,
        sections::reasons,
        sections::freshness,
        sections::links,
    ] {
        html.push_str(&section(cur));
    }
    let _ = write!(
        html,
        "<footer><p>rollout-exporter {version} \u{b7} rendered <span id=\"rendered\">{at}</span> \
         \u{b7} <span id=\"refresh-note\">refreshes every {REFRESH_SECONDS} s</span></p></footer></main>\
         <script>{script}</script></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        at = clock(cur.now),
        script = SCRIPT.replace("REFRESH_MS", &(REFRESH_SECONDS * 1000).to_string()),
    );
    html
}

#[cfg(test)]
mod tests;
