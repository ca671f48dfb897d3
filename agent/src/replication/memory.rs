//! In-memory transports for the simulation and conformance tests: channels between
//! addresses of one [`MemoryNetwork`], whose links can be cut and healed. Built for tests
//! only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::transport::{Channel, Transport, TransportError};

/// In-memory channels between transports of one [`MemoryNetwork`], for simulation tests.
pub struct MemoryTransport {
    addr: SocketAddr,
    network: MemoryNetwork,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Channel>>,
}

/// The shared "network" of in-memory transports; links between two addresses can be cut
/// (open channels fail, new ones are refused) and healed.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    listeners: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Channel>>>>,
    cut: Arc<Mutex<std::collections::HashSet<(SocketAddr, SocketAddr)>>>,
    gates: Arc<Mutex<Vec<GateEntry>>>,
}

/// The gate of one open channel between two addresses (dropped channels fall away).
type GateEntry = (SocketAddr, SocketAddr, std::sync::Weak<Gate>);

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

impl MemoryNetwork {
    /// A transport reachable at `addr`.
    pub fn bind(&self, addr: SocketAddr) -> MemoryTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners.lock().insert(addr, tx);
        MemoryTransport {
            addr,
            network: self.clone(),
            incoming: tokio::sync::Mutex::new(rx),
        }
    }

    /// Makes `addr` unreachable (its transport stops receiving new channels).
    pub fn unbind(&self, addr: SocketAddr) {
        self.listeners.lock().remove(&addr);
    }

    /// Cuts the link between `a` and `b`: their open channels fail, new ones are refused.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let key = pair(a, b);
        self.cut.lock().insert(key);
        for (x, y, gate) in self.gates.lock().iter() {
            if pair(*x, *y) == key
                && let Some(gate) = gate.upgrade()
            {
                gate.close();
            }
        }
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.cut.lock().remove(&pair(a, b));
    }

    fn is_cut(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.cut.lock().contains(&pair(a, b))
    }
}

/// Closes both directions of one in-memory channel when its link is cut.
#[derive(Default)]
struct Gate {
    closed: std::sync::atomic::AtomicBool,
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for waker in self.wakers.lock().drain(..) {
            waker.wake();
        }
    }

    fn check(&self, cx: &std::task::Context<'_>) -> std::io::Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let mut wakers = self.wakers.lock();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Ok(())
    }
}

/// One end of an in-memory channel, failing once its gate closes.
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Err(err) = self.gate.check(cx) {
            return std::task::Poll::Ready(Err(err));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Err(err) = self.gate.check(cx) {
            return std::task::Poll::Ready(Err(err));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn connect(&self, _node_id: &str, addr: SocketAddr) -> Result<Channel, TransportError> {
        let unreachable = || TransportError::Connect {
            addr,
            reason: "unreachable".into(),
        };
        if self.network.is_cut(self.addr, addr) {
            return Err(unreachable());
        }
        let listener = self.network.listeners.lock().get(&addr).cloned();
        let listener = listener.ok_or_else(unreachable)?;
        let gate = Arc::new(Gate::default());
        {
            let mut gates = self.network.gates.lock();
            gates.retain(|(_, _, gate)| gate.strong_count() > 0);
            gates.push((self.addr, addr, Arc::downgrade(&gate)));
        }
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let gated = |stream| Gated {
            inner: stream,
            gate: gate.clone(),
        };
        let (their_read, their_write) = tokio::io::split(theirs);
        listener
            .send(Channel::new(
                Box::new(gated(their_read)),
                Box::new(Gated {
                    inner: their_write,
                    gate: gate.clone(),
                }),
                self.addr,
            ))
            .map_err(|_| unreachable())?;
        let (our_read, our_write) = tokio::io::split(ours);
        Ok(Channel::new(
            Box::new(Gated {
                inner: our_read,
                gate: gate.clone(),
            }),
            Box::new(Gated {
                inner: our_write,
                gate,
            }),
            addr,
        ))
    }

    async fn accept(&self) -> Result<Channel, TransportError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Shutdown)
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}
