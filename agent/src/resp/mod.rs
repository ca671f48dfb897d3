//! The Redis-protocol (RESP2/RESP3) endpoint apps keep their sessions through.

mod clients;
pub(crate) use clients::ClientSession;
pub mod cmd;
pub mod connection;
pub mod parse;
pub mod pubsub;
pub mod reply;

use std::net::SocketAddr;

use tandem_cluster::net::ConnectionLimit;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use self::clients::Clients;
use crate::scripting::Scripts;
use crate::sessions::Sessions;

/// Bounds on what one client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Largest bulk string accepted in a request; a larger one is read and discarded, and
    /// its request answered with the limit error (before authentication, the connection is
    /// closed, as Redis does).
    pub max_bulk_bytes: usize,
    /// The store's limit on a key or value, named in that error.
    pub max_value_bytes: usize,
    /// Largest single request.
    pub max_request_bytes: usize,
    /// Most clients connected at once (Redis' `maxclients`).
    pub max_clients: usize,
    /// Most arguments in one request.
    pub max_array_len: usize,
    /// Whether these are the limits of clients that have not authenticated yet (the
    /// errors say so, as Redis' do).
    pub pre_auth: bool,
}

impl RespLimits {
    /// What a client may send before it authenticated, as Redis allows: enough for AUTH and
    /// HELLO, not enough to make the agent buffer for a stranger.
    pub const UNAUTHENTICATED: RespLimits = RespLimits {
        max_bulk_bytes: 16 * 1024,
        max_value_bytes: 16 * 1024,
        max_request_bytes: 256 * 1024,
        max_clients: 0,
        max_array_len: 10,
        pre_auth: true,
    };

    /// Limits that let every value up to the store's limit through; a larger one is
    /// discarded as it arrives and refused with the store's limit error.
    pub fn for_value_limit(max_value_bytes: usize) -> Self {
        let max_bulk_bytes = max_value_bytes;
        RespLimits {
            max_bulk_bytes,
            max_value_bytes,
            max_request_bytes: max_bulk_bytes.saturating_mul(4).max(64 << 20),
            max_clients: 10_000,
            max_array_len: 1024 * 1024,
            pre_auth: false,
        }
    }
}

/// The RESP listener, bound before serving so an address in use fails start-up.
pub struct RespServer {
    listener: TcpListener,
    limits: RespLimits,
    password: Option<String>,
}

impl RespServer {
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        limits: RespLimits,
        password: Option<String>,
    ) -> Result<Self, tandem_cluster::net::BindError> {
        let listener = tandem_cluster::net::bind_tcp("RESP endpoint", addr).await?;
        Ok(RespServer {
            listener,
            limits,
            password,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts clients until `stop` turns true; open connections finish on their own.
    pub async fn serve(self, store: Sessions, scripts: Scripts, mut stop: watch::Receiver<bool>) {
        let clients = Clients::new(
            self.password.clone(),
            self.limits.max_clients,
            store.store.gate().busy_after(),
        );
        // Exported from the start, so that a rate over it sees the first refusal.
        metrics::counter!(names::OVERSIZED).increment(0);
        for name in [
            pubsub::names::MESSAGES,
            pubsub::names::OVERFLOWS,
            crate::scripting::names::SCRIPTS,
            crate::scripting::names::KILLED,
        ] {
            metrics::counter!(name).increment(0);
        }
        // Registered once, not looked up per pipeline.
        let commands = metrics::counter!(names::COMMANDS);
        if let Ok(addr) = self.local_addr() {
            info!(%addr, max_clients = self.limits.max_clients, "RESP endpoint listening");
        }
        let limit = ConnectionLimit::new(self.limits.max_clients);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((mut stream, addr)) => {
                        let Some(permit) = limit.admit() else {
                            metrics::counter!(names::REFUSED).increment(1);
                            warn!(%addr, max = limit.max(), "refused a RESP client: too many connected");
                            tokio::spawn(async move {
                                use tokio::io::AsyncWriteExt;
                                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                            });
                            continue;
                        };
                        let serving = connection::serve(
                            stream,
                            store.clone(),
                            clients.clone(),
                            scripts.clone(),
                            self.limits,
                            commands.clone(),
                        );
                        tokio::spawn(async move {
                            serving.await;
                            drop(permit);
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %err, "RESP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = tandem_cluster::stopped(&mut stop) => return,
            }
        }
    }
}

/// Metric names of the RESP endpoint.
pub mod names {
    pub const CONNECTIONS: &str = "tandem_resp_connections";
    pub const COMMANDS: &str = "tandem_resp_commands_total";
    pub const PROTOCOL_ERRORS: &str = "tandem_resp_protocol_errors_total";
    /// Counter: clients refused because `max_clients` were connected.
    pub const REFUSED: &str = "tandem_resp_connections_refused_total";
    /// Counter: `AUTH` (or `HELLO … AUTH`) with a wrong user or password.
    pub const AUTH_FAILURES: &str = "tandem_resp_auth_failures_total";
    /// Counter: requests refused (and discarded unread) for an argument or a size past the
    /// limits.
    pub const OVERSIZED: &str = "tandem_resp_oversized_requests_total";
}
