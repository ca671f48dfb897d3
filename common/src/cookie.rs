//! The route cookie: which node (and which partner) a user is stuck to, signed so that
//! only the cluster's balancers can issue one.
//!
//! Value: `v1.<node>.<partner>.<issued>.<mac>`, where node and partner are base64url (no
//! padding; an empty partner when the node had none), `issued` is seconds since the Unix
//! epoch, and `mac` is the base64url HMAC-SHA256 of everything before it under the cluster
//! secret. Every balancer with the secret reads and writes the same cookies.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Default cookie name.
pub const DEFAULT_NAME: &str = "TANDEM_ROUTE";
const PREFIX: &str = "v1";
/// Longest cookie value read (anything longer is not ours).
const MAX_VALUE_LEN: usize = 1024;

/// A user's route: the node that holds the session, and its partner when issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCookie {
    pub node: String,
    pub partner: Option<String>,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length")
}

impl RouteCookie {
    /// The signed cookie value.
    pub fn encode(&self, secret: &[u8]) -> String {
        let partner = self.partner.as_deref().unwrap_or("");
        let body = format!(
            "{PREFIX}.{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&self.node),
            URL_SAFE_NO_PAD.encode(partner),
            self.issued_at
        );
        let mut mac = mac(secret);
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// Reads a cookie value. Anything forged, malformed, issued in the future (beyond
    /// a minute of clock skew) or older than `max_age_secs` is `None`: treated as absent.
    pub fn decode(value: &str, secret: &[u8], now_secs: u64, max_age_secs: u64) -> Option<Self> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        let (body, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = mac(secret);
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&tag).ok()?;
        let mut parts = body.split('.');
        let (Some(PREFIX), Some(node), Some(partner), Some(issued), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let text = |part: &str| String::from_utf8(URL_SAFE_NO_PAD.decode(part).ok()?).ok();
        let node = text(node).filter(|n| !n.is_empty())?;
        let partner = text(partner)?;
        let issued_at: u64 = issued.parse().ok()?;
        if issued_at > now_secs.saturating_add(60)
            || now_secs.saturating_sub(issued_at) > max_age_secs
        {
            return None;
        }
        Some(RouteCookie {
            node,
            partner: (!partner.is_empty()).then_some(partner),
            issued_at,
        })
    }
}

/// The value of cookie `name` in a `Cookie` request header, if present.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"cluster secret";
    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn cookie(node: &str, partner: Option<&str>) -> RouteCookie {
        RouteCookie {
            node: node.into(),
            partner: partner.map(Into::into),
            issued_at: NOW,
        }
    }

    #[test]
    fn round_trips_including_awkward_node_ids() {
        for (node, partner) in [
            ("web-1", Some("web-2")),
            ("a.b.c", None),
            ("ü@x;y=z", Some(".")),
        ] {
            let original = cookie(node, partner);
            let value = original.encode(SECRET);
            assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{value}"
            );
            assert_eq!(
                RouteCookie::decode(&value, SECRET, NOW, DAY),
                Some(original)
            );
        }
    }

    #[test]
    fn forged_tampered_expired_and_malformed_cookies_are_absent() {
        let value = cookie("web-1", Some("web-2")).encode(SECRET);
        let (body, tag) = value.rsplit_once('.').unwrap();
        let forged_node = format!(
            "v1.{}.{}.{NOW}.{tag}",
            URL_SAFE_NO_PAD.encode("web-9"),
            URL_SAFE_NO_PAD.encode("web-2")
        );
        let cases = [
            RouteCookie::decode(&value, b"another secret", NOW, DAY),
            RouteCookie::decode(&forged_node, SECRET, NOW, DAY),
            RouteCookie::decode(&format!("{body}.{}", &tag[1..]), SECRET, NOW, DAY),
            RouteCookie::decode(&format!("{body}x.{tag}"), SECRET, NOW, DAY),
            RouteCookie::decode(&value, SECRET, NOW + DAY + 1, DAY),
            RouteCookie::decode(&value, SECRET, NOW - 3_600, DAY),
            RouteCookie::decode("", SECRET, NOW, DAY),
            RouteCookie::decode("garbage", SECRET, NOW, DAY),
            RouteCookie::decode("a.b.c.d.e.f", SECRET, NOW, DAY),
            RouteCookie::decode(&"x".repeat(5_000), SECRET, NOW, DAY),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(*case, None, "case {i}");
        }
        // A cookie the secret signed but with an empty node is refused too.
        let mut mac = mac(SECRET);
        let body = format!("v1..{}.{NOW}", URL_SAFE_NO_PAD.encode("p"));
        mac.update(body.as_bytes());
        let value = format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(RouteCookie::decode(&value, SECRET, NOW, DAY), None);
    }

    #[test]
    fn finds_the_named_cookie() {
        let header = "a=1; TANDEM_ROUTE=v1.x.y.1.z; b=\"2\"";
        assert_eq!(find(header, DEFAULT_NAME), Some("v1.x.y.1.z"));
        assert_eq!(find(header, "b"), Some("2"));
        assert_eq!(find(header, "missing"), None);
        assert_eq!(find("malformed", "malformed"), None);
    }
}

/// Cookies come from users: nothing but an untouched cookie signed with the secret decodes.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"the route cookie secret of a test";
    const NOW: u64 = 1_800_000_000;
    const MAX_AGE: u64 = 86_400;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_values_are_absent(value in ".{0,300}") {
            prop_assert_eq!(RouteCookie::decode(&value, SECRET, NOW, MAX_AGE), None);
        }

        #[test]
        fn cookies_read_back_and_any_change_makes_them_absent(
            node in "[a-z0-9.-]{1,40}",
            partner in proptest::option::of("[a-z0-9.-]{1,40}"),
            age in 0..MAX_AGE,
            at in any::<prop::sample::Index>(),
            replacement in any::<char>(),
        ) {
            let cookie = RouteCookie { node, partner, issued_at: NOW - age };
            let value = cookie.encode(SECRET);
            prop_assert_eq!(RouteCookie::decode(&value, SECRET, NOW, MAX_AGE), Some(cookie));
            prop_assert_eq!(RouteCookie::decode(&value, b"another secret", NOW, MAX_AGE), None);
            let mut chars: Vec<char> = value.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != replacement);
            chars[i] = replacement;
            let tampered: String = chars.into_iter().collect();
            prop_assert_eq!(RouteCookie::decode(&tampered, SECRET, NOW, MAX_AGE), None);
        }
    }
}
