//! Anti-entropy: partners compare digests of their stores' shards, then the versions of
//! the keys in shards that differ, and send each other the values of the keys that differ.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tandem_common::frame::{Frame, KeyVersion};
use tandem_common::ops::Mutation;
use tandem_common::version::Version;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::link::Outgoing;
use super::snapshot::{CHUNK_BYTES, SNAPSHOT_CHUNK_KEYS, in_frames};
use super::{Inner, names};
use crate::store::keyspace::{MAX_DATABASES, SHARDS};

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

    /// Sends `mutations` (whole values and deletes) to the partner as repairs.
    fn send_whole(&self, outbound: &mpsc::UnboundedSender<Outgoing>, mutations: Vec<Mutation>) {
        let keys = mutations.len() as u64;
        metrics::counter!(names::REPAIR_KEYS_SENT).increment(keys);
        self.repair_keys_sent.fetch_add(keys, Ordering::Relaxed);
        for mutations in in_frames(mutations) {
            let _ = outbound.send(Frame::Repair { mutations }.into());
        }
    }

    /// Sends the versions of every key this store holds in `shards`, a window of shards
    /// of about a thousand keys per frame, and lets the link's other tasks run between
    /// frames.
    async fn send_versions(&self, outbound: &mpsc::UnboundedSender<Outgoing>, shards: &[u32]) {
        let mut window = Vec::new();
        let mut keys: Vec<KeyVersion> = Vec::new();
        let mut bytes = 0;
        for (i, &shard) in shards.iter().enumerate() {
            let part = self
                .store
                .run(|ks, now| ks.shard_versions(shard as usize, now))
                .value;
            bytes += part
                .iter()
                .map(|(_, key, ..)| key.len() + 24)
                .sum::<usize>();
            keys.extend(part);
            window.push(shard);
            let last = i + 1 == shards.len();
            if keys.len() >= SNAPSHOT_CHUNK_KEYS || bytes >= CHUNK_BYTES || last {
                let frame = Frame::Versions {
                    shards: std::mem::take(&mut window),
                    keys: std::mem::take(&mut keys),
                };
                if outbound.send(frame.into()).is_err() {
                    return;
                }
                bytes = 0;
                tokio::task::yield_now().await;
                self.store.gate().idle().await;
            }
        }
    }

    /// The partner's versions of the keys in `shards`: sends the values this store holds
    /// newer (or alone), and fetches those it holds older (or lacks).
    fn compare_versions(
        &self,
        outbound: &mpsc::UnboundedSender<Outgoing>,
        shards: &[u32],
        theirs: Vec<KeyVersion>,
    ) {
        let mut theirs: HashMap<(u16, Bytes), Version> = theirs
            .into_iter()
            .map(|(db, key, version)| ((db, key), version))
            .collect();
        let (newer, mut older) = self
            .store
            .run(|ks, now| {
                let mut newer = Vec::new();
                let mut older = Vec::new();
                for &shard in shards {
                    for (db, key, version) in ks.shard_versions(shard as usize, now) {
                        match theirs.remove(&(db, key.clone())) {
                            Some(their) if their == version => {}
                            Some(their) if their > version => older.push((db, key)),
                            _ => newer.extend(ks.key_repair(db, &key, now)),
                        }
                    }
                }
                (newer, older)
            })
            .value;
        // What is left, the partner holds and this store knows nothing of.
        older.extend(theirs.into_keys());
        if !newer.is_empty() || !older.is_empty() {
            debug!(
                newer = newer.len(),
                older = older.len(),
                "anti-entropy: keys differ from the partner's"
            );
        }
        self.send_whole(outbound, newer);
        if !older.is_empty() {
            older.sort_unstable();
            let _ = outbound.send(Frame::Fetch { keys: older }.into());
        }
    }

    /// Sends what this store holds in `shards`, in frames of about a thousand keys, and
    /// lets the link's other tasks run between frames (partners of protocol 2.1, which
    /// compare no versions).
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
                self.send_whole(outbound, std::mem::take(&mut batch));
                bytes = 0;
                tokio::task::yield_now().await;
                self.store.gate().idle().await;
            }
        }
    }

    /// The link's anti-entropy task. On one side of the pair it sends a digest of the
    /// store every interval; on both it answers the partner's digests, versions, fetches
    /// and repair requests and applies its repairs. With `versions_first` (a partner
    /// speaking protocol 2.2), shards that differ are compared key by key before values
    /// go; else each side sends the other the whole of those shards. Off the link's
    /// reader, so that acknowledgements never queue behind a walk of the store.
    pub(super) async fn anti_entropy(
        self: Arc<Self>,
        outbound: mpsc::UnboundedSender<Outgoing>,
        mut inbox: mpsc::Receiver<Exchange>,
        starts: bool,
        versions_first: bool,
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
                    self.exchange(&outbound, exchange, versions_first).await;
                }
            }
        }
    }

    /// Answers one frame of the partner's anti-entropy.
    async fn exchange(
        &self,
        outbound: &mpsc::UnboundedSender<Outgoing>,
        exchange: Exchange,
        versions_first: bool,
    ) {
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
                    if versions_first {
                        self.send_versions(outbound, &differing).await;
                    } else {
                        self.send_repairs(outbound, &differing).await;
                        let _ = outbound.send(Frame::RepairRequest { shards: differing }.into());
                    }
                }
            }
            Exchange::Versions { shards, keys } => self.compare_versions(outbound, &shards, keys),
            Exchange::RepairRequest(shards) => self.send_repairs(outbound, &shards).await,
            Exchange::Fetch(keys) => {
                let mutations = self
                    .store
                    .run(|ks, now| {
                        keys.iter()
                            .filter_map(|(db, key)| ks.key_repair(*db, key, now))
                            .collect::<Vec<_>>()
                    })
                    .value;
                self.send_whole(outbound, mutations);
            }
            Exchange::Repair(mutations) => {
                let changed = self.store.apply(mutations).newer;
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
    Versions {
        shards: Vec<u32>,
        keys: Vec<KeyVersion>,
    },
    Repair(Vec<Mutation>),
    /// Keys (database, key) whose whole values the partner asks for.
    Fetch(Vec<(u16, bytes::Bytes)>),
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
            Frame::Versions { shards, .. } if shards.iter().any(|&s| s as usize >= SHARDS) => {
                return Err("versions of an unknown shard".into());
            }
            Frame::Versions { shards, keys } => Exchange::Versions { shards, keys },
            Frame::Repair { mutations } => Exchange::Repair(mutations),
            Frame::Fetch { keys }
                if keys.iter().any(|(db, _)| usize::from(*db) >= MAX_DATABASES) =>
            {
                return Err("fetch of a key in an unknown database".into());
            }
            Frame::Fetch { keys } => Exchange::Fetch(keys),
            other => return Ok(Err(other)),
        }))
    }
}
