//! `/runbook`: docs/runbook.md as built into this binary, rendered to HTML, so that the status
//! page's "Runbook: what to do" links work on an air-gapped network and always match the alerts
//! and the exporter's version. Markdown by `pulldown-cmark` (CommonMark, tables); each heading gets
//! the anchor GitHub gives it (`## RolloutCircuitBreakerOpen` -> `#rolloutcircuitbreakeropen`), so
//! `--runbook-url` may point at either copy with the same anchors. Raw HTML in the Markdown is
//! shown as text, never passed through.

use std::sync::LazyLock;

use pulldown_cmark::{html, CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use crate::human::escape;

/// The Markdown source: the repository's docs/runbook.md at build time.
pub const SOURCE: &str = include_str!("../../docs/runbook.md");

/// GitHub's anchor for a heading's text: lower case; letters, digits, `-` and `_` kept; spaces to
/// `-`; everything else dropped.
pub fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The Markdown's body as HTML: headings with their GitHub anchors, raw HTML escaped.
fn body(markdown: &str) -> String {
    let mut events: Vec<Event<'_>> = Vec::new();
    // Index in `events` of the open heading's start, and its text so far.
    let mut heading: Option<(usize, HeadingLevel, String)> = None;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                heading = Some((events.len(), level, String::new()));
                events.push(Event::Text(CowStr::Borrowed("")));
            }
            Event::End(TagEnd::Heading(level)) => {
                if let Some((at, start_level, text)) = heading.take() {
                    events[at] = Event::Start(Tag::Heading {
                        level: start_level,
                        id: Some(CowStr::from(github_anchor(&text))),
                        classes: Vec::new(),
                        attrs: Vec::new(),
                    });
                }
                events.push(Event::End(TagEnd::Heading(level)));
            }
            Event::Html(raw) | Event::InlineHtml(raw) => events.push(Event::Text(raw)),
            other => {
                if let (Some((_, _, text)), Event::Text(t) | Event::Code(t)) = (&mut heading, &other) {
                    text.push_str(t);
                }
                events.push(other);
            }
        }
    }
    let mut out = String::with_capacity(markdown.len() * 2);
    html::push_html(&mut out, events.into_iter());
    out
}

/// The whole page, rendered once.
pub static PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Runbook \u{b7} rollout-exporter</title>\
         <link rel=\"icon\" href=\"data:image/svg+xml,{icon}\"><style>{style}</style></head><body><main>\
         <p class=\"muted\"><a href=\"./\">\u{2190} status page</a> \u{b7} docs/runbook.md as built into \
         rollout-exporter {version}</p>{body}</main></body></html>",
        icon = super::landing::FAVICON_SVG.replace('#', "%23").replace('<', "%3C").replace('>', "%3E"),
        style = STYLE,
        version = escape(env!("CARGO_PKG_VERSION")),
        body = body(SOURCE),
    )
});

const STYLE: &str = ":root{--fg:#1b1f24;--bg:#fff;--muted:#57606a;--line:#d0d7de;--card:#f6f8fa}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--line:#30363d;--card:#161b22}}\
*{box-sizing:border-box}html{font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"DejaVu Sans\",sans-serif;\
color:var(--fg);background:var(--bg);-webkit-text-size-adjust:100%}main{max-width:60rem;margin:0 auto;padding:1rem;overflow-wrap:anywhere}\
a{color:#0969da}h2{border-bottom:1px solid var(--line);padding-bottom:.2rem;margin-top:2rem}\
pre{background:var(--card);padding:.75rem;overflow-x:auto;border-radius:6px;overflow-wrap:normal}code{font-size:.9em}\
table{border-collapse:collapse;display:block;overflow-x:auto}th,td{border:1px solid var(--line);padding:.25rem .5rem}\
.muted{color:var(--muted)}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_github_anchors_and_raw_html_is_text() {
        let html = body("# Runbook: alerts\n\n## RolloutCircuitBreakerOpen\n\n## Phase start after a `restart`\n\nx <script>alert(1)</script> y\n");
        assert!(html.contains("<h1 id=\"runbook-alerts\">"), "{html}");
        assert!(html.contains("<h2 id=\"rolloutcircuitbreakeropen\">RolloutCircuitBreakerOpen</h2>"), "{html}");
        assert!(html.contains("<h2 id=\"phase-start-after-a-restart\">"), "{html}");
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
    }
}
