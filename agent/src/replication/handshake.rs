//! The handshake on a new replication channel: hellos, then a pair proposal and its answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_common::frame::Frame;
use tandem_common::schema::{PartnerRef, Protocol};
use tracing::{debug, warn};

use super::transport::{Channel, TransportError};
use super::{Inner, names};

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a handshake did not make a pair.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("replication is disabled")]
    Disabled,
    #[error("{0} timed out")]
    TimedOut(&'static str),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("peer {peer} speaks an incompatible protocol: {reason}")]
    Incompatible { peer: String, reason: String },
    #[error("peer {peer} belongs to cluster {cluster:?}")]
    OtherCluster { peer: String, cluster: String },
    #[error("the peer's certificate is not for {0}")]
    Certificate(String),
    #[error("reached {reached}, not {wanted}")]
    WrongPeer { reached: String, wanted: String },
    #[error("refused: {0}")]
    Rejected(String),
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

impl Inner {
    fn hello(&self) -> Frame {
        Frame::Hello {
            protocol: self.config.protocol,
            cluster: self.config.cluster.clone(),
            node_id: self.config.node_id.clone(),
        }
    }

    /// Checks the peer's hello; returns its node id and protocol.
    fn check_hello(&self, frame: Frame) -> Result<(String, Protocol), HandshakeError> {
        match frame {
            Frame::Hello {
                protocol,
                cluster,
                node_id,
            } => {
                if let Some(reason) = self.config.protocol.refusal(protocol) {
                    return Err(HandshakeError::Incompatible {
                        peer: node_id,
                        reason: reason.to_string(),
                    });
                }
                if cluster != self.config.cluster {
                    return Err(HandshakeError::OtherCluster {
                        peer: node_id,
                        cluster,
                    });
                }
                Ok((node_id, protocol))
            }
            other => Err(unexpected("a hello", &other)),
        }
    }

    /// Proposes a pair to `to` over a new channel.
    pub(super) async fn propose(
        self: &Arc<Self>,
        to: &str,
        addr: SocketAddr,
    ) -> Result<(), HandshakeError> {
        let transport = self.transport.clone().ok_or(HandshakeError::Disabled)?;
        let mut channel = in_time("connect", transport.connect(to, addr)).await?;
        let epoch = self.store.now_ms();
        let (hello, answer) = in_time("handshake", async {
            channel.sender.send(&self.hello()).await?;
            channel.sender.send(&Frame::Propose { epoch }).await?;
            let hello = channel.receiver.recv().await?;
            Ok((hello, channel.receiver.recv().await?))
        })
        .await?;
        let (peer, protocol) = self.check_hello(hello)?;
        if peer != to {
            return Err(HandshakeError::WrongPeer {
                reached: peer,
                wanted: to.to_string(),
            });
        }
        match answer {
            Frame::Accept { epoch: accepted } if accepted == epoch => {
                self.install_link(
                    channel,
                    PartnerRef {
                        node_id: peer,
                        epoch,
                    },
                    protocol,
                );
                Ok(())
            }
            Frame::Reject { reason } => Err(HandshakeError::Rejected(reason)),
            other => Err(unexpected("an answer to the proposal", &other)),
        }
    }

    /// Answers a proposal on an incoming channel.
    pub(super) async fn serve_proposal(self: &Arc<Self>, mut channel: Channel) {
        let peer_addr = channel.peer;
        match self.accept_proposal(&mut channel).await {
            Ok((partner, protocol)) => self.install_link(channel, partner, protocol),
            Err(HandshakeError::Rejected(reason)) => {
                debug!(peer = %peer_addr, %reason, "declining a pair proposal");
                channel.refuse(reason).await;
            }
            Err(err @ (HandshakeError::Transport(_) | HandshakeError::TimedOut(_))) => {
                warn!(peer = %peer_addr, error = %err, "replication handshake failed");
            }
            Err(err) => {
                warn!(peer = %peer_addr, error = %err, "refusing a replication peer");
                channel.refuse(err.to_string()).await;
            }
        }
    }

    /// The handshake of an incoming channel, up to the accepted proposal.
    async fn accept_proposal(
        self: &Arc<Self>,
        channel: &mut Channel,
    ) -> Result<(PartnerRef, Protocol), HandshakeError> {
        let (hello, proposal) = in_time("handshake", async {
            let hello = channel.receiver.recv().await?;
            channel.sender.send(&self.hello()).await?;
            Ok((hello, channel.receiver.recv().await?))
        })
        .await?;
        let (peer, protocol) = self.check_hello(hello)?;
        // The certificate, from the cluster CA, must be the claimed node's own: a node
        // cannot pose as another with its certificate.
        if !channel.peer_is(&peer) {
            metrics::counter!(names::REFUSED).increment(1);
            return Err(HandshakeError::Certificate(peer));
        }
        let Frame::Propose { epoch } = proposal else {
            return Err(unexpected("a pair proposal", &proposal));
        };
        let available = {
            let state = self.state.lock();
            state.link.is_none() && state.proposing.is_none()
        };
        if !available {
            return Err(HandshakeError::Rejected("already paired or pairing".into()));
        }
        channel.sender.send(&Frame::Accept { epoch }).await?;
        Ok((
            PartnerRef {
                node_id: peer,
                epoch,
            },
            protocol,
        ))
    }
}

/// `step` of the handshake (`connect`, `handshake`), given [`HANDSHAKE_TIMEOUT`].
async fn in_time<T>(
    step: &'static str,
    work: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, HandshakeError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(HandshakeError::TimedOut(step)),
    }
}

/// A frame other than the one the handshake expects, named by its kind.
fn unexpected(expected: &'static str, got: &Frame) -> HandshakeError {
    let got = format!("{got:?}");
    let kind = got
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string();
    HandshakeError::Unexpected {
        expected,
        got: kind,
    }
}
