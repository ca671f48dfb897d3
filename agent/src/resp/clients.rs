//! Connected clients: each connection's session state, and the registry `CLIENT LIST` reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

/// The state of one connection.
pub struct ClientSession {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    /// 2 or 3 (`HELLO 3`).
    pub protocol: u8,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub created: Instant,
    pub last_command: &'static str,
    /// Set by `QUIT`: close after the reply.
    pub quit: bool,
    /// The password this server requires (`AUTH`), if any.
    pub password: Option<Arc<str>>,
    /// Whether the client may run commands: no password is required, or it gave it.
    pub authenticated: bool,
}

impl ClientSession {
    /// One `CLIENT LIST` line (without the newline), in Redis' key=value format.
    pub fn describe(&self) -> String {
        let text = |value: &Option<Bytes>| {
            value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} laddr={} name={} age={} db=0 cmd={} lib-name={} lib-ver={} resp={}",
            self.id,
            self.addr,
            self.laddr,
            text(&self.name),
            self.created.elapsed().as_secs(),
            self.last_command,
            text(&self.lib_name),
            text(&self.lib_ver),
            self.protocol,
        )
    }
}

/// All connections, by id.
#[derive(Clone, Default)]
pub struct Clients {
    next_id: Arc<AtomicU64>,
    registry: Arc<Mutex<BTreeMap<u64, String>>>,
    password: Option<Arc<str>>,
}

impl Clients {
    /// The clients of a server that requires `password` (Redis' `requirepass`).
    pub fn with_password(password: Option<String>) -> Clients {
        Clients {
            password: password.map(Arc::from),
            ..Clients::default()
        }
    }

    /// A session for a new connection, registered.
    pub fn connect(&self, addr: SocketAddr, laddr: SocketAddr) -> ClientSession {
        let session = ClientSession {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            addr,
            laddr,
            protocol: 2,
            name: None,
            lib_name: None,
            lib_ver: None,
            created: Instant::now(),
            last_command: "NULL",
            quit: false,
            password: self.password.clone(),
            authenticated: self.password.is_none(),
        };
        self.update(&session);
        session
    }

    /// Refreshes what `CLIENT LIST` shows for `session`.
    pub fn update(&self, session: &ClientSession) {
        self.registry.lock().insert(session.id, session.describe());
    }

    pub fn disconnect(&self, id: u64) {
        self.registry.lock().remove(&id);
    }

    pub fn count(&self) -> usize {
        self.registry.lock().len()
    }

    /// `CLIENT LIST`: one line per client; the caller's own line is current.
    pub fn list(&self, caller: &ClientSession) -> String {
        self.update(caller);
        self.registry
            .lock()
            .values()
            .map(|line| format!("{line}\n"))
            .collect()
    }
}
