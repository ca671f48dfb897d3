//! Who may open a connection: at most `--max-connections` in all and
//! `--max-connections-per-client` from one address, so that one client (a slowloris that
//! opens connections and never finishes a request) cannot take every slot. A refused
//! connection of plain HTTP is told why (503 or 429, with `Retry-After`) before it is
//! closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tandem_cluster::net::ConnectionLimit;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::proxy::names;

/// How long a refused connection is read from (and its bytes dropped) after its answer,
/// so that closing it does not reset the answer away before the client read it.
const LINGER: Duration = Duration::from_secs(1);

/// The admission of user connections, shared by every serving thread.
#[derive(Clone)]
pub struct Admission {
    total: ConnectionLimit,
    per_client: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    header_timeout: Duration,
}

/// A connection's places, given back when it closes.
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    client: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` are open.
    Total,
    /// `--max-connections-per-client` are open from this address.
    PerClient,
    /// `--proxy-protocol` is on and the connection did not start with a valid header.
    ProxyHeader,
}

impl Admission {
    pub fn new(total: ConnectionLimit, per_client: usize, header_timeout: Duration) -> Self {
        // Every reason exists in /metrics from the start.
        for refusal in [Refusal::Total, Refusal::PerClient, Refusal::ProxyHeader] {
            refusal.counter().increment(0);
        }
        Admission {
            total,
            per_client,
            open: Arc::default(),
            header_timeout,
        }
    }

    /// How long a user may take to send a request's head.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// Places for one more connection from `client`, or why there are none.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refusal> {
        let total = self.admit_any()?;
        self.admit_client(total, client)
    }

    /// A place among `--max-connections`, before the client is known (behind a PROXY
    /// protocol header).
    pub fn admit_any(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.total.admit().ok_or(Refusal::Total)
    }

    /// `client`'s place, for a connection that holds a place among `--max-connections`.
    pub fn admit_client(
        &self,
        total: OwnedSemaphorePermit,
        client: IpAddr,
    ) -> Result<Admitted, Refusal> {
        let mut open = self.open.lock();
        let count = open.entry(client).or_insert(0);
        if *count >= self.per_client {
            return Err(Refusal::PerClient);
        }
        *count += 1;
        Ok(Admitted {
            _total: total,
            client,
            open: self.open.clone(),
        })
    }
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerClient => "max_connections_per_client",
            Refusal::ProxyHeader => "proxy_protocol",
        }
    }

    pub fn counter(self) -> metrics::Counter {
        metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => self.reason())
    }

    /// The answer a refused plain-HTTP connection gets before it is closed.
    fn response(self) -> &'static [u8] {
        match self {
            // Not speaking the expected protocol: there is nobody to answer.
            Refusal::ProxyHeader => b"",
            Refusal::Total => {
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Type: text/plain\r\nContent-Length: 36\r\nConnection: close\r\n\r\ntoo many connections; retry shortly\n"
            }
            Refusal::PerClient => {
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\ntoo many connections from your address\n"
            }
        }
    }

    /// Counts the refusal and closes `stream`, after answering it where a response can
    /// still be written (plain HTTP; over TLS the handshake has not even begun).
    pub fn answer(self, stream: TcpStream, plain_http: bool) {
        self.counter().increment(1);
        let remote = stream.peer_addr().ok();
        debug!(?remote, reason = self.reason(), "refused a user connection");
        if !plain_http || self.response().is_empty() {
            return;
        }
        // A fresh socket's send buffer takes the answer whole, without waiting.
        if stream.try_write(self.response()).is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(LINGER, async {
                let mut sink = [0u8; 4096];
                // Half-closed: the client reads the answer, then the end.
                let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_place_and_places_come_back() {
        let admission = Admission::new(ConnectionLimit::new(3), 2, Duration::from_secs(1));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerClient));
        let other = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Refusal::Total));
        drop(first);
        let _again = admission.admit(a).unwrap();
        drop(other);
        assert!(
            admission.open.lock().get(&b).is_none(),
            "no entry left for b"
        );
    }

    #[test]
    fn refusals_declare_their_length() {
        for refusal in [Refusal::Total, Refusal::PerClient] {
            let text = std::str::from_utf8(refusal.response()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{refusal:?}");
        }
    }
}
