//! Connected clients: each connection's session state, and the registry `CLIENT LIST` reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use std::time::Duration;

use super::cmd::Settings;
use super::pubsub::{PubSub, Subscription};
use crate::store::WatchMark;

/// The state of one connection.
pub struct ClientSession {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    /// 2 or 3 (`HELLO 3`).
    pub protocol: u8,
    /// The database commands run against (`SELECT`).
    pub db: usize,
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
    /// The transaction being queued (`MULTI` until `EXEC` or `DISCARD`).
    pub multi: Option<Transaction>,
    /// The keys `WATCH` named: database, key, and what it held then.
    pub watched: Vec<(usize, Bytes, WatchMark)>,
    /// Channels and patterns subscribed to, and the queue of their messages.
    pub pubsub: Option<Subscription>,
}

/// The commands of a transaction, queued until `EXEC`.
#[derive(Debug, Default)]
pub struct Transaction {
    pub commands: Vec<Vec<Bytes>>,
    /// Bytes of the queued commands' arguments (bounded, see `transactions.rs`).
    pub bytes: usize,
    /// A command was refused while queuing: `EXEC` discards the transaction.
    pub aborted: bool,
}

impl ClientSession {
    /// The session a script's commands run in: the caller's database and identity, RESP2
    /// until the script says otherwise (`redis.setresp`), no transaction.
    pub fn for_script(&self) -> ClientSession {
        ClientSession {
            id: self.id,
            addr: self.addr,
            laddr: self.laddr,
            protocol: 2,
            db: self.db,
            name: self.name.clone(),
            lib_name: None,
            lib_ver: None,
            created: self.created,
            last_command: "eval",
            quit: false,
            password: self.password.clone(),
            authenticated: true,
            multi: None,
            watched: Vec::new(),
            pubsub: None,
        }
    }

    /// One `CLIENT LIST` line (without the newline), in Redis' key=value format.
    pub fn describe(&self) -> String {
        let text = |value: &Option<Bytes>| {
            value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let multi = self.multi.as_ref().map_or(-1, |t| t.commands.len() as i64);
        format!(
            "id={} addr={} laddr={} name={} age={} db={} sub={} psub={} multi={multi} watch={} cmd={} lib-name={} lib-ver={} resp={}",
            self.id,
            self.addr,
            self.laddr,
            text(&self.name),
            self.created.elapsed().as_secs(),
            self.db,
            self.pubsub.as_ref().map_or(0, |s| s.channels.len()),
            self.pubsub.as_ref().map_or(0, |s| s.patterns.len()),
            self.watched.len(),
            self.last_command,
            text(&self.lib_name),
            text(&self.lib_ver),
            self.protocol,
        )
    }
}

/// All connections, by id.
#[derive(Clone)]
pub struct Clients {
    next_id: Arc<AtomicU64>,
    registry: Arc<Mutex<BTreeMap<u64, String>>>,
    password: Option<Arc<str>>,
    max_clients: usize,
    started: Instant,
    settings: Arc<Settings>,
    pubsub: Arc<PubSub>,
}

impl Clients {
    /// The clients of a server that requires `password` (Redis' `requirepass`), if any,
    /// and admits at most `max_clients`.
    pub fn new(password: Option<String>, max_clients: usize, busy_after: Duration) -> Clients {
        Clients {
            next_id: Arc::default(),
            registry: Arc::default(),
            password: password.map(Arc::from),
            max_clients,
            started: Instant::now(),
            settings: Arc::new(Settings::new(busy_after)),
            pubsub: Arc::new(PubSub::new()),
        }
    }

    /// The endpoint's channels and their subscribers.
    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    /// What `CONFIG SET` changed.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Most clients connected at once (`maxclients`).
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Connections accepted since start.
    pub fn connections_received(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// When the endpoint started serving.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A session for a new connection, registered.
    pub fn connect(&self, addr: SocketAddr, laddr: SocketAddr) -> ClientSession {
        let session = ClientSession {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            addr,
            laddr,
            protocol: 2,
            db: 0,
            name: None,
            lib_name: None,
            lib_ver: None,
            created: Instant::now(),
            last_command: "NULL",
            quit: false,
            password: self.password.clone(),
            authenticated: self.password.is_none(),
            multi: None,
            watched: Vec::new(),
            pubsub: None,
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

    /// `CLIENT LIST`: one line per client, or per client of `ids`; the caller's own line
    /// is current.
    pub fn list(&self, caller: &ClientSession, ids: Option<&[u64]>) -> String {
        self.update(caller);
        self.registry
            .lock()
            .iter()
            .filter(|(id, _)| ids.is_none_or(|ids| ids.contains(id)))
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }
}
