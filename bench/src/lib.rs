//! Benchmarks that are programs: the gossip scale simulation, and the charts every
//! benchmark draws next to its numbers.

pub mod chart;
pub mod scale;
