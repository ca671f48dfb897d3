//! Replication channels: ordered, framed byte streams between two agents, behind one trait
//! with a QUIC implementation (mutual TLS) and an in-memory one for tests.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};
use tandem_common::frame::{Frame, FrameError, MAX_FRAME_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::NodeTls;

/// A channel failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the channel was closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the transport is shut down")]
    Shutdown,
}

impl TransportError {
    /// Every reason, as counted in `tandem_repl_link_failures_total{reason}`.
    pub const REASONS: [&'static str; 6] = [
        "connect",
        "closed",
        "io",
        "too_large",
        "malformed",
        "shutdown",
    ];

    /// The `reason` label of a link that failed with this error.
    pub fn reason(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect",
            TransportError::Closed => "closed",
            TransportError::Io(_) => "io",
            TransportError::Frame(FrameError::TooLarge { .. }) => "too_large",
            TransportError::Frame(FrameError::Malformed(_)) => "malformed",
            TransportError::Shutdown => "shutdown",
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Sends frames in order.
pub struct FrameSender {
    writer: Writer,
    buffer: BytesMut,
}

impl FrameSender {
    pub fn new(writer: Writer) -> Self {
        FrameSender {
            writer,
            buffer: BytesMut::new(),
        }
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// An oversized frame or a broken channel.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        self.send_all(std::slice::from_ref(frame)).await
    }

    /// Sends frames already encoded (concatenated), with one write.
    ///
    /// # Errors
    /// A broken channel.
    pub async fn send_encoded(&mut self, frames: &[u8]) -> Result<(), TransportError> {
        self.writer.write_all(frames).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Sends several frames with one write.
    ///
    /// # Errors
    /// An oversized frame or a broken channel.
    pub async fn send_all(&mut self, frames: &[Frame]) -> Result<(), TransportError> {
        self.buffer.clear();
        for frame in frames {
            frame.encode(&mut self.buffer)?;
        }
        self.writer.write_all(&self.buffer).await?;
        self.writer.flush().await?;
        Ok(())
    }
}

/// Receives frames in order. `recv` is cancel-safe: bytes read stay buffered.
pub struct FrameReceiver {
    reader: Reader,
    buffer: BytesMut,
}

impl FrameReceiver {
    pub fn new(reader: Reader) -> Self {
        FrameReceiver {
            reader,
            buffer: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame.
    ///
    /// # Errors
    /// [`TransportError::Closed`] at the end of the stream, a malformed or oversized frame,
    /// or a broken channel.
    pub async fn recv(&mut self) -> Result<Frame, TransportError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(frame);
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return Err(TransportError::Closed);
            }
        }
    }

    /// The next frame if it has already arrived in full, without waiting.
    ///
    /// # Errors
    /// A malformed or oversized frame.
    pub fn buffered(&mut self) -> Result<Option<Frame>, TransportError> {
        Ok(Frame::decode(&mut self.buffer, MAX_FRAME_BYTES)?)
    }
}

/// How long a refused peer is given to read why before the channel closes.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Both directions of one channel.
pub struct Channel {
    pub sender: FrameSender,
    pub receiver: FrameReceiver,
    /// The peer's address as the transport saw it.
    pub peer: SocketAddr,
    /// The certificate the peer presented (already verified against the cluster CA), on
    /// transports with certificates: whoever the peer says it is must be named in it.
    pub peer_certificate: Option<CertificateDer<'static>>,
}

impl Channel {
    pub fn new(reader: Reader, writer: Writer, peer: SocketAddr) -> Self {
        Channel {
            sender: FrameSender::new(writer),
            receiver: FrameReceiver::new(reader),
            peer,
            peer_certificate: None,
        }
    }

    /// Tells the peer why it is refused, and closes the channel once the peer has read it
    /// (or after a short wait): dropping the connection at once would discard the reason
    /// still on its way.
    pub async fn refuse(mut self, reason: String) {
        if self.sender.send(&Frame::Reject { reason }).await.is_err() {
            return;
        }
        let _ = self.sender.writer.shutdown().await;
        let _ = tokio::time::timeout(REFUSAL_LINGER, self.receiver.recv()).await;
    }

    /// Whether the peer may be `node_id`: its certificate names that node (or the transport
    /// has no certificates: the in-memory one of the simulations).
    pub fn peer_is(&self, node_id: &str) -> bool {
        let Some(der) = &self.peer_certificate else {
            return true;
        };
        let Ok(name) = ServerName::try_from(node_id) else {
            return false;
        };
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// The end-entity certificate a QUIC peer presented.
fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

/// Opens and accepts channels.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Opens a channel to the agent `node_id` listening at `addr`.
    async fn connect(&self, node_id: &str, addr: SocketAddr) -> Result<Channel, TransportError>;
    /// The next channel another agent opened to this one.
    async fn accept(&self) -> Result<Channel, TransportError>;
    /// The address other agents connect to.
    fn local_addr(&self) -> SocketAddr;
}

/// The largest UDP payload path MTU discovery looks for (the most QUIC allows).
const MTU_UPPER_BOUND: u16 = 65_527;
/// The send and receive buffers asked for the endpoint's socket.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// QUIC with mutual TLS: one connection per channel, one bidirectional stream.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
}

impl QuicTransport {
    /// Binds the replication endpoint.
    ///
    /// # Errors
    /// The address cannot be bound, or the TLS material is unusable.
    pub fn bind(addr: SocketAddr, tls: &NodeTls) -> Result<Self, TransportError> {
        QuicTransport::from_socket(std::net::UdpSocket::bind(addr)?, tls)
    }

    /// Serves replication on an already bound socket.
    ///
    /// # Errors
    /// The TLS material is unusable, or the socket cannot be used.
    pub fn from_socket(socket: std::net::UdpSocket, tls: &NodeTls) -> Result<Self, TransportError> {
        let addr = socket.local_addr()?;
        // Packets the socket has no room for are lost, and QUIC then slows down as for
        // congestion; the default buffer (about 200 KiB) holds a few milliseconds of a
        // burst of writes. Linux grants up to twice `net.core.rmem_max` (`wmem_max`).
        let buffers = socket2::SockRef::from(&socket);
        buffers.set_recv_buffer_size(SOCKET_BUFFER)?;
        buffers.set_send_buffer_size(SOCKET_BUFFER)?;
        let tls_error = |err: super::tls::TlsError| TransportError::Connect {
            addr,
            reason: err.to_string(),
        };
        let mut server = tls.quic_server_config().map_err(tls_error)?;
        let mut transport = quinn::TransportConfig::default();
        // Idle links are kept open and dead ones noticed within seconds.
        transport.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
        transport.max_idle_timeout(Some(
            std::time::Duration::from_secs(5)
                .try_into()
                .expect("5 s is a valid idle timeout"),
        ));
        // Paths with a larger MTU than Ethernet's (loopback, jumbo frames) carry a batch of
        // writes in fewer packets: fewer seals, fewer syscalls. Discovery settles on what the
        // path carries; probes beyond it are just lost.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MTU_UPPER_BOUND);
        transport.mtu_discovery_config(Some(mtu));
        let transport = Arc::new(transport);
        server.transport_config(transport.clone());
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?;
        let mut client = tls.quic_client_config().map_err(tls_error)?;
        client.transport_config(transport);
        endpoint.set_default_client_config(client);
        Ok(QuicTransport { endpoint })
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn connect(&self, node_id: &str, addr: SocketAddr) -> Result<Channel, TransportError> {
        let failed = |reason: String| TransportError::Connect { addr, reason };
        let connection = self
            .endpoint
            .connect(addr, node_id)
            .map_err(|err| failed(err.to_string()))?
            .await
            .map_err(|err| failed(err.to_string()))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(Channel::new(Box::new(recv), Box::new(send), addr))
    }

    async fn accept(&self) -> Result<Channel, TransportError> {
        loop {
            let incoming = self
                .endpoint
                .accept()
                .await
                .ok_or(TransportError::Shutdown)?;
            let peer = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    // A peer without a cluster certificate, or garbage on the port.
                    tracing::warn!(%peer, error = %err, "refused a replication connection");
                    metrics::counter!(super::names::REFUSED).increment(1);
                    continue;
                }
            };
            match connection.accept_bi().await {
                Ok((send, recv)) => {
                    let mut channel = Channel::new(Box::new(recv), Box::new(send), peer);
                    channel.peer_certificate = peer_certificate(&connection);
                    return Ok(channel);
                }
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "replication connection closed early")
                }
            }
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

#[cfg(test)]
mod tests {
    use tandem_common::schema::Protocol;

    use crate::replication::memory::MemoryNetwork;

    use super::*;

    #[test]
    fn every_failure_has_a_registered_reason_and_keeps_its_cause() {
        let errors = [
            TransportError::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                reason: "refused".into(),
            },
            TransportError::Closed,
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer").into(),
            FrameError::TooLarge { size: 2, max: 1 }.into(),
            FrameError::Malformed("short".into()).into(),
            TransportError::Shutdown,
        ];
        let reasons: Vec<_> = errors.iter().map(TransportError::reason).collect();
        assert_eq!(reasons, TransportError::REASONS);
        assert_eq!(errors[2].to_string(), "I/O: reset by peer");
    }

    /// What every transport must do: carry frames both ways, in order; report a closed
    /// channel; refuse what it cannot reach.
    async fn conformance(a: &dyn Transport, b: Arc<dyn Transport>, b_name: &str) {
        let b_addr = b.local_addr();
        // The listener accepts in the background, as the agent's accept loop does (a QUIC
        // handshake needs it, and a stream reaches the peer with its first bytes).
        let accepting = tokio::spawn(async move { b.accept().await });
        let mut client = a.connect(b_name, b_addr).await.unwrap();
        for seq in 0..100u64 {
            client.sender.send(&Frame::Ack { seq }).await.unwrap();
        }
        let mut server = tokio::time::timeout(std::time::Duration::from_secs(5), accepting)
            .await
            .expect("accepted within 5 s")
            .unwrap()
            .unwrap();
        let hello = Frame::Hello {
            protocol: Protocol::CURRENT,
            cluster: "c".into(),
            node_id: "a".into(),
        };
        client.sender.send(&hello).await.unwrap();
        for seq in 0..100u64 {
            assert_eq!(server.receiver.recv().await.unwrap(), Frame::Ack { seq });
        }
        assert_eq!(server.receiver.recv().await.unwrap(), hello);
        server
            .sender
            .send(&Frame::Propose { epoch: 7 })
            .await
            .unwrap();
        assert_eq!(
            client.receiver.recv().await.unwrap(),
            Frame::Propose { epoch: 7 }
        );
        drop(server);
        assert!(
            client.receiver.recv().await.is_err(),
            "closed channel reported"
        );
    }

    #[tokio::test]
    async fn memory_transport_conforms() {
        let network = MemoryNetwork::default();
        let a = network.bind("10.0.0.1:7947".parse().unwrap());
        let b = Arc::new(network.bind("10.0.0.2:7947".parse().unwrap()));
        let b_addr = b.local_addr();
        conformance(&a, b, "b").await;
        network.unbind(b_addr);
        assert!(a.connect("b", b_addr).await.is_err());
    }

    #[tokio::test]
    async fn quic_transport_conforms_and_requires_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tls::init_ca(dir.path()).unwrap();
        for node in ["node-a", "node-b"] {
            super::super::tls::issue(dir.path(), node).unwrap();
        }
        let tls = |node| NodeTls::load(dir.path(), node, false).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = QuicTransport::bind(any, &tls("node-a")).unwrap();
        let b = Arc::new(QuicTransport::bind(any, &tls("node-b")).unwrap());
        conformance(&a, b.clone(), "node-b").await;

        // The server's certificate must name the node the client meant to reach.
        let listener = b.clone();
        let background = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let wrong_name = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            a.connect("node-c", b.local_addr()),
        )
        .await;
        assert!(
            matches!(wrong_name, Ok(Err(_))),
            "connected to node-b under another name"
        );
        background.abort();

        // A node of another cluster (another CA) cannot connect: neither side trusts the
        // other's certificate. The listener keeps serving cluster members afterwards.
        let other = tempfile::tempdir().unwrap();
        super::super::tls::init_ca(other.path()).unwrap();
        super::super::tls::issue(other.path(), "node-x").unwrap();
        let stranger_tls = NodeTls::load(other.path(), "node-x", false).unwrap();
        let stranger = QuicTransport::bind(any, &stranger_tls).unwrap();
        let b_addr = b.local_addr();
        let listener = b.clone();
        let accepted = tokio::spawn(async move {
            listener.accept().await.map(|c| {
                (
                    c.peer_is("node-a"),
                    c.peer_is("node-b"),
                    c.peer_is("not a name"),
                )
            })
        });
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stranger.connect("node-b", b_addr),
        )
        .await;
        assert!(matches!(attempt, Ok(Err(_))), "a stranger got a channel");
        let mut channel = a.connect("node-b", b_addr).await.unwrap();
        channel.sender.send(&Frame::Ack { seq: 1 }).await.unwrap();
        let peer = tokio::time::timeout(std::time::Duration::from_secs(5), accepted).await;
        // The accepted channel knows whom the certificate names: node-a may claim to be
        // node-a, and nobody else.
        assert!(
            matches!(peer, Ok(Ok(Ok((true, false, false))))),
            "the listener still accepts members, and binds them to their names: {peer:?}"
        );
    }

    /// While the CA is replaced, `ca.pem` holds both CA certificates: nodes with
    /// certificates from either CA pair, while a node trusting only the new CA refuses
    /// the old one's.
    #[tokio::test]
    async fn a_ca_bundle_trusts_both_cas_during_a_ca_rotation() {
        use super::super::tls::{init_ca, issue};
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, node) in [(&old, "node-old"), (&new, "node-new")] {
            init_ca(dir.path()).unwrap();
            issue(dir.path(), node).unwrap();
        }
        let read =
            |dir: &tempfile::TempDir| std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let bundle = format!("{}{}", read(&old), read(&new));
        let only_new = read(&new);
        std::fs::write(old.path().join("ca.pem"), &bundle).unwrap();
        std::fs::write(new.path().join("ca.pem"), &bundle).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let old_node =
            QuicTransport::bind(any, &NodeTls::load(old.path(), "node-old", false).unwrap())
                .unwrap();
        let new_node = Arc::new(
            QuicTransport::bind(any, &NodeTls::load(new.path(), "node-new", false).unwrap())
                .unwrap(),
        );
        let listener = new_node.clone();
        let accepted =
            tokio::spawn(async move { listener.accept().await.map(|c| c.peer_is("node-old")) });
        let mut channel = old_node
            .connect("node-new", new_node.local_addr())
            .await
            .unwrap();
        channel.sender.send(&Frame::Ack { seq: 1 }).await.unwrap();
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(5), accepted).await;
        assert!(matches!(accepted, Ok(Ok(Ok(true)))), "{accepted:?}");

        std::fs::write(new.path().join("ca.pem"), only_new).unwrap();
        let strict = Arc::new(
            QuicTransport::bind(any, &NodeTls::load(new.path(), "node-new", false).unwrap())
                .unwrap(),
        );
        let listener = strict.clone();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        // TLS 1.3: the client may finish its side before the server refuses its certificate;
        // either way no channel comes of it.
        if let Ok(Ok(mut channel)) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            old_node.connect("node-new", strict.local_addr()),
        )
        .await
        {
            let _ = channel.sender.send(&Frame::Ack { seq: 1 }).await;
            let answer =
                tokio::time::timeout(std::time::Duration::from_secs(5), channel.receiver.recv())
                    .await;
            assert!(
                matches!(answer, Ok(Err(_))),
                "the channel must break: {:?}",
                answer.map(|r| r.is_ok())
            );
        }
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(1), accepted).await;
        assert!(
            accepted.is_err(),
            "the old CA is no longer trusted: no channel accepted"
        );
    }
}
