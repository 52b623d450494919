//! The landing page at `/`: phase, decision and each criterion, rendered from one [`Current`].

use super::Current;

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page as HTML: a pure function of the current view.
pub fn page(cur: &Current) -> String {
    let r = &cur.rollout;
    let cfg = &cur.rollout_config;
    let rows: String = r
        .verdict
        .criteria
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                c.name.label(),
                c.observed.map_or("n/a".to_string(), |v| format!("{v:.6}")),
                escape_html(c.comparison),
                c.threshold,
                if c.pass { "pass" } else { "<b>FAIL</b>" }
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rollout-exporter</title></head><body>\
         <h1>rollout-exporter {version}</h1>\
         <p>Environment <b>{env}</b>, phase <b>{phase}</b> since {since}, decision <b>{decision}</b> \
         over the {window} soak. Database up: {up}. Ready: {ready}.</p>\
         <table border=\"1\" cellpadding=\"4\"><tr><th>criterion</th><th>observed</th><th>threshold</th><th>result</th></tr>{rows}</table>\
         <ul><li><a href=\"metrics\">metrics</a></li><li><a href=\"gate\">gate</a> (200 go, 412 otherwise)</li>\
         <li><a href=\"verdict\">verdict</a> (JSON, always 200)</li><li><a href=\"healthz\">healthz</a></li>\
         <li><a href=\"readyz\">readyz</a></li></ul></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        env = escape_html(&cfg.environment),
        phase = r.phase.state.phase.label(),
        since = crate::time::rfc3339(r.phase.started_at),
        decision = r.verdict.decision.label(),
        window = escape_html(&cfg.soak.label),
        up = cur.snapshot.health.database_up,
        ready = cur.snapshot.ready,
    )
}
