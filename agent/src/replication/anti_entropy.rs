//! Anti-entropy: partners compare digests of their stores' shards and repair what differs.

use std::sync::Arc;

use tandem_common::frame::Frame;
use tandem_common::ops::Mutation;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::link::Outgoing;
use super::snapshot::{CHUNK_BYTES, SNAPSHOT_CHUNK_KEYS, in_frames};
use super::{Inner, names};
use crate::store::keyspace::SHARDS;

impl Inner {
    /// The digest of every shard of the store, computed a few shards per lock hold.
    pub(super) fn digests(&self) -> Vec<u64> {
        let mut digests = Vec::with_capacity(SHARDS);
        for from in (0..SHARDS).step_by(64) {
            let to = (from + 64).min(SHARDS);
            let part = self
                .store
                .run(|ks, now| {
                    (from..to)
                        .map(|s| ks.shard_digest(s, now))
                        .collect::<Vec<_>>()
                })
                .value;
            digests.extend(part);
        }
        digests
    }

    /// Sends what this store holds in `shards`, in frames of about a thousand keys, and
    /// lets the link's other tasks run between frames.
    async fn send_repairs(&self, outbound: &mpsc::UnboundedSender<Outgoing>, shards: &[u32]) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (i, &shard) in shards.iter().enumerate() {
            let part = self
                .store
                .run(|ks, now| ks.shard_repair(shard as usize, now))
                .value;
            bytes += part.iter().map(Mutation::encoded_size).sum::<usize>();
            batch.extend(part);
            let last = i + 1 == shards.len();
            if batch.len() >= SNAPSHOT_CHUNK_KEYS
                || bytes >= CHUNK_BYTES
                || (last && !batch.is_empty())
            {
                for mutations in in_frames(std::mem::take(&mut batch)) {
                    let _ = outbound.send(Frame::Repair { mutations }.into());
                }
                bytes = 0;
                tokio::task::yield_now().await;
                self.store.gate().idle().await;
            }
        }
    }

    /// The link's anti-entropy task. On one side of the pair it sends a digest of the
    /// store every interval; on both it answers the partner's digests and repair requests
    /// and applies its repairs. Off the link's reader, so that acknowledgements never
    /// queue behind a walk of the store.
    pub(super) async fn anti_entropy(
        self: Arc<Self>,
        outbound: mpsc::UnboundedSender<Outgoing>,
        mut inbox: mpsc::Receiver<Exchange>,
        starts: bool,
    ) {
        let mut ticker = starts.then(|| {
            let mut ticker = tokio::time::interval(self.config.anti_entropy_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await; // the snapshot just covered everything
        }
        let tick = async |ticker: &mut Option<tokio::time::Interval>| match ticker {
            Some(ticker) => ticker.tick().await,
            None => std::future::pending().await,
        };
        loop {
            tokio::select! {
                // In a fixed order, so that a seeded simulation replays: a round is rare
                // and the inbox bounded, so neither starves the other.
                biased;
                _ = tick(&mut ticker) => {
                    // A script holds the keyspace: compare once it is done.
                    self.store.gate().idle().await;
                    let digest = Frame::Digest { shards: self.digests() };
                    if outbound.send(digest.into()).is_err() {
                        return;
                    }
                }
                exchange = inbox.recv() => {
                    let Some(exchange) = exchange else { return };
                    self.store.gate().idle().await;
                    self.exchange(&outbound, exchange).await;
                }
            }
        }
    }

    /// Answers one frame of the partner's anti-entropy.
    async fn exchange(&self, outbound: &mpsc::UnboundedSender<Outgoing>, exchange: Exchange) {
        match exchange {
            Exchange::Digest(theirs) => {
                let mine = self.digests();
                let differing: Vec<u32> = (0..SHARDS)
                    .filter(|&s| mine[s] != theirs[s])
                    .map(|s| s as u32)
                    .collect();
                metrics::counter!(names::ANTI_ENTROPY_ROUNDS).increment(1);
                if !differing.is_empty() {
                    debug!(
                        shards = differing.len(),
                        "anti-entropy: shards differ from the partner's"
                    );
                    self.send_repairs(outbound, &differing).await;
                    let _ = outbound.send(Frame::RepairRequest { shards: differing }.into());
                }
            }
            Exchange::RepairRequest(shards) => self.send_repairs(outbound, &shards).await,
            Exchange::Repair(mutations) => {
                let changed = self.store.apply(mutations);
                if changed > 0 {
                    metrics::counter!(names::REPAIRED_KEYS).increment(changed as u64);
                    info!(
                        keys = changed,
                        "anti-entropy repaired keys that differed from the partner's"
                    );
                }
            }
        }
    }
}

/// A frame of the partner's anti-entropy, checked, for the link's anti-entropy task.
#[derive(Debug)]
pub(super) enum Exchange {
    Digest(Vec<u64>),
    RepairRequest(Vec<u32>),
    Repair(Vec<Mutation>),
}

impl Exchange {
    /// Frames of the inbox before the reader waits (repairs) or skips (a digest or
    /// request, made again next round) rather than queue more.
    pub(super) const INBOX: usize = 16;

    /// The anti-entropy frame `frame` is, or the frame back when it is another.
    ///
    /// # Errors
    /// A digest or request of shards this store does not have.
    pub(super) fn take(frame: Frame) -> Result<Result<Exchange, Frame>, String> {
        Ok(Ok(match frame {
            Frame::Digest { shards } if shards.len() != SHARDS => {
                return Err(format!(
                    "digest of {} shards, expected {SHARDS}",
                    shards.len()
                ));
            }
            Frame::Digest { shards } => Exchange::Digest(shards),
            Frame::RepairRequest { shards } if shards.iter().any(|&s| s as usize >= SHARDS) => {
                return Err("repair request for an unknown shard".into());
            }
            Frame::RepairRequest { shards } => Exchange::RepairRequest(shards),
            Frame::Repair { mutations } => Exchange::Repair(mutations),
            other => return Ok(Err(other)),
        }))
    }
}
