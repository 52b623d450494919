//! De-duplication of the rows a poll may read twice: those dated at or after the watermark.
//!
//! Polls read disjoint ranges of `created_at` (`[previous watermark, this poll's now())`), so a
//! row below the watermark is read once; a row committed late is found by the per-minute counts
//! and its whole minute re-read (the tally adds only the difference). Only rows dated at or after
//! the watermark (a writer's clock ahead, `'infinity'`, or a commit racing the poll's snapshot)
//! are read again by the next poll; they are counted on sight and remembered here, by id, until
//! the watermark passes them. Memory is bounded by [`MAX_AHEAD`], not by the write rate.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use crate::events::{Row, TimeClass};
use crate::time::UnixMicros;

/// Rows dated at or after the watermark that are counted on sight (about 40 bytes each). Past it,
/// such a row is counted when the watermark reaches its `created_at` (a far-future one: at the
/// next start), and the first is logged.
pub const MAX_AHEAD: usize = 10_000;

/// Ids (64-bit hashes, fixed keys) of counted rows dated at or after the watermark, with their
/// `created_at` (Unix microseconds; `i64::MAX` for the far future).
#[derive(Debug, Default)]
pub struct Ahead {
    ids: HashMap<u64, i64>,
    /// Rows left uncounted because the set was full (logged once).
    refused: u64,
}

fn id_key(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

/// Where a row read at or after the watermark stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Not counted before: count it now.
    New,
    /// Counted by an earlier poll.
    Counted,
    /// The set is full: leave it for when the watermark reaches it.
    Later,
}

impl Ahead {
    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held (the usual case: nothing is dated ahead of the watermark).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether an earlier poll counted this row (it is dated at or after that poll's watermark).
    pub fn counted(&self, row: &Row) -> bool {
        self.ids.contains_key(&id_key(&row.id))
    }

    /// A row dated at or after the new watermark: remembered and counted if there is room.
    pub fn sight(&mut self, row: &Row) -> Sighting {
        let key = id_key(&row.id);
        if self.ids.contains_key(&key) {
            return Sighting::Counted;
        }
        if self.ids.len() >= MAX_AHEAD {
            if self.refused == 0 {
                tracing::warn!(
                    id = %row.id,
                    max = MAX_AHEAD,
                    "more rows dated after the database's now() than the exporter remembers: this one and further \
                     ones are counted when their created_at is reached (docs/reliability.md)"
                );
            }
            self.refused += 1;
            return Sighting::Later;
        }
        let created = if row.time == TimeClass::Dated { row.created_us } else { i64::MAX };
        self.ids.insert(key, created);
        Sighting::New
    }

    /// Forgets the rows the watermark has passed and returns their `created_at` (Unix
    /// microseconds): they are now below it, where the counts per second and minute hold them.
    pub fn passed(&mut self, watermark: UnixMicros) -> Vec<i64> {
        let mut passed = Vec::new();
        self.ids.retain(|_, created| {
            let below = *created < watermark.0;
            if below {
                passed.push(*created);
            }
            !below
        });
        passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ContextKind;
    use crate::time::MINUTE;

    fn row(id: usize, us: i64) -> Row {
        Row {
            id: id.to_string(),
            event_type: None,
            reason: None,
            reason_json_type: None,
            context: ContextKind::Null,
            booking_id: None,
            created_us: us,
            time: TimeClass::Dated,
            lossy_text: false,
            context_not_json: false,
        }
    }

    #[test]
    fn a_row_is_new_once_and_leaves_when_the_watermark_passes_it() {
        let mut ahead = Ahead::default();
        assert_eq!(ahead.sight(&row(1, 10 * MINUTE)), Sighting::New);
        assert_eq!(ahead.sight(&row(1, 10 * MINUTE)), Sighting::Counted);
        assert!(ahead.counted(&row(1, 10 * MINUTE)));
        assert!(ahead.passed(UnixMicros(10 * MINUTE)).is_empty(), "at the watermark it is still ahead");
        assert_eq!(ahead.passed(UnixMicros(10 * MINUTE + 1)), vec![10 * MINUTE]);
        assert_eq!(ahead.len(), 0);
    }

    #[test]
    fn past_the_bound_rows_are_left_for_later_not_dropped() {
        let mut ahead = Ahead::default();
        for i in 0..MAX_AHEAD {
            assert_eq!(ahead.sight(&row(i, MINUTE)), Sighting::New);
        }
        assert_eq!(ahead.sight(&row(MAX_AHEAD, MINUTE)), Sighting::Later);
        assert_eq!(ahead.sight(&row(0, MINUTE)), Sighting::Counted);
        assert_eq!(ahead.len(), MAX_AHEAD);
    }
}
