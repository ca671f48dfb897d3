//! Versions of session writes: a hybrid logical clock stamp plus the writing node.
//!
//! Versions order every write in the cluster: physical milliseconds first, then a logical
//! counter for writes within one millisecond (or when a peer's clock is ahead), then the
//! writer's node tag to break ties. A stale copy never overwrites a newer one, and after a
//! split the newest write wins on both sides.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A write's version. Ordered; `Version::ZERO` precedes every real version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    /// Milliseconds since the Unix epoch (the physical part of the clock).
    pub millis: u64,
    /// Logical counter within one `millis`.
    pub counter: u32,
    /// Tag of the node that wrote, see [`node_tag`].
    pub node: u32,
}

impl Version {
    pub const ZERO: Version = Version {
        millis: 0,
        counter: 0,
        node: 0,
    };
}

/// `millis.counter.node` in hex for the node: compact, and sortable by eye.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{:08x}", self.millis, self.counter, self.node)
    }
}

/// A version string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: expected <millis>.<counter>.<node hex>")]
pub struct VersionParseError(String);

impl FromStr for Version {
    type Err = VersionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionParseError(s.to_string());
        let mut parts = s.split('.');
        let (Some(millis), Some(counter), Some(node), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        Ok(Version {
            millis: millis.parse().map_err(|_| err())?,
            counter: counter.parse().map_err(|_| err())?,
            node: u32::from_str_radix(node, 16).map_err(|_| err())?,
        })
    }
}

/// A stable 32-bit tag of a node id, the same on every node and every release.
pub fn node_tag(node_id: &str) -> u32 {
    fnv1a(node_id.as_bytes())
}

/// 32-bit FNV-1a: a fixed, fast hash for short keys (not for untrusted hash tables).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A hybrid logical clock. Pure: the caller supplies physical time.
#[derive(Debug, Clone)]
pub struct HybridClock {
    node: u32,
    last: Version,
}

impl HybridClock {
    pub fn new(node: u32) -> Self {
        HybridClock {
            node,
            last: Version::ZERO,
        }
    }

    /// A version for a local write at physical time `now_ms`, greater than every version
    /// this clock issued or observed.
    pub fn tick(&mut self, now_ms: u64) -> Version {
        let next = if now_ms > self.last.millis {
            Version {
                millis: now_ms,
                counter: 0,
                node: self.node,
            }
        } else {
            Version {
                millis: self.last.millis,
                counter: self.last.counter + 1,
                node: self.node,
            }
        };
        self.last = next;
        next
    }

    /// Takes note of a version written elsewhere, so that later local writes order after it.
    pub fn observe(&mut self, seen: Version) {
        if (seen.millis, seen.counter) > (self.last.millis, self.last.counter) {
            self.last = Version {
                millis: seen.millis,
                counter: seen.counter,
                node: self.node,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_increase_even_when_time_stands_still_or_goes_back() {
        let mut clock = HybridClock::new(7);
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(999);
        let d = clock.tick(1_001);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!((c.millis, c.counter), (1_000, 2));
        assert_eq!((d.millis, d.counter), (1_001, 0));
    }

    #[test]
    fn observed_versions_order_before_later_local_writes() {
        let mut clock = HybridClock::new(1);
        let remote = Version {
            millis: 5_000,
            counter: 3,
            node: 2,
        };
        clock.observe(remote);
        let local = clock.tick(4_000);
        assert!(local > remote);
        assert_eq!(local.node, 1);
    }

    #[test]
    fn node_breaks_ties() {
        let a = Version {
            millis: 1,
            counter: 1,
            node: 1,
        };
        let b = Version {
            millis: 1,
            counter: 1,
            node: 2,
        };
        assert!(a < b);
        assert!(Version::ZERO < a);
    }

    #[test]
    fn text_round_trip() {
        let v = Version {
            millis: 1_732_000_000_123,
            counter: 4,
            node: node_tag("web-1"),
        };
        assert_eq!(v.to_string().parse::<Version>().unwrap(), v);
        for bad in ["", "1.2", "1.2.3.4", "x.1.1", "1.1.zz"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_tags_are_stable() {
        // FNV-1a reference values; a change here would reorder writes across releases.
        assert_eq!(node_tag(""), 0x811c_9dc5);
        assert_eq!(node_tag("a"), 0xe40c_292c);
        assert_ne!(node_tag("web-1"), node_tag("web-2"));
    }
}
