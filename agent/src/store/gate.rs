//! Long holds of the keyspace: a script holds it for its whole run, on a blocking thread.
//! Everything else that would take the lock waits here, asynchronously, instead of
//! blocking a runtime thread; past the busy threshold the RESP endpoint answers `BUSY`
//! instead of waiting, as Redis does past `busy-reply-threshold`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Whether a long hold is under way, and since when.
#[derive(Debug)]
pub struct HoldGate {
    active: AtomicBool,
    since: Mutex<Option<Instant>>,
    ended: Notify,
    busy_after_ms: AtomicU64,
}

/// What waiting at the gate came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// No hold is under way (any more).
    Idle,
    /// A hold has lasted past the busy threshold and is still under way.
    Busy,
}

/// A hold under way; it ends when this is dropped.
#[derive(Debug)]
pub struct Hold(Arc<HoldGate>);

impl Hold {
    /// Counts the hold's time from now on, for the next of several scripts run in one hold:
    /// each may run up to the busy threshold, and the waiters are not woken in between.
    pub fn restart(&self) {
        *self.0.since.lock() = Some(Instant::now());
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        *self.0.since.lock() = None;
        self.0.active.store(false, Ordering::Release);
        self.0.ended.notify_waiters();
    }
}

impl HoldGate {
    /// A gate whose holds count as busy after `busy_after`.
    pub fn new(busy_after: Duration) -> Self {
        HoldGate {
            active: AtomicBool::new(false),
            since: Mutex::new(None),
            ended: Notify::new(),
            busy_after_ms: AtomicU64::new(busy_after.as_millis() as u64),
        }
    }

    /// How long a hold lasts before others are told the server is busy.
    pub fn busy_after(&self) -> Duration {
        Duration::from_millis(self.busy_after_ms.load(Ordering::Relaxed))
    }

    /// Changes the busy threshold (`CONFIG SET busy-reply-threshold`).
    pub fn set_busy_after(&self, busy_after: Duration) {
        self.busy_after_ms
            .store(busy_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Starts a hold (before the lock is taken, so that nobody else blocks on it).
    pub fn begin(self: &Arc<Self>) -> Hold {
        *self.since.lock() = Some(Instant::now());
        self.active.store(true, Ordering::Release);
        Hold(self.clone())
    }

    /// Whether a hold is under way: one atomic load, for every command.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether a hold has lasted past the busy threshold.
    pub fn is_busy(&self) -> bool {
        self.since
            .lock()
            .is_some_and(|since| since.elapsed() >= self.busy_after())
    }

    /// Waits until no hold is under way, or until the one under way has lasted past the
    /// busy threshold.
    pub async fn wait(&self) -> Waited {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let Some(since) = *self.since.lock() else {
                return Waited::Idle;
            };
            let busy_at = since + self.busy_after();
            if Instant::now() >= busy_at {
                return Waited::Busy;
            }
            tokio::select! {
                biased;
                _ = ended => {}
                _ = tokio::time::sleep_until(busy_at) => {}
            }
        }
    }

    /// Waits until no hold is under way, however long it lasts.
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.is_active() {
                return;
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_when_the_hold_ends_or_report_busy_past_the_threshold() {
        let gate = Arc::new(HoldGate::new(Duration::from_secs(5)));
        assert_eq!(gate.wait().await, Waited::Idle);
        let hold = gate.begin();
        assert!(gate.is_active() && !gate.is_busy());
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(hold);
        assert_eq!(waiter.await.unwrap(), Waited::Idle);

        let _hold = gate.begin();
        let started = Instant::now();
        assert_eq!(gate.wait().await, Waited::Busy);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(gate.is_busy());
    }
}
