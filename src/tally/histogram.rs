//! A histogram's state, rendered as a Prometheus histogram by the outputs.

/// A histogram's state: counts per bucket (not cumulative), the sum and the count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// One count per upper bound, not cumulative; empty until the first observation.
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Adds one observation against `bounds` (values above the last bound count in sum and count only).
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}
