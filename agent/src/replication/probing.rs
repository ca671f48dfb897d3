//! Multicast probing: offers the partner multicast, probes until it answers, probes again
//! after it degraded; and receives the subnet's datagrams for the link.

use std::sync::Arc;
use std::time::Duration;

use tandem_common::frame::Frame;
use tracing::{debug, info, warn};

use super::multicast::{self, Multicast};
use super::{Inner, LinkShared, names};

/// Multicast probes sent when a pair forms, this far apart, before giving up on it.
const PROBE_ATTEMPTS: usize = 10;

const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The most the re-probe delay grows to, as a multiple of the first.
const REPROBE_MAX: u32 = 64;

/// Multicast that kept working this long resets the re-probe delay.
const MULTICAST_HEALTHY: Duration = Duration::from_secs(60);

impl Inner {
    /// Offers multicast to the partner when both sit in one subnet where multicast is
    /// enabled: gives it this side's key, then probes until it answers (the reader sees
    /// the answer) or the attempts run out. When the probes go unanswered or the path
    /// degrades later, probes again after a delay that doubles each time.
    pub(super) async fn probe_multicast(self: Arc<Self>, shared: Arc<LinkShared>, partner: String) {
        if self.multicast.is_none() {
            return;
        }
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let members = gossip.members().await;
        let subnet = |id: &str| {
            members
                .iter()
                .filter(|m| m.id == id && m.live)
                .find_map(|m| m.subnet.clone())
        };
        let (mine, theirs) = (subnet(&self.config.node_id), subnet(&partner));
        let same = matches!((&mine, &theirs), (Some(a), Some(b)) if a.multicast && b.multicast && a.cidr == b.cidr);
        if !same {
            info!(%partner, "partner in another subnet (or without multicast): replicating over QUIC");
            return;
        }
        let key = shared.multicast.send_key.to_vec();
        if shared
            .outbound
            .send(Frame::MulticastKey { key }.into())
            .is_err()
        {
            return;
        }
        let multicasting = || shared.core.lock().multicasting();
        let mut delay = self.config.reprobe_after;
        loop {
            for _ in 0..PROBE_ATTEMPTS {
                let nonce =
                    u64::from_be_bytes(multicast::new_key()[..8].try_into().expect("8 bytes")) | 1;
                let probe = shared.core.lock().start_probe(nonce);
                if shared.outbound.send(probe.into()).is_err() {
                    return;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
                if multicasting() {
                    break;
                }
            }
            if multicasting() {
                let since = tokio::time::Instant::now();
                shared.multicast.deactivated.notified().await;
                if since.elapsed() >= MULTICAST_HEALTHY {
                    delay = self.config.reprobe_after;
                }
            } else {
                warn!(
                    %partner,
                    retry_in = ?delay,
                    "the partner does not receive this agent's multicast; replicating over QUIC"
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.config.reprobe_after * REPROBE_MAX);
            info!(%partner, "probing multicast to the partner again");
        }
    }

    /// Receives the subnet's multicast and hands the partner's frames to the link.
    pub(super) async fn receive_multicast(self: Arc<Self>, socket: Arc<Multicast>) {
        let mut buf = vec![0u8; multicast::MAX_DATAGRAM + 1024];
        loop {
            let (len, from) = match socket.recv(&mut buf).await {
                Ok(received) => received,
                Err(err) => {
                    warn!(error = %err, "receiving multicast failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(dropped) = self.take_datagram(&mut buf[..len]) {
                metrics::counter!(names::MULTICAST_DROPPED, "reason" => dropped.label())
                    .increment(1);
                if dropped != multicast::Dropped::OtherPair {
                    debug!(%from, reason = dropped.label(), "dropped a multicast datagram");
                }
            }
        }
    }

    /// Opens the partner's datagram (where it is, in `datagram`) and hands its frame to
    /// the link.
    pub(super) fn take_datagram(&self, datagram: &mut [u8]) -> Result<(), multicast::Dropped> {
        use multicast::Dropped;
        let header = multicast::header(datagram)?;
        // Headers carry ids cut to what they hold.
        if header.sender == multicast::wire_id(&self.config.node_id) {
            return Ok(()); // our own, looped back
        }
        let link = {
            let state = self.state.lock();
            state
                .link
                .as_ref()
                .filter(|l| {
                    multicast::wire_id(&l.partner.node_id) == header.sender
                        && l.partner.epoch == header.epoch
                })
                .map(|l| l.shared.clone())
        };
        let link = link.ok_or(Dropped::OtherPair)?;
        let plain = {
            let mut opener = link.multicast.opener.lock();
            let opener = opener.as_mut().ok_or(Dropped::BeforeKey)?;
            let seal = header.seal();
            opener.open_in_place(seal, datagram)?
        };
        // Authentic but not one whole frame: a bug on the other side, not an attack.
        let frame = Frame::decode_exact(plain).map_err(|_| Dropped::Malformed)?;
        metrics::counter!(names::MULTICAST_RECEIVED).increment(1);
        // A full inbox drops the frame; the partner sends it again over the stream.
        link.multicast
            .inbox
            .try_send(frame)
            .map_err(|_| Dropped::Backlog)
    }
}
