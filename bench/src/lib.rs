//! Benchmarks that are programs: the gossip scale simulation, and the charts every
//! benchmark draws next to its numbers.

pub mod chart;
pub mod scale;

/// The `p` quantile (0 to 1) of sorted microseconds, in milliseconds (0 when empty).
pub fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[index] as f64 / 1000.0
}
