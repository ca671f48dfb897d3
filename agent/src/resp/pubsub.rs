//! Pub/sub among the endpoint's clients (the app on this host): channels and patterns,
//! each subscribed connection with a queue of messages its task writes out.
//!
//! A subscriber that does not read is cut off at Redis' pub/sub output limits
//! (`client-output-buffer-limit pubsub 32mb 8mb 60`): past the hard limit at once, past
//! the soft one once it stayed there that long. Its queue never grows past them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use indexmap::IndexSet;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::reply::Reply;
use crate::store::glob_match;

/// Metric names of pub/sub.
pub mod names {
    /// Counter: messages delivered to subscribers.
    pub const MESSAGES: &str = "tandem_resp_pubsub_messages_total";
    /// Counter: subscribers disconnected for passing the output limits.
    pub const OVERFLOWS: &str = "tandem_resp_pubsub_overflow_disconnects_total";
}

/// Every subscription of the endpoint.
#[derive(Default)]
pub struct PubSub {
    hub: Mutex<Hub>,
    /// Bytes per pub/sub client: hard limit, soft limit, soft seconds.
    limits: [AtomicU64; 3],
}

#[derive(Default)]
struct Hub {
    channels: HashMap<Bytes, HashMap<u64, Outlet>>,
    patterns: HashMap<Bytes, HashMap<u64, Outlet>>,
}

impl Hub {
    /// The subscribers of patterns, or of channels.
    fn map(&mut self, pattern: bool) -> &mut HashMap<Bytes, HashMap<u64, Outlet>> {
        if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        }
    }
}

/// Where messages for one connection go.
#[derive(Clone)]
struct Outlet {
    tx: mpsc::UnboundedSender<Reply>,
    state: Arc<OutletState>,
}

#[derive(Default)]
struct OutletState {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Since when the queue has been past the soft limit.
    soft_since: Mutex<Option<Instant>>,
    /// Cut off for passing the limits.
    overflowed: AtomicBool,
    /// Wakes the connection's task even while it waits for its socket to take a write.
    cut: tokio::sync::Notify,
}

/// One connection's subscriptions and the queue of its messages.
pub struct Subscription {
    pub channels: IndexSet<Bytes>,
    pub patterns: IndexSet<Bytes>,
    rx: mpsc::UnboundedReceiver<Reply>,
    outlet: Outlet,
}

impl Subscription {
    pub fn new() -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        Subscription {
            channels: IndexSet::new(),
            patterns: IndexSet::new(),
            rx,
            outlet: Outlet {
                tx,
                state: Arc::default(),
            },
        }
    }

    /// The patterns, or the channels, subscribed to.
    fn set(&mut self, pattern: bool) -> &mut IndexSet<Bytes> {
        if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        }
    }

    /// Channels and patterns subscribed to.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// The next message; pending forever while there is none.
    pub async fn next(&mut self) -> Option<Reply> {
        self.rx.recv().await
    }

    /// A message already queued, if any.
    pub fn try_next(&mut self) -> Option<Reply> {
        self.rx.try_recv().ok()
    }

    /// Takes a message off the queue's count, once it is in the connection's output.
    pub fn taken(&self, message: &Reply) {
        let Reply::Push(items) = message else {
            return;
        };
        let parts: Vec<&[u8]> = items
            .iter()
            .skip(1)
            .filter_map(|item| match item {
                Reply::Bulk(bytes) => Some(&bytes[..]),
                _ => None,
            })
            .collect();
        let size = message_size(&parts);
        let _ = self
            .outlet
            .state
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(size))
            });
    }

    /// Returns once the publishers cut this connection off.
    pub async fn cut_off(&self) {
        self.outlet.state.cut.notified().await;
    }

    /// Whether the publishers cut this connection off.
    pub fn overflowed(&self) -> bool {
        self.outlet.state.overflowed.load(Ordering::Relaxed)
    }
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription::new()
    }
}

/// Takes connection `id` off `channel`'s subscribers, and the channel off `map` once it
/// has none.
fn forget(map: &mut HashMap<Bytes, HashMap<u64, Outlet>>, channel: &Bytes, id: u64) {
    if let Some(subscribers) = map.get_mut(channel) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            map.remove(channel);
        }
    }
}

/// The bytes a message takes in the queue, about as it is encoded.
fn message_size(parts: &[&[u8]]) -> usize {
    parts.iter().map(|p| p.len() + 16).sum::<usize>() + 8
}

impl PubSub {
    pub fn new() -> PubSub {
        let pubsub = PubSub::default();
        pubsub.set_limits((32 << 20, 8 << 20, 60));
        pubsub
    }

    /// Sets the output limits (`CONFIG SET client-output-buffer-limit pubsub ...`).
    pub fn set_limits(&self, (hard, soft, seconds): (u64, u64, u64)) {
        self.limits[0].store(hard, Ordering::Relaxed);
        self.limits[1].store(soft, Ordering::Relaxed);
        self.limits[2].store(seconds, Ordering::Relaxed);
    }

    /// Subscribes connection `id` to `channel` (a pattern if `pattern`); false if it was.
    pub fn subscribe(
        &self,
        id: u64,
        sub: &mut Subscription,
        channel: Bytes,
        pattern: bool,
    ) -> bool {
        let set = sub.set(pattern);
        if !set.insert(channel.clone()) {
            return false;
        }
        let mut hub = self.hub.lock();
        let map = hub.map(pattern);
        map.entry(channel)
            .or_default()
            .insert(id, sub.outlet.clone());
        true
    }

    /// Unsubscribes connection `id` from `channel`; false if it was not subscribed.
    pub fn unsubscribe(
        &self,
        id: u64,
        sub: &mut Subscription,
        channel: &Bytes,
        pattern: bool,
    ) -> bool {
        let set = sub.set(pattern);
        if !set.shift_remove(channel) {
            return false;
        }
        let mut hub = self.hub.lock();
        let map = hub.map(pattern);
        forget(map, channel, id);
        true
    }

    /// Drops every subscription of a connection that is gone.
    pub fn disconnect(&self, id: u64, sub: &Subscription) {
        let mut hub = self.hub.lock();
        let Hub { channels, patterns } = &mut *hub;
        for (set, map) in [(&sub.channels, channels), (&sub.patterns, patterns)] {
            for channel in set {
                forget(map, channel, id);
            }
        }
    }

    /// Publishes `message` on `channel`: to its subscribers, then to each matching
    /// pattern's; returns how many received it.
    pub fn publish(&self, channel: &Bytes, message: &Bytes) -> usize {
        let hub = self.hub.lock();
        let mut receivers = 0;
        if let Some(subscribers) = hub.channels.get(channel) {
            for outlet in subscribers.values() {
                let push = Reply::Push(vec![
                    Reply::text("message"),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(message.clone()),
                ]);
                receivers +=
                    usize::from(self.deliver(outlet, push, message_size(&[channel, message])));
            }
        }
        for (pattern, subscribers) in &hub.patterns {
            if !glob_match(pattern, channel) {
                continue;
            }
            for outlet in subscribers.values() {
                let push = Reply::Push(vec![
                    Reply::text("pmessage"),
                    Reply::Bulk(pattern.clone()),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(message.clone()),
                ]);
                let size = message_size(&[pattern, channel, message]);
                receivers += usize::from(self.deliver(outlet, push, size));
            }
        }
        if receivers > 0 {
            metrics::counter!(names::MESSAGES).increment(receivers as u64);
        }
        receivers
    }

    /// Queues a message unless the subscriber is past its limits; counts it as received
    /// either way, as Redis counts a client it then disconnects.
    fn deliver(&self, outlet: &Outlet, push: Reply, size: usize) -> bool {
        let state = &outlet.state;
        if state.overflowed.load(Ordering::Relaxed) {
            return true;
        }
        let queued = state.queued.fetch_add(size, Ordering::Relaxed) + size;
        let hard = self.limits[0].load(Ordering::Relaxed) as usize;
        let soft = self.limits[1].load(Ordering::Relaxed) as usize;
        let soft_for = std::time::Duration::from_secs(self.limits[2].load(Ordering::Relaxed));
        let over_soft = {
            let mut since = state.soft_since.lock();
            if soft > 0 && queued > soft {
                since.get_or_insert_with(Instant::now).elapsed() >= soft_for
            } else {
                *since = None;
                false
            }
        };
        if (hard > 0 && queued > hard) || over_soft {
            state.overflowed.store(true, Ordering::Relaxed);
            state.cut.notify_one();
            metrics::counter!(names::OVERFLOWS).increment(1);
            warn!(
                queued,
                hard, soft, "disconnecting a subscriber past the pub/sub output limits"
            );
            return true;
        }
        let _ = outlet.tx.send(push);
        true
    }

    /// Channels with subscribers, matching `pattern` if given (`PUBSUB CHANNELS`).
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let hub = self.hub.lock();
        hub.channels
            .keys()
            .filter(|channel| pattern.is_none_or(|p| glob_match(p, channel)))
            .cloned()
            .collect()
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &Bytes) -> usize {
        self.hub
            .lock()
            .channels
            .get(channel)
            .map_or(0, HashMap::len)
    }

    /// Patterns subscribed to, counted once each (`PUBSUB NUMPAT`).
    pub fn numpat(&self) -> usize {
        self.hub.lock().patterns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_reach_channel_then_pattern_subscribers() {
        let pubsub = PubSub::new();
        let mut a = Subscription::new();
        let mut b = Subscription::new();
        assert!(pubsub.subscribe(1, &mut a, Bytes::from("news"), false));
        assert!(!pubsub.subscribe(1, &mut a, Bytes::from("news"), false));
        assert!(pubsub.subscribe(2, &mut b, Bytes::from("n*"), true));
        assert_eq!(pubsub.publish(&Bytes::from("news"), &Bytes::from("hi")), 2);
        assert_eq!(pubsub.publish(&Bytes::from("other"), &Bytes::from("hi")), 0);
        let Some(Reply::Push(items)) = a.try_next() else {
            panic!()
        };
        assert_eq!(items[0], Reply::text("message"));
        let Some(Reply::Push(items)) = b.try_next() else {
            panic!()
        };
        assert_eq!(items.len(), 4);
        assert_eq!(pubsub.numsub(&Bytes::from("news")), 1);
        assert_eq!(pubsub.numpat(), 1);
        pubsub.disconnect(1, &a);
        assert_eq!(pubsub.numsub(&Bytes::from("news")), 0);
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_is_cut_off_at_the_hard_limit() {
        let pubsub = PubSub::new();
        pubsub.set_limits((10_000, 0, 0));
        let mut slow = Subscription::new();
        pubsub.subscribe(1, &mut slow, Bytes::from("c"), false);
        let payload = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..100 {
            pubsub.publish(&Bytes::from("c"), &payload);
        }
        assert!(slow.overflowed());
        let mut queued = 0;
        while slow.try_next().is_some() {
            queued += 1;
        }
        assert!(queued < 11, "{queued} messages queued past the limit");
    }
}
