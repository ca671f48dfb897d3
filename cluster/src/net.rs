//! Addresses: resolving seeds, choosing the address to advertise, finding the node's subnet.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tandem_common::schema::Subnet;

/// A TCP endpoint could not be bound (in use, not a local address, no permission).
#[derive(Debug, thiserror::Error)]
#[error("{what} on {addr}/tcp")]
pub struct BindError {
    /// Which endpoint, e.g. `admin endpoint`.
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// At most so many connections open at once on an endpoint.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// A place for one more connection, held until dropped; `None` when all are taken.
    pub fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Binds the TCP listener of the endpoint `what`.
///
/// # Errors
/// [`BindError`] naming the endpoint and the address.
pub async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// A seed that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("seed {seed:?}: expected HOST:PORT")]
    Malformed { seed: String },
    #[error("seed {seed:?}: cannot resolve the host name")]
    Unresolvable {
        seed: String,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves every seed once, to check it before the node starts.
///
/// A seed that resolves but does not answer is fine (it is retried every gossip round);
/// a seed that is not `HOST:PORT` or whose name does not resolve is a configuration error.
///
/// # Errors
/// The first seed that is malformed or unresolvable.
pub async fn resolve_seeds(seeds: &[String]) -> Result<Vec<SocketAddr>, SeedError> {
    let mut resolved = Vec::new();
    for seed in seeds {
        let malformed = || SeedError::Malformed { seed: seed.clone() };
        let (host, port) = seed.rsplit_once(':').ok_or_else(malformed)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(malformed());
        }
        let addrs = tokio::net::lookup_host(seed.as_str())
            .await
            .map_err(|source| SeedError::Unresolvable {
                seed: seed.clone(),
                source,
            })?;
        resolved.extend(addrs);
    }
    Ok(resolved)
}

/// The address other nodes should reach `bound` at.
///
/// An explicit address wins. A concrete bound IP is used as is. For an unspecified IP
/// (`0.0.0.0`), the source address the kernel would use towards the first seed is taken,
/// else the first non-loopback IPv4 address of the host, else loopback.
pub fn advertise_addr(
    bound: SocketAddr,
    explicit: Option<SocketAddr>,
    seeds: &[SocketAddr],
) -> SocketAddr {
    if let Some(addr) = explicit {
        return addr;
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = seeds
        .iter()
        .find_map(|seed| route_source(*seed))
        .or_else(first_non_loopback_ipv4)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port())
}

/// The local IP the kernel routes from towards `peer` (no packet is sent).
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

fn first_non_loopback_ipv4() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|interface| interface.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// The subnet (network address and prefix) of the interface that holds `ip`.
pub fn subnet_of(ip: IpAddr) -> Option<Subnet> {
    let interface = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|interface| interface.ip() == ip)?;
    let cidr = match interface.addr {
        if_addrs::IfAddr::V4(v4) => {
            let network = u32::from(v4.ip) & u32::from(v4.netmask);
            format!("{}/{}", Ipv4Addr::from(network), v4.prefixlen)
        }
        if_addrs::IfAddr::V6(v6) => {
            let network = u128::from(v6.ip) & u128::from(v6.netmask);
            format!("{}/{}", std::net::Ipv6Addr::from(network), v6.prefixlen)
        }
    };
    // Multicast capability is established by probing, not assumed.
    Some(Subnet {
        cidr,
        multicast: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeds_must_be_host_and_port() {
        for bad in [
            "localhost",
            ":7946",
            "localhost:",
            "localhost:http",
            "localhost:0",
        ] {
            let err = resolve_seeds(&[bad.to_string()]).await.unwrap_err();
            assert!(matches!(err, SeedError::Malformed { .. }), "{bad}: {err}");
        }
        let addrs = resolve_seeds(&["127.0.0.1:7946".into(), "localhost:7000".into()])
            .await
            .unwrap();
        assert!(addrs.contains(&"127.0.0.1:7946".parse().unwrap()));
        assert!(addrs.iter().any(|addr| addr.port() == 7000));
    }

    #[tokio::test]
    async fn unresolvable_names_are_errors() {
        let err = resolve_seeds(&["no-such-host.invalid:7946".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, SeedError::Unresolvable { .. }), "{err}");
        assert!(err.to_string().contains("no-such-host.invalid"));
    }

    #[test]
    fn advertise_address_choice() {
        let bound: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let explicit: SocketAddr = "10.9.8.7:1234".parse().unwrap();
        assert_eq!(advertise_addr(bound, Some(explicit), &[]), explicit);
        let concrete: SocketAddr = "127.0.0.3:7946".parse().unwrap();
        assert_eq!(advertise_addr(concrete, None, &[]), concrete);
        let seed: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            advertise_addr(bound, None, &[seed]),
            "127.0.0.1:7946".parse().unwrap()
        );
    }

    #[test]
    fn loopback_subnet() {
        let subnet = subnet_of(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(subnet.cidr, "127.0.0.0/8");
    }
}
