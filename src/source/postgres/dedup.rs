//! De-duplication: which rows of the recent minutes were already counted.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use crate::events::Row;
use crate::time::{UnixMicros, MINUTE};

/// Ids already counted, by the minute of their `created_at`, over the reconciliation horizon.
///
/// Ids are kept as 64-bit hashes (fixed keys): two rows of the same minute colliding among a
/// million has a chance near 3e-8. Holds the rows of `--reconcile-window` (and future-dated ones);
/// past [`MAX_TRACKED_IDS`] the oldest minutes are dropped and reconciliation reaches less far back.
#[derive(Debug, Default)]
pub struct Seen {
    by_minute: BTreeMap<i64, HashMap<u64, i64>>,
    /// Ids held.
    pub len: usize,
    /// Every row counted with `created_at` at or after this is in the set (Unix microseconds).
    pub complete_from_us: i64,
}

/// Memory bound of the de-duplication set (about 40 MiB at the limit).
pub const MAX_TRACKED_IDS: usize = 1_000_000;

fn id_key(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl Seen {
    /// An empty set that holds every row counted from `complete_from_us` on.
    pub fn complete_from(complete_from_us: i64) -> Seen {
        Seen { complete_from_us, ..Seen::default() }
    }

    /// Records a counted row; false when it was already there.
    pub fn insert(&mut self, row: &Row) -> bool {
        let fresh = self
            .by_minute
            .entry(UnixMicros(row.created_us).minute())
            .or_default()
            .insert(id_key(&row.id), row.created_us)
            .is_none();
        self.len += usize::from(fresh);
        fresh
    }

    /// Counted rows per minute in `[from_us, to_us)`.
    pub fn counts(&self, from_us: i64, to_us: i64) -> BTreeMap<i64, u64> {
        let mut out = BTreeMap::new();
        if from_us >= to_us {
            return out;
        }
        for (&m, ids) in self.by_minute.range(UnixMicros(from_us).minute()..=UnixMicros(to_us - 1).minute()) {
            let whole = m * MINUTE >= from_us && (m + 1) * MINUTE <= to_us;
            let n = if whole { ids.len() } else { ids.values().filter(|&&t| t >= from_us && t < to_us).count() };
            out.insert(m, n as u64);
        }
        out
    }

    /// Forgets rows before `cut_us` and, past the cap, the oldest minutes, but never a minute at
    /// or after `needed_from_us` (the overlap and later): those ids are what keeps the next polls
    /// from counting a row twice, so under extreme write rates the cap gives way, not exactness.
    pub fn prune(&mut self, cut_us: i64, needed_from_us: i64) {
        let keep = self.by_minute.split_off(&UnixMicros(cut_us).minute());
        self.by_minute = keep;
        // The minute the cut falls in is trimmed exactly, so the set holds the configured window
        // (not up to a minute more) and its memory follows the write rate, not the clock.
        if let Some(ids) = self.by_minute.get_mut(&UnixMicros(cut_us).minute()) {
            ids.retain(|_, created| *created >= cut_us);
        }
        self.complete_from_us = self.complete_from_us.max(cut_us);
        self.len = self.by_minute.values().map(HashMap::len).sum();
        while self.len > MAX_TRACKED_IDS {
            match self.by_minute.first_key_value() {
                Some((&m, _)) if (m + 1) * MINUTE <= needed_from_us => {}
                _ => break,
            }
            let Some((m, ids)) = self.by_minute.pop_first() else { break };
            self.len -= ids.len();
            self.complete_from_us = self.complete_from_us.max((m + 1) * MINUTE);
        }
    }
}

/// Merges minutes into contiguous `[from, to)` ranges clipped to `[lo, hi)`.
pub fn ranges(minutes: &[i64], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &m in minutes {
        let (from, to) = ((m * MINUTE).max(lo), ((m + 1) * MINUTE).min(hi));
        match out.last_mut() {
            Some(last) if last.1 >= from => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ContextKind;

    fn row(id: usize, us: i64) -> Row {
        Row {
            id: id.to_string(),
            event_type: None,
            reason: None,
            reason_json_type: None,
            context: ContextKind::Null,
            booking_id: None,
            created_us: us,
            time: crate::events::TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        }
    }

    #[test]
    fn counts_of_an_empty_or_inverted_range_are_empty() {
        let mut seen = Seen::default();
        seen.insert(&row(1, 10 * MINUTE));
        assert!(seen.counts(11 * MINUTE, 10 * MINUTE).is_empty());
        assert_eq!(seen.counts(10 * MINUTE, 11 * MINUTE).get(&10), Some(&1));
    }

    #[test]
    fn the_cap_never_drops_the_minutes_the_next_polls_need() {
        let mut seen = Seen::default();
        let now = 100 * MINUTE;
        // More ids than the cap, all inside the overlap: every one must stay.
        for i in 0..(MAX_TRACKED_IDS + 10) {
            seen.insert(&row(i, now - 1 - (i as i64 % 60_000_000)));
        }
        seen.prune(now - 10 * MINUTE, now - 2 * MINUTE);
        assert_eq!(seen.len, MAX_TRACKED_IDS + 10);
        assert!(seen.complete_from_us <= now - 2 * MINUTE);
        // Older minutes go first once the cap is exceeded.
        seen.insert(&row(usize::MAX, now - 5 * MINUTE));
        seen.prune(now - 10 * MINUTE, now - 2 * MINUTE);
        assert!(!seen.by_minute.contains_key(&95));
    }
}
