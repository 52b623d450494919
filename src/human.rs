//! Numbers and times as people read them on the status page: counts with thousands separators,
//! ratios as percentages, durations as `31 h 12 m`, instants in UTC to the minute, and the margin
//! of a ratio criterion in bookings. Pure functions, for the status page and the journal.

use crate::time::UnixMicros;

/// Text made safe for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A signed count with thousands separators: `-1,234`.
pub fn signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", count(n.unsigned_abs()))
    } else {
        count(n as u64)
    }
}

/// A ratio as a percentage with as few decimals (one at least, six at most, trailing zeros
/// dropped) as keep it on its own side of `threshold`: `99.6%`, `1%`, `96.996%` next to 97%,
/// `99.98%` next to 99.985% (never a rounded `97%` or `100%` on a FAIL card).
pub fn percent(ratio: f64, threshold: Option<f64>) -> String {
    let p = ratio * 100.0;
    let mut text = format!("{p:.1}");
    for decimals in 1..=6 {
        text = format!("{p:.decimals$}");
        let shown: f64 = text.parse().unwrap_or(p);
        let faithful = threshold.is_none_or(|t| {
            let t = t * 100.0;
            (p - t).abs() < 1e-12 || ((shown - t).abs() > 1e-9 && (shown > t) == (p > t))
        });
        if faithful {
            break;
        }
    }
    format!("{}%", trim_zeros(&text))
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// Two bounds of an interval as percentages, `low to high`, with as few decimals (one to six) as
/// tell them apart and never show a bound above zero as `0%`.
pub fn percent_bounds(low: f64, high: f64) -> String {
    let show = |v: f64, d: usize| format!("{:.d$}", v * 100.0);
    let zeroed = |v: f64, s: &str| v > 0.0 && s.parse::<f64>().is_ok_and(|x| x == 0.0);
    let mut text = (show(low, 1), show(high, 1));
    for d in 1..=6 {
        text = (show(low, d), show(high, d));
        if text.0 != text.1 && !zeroed(low, &text.0) && !zeroed(high, &text.1) {
            break;
        }
    }
    format!("{}% to {}%", trim_zeros(&text.0), trim_zeros(&text.1))
}

/// A threshold as a percentage with every decimal it has (up to 4, trailing zeros dropped): `97%`,
/// `3.01%`, `0.5%`; never rounded, so a card never reads "3% ... below 3%".
pub fn threshold_percent(ratio: f64) -> String {
    format!("{}%", trim_zeros(&format!("{:.4}", ratio * 100.0)))
}

/// `n` and a noun, singular for 1: `1 block`, `0 trips`, `3,456 starts`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A duration in whole minutes or seconds: `31 h 12 m`, `12 m 5 s`, `45 s` (never raw seconds).
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).floor() as u64;
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    if h > 0 {
        format!("{} h {m} m", count(h))
    } else if m > 0 {
        format!("{m} m {sec} s")
    } else {
        format!("{sec} s")
    }
}

/// Elapsed and remaining seconds of a `total` as the page shows them with [`duration`] (which
/// shows seconds only under an hour), so that they add up to the minute: elapsed as it is (under
/// an hour) or floored to the minute, never above `total`; remaining, while an hour or more is
/// left, counted from the elapsed minute, else exact.
pub fn elapsed_and_remaining(elapsed: f64, total: f64) -> (f64, f64) {
    let elapsed = elapsed.max(0.0);
    let minute = (elapsed / 60.0).floor() * 60.0;
    let shown = if elapsed < 3600.0 { elapsed } else { minute }.min(total);
    let remaining = (total - elapsed).max(0.0);
    (shown, if remaining >= 3600.0 { total - minute } else { remaining })
}

/// An instant in UTC to the minute: `2026-11-13 09:32 UTC`.
pub fn instant(at: UnixMicros) -> String {
    let t = at.rfc3339();
    format!("{} {} UTC", &t[..10], &t[11..16])
}

/// An instant in UTC to the second, for "as of" lines: `09:32:07 UTC`.
pub fn clock(at: UnixMicros) -> String {
    format!("{} UTC", &at.rfc3339()[11..19])
}

/// The smallest `k >= 0` for which `holds(k)`, given that `holds` is monotonic (false then true);
/// None when none up to `limit` does.
fn smallest(limit: u64, holds: impl Fn(u64) -> bool) -> Option<u64> {
    if !holds(limit) {
        return None;
    }
    let (mut lo, mut hi) = (0u64, limit);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

const LIMIT: u64 = 1 << 40;

/// `success_ratio` (`confirmed / starts >= min`): while it passes, how many more bookings
/// without a confirmation would fail it; while it fails, how many more confirmed bookings in a
/// row it needs to pass. Compared exactly as the gate compares (the same float division).
pub fn success_margin(starts: u64, confirmed: u64, min: f64) -> Option<u64> {
    let passes = |c: u64, s: u64| s == 0 || c as f64 / s as f64 >= min;
    if passes(confirmed, starts) {
        smallest(LIMIT, |k| !passes(confirmed, starts + k))
    } else {
        smallest(LIMIT, |k| passes(confirmed + k, starts + k))
    }
}

/// `manual_review_ratio` (`reviews / starts < max`): while it passes, how many more manual
/// reviews would fail it; while it fails, how many more bookings without one it needs to pass.
pub fn manual_review_margin(starts: u64, reviews: u64, max: f64) -> Option<u64> {
    let passes = |r: u64, s: u64| s == 0 || (r as f64 / s as f64) < max;
    if passes(reviews, starts) {
        smallest(LIMIT, |k| !passes(reviews + k, starts + k))
    } else {
        smallest(LIMIT, |k| passes(reviews, starts + k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(signed(-1_234), "-1,234");
        assert_eq!(signed(12), "12");
    }

    #[test]
    fn percentages_never_round_onto_the_threshold() {
        assert_eq!(percent(0.995975, Some(0.97)), "99.6%");
        assert_eq!(percent(0.01, Some(0.01)), "1%");
        assert_eq!(percent(0.004, Some(0.01)), "0.4%");
        assert_eq!(percent(0.96996, Some(0.97)), "96.996%");
        assert_eq!(percent(0.97, Some(0.97)), "97%");
        assert_eq!(percent(1.0, None), "100%");
        // Found by a newcomer: 172,807 of 172,834 read "100%" on a FAIL card against 99.985%.
        assert_eq!(percent(172_807.0 / 172_834.0, Some(0.99985)), "99.98%");
        assert_eq!(percent(2.0 / 172_834.0, Some(0.00001)), "0.0012%");
        assert_eq!(percent_bounds(0.995916, 0.996049), "99.59% to 99.6%");
        assert_eq!(percent_bounds(0.000_003_2, 0.000_042), "0.0003% to 0.0042%");
        assert_eq!(percent_bounds(0.0, 0.037), "0% to 3.7%");
        assert_eq!(threshold_percent(0.0301), "3.01%");
        assert_eq!(threshold_percent(0.97), "97%");
        assert_eq!(threshold_percent(0.005), "0.5%");
        assert_eq!(plural(1, "trip", "trips"), "1 trip");
        assert_eq!(plural(1_000, "trip", "trips"), "1,000 trips");
    }

    #[test]
    fn durations_are_in_hours_and_minutes() {
        assert_eq!(duration(112_320.9), "31 h 12 m");
        assert_eq!(duration(725.0), "12 m 5 s");
        assert_eq!(duration(-3.0), "0 s");
        assert_eq!(duration(172_800.0), "48 h 0 m");
        // 3 h 0 m 30 s of 48 h: "3 h 0 m" and "45 h 0 m" (not "44 h 59 m"); past the end, capped.
        assert_eq!(elapsed_and_remaining(10_830.0, 172_800.0), (10_800.0, 162_000.0));
        assert_eq!(elapsed_and_remaining(172_920.0, 172_800.0), (172_800.0, 0.0));
        assert_eq!(elapsed_and_remaining(172_770.0, 172_800.0), (172_740.0, 30.0));
        // Under an hour: "20 m 32 s" elapsed as the soak card shows it, "47 h 40 m" remaining.
        assert_eq!(elapsed_and_remaining(1_232.0, 172_800.0), (1_232.0, 171_600.0));
        assert_eq!(instant(UnixMicros::from_seconds(1_800_000_000.0)), "2027-01-15 08:00 UTC");
    }

    #[test]
    fn margins_are_exact_at_the_threshold() {
        // 97 of 100 confirmed is exactly 97%: one more unconfirmed booking fails it.
        assert_eq!(success_margin(100, 97, 0.97), Some(1));
        // 980 / 1000: 10 more pass (980/1010 = 0.9703), the 11th fails (980/1011 = 0.9693).
        assert_eq!(success_margin(1000, 980, 0.97), Some(11));
        // 90 / 100 fails: (90 + k) / (100 + k) >= 0.97 first at k = 234.
        assert_eq!(success_margin(100, 90, 0.97), Some(234));
        // 4 of 1000 reviewed: 7 more make 11 / 1007 >= 1%? 0.01092: yes; 6 more: 10 / 1006 = 0.00994.
        assert_eq!(manual_review_margin(1000, 4, 0.01), Some(7));
        // 10 of 1000 is exactly 1%, which fails: one more booking without a review passes.
        assert_eq!(manual_review_margin(1000, 10, 0.01), Some(1));
        assert_eq!(manual_review_margin(0, 0, 0.01), Some(1));
        assert_eq!(manual_review_margin(100, 0, 0.0), None, "nothing is below a 0% limit");
    }
}
