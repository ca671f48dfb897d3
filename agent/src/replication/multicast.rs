//! UDP multicast between partners in one subnet: the fast path for live writes.
//!
//! Every agent of a subnet joins one group (by default derived from the cluster name);
//! a datagram names its sender and pair, and carries one replication frame sealed with
//! AES-256-GCM under a key the sender gave its partner over their mutually authenticated
//! QUIC stream. Only the partner can open it: datagrams of other pairs, of other clusters,
//! replayed ones and garbage are dropped and counted. Reliability is the link's: frames
//! carry sequence numbers, the partner acknowledges them (by datagram too, while its own
//! multicast works), and a frame not acknowledged in time is sent again over the stream
//! (see `LinkMulticast` in the parent).
//!
//! Datagram layout (the header is authenticated as associated data):
//!
//! ```text
//! "TDMC" | version u8 | pair epoch u64 | sender id len u8 | sender id | counter u64 | sealed frame
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::BytesMut;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use socket2::{Domain, Protocol, SockFilter, SockRef, Socket, Type};
use tandem_common::version::fnv1a;
use tracing::warn;

const MAGIC: &[u8; 4] = b"TDMC";
const VERSION: u8 = 1;
/// Where the header's fields start (see the layout above); the counter follows the id.
const VERSION_AT: usize = MAGIC.len();
const EPOCH_AT: usize = VERSION_AT + 1;
const ID_LEN_AT: usize = EPOCH_AT + 8;
const ID_AT: usize = ID_LEN_AT + 1;
/// Longest sender id a header carries (its length is one byte).
const MAX_ID: usize = u8::MAX as usize;
/// Largest datagram sent or accepted: a frame above it travels over the stream. The IP
/// layer fragments datagrams above the link MTU, as JGroups' bundles are on a LAN.
pub const MAX_DATAGRAM: usize = 60 * 1024;
/// Receive buffer asked for the group's socket: room for a few hundred full datagrams.
/// Linux grants up to twice `net.core.rmem_max`.
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// Length of a sealing key.
pub const KEY_LEN: usize = 32;
/// Datagrams this far behind the newest one received are refused as possible replays.
const REPLAY_WINDOW: u64 = 1024;

/// Where multicast replication happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastConfig {
    pub group: Ipv4Addr,
    pub port: u16,
    /// The address of the interface to use (the subnet of the advertise address).
    pub interface: Ipv4Addr,
}

/// The default group of a cluster: in the organization-local scope 239.0.0.0/8, derived
/// from the cluster name so that two clusters on one subnet keep apart.
pub fn default_group(cluster: &str) -> Ipv4Addr {
    let [a, b, c, ..] = fnv1a(cluster.as_bytes()).to_be_bytes();
    // 239.255.0.0/16 is the commonly used "local scope"; stay clear of it.
    Ipv4Addr::new(239, a % 255, b, c.max(1))
}

/// Why a datagram was dropped (a label of the drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not a Tandem datagram, or truncated.
    Malformed,
    /// From a node that is not this agent's partner, or of an earlier pair.
    OtherPair,
    /// Does not open with the partner's key: another cluster, or forged.
    Unauthenticated,
    /// The partner's, come before its key did over the stream (a probe that overtook
    /// it; the partner probes again).
    BeforeKey,
    /// A datagram already received (or too old to tell).
    Replayed,
    /// The partner's, but its frames came faster than the link applies them: the partner
    /// sends it again over the stream.
    Backlog,
}

impl Dropped {
    pub const ALL: [Dropped; 6] = [
        Dropped::Malformed,
        Dropped::OtherPair,
        Dropped::Unauthenticated,
        Dropped::BeforeKey,
        Dropped::Replayed,
        Dropped::Backlog,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::OtherPair => "other_pair",
            Dropped::Unauthenticated => "unauthenticated",
            Dropped::BeforeKey => "before_key",
            Dropped::Replayed => "replayed",
            Dropped::Backlog => "backlog",
        }
    }
}

/// The agent's multicast path: the subnet's group or, in tests, an in-memory group; in
/// tests either may lose, duplicate and reorder datagrams on purpose (`memory::Faults`)
/// to test the reliability built on top of it.
pub struct Multicast {
    path: Path,
    #[cfg(test)]
    faults: Option<super::memory::Faults>,
    /// The receive buffer the kernel granted this socket, in bytes as it charges them.
    recv_buffer: usize,
}

enum Path {
    Udp {
        socket: tokio::net::UdpSocket,
        /// The same socket, for sending without the runtime: a send never waits, and
        /// tokio's socket would refuse one until its reactor had seen the socket writable.
        sender: std::net::UdpSocket,
        group: SocketAddr,
    },
    #[cfg(test)]
    Memory {
        group: super::memory::MemoryGroup,
        addr: SocketAddr,
        inbox: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<super::memory::Datagram>>,
    },
}

impl Multicast {
    /// Binds the group's port and joins the group, with TTL 1: datagrams never leave the
    /// subnet.
    ///
    /// # Errors
    /// The socket cannot be set up (no multicast route, port taken without reuse...).
    pub fn bind(config: MulticastConfig) -> io::Result<Multicast> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Several agents on one host (tests, small setups) share the group's port.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&SocketAddr::from(SocketAddrV4::new(config.group, config.port)).into())?;
        socket.join_multicast_v4(&config.group, &config.interface)?;
        socket.set_multicast_if_v4(&config.interface)?;
        socket.set_multicast_ttl_v4(1)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_nonblocking(true)?;
        // A burst of writes arrives as many datagrams at once; the kernel drops what
        // does not fit the buffer, and each drop costs a retransmission over the stream.
        socket.set_recv_buffer_size(RECV_BUFFER)?;
        let granted = socket.recv_buffer_size()?;
        if granted < RECV_BUFFER {
            warn!(
                granted,
                wanted = RECV_BUFFER,
                "the kernel gives the multicast socket a smaller receive buffer than asked; \
                 bursts of writes may be dropped and sent again (raise net.core.rmem_max)"
            );
        }
        let sender = socket.try_clone()?.into();
        Ok(Multicast {
            path: Path::Udp {
                socket: tokio::net::UdpSocket::from_std(socket.into())?,
                sender,
                group: SocketAddrV4::new(config.group, config.port).into(),
            },
            #[cfg(test)]
            faults: None,
            recv_buffer: granted,
        })
    }

    /// A member of an in-memory group, sending as `addr`.
    #[cfg(test)]
    pub fn memory(group: &super::memory::MemoryGroup, addr: SocketAddr) -> Multicast {
        let rx = group.join(addr);
        Multicast {
            path: Path::Memory {
                group: group.clone(),
                addr,
                inbox: tokio::sync::Mutex::new(rx),
            },
            faults: None,
            recv_buffer: RECV_BUFFER,
        }
    }

    /// How much of a receiver's socket buffer this side's unacknowledged datagrams may
    /// take (as [`super::link::buffer_charge`] counts them): three quarters of what this
    /// socket was granted, taken to be what the partner's was granted too (agents of one
    /// subnet share their hosts' settings). The rest is room for the other senders in the
    /// group.
    pub fn recv_window(&self) -> usize {
        self.recv_buffer / 4 * 3
    }

    /// Sends through `faults`, which decide what is lost, doubled or held back.
    #[cfg(test)]
    #[must_use]
    pub fn with_faults(mut self, faults: super::memory::Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Asks the kernel to drop the datagrams `sender` sent (this agent's own, looped back
    /// to its socket) before they wake the receiver: a socket filter compares the header's
    /// sender id. The in-memory group has no such filter; its receiver skips them itself.
    ///
    /// # Errors
    /// The kernel refuses the filter; the datagrams are then skipped after they arrive.
    pub fn drop_own(&self, sender: &str) -> io::Result<()> {
        match &self.path {
            Path::Udp { socket, .. } => SockRef::from(socket).attach_filter(&own_filter(sender)),
            #[cfg(test)]
            Path::Memory { .. } => Ok(()),
        }
    }

    /// Sends the datagram without waiting: a socket whose buffer is full refuses it
    /// (`WouldBlock`), and the frame then takes the stream. Sending never waits, so a
    /// connection may send a full frame itself, in the middle of its work.
    ///
    /// # Errors
    /// The datagram could not be sent now.
    pub fn send(&self, datagram: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            for datagram in faults.pass(datagram) {
                self.send_now(&datagram)?;
            }
            return Ok(());
        }
        self.send_now(datagram)
    }

    fn send_now(&self, datagram: &[u8]) -> io::Result<()> {
        match &self.path {
            Path::Udp { sender, group, .. } => sender.send_to(datagram, *group).map(|_| ()),
            #[cfg(test)]
            Path::Memory { group, addr, .. } => {
                group.deliver(datagram, *addr);
                Ok(())
            }
        }
    }

    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.path {
            Path::Udp { socket, .. } => socket.recv_from(buf).await,
            #[cfg(test)]
            Path::Memory { inbox, .. } => {
                let (datagram, from) = inbox
                    .lock()
                    .await
                    .recv()
                    .await
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
                // As a UDP socket does, a datagram longer than the buffer is truncated.
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                Ok((len, from))
            }
        }
    }
}

/// A classic BPF program for a UDP socket that drops datagrams whose header names
/// `sender` and accepts every other one: garbage and short datagrams too, so that the
/// receiver counts them. Offsets count from the UDP header (8 bytes) in front of the
/// payload; loads are big-endian.
fn own_filter(sender: &str) -> Vec<SockFilter> {
    const LD_LEN: u16 = 0x80; // BPF_LD | BPF_W | BPF_LEN
    const LD_W: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const LD_B: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const UDP: u32 = 8;
    let id = wire_id(sender).as_bytes();
    let at = |field: usize| UDP + field as u32;
    // (load, expected value) pairs; any mismatch jumps to "accept".
    let mut checks = vec![(SockFilter::new(LD_LEN, 0, 0, 0), None)];
    checks.push((
        SockFilter::new(LD_W, 0, 0, at(0)),
        Some(u32::from_be_bytes(*MAGIC)),
    ));
    checks.push((
        SockFilter::new(LD_B, 0, 0, at(VERSION_AT)),
        Some(u32::from(VERSION)),
    ));
    checks.push((
        SockFilter::new(LD_B, 0, 0, at(ID_LEN_AT)),
        Some(id.len() as u32),
    ));
    for (i, chunk) in id.chunks(4).enumerate() {
        let chunk_at = at(ID_AT + 4 * i);
        if let Ok(word) = <[u8; 4]>::try_from(chunk) {
            checks.push((
                SockFilter::new(LD_W, 0, 0, chunk_at),
                Some(u32::from_be_bytes(word)),
            ));
        } else {
            for (j, &byte) in chunk.iter().enumerate() {
                checks.push((
                    SockFilter::new(LD_B, 0, 0, chunk_at + j as u32),
                    Some(u32::from(byte)),
                ));
            }
        }
    }
    // Instructions: one load and one jump per check, then "drop" and "accept".
    let len = 2 * checks.len() + 2;
    let mut program = Vec::with_capacity(len);
    for (i, (load, expected)) in checks.into_iter().enumerate() {
        program.push(load);
        // Jumps are relative to the next instruction; the accept is the last one.
        let to_accept = u8::try_from(len - 1 - (2 * i + 2)).expect("ids are at most 255 bytes");
        program.push(match expected {
            // The datagram must be long enough for every load below, or loads would fail
            // (and a failed load drops the datagram).
            None => SockFilter::new(JGE, 0, to_accept, at(ID_AT + id.len())),
            Some(value) => SockFilter::new(JEQ, 0, to_accept, value),
        });
    }
    program.push(SockFilter::new(RET, 0, 0, 0));
    program.push(SockFilter::new(RET, 0, 0, u32::MAX));
    program
}

/// A node id as datagram headers carry it: at most [`MAX_ID`] bytes, cut at a character.
/// (Two ids alike in all of those bytes cannot tell each other's datagrams from their own;
/// such a pair replicates over QUIC, its probes unanswered.)
pub fn wire_id(node_id: &str) -> &str {
    let mut end = node_id.len().min(MAX_ID);
    while !node_id.is_char_boundary(end) {
        end -= 1;
    }
    &node_id[..end]
}

/// A new random sealing key.
pub fn new_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system's random source works");
    key
}

/// The header fields of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub epoch: u64,
    pub sender: &'a str,
    pub counter: u64,
    /// Length of the header in the datagram.
    len: usize,
}

impl Header<'_> {
    /// What opening the datagram needs of its header.
    pub fn seal(&self) -> Seal {
        Seal {
            counter: self.counter,
            header_len: self.len,
        }
    }
}

/// How a datagram was sealed: its counter (the nonce) and where the sealed frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    counter: u64,
    header_len: usize,
}

/// Reads a datagram's header.
///
/// # Errors
/// [`Dropped::Malformed`] for anything that is not a Tandem datagram of this version.
pub fn header(datagram: &[u8]) -> Result<Header<'_>, Dropped> {
    if datagram.len() < ID_AT || &datagram[..VERSION_AT] != MAGIC || datagram[VERSION_AT] != VERSION
    {
        return Err(Dropped::Malformed);
    }
    let epoch = u64::from_be_bytes(datagram[EPOCH_AT..ID_LEN_AT].try_into().expect("8 bytes"));
    let id_len = datagram[ID_LEN_AT] as usize;
    let id_end = ID_AT + id_len;
    if datagram.len() < id_end + 8 + AES_256_GCM.tag_len() {
        return Err(Dropped::Malformed);
    }
    let sender = std::str::from_utf8(&datagram[ID_AT..id_end]).map_err(|_| Dropped::Malformed)?;
    let counter = u64::from_be_bytes(datagram[id_end..id_end + 8].try_into().expect("8 bytes"));
    Ok(Header {
        epoch,
        sender,
        counter,
        len: id_end + 8,
    })
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aead_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"))
}

/// Seals the frames one agent sends on one link. Each datagram takes the next counter,
/// which is the nonce: a key is never used with the same nonce twice.
pub struct Sealer {
    key: LessSafeKey,
    epoch: u64,
    sender: String,
    counter: u64,
}

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN], epoch: u64, sender: &str) -> Sealer {
        Sealer {
            key: aead_key(key),
            epoch,
            sender: wire_id(sender).to_owned(),
            counter: 0,
        }
    }

    /// The datagram carrying `frame` (an encoded replication frame).
    #[cfg(test)]
    pub fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut datagram = BytesMut::with_capacity(self.header_len() + frame.len() + 16);
        datagram.resize(self.header_len(), 0);
        datagram.extend_from_slice(frame);
        self.seal_in_place(&mut datagram);
        datagram.into()
    }

    /// How many bytes the header takes in front of the frame.
    pub fn header_len(&self) -> usize {
        ID_AT + self.sender.len() + 8
    }

    /// Makes `datagram`, an encoded frame behind [`Sealer::header_len`] bytes left free
    /// for the header, the datagram that carries it: writes the header, seals the frame
    /// where it is and appends the tag (no copy of the frame, which is up to a datagram).
    pub fn seal_in_place(&mut self, datagram: &mut BytesMut) {
        self.counter += 1;
        let header_len = self.header_len();
        let mut at = 0;
        for part in [
            &MAGIC[..],
            &[VERSION],
            &self.epoch.to_be_bytes(),
            &[self.sender.len() as u8],
            self.sender.as_bytes(),
            &self.counter.to_be_bytes(),
        ] {
            datagram[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        debug_assert_eq!(at, header_len);
        let (header, body) = datagram.split_at_mut(header_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter), Aad::from(&*header), body)
            .expect("a frame below the AEAD's limit");
        datagram.extend_from_slice(tag.as_ref());
    }
}

/// Opens the datagrams of one partner on one link, refusing replays.
pub struct Opener {
    key: LessSafeKey,
    /// The newest counter accepted.
    newest: u64,
    /// Which counters of the window before `newest` were accepted, by counter modulo the
    /// window (slots are cleared as the window moves past them).
    seen: Vec<u64>,
}

impl Opener {
    pub fn new(key: &[u8]) -> Option<Opener> {
        (key.len() == KEY_LEN).then(|| Opener {
            key: aead_key(key),
            newest: 0,
            seen: vec![0; (REPLAY_WINDOW / 64) as usize],
        })
    }

    fn slot(counter: u64) -> (usize, u64) {
        let at = counter % REPLAY_WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    /// The frame bytes inside `datagram`, whose header is `header` (a copy: for tests).
    #[cfg(test)]
    pub fn open(&mut self, header: &Header<'_>, datagram: &[u8]) -> Result<Vec<u8>, Dropped> {
        let mut datagram = datagram.to_vec();
        self.open_in_place(header.seal(), &mut datagram)
            .map(<[u8]>::to_vec)
    }

    /// Opens `datagram`, sealed as `seal` says, where it is: the frame bytes inside it.
    ///
    /// # Errors
    /// [`Dropped::Unauthenticated`] when it does not open with the key, [`Dropped::Replayed`]
    /// when its counter was seen or is too old to tell.
    pub fn open_in_place<'d>(
        &mut self,
        seal: Seal,
        datagram: &'d mut [u8],
    ) -> Result<&'d [u8], Dropped> {
        let counter = seal.counter;
        let (word, bit) = Self::slot(counter);
        let seen = counter <= self.newest && self.seen[word] & bit != 0;
        if counter == 0 || counter + REPLAY_WINDOW <= self.newest || seen {
            return Err(Dropped::Replayed);
        }
        let (aad, sealed) = datagram.split_at_mut(seal.header_len);
        let body = self
            .key
            .open_in_place(nonce(counter), Aad::from(&*aad), sealed)
            .map_err(|_| Dropped::Unauthenticated)?;
        // Only an authentic datagram moves the window.
        if counter > self.newest {
            let cleared = (counter - self.newest).min(REPLAY_WINDOW);
            for passed in counter - cleared + 1..=counter {
                let (word, bit) = Self::slot(passed);
                self.seen[word] &= !bit;
            }
            self.newest = counter;
        }
        self.seen[word] |= bit;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_once_with_the_right_key_only() {
        let key = new_key();
        let mut sealer = Sealer::new(&key, 7, "web-1");
        let first = sealer.seal(b"frame one");
        let second = sealer.seal(b"frame two");
        let mut opener = Opener::new(&key).unwrap();

        let h2 = header(&second).unwrap();
        assert_eq!((h2.epoch, h2.sender, h2.counter), (7, "web-1", 2));
        // Out of order is fine; the same datagram twice is not.
        assert_eq!(opener.open(&h2, &second).unwrap(), b"frame two");
        let h1 = header(&first).unwrap();
        assert_eq!(opener.open(&h1, &first).unwrap(), b"frame one");
        assert_eq!(opener.open(&h1, &first), Err(Dropped::Replayed));

        // Another key (another cluster, another pair) does not open it.
        let mut stranger = Opener::new(&new_key()).unwrap();
        assert_eq!(stranger.open(&h2, &second), Err(Dropped::Unauthenticated));

        // A flipped bit anywhere, header included, fails authentication.
        for at in [5, first.len() / 2, first.len() - 1] {
            let mut forged = sealer.seal(b"frame three");
            forged[at] ^= 1;
            let outcome = header(&forged).map(|h| opener.open(&h, &forged).map(|_| ()));
            assert!(
                matches!(
                    outcome,
                    Err(Dropped::Malformed) | Ok(Err(Dropped::Unauthenticated | Dropped::Replayed))
                ),
                "bit {at}: {outcome:?}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_and_old_counters_are_refused() {
        for garbage in [&b""[..], b"TDMC", b"GET / HTTP/1.1\r\n\r\n", &[0u8; 64]] {
            assert_eq!(header(garbage), Err(Dropped::Malformed));
        }
        let key = new_key();
        let mut sealer = Sealer::new(&key, 1, "a");
        let datagrams: Vec<Vec<u8>> = (0..REPLAY_WINDOW + 5).map(|_| sealer.seal(b"x")).collect();
        let mut opener = Opener::new(&key).unwrap();
        let last = datagrams.last().unwrap();
        opener.open(&header(last).unwrap(), last).unwrap();
        let ancient = &datagrams[0];
        assert_eq!(
            opener.open(&header(ancient).unwrap(), ancient),
            Err(Dropped::Replayed)
        );
        let recent = &datagrams[datagrams.len() - 3];
        assert!(opener.open(&header(recent).unwrap(), recent).is_ok());
    }

    #[test]
    fn clusters_get_different_groups_in_the_organization_scope() {
        let a = default_group("shop");
        let b = default_group("blog");
        assert_ne!(a, b);
        for group in [a, b] {
            assert_eq!(group.octets()[0], 239);
            assert!(group.is_multicast());
        }
        assert_eq!(default_group("shop"), a);
    }
}

/// Datagrams come from anyone on the subnet: nothing but an untouched datagram sealed with
/// the link's key opens, and nothing panics.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_datagrams_never_open(bytes in vec(any::<u8>(), 0..2048)) {
            let mut opener = Opener::new(&new_key()).unwrap();
            if let Ok(header) = header(&bytes) {
                prop_assert!(opener.open(&header, &bytes).is_err());
            }
        }

        #[test]
        fn arbitrary_bodies_behind_a_real_header_never_open(
            sender in "[a-z0-9-]{1,20}",
            body in vec(any::<u8>(), 0..512),
        ) {
            let key = new_key();
            let mut datagram = Sealer::new(&key, 3, &sender).seal(b"frame");
            let header_len = datagram.len() - b"frame".len() - 16;
            datagram.truncate(header_len);
            datagram.extend_from_slice(&body);
            let mut opener = Opener::new(&key).unwrap();
            if let Ok(header) = header(&datagram) {
                prop_assert!(opener.open(&header, &datagram).is_err());
            }
        }

        #[test]
        fn any_changed_byte_is_refused(
            frame in vec(any::<u8>(), 0..256),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let key = new_key();
            let mut datagram = Sealer::new(&key, 9, "web-1").seal(&frame);
            let i = at.index(datagram.len());
            datagram[i] ^= flip;
            let mut opener = Opener::new(&key).unwrap();
            let opened = header(&datagram).ok().and_then(|h| opener.open(&h, &datagram).ok());
            prop_assert_eq!(opened, None);
        }
    }
}
