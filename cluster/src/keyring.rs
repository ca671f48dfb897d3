//! The cluster key and the gossip keyring.
//!
//! A cluster key is 32 random bytes, written as base64 (`tandem keygen`). Gossip datagrams
//! are sealed with the keyring's primary key (XChaCha20-Poly1305: a random 192-bit nonce per
//! datagram, so a key never wears out) and opened with whichever installed key sealed them,
//! so keys can be rotated on a running cluster: install the new key everywhere, make it the
//! primary everywhere, remove the old one. Other secrets (the route cookie's) are derived
//! from the primary key, so holding the key file is enough to configure a process.
//!
//! A sealed datagram:
//!
//! ```text
//! "TG" | version 1 | key id (4) | nonce (24) | ciphertext + tag (16)
//! ```
//!
//! The authenticated data is the header and the cluster name: a datagram of another cluster
//! that happens to share the key does not open either.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 2] = b"TG";
const VERSION: u8 = 1;
const ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + 1 + ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// A key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a cluster key is 32 bytes in base64 (`tandem keygen` prints one); this is {0}")]
    Malformed(String),
    #[error("key file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {0} holds no key")]
    EmptyFile(String),
}

/// A cluster key, with its id (computed once: datagrams are matched to keys by id).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

/// The public name of a key: the first 4 bytes of its SHA-256, in hex. Safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Malformed(format!("not a key id (8 hex digits): {text:?}"));
        if text.len() != ID_LEN * 2 || !text.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; ID_LEN];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyId(id))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.id())
    }
}

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> ClusterKey {
        ClusterKey::from_bytes(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        let digest = Sha256::digest(bytes);
        let id = KeyId(digest[..ID_LEN].try_into().expect("4 bytes"));
        ClusterKey { bytes, id }
    }

    /// Reads a key from its base64 text (surrounding white space ignored).
    ///
    /// # Errors
    /// Not base64, or not 32 bytes.
    pub fn parse(text: &str) -> Result<ClusterKey, KeyError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .map_err(|err| KeyError::Malformed(format!("not base64 ({err})")))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| KeyError::Malformed(format!("{} bytes", bytes.len())))?;
        Ok(ClusterKey::from_bytes(key))
    }

    /// Reads the keys of a key file: one per line, the first being the primary; blank lines
    /// and lines starting with `#` are skipped.
    ///
    /// # Errors
    /// The file cannot be read, holds no key, or a line is not a key.
    pub fn read_file(path: &Path) -> Result<Vec<ClusterKey>, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
            path: path.display().to_string(),
            source,
        })?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(ClusterKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::EmptyFile(path.display().to_string()));
        }
        Ok(keys)
    }

    pub fn encode(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// A secret for one purpose, derived from this key (HMAC-SHA-256 of the purpose).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("any key length");
        mac.update(b"tandem/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// Why a received gossip datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not sealed, and this node requires sealed gossip.
    Unsealed,
    /// Sealed with a key this node does not hold.
    UnknownKey,
    /// Sealed with a key this node holds, but it does not open: tampered, truncated, or
    /// from another cluster.
    Forged,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Refused::Unsealed, Refused::UnknownKey, Refused::Forged];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Unsealed => "unsealed",
            Refused::UnknownKey => "unknown_key",
            Refused::Forged => "forged",
        }
    }
}

/// One key as `tandem keyring list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub primary: bool,
}

/// What the keyring holds, as the admin endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyringView {
    pub keys: Vec<KeyInfo>,
    /// Whether unsealed gossip is still accepted (a cluster without a key, or one that is
    /// switching to sealed gossip).
    pub accept_plain: bool,
}

/// A keyring change that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("no installed key has id {0}")]
    NoSuchKey(KeyId),
    #[error("key {0} is the primary key; make another key the primary first")]
    RemovingPrimary(KeyId),
    #[error(
        "no primary key: install a key and make it the primary before refusing unsealed gossip"
    )]
    NoPrimary,
}

#[derive(Debug)]
struct Ring {
    keys: Vec<ClusterKey>,
    primary: Option<KeyId>,
    accept_plain: bool,
}

/// The keys a node seals and opens gossip with. Shared by the gossip socket and the admin
/// endpoint that changes it.
#[derive(Debug)]
pub struct Keyring {
    cluster: String,
    ring: RwLock<Ring>,
    /// Counts changes, for whoever keeps something derived from the keys.
    generation: std::sync::atomic::AtomicU64,
}

impl Keyring {
    /// A keyring for `cluster`: the first key is the primary. Without keys, gossip is sent
    /// and accepted unsealed until keys are installed.
    pub fn new(cluster: &str, keys: Vec<ClusterKey>) -> Keyring {
        let mut unique: Vec<ClusterKey> = Vec::new();
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        Keyring {
            cluster: cluster.to_string(),
            ring: RwLock::new(Ring {
                primary: unique.first().map(ClusterKey::id),
                accept_plain: unique.is_empty(),
                keys: unique,
            }),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes with every change of the keys (install, use, remove).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A secret for `purpose` from each installed key, the primary's first.
    pub fn derive_all(&self, purpose: &str) -> Vec<[u8; 32]> {
        let ring = self.ring.read();
        let mut keys: Vec<&ClusterKey> = ring.keys.iter().collect();
        keys.sort_by_key(|key| ring.primary != Some(key.id()));
        keys.iter().map(|key| key.derive(purpose)).collect()
    }

    /// The primary key, if any.
    pub fn primary(&self) -> Option<ClusterKey> {
        let ring = self.ring.read();
        ring.primary
            .and_then(|id| ring.keys.iter().find(|k| k.id() == id).cloned())
    }

    pub fn view(&self) -> KeyringView {
        let ring = self.ring.read();
        KeyringView {
            keys: ring
                .keys
                .iter()
                .map(|key| KeyInfo {
                    id: key.id().to_string(),
                    primary: ring.primary == Some(key.id()),
                })
                .collect(),
            accept_plain: ring.accept_plain,
        }
    }

    /// Adds a key for opening gossip; sealing keeps the primary. Returns its id.
    pub fn install(&self, key: ClusterKey) -> KeyId {
        let id = key.id();
        let mut ring = self.ring.write();
        if !ring.keys.contains(&key) {
            ring.keys.push(key);
        }
        drop(ring);
        self.changed();
        id
    }

    /// Makes an installed key the one gossip is sealed with.
    ///
    /// # Errors
    /// No installed key has that id.
    pub fn use_key(&self, id: KeyId) -> Result<(), KeyringError> {
        let mut ring = self.ring.write();
        if !ring.keys.iter().any(|k| k.id() == id) {
            return Err(KeyringError::NoSuchKey(id));
        }
        ring.primary = Some(id);
        drop(ring);
        self.changed();
        Ok(())
    }

    /// Removes a key that is not the primary.
    ///
    /// # Errors
    /// No such key, or it is the primary.
    pub fn remove(&self, id: KeyId) -> Result<(), KeyringError> {
        let mut ring = self.ring.write();
        if ring.primary == Some(id) {
            return Err(KeyringError::RemovingPrimary(id));
        }
        let before = ring.keys.len();
        ring.keys.retain(|k| k.id() != id);
        if ring.keys.len() == before {
            return Err(KeyringError::NoSuchKey(id));
        }
        drop(ring);
        self.changed();
        Ok(())
    }

    /// Whether unsealed gossip is accepted. Refusing it needs a primary key.
    ///
    /// # Errors
    /// Refusing while there is no primary key.
    pub fn accept_plain(&self, accept: bool) -> Result<(), KeyringError> {
        let mut ring = self.ring.write();
        if !accept && ring.primary.is_none() {
            return Err(KeyringError::NoPrimary);
        }
        ring.accept_plain = accept;
        Ok(())
    }

    /// Seals `plain` with the primary key into `out`; without a primary, copies it.
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let Some(key) = self.primary() else {
            out.extend_from_slice(plain);
            return;
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&key.id().0);
        out.extend_from_slice(&nonce);
        let aad = self.aad(&out[..HEADER_LEN]);
        let sealed = key
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("sealing cannot fail for a datagram-sized message");
        out.extend_from_slice(&sealed);
    }

    /// Opens a received datagram: the plain gossip message it carries.
    ///
    /// # Errors
    /// [`Refused`], with the reason.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, Refused> {
        if datagram.len() < HEADER_LEN + TAG_LEN
            || &datagram[..2] != MAGIC
            || datagram[2] != VERSION
        {
            return if self.ring.read().accept_plain {
                Ok(datagram.to_vec())
            } else {
                Err(Refused::Unsealed)
            };
        }
        let id = KeyId(datagram[3..3 + ID_LEN].try_into().expect("4 bytes"));
        let key = {
            let ring = self.ring.read();
            ring.keys.iter().find(|k| k.id() == id).cloned()
        };
        let key = key.ok_or(Refused::UnknownKey)?;
        let nonce = XNonce::from_slice(&datagram[3 + ID_LEN..HEADER_LEN]);
        let aad = self.aad(&datagram[..HEADER_LEN]);
        key.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &datagram[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| Refused::Forged)
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + self.cluster.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(self.cluster.as_bytes());
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(ring: &Keyring, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ring.seal(plain, &mut out);
        out
    }

    #[test]
    fn keys_read_back_as_written_and_bad_text_is_a_clear_error() {
        let key = ClusterKey::generate();
        assert_eq!(
            ClusterKey::parse(&format!("  {}\n", key.encode())).unwrap(),
            key
        );
        assert_eq!(key.id().to_string().parse::<KeyId>().unwrap(), key.id());
        assert!(matches!(
            ClusterKey::parse("not base64!"),
            Err(KeyError::Malformed(_))
        ));
        let short = ClusterKey::parse(&STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.to_string().contains("16 bytes"), "{short}");
        assert!("xyz".parse::<KeyId>().is_err());
        assert_ne!(key.derive("route-cookie"), key.derive("other"));
        assert_ne!(
            key.derive("route-cookie"),
            ClusterKey::generate().derive("route-cookie")
        );
    }

    #[test]
    fn key_files_hold_the_primary_first_and_skip_comments() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("# rotation\n{}\n\n{}\n", a.encode(), b.encode()),
        )
        .unwrap();
        assert_eq!(ClusterKey::read_file(&path).unwrap(), vec![a, b]);
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(
            ClusterKey::read_file(&path),
            Err(KeyError::EmptyFile(_))
        ));
        assert!(matches!(
            ClusterKey::read_file(&dir.path().join("missing")),
            Err(KeyError::File { .. })
        ));
    }

    #[test]
    fn sealed_gossip_opens_only_with_the_key_and_cluster_that_sealed_it() {
        let key = ClusterKey::generate();
        let ring = Keyring::new("prod", vec![key.clone()]);
        let datagram = sealed(&ring, b"digest");
        assert_eq!(datagram.len(), b"digest".len() + OVERHEAD);
        assert_eq!(ring.open(&datagram).unwrap(), b"digest");
        // Each datagram has its own nonce.
        assert_ne!(sealed(&ring, b"digest"), datagram);

        let stranger = Keyring::new("prod", vec![ClusterKey::generate()]);
        assert_eq!(stranger.open(&datagram), Err(Refused::UnknownKey));
        let other_cluster = Keyring::new("staging", vec![key]);
        assert_eq!(other_cluster.open(&datagram), Err(Refused::Forged));
        for i in [3, HEADER_LEN, datagram.len() - 1] {
            let mut tampered = datagram.clone();
            tampered[i] ^= 1;
            assert!(ring.open(&tampered).is_err(), "byte {i} flipped");
        }
        assert_eq!(
            ring.open(&datagram[..datagram.len() - 1]),
            Err(Refused::Forged)
        );
        assert_eq!(ring.open(b"plain gossip"), Err(Refused::Unsealed));
    }

    #[test]
    fn rotation_installs_switches_and_removes_without_a_gap() {
        let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
        let a = Keyring::new("c", vec![old.clone()]);
        let b = Keyring::new("c", vec![old.clone()]);
        // Install everywhere: both still seal with the old key, both open either.
        a.install(new.clone());
        b.install(new.clone());
        // Switch one primary: it seals with the new key, the other still opens it.
        let before = a.generation();
        a.use_key(new.id()).unwrap();
        assert_ne!(a.generation(), before);
        assert_eq!(a.derive_all("x"), vec![new.derive("x"), old.derive("x")]);
        assert_eq!(b.open(&sealed(&a, b"x")).unwrap(), b"x");
        assert_eq!(a.open(&sealed(&b, b"y")).unwrap(), b"y");
        assert_eq!(
            a.remove(new.id()),
            Err(KeyringError::RemovingPrimary(new.id()))
        );
        b.use_key(new.id()).unwrap();
        a.remove(old.id()).unwrap();
        b.remove(old.id()).unwrap();
        assert_eq!(a.open(&sealed(&b, b"z")).unwrap(), b"z");
        let old_ring = Keyring::new("c", vec![old.clone()]);
        assert_eq!(
            a.open(&sealed(&old_ring, b"late")),
            Err(Refused::UnknownKey)
        );
        assert_eq!(a.remove(old.id()), Err(KeyringError::NoSuchKey(old.id())));
        assert_eq!(a.derive_all("x"), vec![new.derive("x")]);
        assert_eq!(a.use_key(old.id()), Err(KeyringError::NoSuchKey(old.id())));
        assert_eq!(
            a.view(),
            KeyringView {
                keys: vec![KeyInfo {
                    id: new.id().to_string(),
                    primary: true
                }],
                accept_plain: false
            }
        );
    }

    #[test]
    fn a_plain_cluster_turns_sealed_one_node_at_a_time() {
        let key = ClusterKey::generate();
        let (a, b) = (Keyring::new("c", vec![]), Keyring::new("c", vec![]));
        assert_eq!(sealed(&a, b"plain"), b"plain");
        assert_eq!(
            a.accept_plain(false),
            Err(KeyringError::NoPrimary),
            "refusing plain gossip without a key would cut the node off"
        );
        // 1. Install the key everywhere (still sending plain), 2. make it the primary
        // everywhere (plain still accepted from nodes not there yet), 3. refuse plain.
        a.install(key.clone());
        b.install(key.clone());
        assert_eq!(sealed(&a, b"still plain"), b"still plain");
        a.use_key(key.id()).unwrap();
        assert_eq!(b.open(&sealed(&a, b"sealed")).unwrap(), b"sealed");
        assert_eq!(a.open(&sealed(&b, b"plain")).unwrap(), b"plain");
        b.use_key(key.id()).unwrap();
        a.accept_plain(false).unwrap();
        b.accept_plain(false).unwrap();
        assert_eq!(a.open(b"plain"), Err(Refused::Unsealed));
        assert_eq!(a.open(&sealed(&b, b"sealed")).unwrap(), b"sealed");
    }
}

/// Gossip datagrams come from anyone who reaches the port: nothing but an untouched
/// datagram sealed with an installed key opens, and nothing panics.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_datagrams_never_open(bytes in vec(any::<u8>(), 0..2048), prefixed: bool) {
            let ring = Keyring::new("c", vec![ClusterKey::generate()]);
            let mut datagram = if prefixed { b"TG\x01".to_vec() } else { Vec::new() };
            datagram.extend_from_slice(&bytes);
            prop_assert!(ring.open(&datagram).is_err());
        }

        #[test]
        fn any_changed_byte_is_refused(
            message in vec(any::<u8>(), 0..512),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let ring = Keyring::new("c", vec![ClusterKey::generate()]);
            let mut datagram = Vec::new();
            ring.seal(&message, &mut datagram);
            prop_assert_eq!(ring.open(&datagram).unwrap(), message);
            let i = at.index(datagram.len());
            datagram[i] ^= flip;
            prop_assert!(ring.open(&datagram).is_err());
        }

        #[test]
        fn key_text_is_a_key_or_an_error(text in ".{0,100}") {
            if let Ok(key) = ClusterKey::parse(&text) {
                prop_assert_eq!(ClusterKey::parse(&key.encode()).unwrap(), key);
            }
        }
    }
}
