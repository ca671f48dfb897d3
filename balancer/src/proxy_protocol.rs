//! The PROXY protocol (v1 text, v2 binary): the header an L4 load balancer in front of the
//! balancer (AWS NLB, HAProxy in TCP mode) puts before a connection's own bytes, naming
//! the client it accepted. With `--proxy-protocol` every connection must start with one;
//! the client it names is the one admission counts and `X-Forwarded-For` carries.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header read: a v2 header with a few TLVs (AWS adds a VPC endpoint id);
/// v1's is at most 107 bytes.
const MAX_HEADER: usize = 1024;

/// The v2 header's first bytes.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header: the connection began {0:?}")]
    Missing(String),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("no complete PROXY protocol header within {0:?}")]
    TimedOut(Duration),
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// A connection's client as its PROXY header names it, and the bytes read past the header.
#[derive(Debug)]
pub struct Accepted {
    pub client: SocketAddr,
    pub rest: Vec<u8>,
}

/// Reads the PROXY header at the start of `stream`, within `wait`. A header that names no
/// client (v1 `UNKNOWN`, v2 `LOCAL` health checks, UNIX sockets) leaves `peer`.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    wait: Duration,
) -> Result<Accepted, HeaderError> {
    tokio::time::timeout(wait, read(stream, peer))
        .await
        .map_err(|_| HeaderError::TimedOut(wait))?
}

async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<Accepted, HeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 256];
        let n = stream
            .read(&mut chunk[..(MAX_HEADER - buf.len()).min(256)])
            .await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(accepted) = parse(&buf, peer)? {
            return Ok(accepted);
        }
        if buf.len() >= MAX_HEADER {
            return Err(HeaderError::Malformed(format!(
                "longer than {MAX_HEADER} bytes"
            )));
        }
    }
}

/// The client and the rest of `buf` once it holds a whole header, `None` while it may
/// still become one.
fn parse(buf: &[u8], peer: SocketAddr) -> Result<Option<Accepted>, HeaderError> {
    let begins = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if !begins(b"PROXY ") && !begins(V2_SIGNATURE) {
        let start = String::from_utf8_lossy(&buf[..buf.len().min(16)]).into_owned();
        return Err(HeaderError::Missing(start));
    }
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    let (length, client) = match header {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => {
                    SocketAddr::from((ip.source_address, ip.source_port))
                }
                ppp::v1::Addresses::Tcp6(ip) => {
                    SocketAddr::from((ip.source_address, ip.source_port))
                }
                ppp::v1::Addresses::Unknown => peer,
            };
            (header.header.len(), client)
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(ip)) => {
                    SocketAddr::from((ip.source_address, ip.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(ip)) => {
                    SocketAddr::from((ip.source_address, ip.source_port))
                }
                _ => peer,
            };
            (header.len(), client)
        }
        HeaderResult::V1(Err(err)) => return Err(HeaderError::Malformed(err.to_string())),
        HeaderResult::V2(Err(err)) => return Err(HeaderError::Malformed(err.to_string())),
    };
    Ok(Some(Accepted {
        client,
        rest: buf[length..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.9:4000".parse().unwrap()
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    #[test]
    fn v1_names_the_client_and_keeps_the_bytes_after_it() {
        let input = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n";
        let accepted = parse(input, peer()).unwrap().unwrap();
        assert_eq!(accepted.client, "203.0.113.7:56324".parse().unwrap());
        assert_eq!(accepted.rest, b"GET / HTTP/1.1\r\n");

        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8080\r\n";
        let accepted = parse(input, peer()).unwrap().unwrap();
        assert_eq!(accepted.client, "[2001:db8::7]:443".parse().unwrap());
        assert!(accepted.rest.is_empty());

        let accepted = parse(b"PROXY UNKNOWN\r\n", peer()).unwrap().unwrap();
        assert_eq!(accepted.client, peer(), "UNKNOWN leaves the peer");
    }

    #[test]
    fn v2_names_the_client_and_local_leaves_the_peer() {
        let mut addresses = vec![198, 51, 100, 4, 10, 0, 0, 1];
        addresses.extend_from_slice(&4242u16.to_be_bytes());
        addresses.extend_from_slice(&8080u16.to_be_bytes());
        // An AWS-like TLV (type 0xEA) after the addresses.
        let tlv = [0xEA, 0, 3, b'v', b'p', b'c'];
        let mut input = v2(1, 0x11, &addresses, &tlv);
        input.extend_from_slice(b"\x16\x03\x01");
        let accepted = parse(&input, peer()).unwrap().unwrap();
        assert_eq!(accepted.client, "198.51.100.4:4242".parse().unwrap());
        assert_eq!(accepted.rest, b"\x16\x03\x01");

        let local = v2(0, 0x00, &[], &[]);
        let accepted = parse(&local, peer()).unwrap().unwrap();
        assert_eq!(accepted.client, peer());
    }

    #[test]
    fn a_partial_header_waits_and_garbage_is_refused_at_once() {
        let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n";
        for end in [1, 6, 20, full.len() - 1] {
            assert!(parse(&full[..end], peer()).unwrap().is_none(), "{end}");
        }
        let mut addresses = vec![198, 51, 100, 4, 10, 0, 0, 1, 0, 1, 0, 2];
        let whole = v2(1, 0x11, &addresses, &[]);
        assert!(parse(&whole[..20], peer()).unwrap().is_none());

        for garbage in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        ] {
            assert!(parse(garbage, peer()).is_err(), "{garbage:?}");
        }
        // A v2 header whose declared addresses are too short for its family.
        addresses.truncate(4);
        assert!(parse(&v2(1, 0x11, &addresses, &[]), peer()).is_err());
    }
}
