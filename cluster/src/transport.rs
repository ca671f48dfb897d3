//! The gossip transport: UDP datagrams sealed with the cluster's keyring, metered.
//!
//! chitchat serializes its messages with an encoder it keeps private, and works through
//! public `Transport`/`Socket` traits; [`SealedTransport`] puts a seal between the two
//! without touching chitchat's protocol. Each sealed socket holds chitchat's own UDP socket
//! bound to 127.0.0.1 (the *codec*: it encodes and decodes), a *hop* socket beside it, and
//! the network socket on the gossip address:
//!
//! * send: the codec sends the message to the hop; the hop's datagram is sealed with the
//!   keyring's primary key and leaves by the network socket;
//! * receive: a datagram from the network is opened with the keyring; only then does the
//!   hop hand it to the codec, which decodes it for chitchat, with the real sender.
//!
//! Datagrams that do not open (no key, a foreign key, tampered, garbage), and anything the
//! codec receives from elsewhere than the hop, never reach chitchat: they are counted in
//! `tandem_gossip_refused_total{reason}` and logged. [`MeteredTransport`] around it counts
//! messages and bytes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use tracing::{debug, warn};

use crate::keyring::Keyring;
use crate::metrics::names;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Refused datagrams are logged at most this often (each is counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The first bytes of every chitchat message (its magic number, little-endian).
const CHITCHAT_MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
/// How long the codec may take to decode a datagram already in its socket: on loopback it
/// is there at once, so running out means the codec dropped it as undecodable.
const DECODE_WAIT: Duration = Duration::from_millis(100);

/// UDP gossip sealed with a keyring.
pub struct SealedTransport {
    keyring: Arc<Keyring>,
}

impl SealedTransport {
    pub fn new(keyring: Arc<Keyring>) -> Self {
        SealedTransport { keyring }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let network = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = UdpTransport.open(loopback).await?;
        let hop = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("failed to bind the gossip codec's hop on 127.0.0.1")?;
        Ok(Box::new(SealedSocket {
            codec_addr: codec.local_addr()?,
            hop_addr: hop.local_addr()?,
            network,
            codec,
            hop,
            keyring: self.keyring.clone(),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            decoding: None,
            last_refusal_log: None,
        }))
    }
}

struct SealedSocket {
    network: tokio::net::UdpSocket,
    codec: Box<dyn Socket>,
    codec_addr: SocketAddr,
    hop: tokio::net::UdpSocket,
    hop_addr: SocketAddr,
    keyring: Arc<Keyring>,
    sealed: Vec<u8>,
    buf: Box<[u8]>,
    /// A received datagram handed to the codec and not yet decoded (its sender and size):
    /// chitchat may drop a `recv` at any await, and the next one picks it up here.
    decoding: Option<(SocketAddr, usize)>,
    last_refusal_log: Option<Instant>,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.network
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Whatever a send cut short left at the hop is stale.
        while self.hop.try_recv_from(&mut self.buf).is_ok() {}
        self.codec.send(self.hop_addr, envelope).await?;
        let len = loop {
            let (len, from) = self
                .hop
                .recv_from(&mut self.buf)
                .await
                .context("the gossip codec's hop failed")?;
            if from == self.codec_addr {
                break len;
            }
        };
        self.keyring.seal(&self.buf[..len], &mut self.sealed);
        if self.sealed.len() > MAX_DATAGRAM {
            metrics::counter!(names::GOSSIP_REFUSED, "reason" => "too_large").increment(1);
            anyhow::bail!("a gossip message of {len} bytes does not fit a datagram once sealed");
        }
        let num_bytes_sent = self
            .network
            .send_to(&self.sealed, to)
            .await
            .with_context(|| format!("failed to send gossip to {to}"))?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, len)) = self.decoding {
                let decoded = tokio::time::timeout(DECODE_WAIT, self.codec.recv()).await;
                match decoded {
                    Ok(Ok(outcome)) if outcome.from_addr == self.hop_addr => {
                        self.decoding = None;
                        return Ok(RecvOutcome {
                            from_addr: from,
                            envelope: outcome.envelope,
                            num_bytes_received: len,
                        });
                    }
                    // Someone on this host wrote to the codec directly: not through the seal.
                    Ok(Ok(outcome)) => self.refused("unsealed", outcome.from_addr, 0),
                    Ok(Err(err)) => {
                        self.decoding = None;
                        return Err(err);
                    }
                    Err(_) => {
                        self.decoding = None;
                        self.refused("malformed", from, len);
                    }
                }
                continue;
            }
            let (len, from) = match self.network.recv_from(&mut self.buf).await {
                Ok(received) => received,
                // An ICMP error for an earlier send to a node that is gone.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(err) => return Err(err).context("receiving gossip failed"),
            };
            let plain = match self.keyring.open(&self.buf[..len]) {
                Ok(plain) if plain.starts_with(&CHITCHAT_MAGIC) => plain,
                Ok(_) => {
                    self.refused("malformed", from, len);
                    continue;
                }
                Err(refused) => {
                    self.refused(refused.label(), from, len);
                    continue;
                }
            };
            self.decoding = Some((from, len));
            if let Err(err) = self.hop.send_to(&plain, self.codec_addr).await {
                self.decoding = None;
                return Err(err).context("the gossip codec's hop failed");
            }
        }
    }
}

impl SealedSocket {
    fn refused(&mut self, reason: &'static str, from: SocketAddr, len: usize) {
        metrics::counter!(names::GOSSIP_REFUSED, "reason" => reason).increment(1);
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            self.last_refusal_log = Some(now);
            warn!(
                %from,
                reason,
                bytes = len,
                "refused a gossip datagram (wrong or no cluster key, or garbage); \
                 further refusals are counted in tandem_gossip_refused_total"
            );
        } else {
            debug!(%from, reason, bytes = len, "refused a gossip datagram");
        }
    }
}

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

    use crate::keyring::ClusterKey;

    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: chitchat::ChitchatMessage::BadCluster,
        }
    }

    async fn socket(keys: Vec<ClusterKey>) -> Box<dyn Socket> {
        let keyring = Arc::new(Keyring::new("test", keys));
        SealedTransport::new(keyring)
            .open("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// Whether `to` receives what `from` sends (within a short wait: UDP on loopback).
    async fn delivered(from: &mut Box<dyn Socket>, to: &mut Box<dyn Socket>) -> bool {
        from.send(to.local_addr().unwrap(), envelope())
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(300), to.recv()).await {
            Ok(received) => {
                let received = received.unwrap();
                assert_eq!(received.envelope, envelope());
                assert_eq!(received.from_addr, from.local_addr().unwrap());
                true
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn sealed_gossip_reaches_only_holders_of_the_key() {
        let key = ClusterKey::generate();
        let mut a = socket(vec![key.clone()]).await;
        let mut b = socket(vec![key]).await;
        let mut stranger = socket(vec![ClusterKey::generate()]).await;
        let mut plain = socket(vec![]).await;
        assert!(delivered(&mut a, &mut b).await);
        assert!(
            !delivered(&mut stranger, &mut b).await,
            "a foreign key is refused"
        );
        assert!(
            !delivered(&mut plain, &mut b).await,
            "unsealed gossip is refused"
        );
        assert!(
            !delivered(&mut a, &mut plain).await,
            "a keyless node cannot read sealed gossip"
        );
        // Garbage on the port is dropped and the socket keeps working.
        let garbage = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for datagram in [&b"TG\x01xxxx"[..], b"", &[0xff; 2000]] {
            garbage
                .send_to(datagram, b.local_addr().unwrap())
                .await
                .unwrap();
        }
        assert!(delivered(&mut a, &mut b).await);
    }

    #[tokio::test]
    async fn a_receive_cut_short_loses_nothing_and_names_the_right_sender() {
        let key = ClusterKey::generate();
        let mut a = socket(vec![key.clone()]).await;
        let mut b = socket(vec![key]).await;
        for _ in 0..20 {
            a.send(b.local_addr().unwrap(), envelope()).await.unwrap();
        }
        // chitchat drops `recv` whenever its timer fires first; here, nearly always.
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while received < 20 && Instant::now() < deadline {
            if let Ok(outcome) = tokio::time::timeout(Duration::from_micros(50), b.recv()).await {
                let outcome = outcome.unwrap();
                assert_eq!(outcome.from_addr, a.local_addr().unwrap());
                assert_eq!(outcome.envelope, envelope());
                received += 1;
            }
        }
        assert_eq!(received, 20);
    }

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
        let sent = a.send(b.local_addr().unwrap(), envelope()).await.unwrap();
        let received = b.recv().await.unwrap();
        assert_eq!(received.envelope, envelope());
        assert_eq!(received.from_addr, a.local_addr().unwrap());
        assert_eq!(received.num_bytes_received, sent.num_bytes_sent);
    }
}
