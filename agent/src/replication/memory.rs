//! Test-only paths for the simulation and conformance tests: in-memory channels between
//! addresses of one [`MemoryNetwork`], whose links can be cut and healed and whose hosts
//! can be stalled (a paused process); an in-memory multicast group; and a seeded injector
//! of datagram faults. Built for tests only: the
//! release binary has none of it.

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
    stalled: Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
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

    /// Restores every link that was cut.
    pub fn heal_all(&self) {
        self.cut.lock().clear();
    }

    /// Stalls `addr`, as a paused process: its open channels carry nothing either way
    /// until [`MemoryNetwork::resume`], then what was written goes through; new channels
    /// to or from it are refused (a handshake would time out).
    pub fn stall(&self, addr: SocketAddr) {
        self.stalled.lock().insert(addr);
        self.each_gate_of(addr, |gate| gate.set_stalled(true));
    }

    pub fn resume(&self, addr: SocketAddr) {
        self.stalled.lock().remove(&addr);
        self.each_gate_of(addr, |gate| gate.set_stalled(false));
    }

    fn each_gate_of(&self, addr: SocketAddr, f: impl Fn(&Gate)) {
        for (x, y, gate) in self.gates.lock().iter() {
            if (*x == addr || *y == addr)
                && let Some(gate) = gate.upgrade()
            {
                f(&gate);
            }
        }
    }

    fn is_stalled(&self, addr: SocketAddr) -> bool {
        self.stalled.lock().contains(&addr)
    }

    fn is_cut(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.cut.lock().contains(&pair(a, b))
    }
}

/// Closes both directions of one in-memory channel when its link is cut, and holds
/// them while an end is stalled.
#[derive(Default)]
struct Gate {
    closed: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicBool,
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake();
    }

    fn set_stalled(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        for waker in self.wakers.lock().drain(..) {
            waker.wake();
        }
    }

    /// Pending while stalled (a paused process notices nothing), then failed once
    /// closed, else ready to go on.
    fn check(&self, cx: &std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        let mut wakers = self.wakers.lock();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        if self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        std::task::Poll::Ready(Ok(()))
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
        std::task::ready!(self.gate.check(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.check(cx))?;
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
        if self.network.is_cut(self.addr, addr)
            || self.network.is_stalled(self.addr)
            || self.network.is_stalled(addr)
        {
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

/// A datagram as it arrives: the bytes and the sender's address.
pub type Datagram = (Vec<u8>, SocketAddr);

/// A member of an in-memory group: its address and its inbox.
type Member = (SocketAddr, mpsc::UnboundedSender<Datagram>);

/// An in-memory multicast group: every member receives what any member sends, its own
/// datagrams included (as with loopback on). A stalled member (a paused process) sends
/// nothing and what is sent to it is lost, as beyond a full socket buffer.
#[derive(Clone, Default)]
pub struct MemoryGroup {
    members: Arc<Mutex<Vec<Member>>>,
    stalled: Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
}

impl MemoryGroup {
    /// The inbox of a new member at `addr`.
    pub fn join(&self, addr: SocketAddr) -> mpsc::UnboundedReceiver<Datagram> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.members.lock().push((addr, tx));
        rx
    }

    pub fn deliver(&self, datagram: &[u8], from: SocketAddr) {
        let stalled = self.stalled.lock();
        if stalled.contains(&from) {
            return;
        }
        self.members.lock().retain(|(addr, member)| {
            stalled.contains(addr) || member.send((datagram.to_vec(), from)).is_ok()
        });
    }

    pub fn set_stalled(&self, addr: SocketAddr, stalled: bool) {
        if stalled {
            self.stalled.lock().insert(addr);
        } else {
            self.stalled.lock().remove(&addr);
        }
    }
}

/// Injected faults of a multicast path, changeable while it runs: each datagram is lost,
/// sent twice, or held back and sent after the next one, with the given probabilities.
/// Seeded, so a failing run can be repeated.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

struct FaultState {
    rates: FaultRates,
    rng: rand::rngs::SmallRng,
    held: Option<Vec<u8>>,
}

/// Probabilities of each fault, per datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

impl Faults {
    pub fn new(rates: FaultRates, seed: u64) -> Faults {
        use rand::SeedableRng;
        Faults {
            state: Arc::new(Mutex::new(FaultState {
                rates,
                rng: rand::rngs::SmallRng::seed_from_u64(seed),
                held: None,
            })),
        }
    }

    pub fn set(&self, rates: FaultRates) {
        self.state.lock().rates = rates;
    }

    /// What goes on the wire, in order, when `datagram` is sent.
    pub fn pass(&self, datagram: &[u8]) -> Vec<Vec<u8>> {
        use rand::RngExt;
        let mut state = self.state.lock();
        let FaultRates {
            drop,
            duplicate,
            reorder,
        } = state.rates;
        let mut out = Vec::with_capacity(3);
        if !state.rng.random_bool(drop) {
            if state.held.is_none() && state.rng.random_bool(reorder) {
                state.held = Some(datagram.to_vec());
            } else {
                out.push(datagram.to_vec());
                if state.rng.random_bool(duplicate) {
                    out.push(datagram.to_vec());
                }
            }
        }
        if !out.is_empty()
            && let Some(held) = state.held.take()
        {
            out.push(held);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_lose_double_and_reorder_what_they_are_told_to() {
        let faults = Faults::new(FaultRates::default(), 1);
        let sent = |faults: &Faults, n: u8| -> Vec<u8> {
            (0..n)
                .flat_map(|i| faults.pass(&[i]))
                .map(|d| d[0])
                .collect()
        };
        assert_eq!(
            sent(&faults, 5),
            vec![0, 1, 2, 3, 4],
            "no faults, no change"
        );
        faults.set(FaultRates {
            drop: 1.0,
            ..FaultRates::default()
        });
        assert!(sent(&faults, 5).is_empty());
        faults.set(FaultRates {
            duplicate: 1.0,
            ..FaultRates::default()
        });
        assert_eq!(sent(&faults, 2), vec![0, 0, 1, 1]);
        faults.set(FaultRates {
            reorder: 1.0,
            ..FaultRates::default()
        });
        // One is held back at a time and goes out after the next.
        assert_eq!(sent(&faults, 4), vec![1, 0, 3, 2]);
        let mixed = Faults::new(
            FaultRates {
                drop: 0.2,
                duplicate: 0.2,
                reorder: 0.2,
            },
            7,
        );
        let out = sent(&mixed, 200);
        let mut unique = out.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(unique.len() < 200, "some lost");
        assert!(out.len() > unique.len(), "some doubled");
        assert!(out.windows(2).any(|w| w[0] > w[1]), "some reordered");
    }
}
