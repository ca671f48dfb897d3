//! Wall-clock time for expiries, behind a trait so tests can drive it.
//!
//! Expiry deadlines are absolute (milliseconds since the Unix epoch) because they travel
//! between hosts with the sessions.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    }
}

/// Wall-clock time that advances with tokio's clock: under paused tokio time (tests), it
/// moves only when tokio time is advanced.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_ms: u64) -> Self {
        TokioClock {
            start_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.start.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
pub use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Clock;

    /// A clock that moves only when told to (tests).
    #[derive(Debug, Clone, Default)]
    pub struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        pub fn at(ms: u64) -> Self {
            ManualClock(Arc::new(AtomicU64::new(ms)))
        }

        pub fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
