//! The gossip transport: chitchat's UDP socket, metered.
//!
//! Every gossip datagram passes through [`MeteredTransport`], which counts messages and bytes
//! in each direction. It wraps chitchat's public `Transport`/`Socket` traits, so the
//! gossip protocol itself stays chitchat's own.

use std::net::SocketAddr;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};

use crate::metrics::names;

/// A transport that counts what the inner transport sends and receives.
pub struct MeteredTransport<T> {
    inner: T,
}

impl<T: Transport> MeteredTransport<T> {
    pub fn new(inner: T) -> Self {
        MeteredTransport { inner }
    }
}

#[async_trait]
impl<T: Transport> Transport for MeteredTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(MeteredSocket { inner }))
    }
}

struct MeteredSocket {
    inner: Box<dyn Socket>,
}

#[async_trait]
impl Socket for MeteredSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        match self.inner.send(to, envelope).await {
            Ok(outcome) => {
                metrics::counter!(names::GOSSIP_MESSAGES_SENT).increment(1);
                metrics::counter!(names::GOSSIP_BYTES_SENT)
                    .increment(outcome.num_bytes_sent as u64);
                Ok(outcome)
            }
            Err(err) => {
                metrics::counter!(names::GOSSIP_SEND_ERRORS).increment(1);
                Err(err)
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        metrics::counter!(names::GOSSIP_MESSAGES_RECEIVED).increment(1);
        metrics::counter!(names::GOSSIP_BYTES_RECEIVED)
            .increment(outcome.num_bytes_received as u64);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use chitchat::transport::ChannelTransport;

    use super::*;

    // The metered socket must behave exactly like the socket it wraps: sockets open, carry
    // messages and report the sender.
    #[tokio::test]
    async fn metered_transport_carries_messages() {
        let transport = MeteredTransport::new(ChannelTransport::with_mtu(65_507));
        let mut a = transport
            .open("127.0.0.1:10001".parse().unwrap())
            .await
            .unwrap();
        let mut b = transport
            .open("127.0.0.1:10002".parse().unwrap())
            .await
            .unwrap();
        assert!(
            transport
                .open("127.0.0.1:10001".parse().unwrap())
                .await
                .is_err()
        );
        let envelope = || ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: chitchat::ChitchatMessage::BadCluster,
        };
        let sent = a.send(b.local_addr().unwrap(), envelope()).await.unwrap();
        let received = b.recv().await.unwrap();
        assert_eq!(received.envelope, envelope());
        assert_eq!(received.from_addr, a.local_addr().unwrap());
        assert_eq!(received.num_bytes_received, sent.num_bytes_sent);
    }
}
