//! The soak chart of the status page: inline SVG (nothing loaded), one panel per ratio, a point
//! per step of [`crate::tally::series`], the threshold as a dashed line, steps that fail it marked
//! with a cross (so colour is never the only signal), and the phase start when it is inside the
//! window. Pure functions of the series.

use std::fmt::Write;

use crate::human::{percent, threshold_percent};
use crate::tally::{series_step_minutes, SeriesStep};
use crate::time::{minute_start, UnixMicros};

const W: f64 = 600.0;
const H: f64 = 200.0;
/// Plot area inside the panel: left margin for the y labels, bottom for the x labels.
const X0: f64 = 70.0;
const X1: f64 = 590.0;
const Y0: f64 = 14.0;
const Y1: f64 = 166.0;

/// One panel: which ratio, its threshold, and whether a step fails it.
pub struct Panel<'a> {
    pub title: &'a str,
    /// Numerator of a step.
    pub part: fn(&SeriesStep) -> u64,
    pub threshold: f64,
    pub fails: fn(f64, f64) -> bool,
    /// The y axis: at least this range, widened to hold every point.
    pub floor: (f64, f64),
}

/// The window the chart spans: `[now - soak, now]`, in Unix minutes.
pub struct Span {
    pub first_minute: i64,
    pub now: UnixMicros,
    pub soak_seconds: u64,
    /// Unix seconds of the phase start, drawn when inside the span.
    pub phase_started_at: f64,
}

impl Span {
    fn x(&self, unix_seconds: f64) -> f64 {
        let start = minute_start(self.first_minute).seconds();
        let end = self.now.seconds().max(start + 60.0);
        X0 + (unix_seconds - start).clamp(0.0, end - start) / (end - start) * (X1 - X0)
    }
}

fn y(v: f64, (lo, hi): (f64, f64)) -> f64 {
    Y1 - (v - lo) / (hi - lo).max(1e-9) * (Y1 - Y0)
}

/// Gridline steps (ratios) the y axis may use: round percentages.
const TICK_STEPS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5];

/// The y range and its gridline step: `floor`, widened to the points and the threshold, then
/// snapped outwards to a round step that gives at most 5 intervals (so labels read `92.5%`, never
/// `92.3%`), within [0, 1].
fn range(points: &[(f64, f64)], p: &Panel<'_>) -> ((f64, f64), f64) {
    let lo = points.iter().map(|q| q.1).fold(p.floor.0.min(p.threshold), f64::min).max(0.0);
    let hi = points.iter().map(|q| q.1).fold(p.floor.1.max(p.threshold), f64::max).min(1.0);
    for step in TICK_STEPS {
        let (a, b) = (((lo / step) + 1e-9).floor() * step, ((hi / step) - 1e-9).ceil() * step);
        if (b - a) / step <= 5.0 + 1e-9 {
            return ((a.max(0.0), b.min(1.0)), step);
        }
    }
    ((0.0, 1.0), 0.25)
}

/// One panel as an `<svg>` element (with a text alternative). The step that holds `now` is still
/// filling (bookings started in it may not have ended yet, so its success ratio reads low): it is
/// drawn as an open circle, apart from the line, never marked as failing and left out of the y
/// range (clamped to the plot area; its exact value is in its tooltip).
pub fn panel(series: &[SeriesStep], span: &Span, p: &Panel<'_>) -> String {
    let step_s = series_step_minutes(span.soak_seconds) as f64 * 60.0;
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut open: Option<(f64, f64, u64)> = None;
    for s in series.iter().filter(|s| s.starts > 0) {
        let start = minute_start(s.start_minute).seconds();
        let mid = (start + step_s / 2.0).min(span.now.seconds());
        let v = (p.part)(s) as f64 / s.starts as f64;
        if start + step_s > span.now.seconds() {
            open = Some((span.x(mid), v, s.starts));
        } else {
            points.push((span.x(mid), v));
        }
    }
    let (r, tick) = range(&points, p);
    let failing = points.iter().filter(|q| (p.fails)(q.1, p.threshold)).count();
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}: {n} complete steps with starts, {failing} of them \
         beyond the {t} threshold{current}\" preserveAspectRatio=\"xMidYMid meet\">",
        title = p.title,
        n = points.len(),
        t = threshold_percent(p.threshold),
        current = match open {
            Some((_, v, _)) => format!("; the current step, still filling, at {} so far", percent(v, None)),
            None => String::new(),
        },
    );
    axes(&mut svg, span, r, tick);
    let ty = y(p.threshold, r);
    let _ = write!(
        svg,
        "<line class=\"threshold\" x1=\"{X0}\" x2=\"{X1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/>\
         <text class=\"threshold-label\" x=\"{X1}\" y=\"{:.1}\" text-anchor=\"end\">threshold {}</text>",
        if ty < Y0 + 20.0 { ty + 18.0 } else { ty - 5.0 },
        threshold_percent(p.threshold)
    );
    line(&mut svg, &points, r, step_s / span.soak_seconds.max(1) as f64 * (X1 - X0) * 1.5);
    for &(x, v) in points.iter().filter(|q| (p.fails)(q.1, p.threshold)) {
        let yy = y(v, r);
        let _ = write!(svg, "<path class=\"fail-mark\" d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\"/>", x - 4.0, yy - 4.0);
    }
    if let Some((x, v, starts)) = open {
        let _ = write!(
            svg,
            "<circle class=\"open-dot\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"4\"><title>current step, still filling: \
             {} of {} starts so far</title></circle>",
            y(v, r).clamp(Y0, Y1),
            percent(v, None),
            crate::human::count(starts),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Gridlines with y labels, x labels in hours before now, and the phase start.
fn axes(svg: &mut String, span: &Span, r: (f64, f64), tick: f64) {
    let intervals = ((r.1 - r.0) / tick).round() as i32;
    for i in 0..=intervals {
        let v = r.0 + tick * f64::from(i);
        let yy = y(v, r);
        let _ = write!(
            svg,
            "<line class=\"gridline\" x1=\"{X0}\" x2=\"{X1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            X0 - 6.0,
            yy + 6.0,
            percent(v, None)
        );
    }
    let hours = span.soak_seconds as f64 / 3600.0;
    let now = span.now.seconds();
    for i in 0..=4 {
        let back = hours * f64::from(4 - i) / 4.0;
        let label = if i == 4 { "now".to_string() } else { format!("-{back:.0} h") };
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label}</text>",
            span.x(now - back * 3600.0),
            H - 8.0
        );
    }
    let start = minute_start(span.first_minute).seconds();
    if span.phase_started_at > start {
        let x = span.x(span.phase_started_at);
        // No text label: inside the plot it collides with the series or the threshold label; the
        // page's caption names the dotted line, and hovering it shows its title.
        let _ = write!(
            svg,
            "<line class=\"phase\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{Y0}\" y2=\"{Y1}\"><title>phase start</title></line>"
        );
    }
}

/// The points joined, with a gap where steps without starts (or a jump of more than `gap` px) lie
/// between them; a lone point shows as a dot.
fn line(svg: &mut String, points: &[(f64, f64)], r: (f64, f64), gap: f64) {
    let mut d = String::new();
    let mut prev: Option<f64> = None;
    for &(x, v) in points {
        let cmd = if prev.is_some_and(|px| x - px <= gap) { 'L' } else { 'M' };
        let _ = write!(d, "{cmd}{x:.1} {:.1}", y(v, r));
        prev = Some(x);
    }
    if !d.is_empty() {
        let _ = write!(svg, "<path class=\"series\" d=\"{d}\"/>");
    }
    if points.len() < 3 {
        for &(x, v) in points {
            let _ = write!(svg, "<circle class=\"dot\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"4\"/>", y(v, r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 48 h window from Unix minute 0, the phase begun before it.
    fn span_48h() -> Span {
        Span { first_minute: 0, now: UnixMicros::from_seconds(172_800.0), soak_seconds: 172_800, phase_started_at: 0.0 }
    }

    fn success_panel() -> Panel<'static> {
        Panel { title: "Success ratio", part: |s| s.confirmed, threshold: 0.97, fails: |v, t| v < t, floor: (0.9, 1.0) }
    }

    fn step(m: i64, starts: u64, confirmed: u64) -> SeriesStep {
        SeriesStep { start_minute: m, starts, confirmed, manual_review: 0 }
    }

    #[test]
    fn failing_steps_are_marked_and_counted_in_the_text_alternative() {
        let span = span_48h();
        // The last step (minutes 2880..2910) holds `now` and is still filling: drawn open, never
        // marked, even at 50%.
        let series = vec![step(0, 100, 99), step(30, 0, 0), step(60, 100, 90), step(2880, 2, 1)];
        let p = success_panel();
        let svg = panel(&series, &span, &p);
        assert!(
            svg.contains("2 complete steps with starts, 1 of them beyond the 97% threshold; the current step, still filling, at 50% so far"),
            "{svg}"
        );
        assert_eq!(svg.matches("class=\"open-dot\"").count(), 1);
        assert!(svg.contains("50% of 2 starts so far"), "{svg}");
        assert_eq!(svg.matches("class=\"fail-mark\"").count(), 1);
        assert!(!svg.contains("phase start"), "a phase begun before the window is not drawn");
        assert!(svg.contains("threshold 97%"));
    }

    #[test]
    fn gridlines_fall_on_round_percentages() {
        let p = success_panel();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let ((lo, hi), tick) = range(&[], &p);
        assert!(near(lo, 0.9) && near(hi, 1.0) && tick == 0.02, "{lo} {hi} {tick}");
        // The degraded demo's 89.8% .. 97.4% once gave ticks 89.8%, 92.3%, 94.9%, 97.4%.
        let ((lo, hi), tick) = range(&[(0.0, 0.898), (1.0, 0.974)], &p);
        assert!(near(lo, 0.875) && near(hi, 1.0) && tick == 0.025, "{lo} {hi} {tick}");
        let span = span_48h();
        let svg = panel(&[step(0, 1000, 898), step(30, 1000, 974)], &span, &p);
        for label in [">87.5%<", ">90%<", ">92.5%<", ">95%<", ">97.5%<", ">100%<"] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
        let review = Panel { threshold: 0.01, floor: (0.0, 0.02), fails: |v, t| v >= t, ..p };
        let ((lo, hi), tick) = range(&[(0.0, 0.031)], &review);
        assert!(near(lo, 0.0) && near(hi, 0.04) && tick == 0.01, "{lo} {hi} {tick}");
    }
}
