//! Time as the exporter counts it: Unix microseconds, minutes and the 5-minute error block.
//!
//! Every instant that crosses a module boundary is a [`UnixMicros`]; the two bucket widths are
//! defined here once ([`MINUTE`], [`ERROR_BLOCK_MINUTES`]) and bound into SQL as parameters, never
//! spliced into statement text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds in one second.
pub const US_PER_SECOND: i64 = 1_000_000;
/// One minute, the width of every per-minute bucket and the unit of window edges (microseconds).
pub const MINUTE: i64 = 60 * US_PER_SECOND;
/// "Sustained errors" are judged on blocks of this many minutes (the runbook's 5-minute blocks).
pub const ERROR_BLOCK_MINUTES: i64 = 5;

/// An instant as exact Unix microseconds (database `timestamptz` resolution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    /// The wall clock now (never before the epoch).
    pub fn now() -> Self {
        let us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        UnixMicros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    /// From Unix seconds (fractional), rounded down to the microsecond.
    pub fn from_seconds(seconds: f64) -> Self {
        UnixMicros((seconds * US_PER_SECOND as f64).floor() as i64)
    }

    /// Unix seconds, for gauges and JSON.
    pub fn seconds(self) -> f64 {
        self.0 as f64 / US_PER_SECOND as f64
    }

    /// The Unix minute this instant falls in (floor, also before 1970).
    pub fn minute(self) -> i64 {
        self.0.div_euclid(MINUTE)
    }

    /// The Unix second this instant falls in (floor, also before 1970).
    pub fn second(self) -> i64 {
        self.0.div_euclid(US_PER_SECOND)
    }

    /// This instant moved by a signed number of microseconds, saturating.
    pub fn plus_us(self, us: i64) -> Self {
        UnixMicros(self.0.saturating_add(us))
    }

    /// This instant moved back by a duration, saturating.
    pub fn minus(self, d: std::time::Duration) -> Self {
        UnixMicros(self.0.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// RFC 3339 in UTC, whole seconds (`2026-11-13T09:32:00Z`).
    pub fn rfc3339(self) -> String {
        rfc3339(self.seconds())
    }
}

/// First instant of Unix second `s`.
pub fn second_start(s: i64) -> UnixMicros {
    UnixMicros(s.saturating_mul(US_PER_SECOND))
}

/// First instant of Unix minute `m`.
pub fn minute_start(m: i64) -> UnixMicros {
    UnixMicros(m.saturating_mul(MINUTE))
}

/// The 5-minute error block a Unix minute belongs to.
pub fn error_block(minute: i64) -> i64 {
    minute.div_euclid(ERROR_BLOCK_MINUTES)
}

/// First minute bucket of a window of `seconds` evaluated at `now`: the minute that holds
/// `now - seconds` (windows have minute-aligned edges, docs/metrics.md "Window edges").
pub fn window_start_minute(now: UnixMicros, seconds: u64) -> i64 {
    (now.0.div_euclid(US_PER_SECOND) - seconds as i64).div_euclid(60)
}

/// Unix seconds as RFC 3339 in UTC, whole seconds; instants before 1970 print as the epoch.
pub fn rfc3339(unix_seconds: f64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs_f64(unix_seconds.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_and_blocks_floor_also_before_the_epoch() {
        assert_eq!(UnixMicros(-1).minute(), -1);
        assert_eq!(UnixMicros(MINUTE).minute(), 1);
        assert_eq!(error_block(-1), -1);
        assert_eq!(error_block(9), 1);
        assert_eq!(window_start_minute(UnixMicros(3600 * US_PER_SECOND + 1), 3600), 0);
    }
}
