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
//!   hop hand it to the codec, which decodes it for chitchat, with the real sender. A
//!   marker message follows each datagram through the codec: when the marker comes out
//!   first, the datagram did not decode (the codec drops such input silently), so nothing
//!   waits on a timer and no message is ever attributed to the wrong sender.
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
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tracing::{debug, warn};

use crate::keyring::Keyring;
use crate::metrics::names;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Refused datagrams are logged at most this often (each is counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long the codec may take with a datagram already in its socket (on loopback it is
/// there at once; this only bounds a wait that should never happen).
const CODEC_WAIT: Duration = Duration::from_secs(1);

/// What the codec holds of ours, between two `recv` calls (chitchat may drop a `recv` at
/// any await; the next one picks up from here).
#[derive(Clone, Copy)]
enum Pending {
    Nothing,
    /// A received datagram (its sender and size on the network) and the marker behind it.
    Datagram {
        from: SocketAddr,
        received: usize,
    },
    /// The marker behind a datagram already decoded.
    Marker,
}

/// The envelope sent to the codec behind every received datagram: when it comes out of the
/// codec first, the datagram before it did not decode. (A peer's own message equal to it is
/// taken as it is, without the codec.)
fn marker() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V1,
        message: ChitchatMessage::BadCluster,
    }
}

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
        let codec_addr = codec.local_addr()?;
        // Connected: the hop takes datagrams from the codec only, whoever else is on the host.
        hop.connect(codec_addr)
            .await
            .context("failed to connect the gossip codec's hop")?;
        let mut socket = SealedSocket {
            hop_addr: hop.local_addr()?,
            network,
            codec,
            hop,
            keyring: self.keyring.clone(),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            marker: Vec::new(),
            pending: Pending::Nothing,
            last_refusal_log: None,
        };
        // The marker's bytes, as chitchat itself encodes it.
        socket.marker = socket.encode(marker()).await?.to_vec();
        Ok(Box::new(socket))
    }
}

struct SealedSocket {
    network: tokio::net::UdpSocket,
    codec: Box<dyn Socket>,
    hop: tokio::net::UdpSocket,
    hop_addr: SocketAddr,
    keyring: Arc<Keyring>,
    sealed: Vec<u8>,
    buf: Box<[u8]>,
    /// [`marker`], encoded.
    marker: Vec<u8>,
    pending: Pending,
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
        let len = self.encode(envelope).await?.len();
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
            match self.pending {
                Pending::Marker => {
                    // Behind a datagram already decoded: take it off, whatever it says.
                    let _ = tokio::time::timeout(CODEC_WAIT, self.decoded()).await;
                    self.pending = Pending::Nothing;
                }
                Pending::Datagram { from, received } => {
                    let decoded = tokio::time::timeout(CODEC_WAIT, self.decoded()).await;
                    self.pending = Pending::Nothing;
                    match decoded {
                        Ok(Ok(envelope)) if envelope == marker() => {
                            self.refused("malformed", from, received);
                        }
                        Ok(Ok(envelope)) => {
                            self.pending = Pending::Marker;
                            return Ok(RecvOutcome {
                                from_addr: from,
                                envelope,
                                num_bytes_received: received,
                            });
                        }
                        Ok(Err(err)) => self.failed("the gossip codec", &err).await,
                        Err(_) => self.refused("malformed", from, received),
                    }
                }
                Pending::Nothing => {
                    let (len, from) = match self.network.recv_from(&mut self.buf).await {
                        Ok(received) => received,
                        // An ICMP error for an earlier send to a node that is gone.
                        // An ICMP error for an earlier send to a node that is gone.
                        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                            continue;
                        }
                        Err(err) => {
                            self.failed("the gossip socket", &err.into()).await;
                            continue;
                        }
                    };
                    let plain = match self.keyring.open(&self.buf[..len]) {
                        Ok(plain) if plain == self.marker => {
                            return Ok(RecvOutcome {
                                from_addr: from,
                                envelope: marker(),
                                num_bytes_received: len,
                            });
                        }
                        Ok(plain) => plain,
                        Err(refused) => {
                            self.refused(refused.label(), from, len);
                            continue;
                        }
                    };
                    self.pending = Pending::Datagram {
                        from,
                        received: len,
                    };
                    let forwarded = async {
                        self.hop.send(&plain).await?;
                        self.hop.send(&self.marker).await
                    };
                    if let Err(err) = forwarded.await {
                        self.pending = Pending::Nothing;
                        self.failed("the gossip codec's hop", &err.into()).await;
                    }
                }
            }
        }
    }
}

impl SealedSocket {
    /// A receive that failed. chitchat ends its gossip loop for good on an error from
    /// `recv`, so none is returned: the failure is logged and counted, and receiving goes on
    /// after a short pause (no busy loop on an error that persists).
    async fn failed(&mut self, what: &str, err: &anyhow::Error) {
        metrics::counter!(names::GOSSIP_RECV_ERRORS).increment(1);
        warn!(error = %format!("{err:#}"), "{what} failed to receive; gossip goes on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// Encodes `envelope` with chitchat's own encoder, into the front of `buf`.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<&[u8]> {
        // Whatever a send cut short left at the hop is stale.
        while self.hop.try_recv(&mut self.buf).is_ok() {}
        self.codec.send(self.hop_addr, envelope).await?;
        let len = tokio::time::timeout(CODEC_WAIT, self.hop.recv(&mut self.buf))
            .await
            .context("the gossip codec did not encode a message in time")?
            .context("the gossip codec's hop failed")?;
        Ok(&self.buf[..len])
    }

    /// The next message the codec decoded from the hop; anything sent to the codec by
    /// another process on this host is refused on the way.
    async fn decoded(&mut self) -> anyhow::Result<ChitchatEnvelope> {
        loop {
            let outcome = self.codec.recv().await?;
            if outcome.from_addr == self.hop_addr {
                return Ok(outcome.envelope);
            }
            self.refused("unsealed", outcome.from_addr, outcome.num_bytes_received);
        }
    }

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

    #[tokio::test]
    async fn undecodable_gossip_is_dropped_and_the_next_message_keeps_its_sender() {
        // Without keys, opened datagrams are whatever arrives: junk that starts like a
        // chitchat message reaches the codec, which cannot decode it.
        let mut a = socket(vec![]).await;
        let mut b = socket(vec![]).await;
        let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for tail in [&[0xffu8; 40][..], &[7; 3], &[]] {
            // chitchat's magic number (45139, little-endian): it gets past a first look.
            let mut datagram = vec![0x53, 0xb0];
            datagram.extend_from_slice(tail);
            junk.send_to(&datagram, b.local_addr().unwrap())
                .await
                .unwrap();
        }
        for _ in 0..3 {
            assert!(delivered(&mut a, &mut b).await);
        }
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
