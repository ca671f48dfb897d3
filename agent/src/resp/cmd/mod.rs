//! Command dispatch: one table from name to arity, flags, key positions and handler,
//! handlers grouped by family. `COMMAND`, `INFO commandstats`, the README's command list
//! and docs/sessions.md all come from this table.
//!
//! | file | commands |
//! | --- | --- |
//! | `connection.rs` | PING ECHO QUIT AUTH HELLO SELECT CLIENT |
//! | `server.rs` | INFO COMMAND CONFIG DBSIZE FLUSHDB FLUSHALL TIME |
//! | `transactions.rs` | MULTI EXEC DISCARD WATCH UNWATCH |
//! | `scripting.rs` | EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT |
//! | `pubsub.rs` | SUBSCRIBE PSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE PUBLISH PUBSUB |
//! | `keys.rs` | DEL UNLINK EXISTS TYPE EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST TTL PTTL EXPIRETIME PEXPIRETIME TOUCH SCAN KEYS RENAME RENAMENX COPY RANDOMKEY OBJECT |
//! | `strings.rs` | GET SET SETEX PSETEX SETNX GETDEL GETEX GETSET MGET MSET MSETNX INCR INCRBY DECR DECRBY INCRBYFLOAT APPEND STRLEN GETRANGE SUBSTR SETRANGE SETBIT GETBIT BITCOUNT |
//! | `hashes.rs` | HSET HMSET HGET HMGET HGETALL HDEL HEXISTS HLEN HKEYS HVALS HINCRBY HINCRBYFLOAT HSETNX HSTRLEN HRANDFIELD HSCAN |
//! | `sets.rs` | SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SMOVE SSCAN SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE SINTERCARD |
//! | `zsets.rs` | ZADD ZREM ZSCORE ZMSCORE ZINCRBY ZCARD ZCOUNT ZLEXCOUNT ZRANK ZREVRANK ZRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE ZREVRANGE ZRANGEBYLEX ZREVRANGEBYLEX ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZSCAN |
//! | `lists.rs` | LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LRANGE LLEN LINDEX LSET LREM LTRIM LINSERT LPOS LMOVE RPOPLPUSH |

mod config;
mod connection;
mod hashes;
mod keys;
mod lists;
pub mod notify;
mod pubsub;
mod scripting;
mod server;
pub(crate) mod sets;
mod strings;
mod transactions;
mod zsets;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::clients::{ClientSession, Clients};
use super::parse::Args;
use super::reply::Reply;
use crate::scripting::Scripts;
use crate::store::{Keyspace, SessionStore, StoreError};

pub use self::config::{Settings, pubsub_limits};
pub use self::scripting::{is_script_kill, runs_script};
pub use self::server::REDIS_VERSION;

/// What a command handler gets.
pub struct Ctx<'a> {
    pub store: &'a SessionStore,
    pub session: &'a mut ClientSession,
    pub clients: &'a Clients,
    /// The scripting interpreter (`EVAL`).
    pub scripts: &'a Scripts,
    /// Set once a command of the current batch made a write the partner is to get.
    pub recorded: &'a mut bool,
    /// The store's time when the current batch was read, in ms since the epoch.
    pub now_ms: u64,
    /// The keyspace, when a transaction holds it locked for all its commands.
    pub held: Option<&'a mut Keyspace>,
}

impl Ctx<'_> {
    /// Runs a store command against the session's database and notes a recorded write.
    pub fn run<T>(&mut self, command: impl FnOnce(&mut Keyspace, u64) -> T) -> T {
        match self.held.as_deref_mut() {
            Some(keyspace) => self.store.run_locked(
                keyspace,
                self.now_ms,
                self.session.db,
                self.recorded,
                command,
            ),
            None => self
                .store
                .run_at(self.now_ms, self.session.db, self.recorded, command),
        }
    }
}

impl<'a> Ctx<'a> {
    /// Runs `body` with the keyspace held for all it does (a transaction, a script): the
    /// hold the caller has, or one taken here.
    pub fn holding<T>(&mut self, body: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        let store = self.store;
        let mut guard;
        let keyspace = match self.held.as_deref_mut() {
            Some(keyspace) => keyspace,
            None => {
                guard = store.lock();
                &mut *guard
            }
        };
        let mut inner = Ctx {
            store,
            session: &mut *self.session,
            clients: self.clients,
            scripts: self.scripts,
            recorded: &mut *self.recorded,
            now_ms: self.now_ms,
            held: Some(keyspace),
        };
        body(&mut inner)
    }
}

/// The reply of a `HELP` subcommand: its lines as status replies.
pub fn help(lines: &[&str]) -> Reply {
    Reply::Array(
        lines
            .iter()
            .map(|line| Reply::Status((*line).into()))
            .collect(),
    )
}

/// Redis' error for a subcommand `command` does not have.
pub fn unknown_subcommand(command: &str, sub: &[u8]) -> CmdError {
    CmdError::Other(format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        sanitize(sub)
    ))
}

/// A command failed; the text is what Redis says in the same case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(&'static str),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpire(&'static str),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CmdError {
    /// The error line without the leading `-`.
    pub fn to_reply(&self) -> Reply {
        let text = match self {
            CmdError::Store(StoreError::WrongType) => {
                "WRONGTYPE Operation against a key holding the wrong kind of value".to_string()
            }
            CmdError::Store(StoreError::OutOfMemory { .. }) => {
                "OOM command not allowed when used memory > 'maxmemory'.".to_string()
            }
            CmdError::Store(err) => format!("ERR {err}"),
            other => other.to_string(),
        };
        Reply::Error(text)
    }
}

pub type CmdResult = Result<Reply, CmdError>;
type Handler = fn(&mut Ctx<'_>, &mut Args) -> CmdResult;

/// A known command: its name as Redis reports it, its arity (Redis' convention: exact
/// argument count including the name, or at least `-arity`), its handler, its flags and
/// ACL categories as `COMMAND INFO` lists them, and where its keys are.
pub struct Command {
    pub name: &'static str,
    pub arity: i32,
    pub handler: Handler,
    /// Redis' flags, space-separated (`write denyoom fast`).
    pub flags: &'static str,
    /// The data type or area, as an ACL category (`string`, `hash`, `keyspace`, ...).
    pub group: &'static str,
    /// First key, last key (negative: from the end), step; zeros for none.
    pub keys: (i64, i64, i64),
    /// Calls, and calls answered with an error (`INFO commandstats`).
    pub calls: AtomicU64,
    pub failed: AtomicU64,
}

impl Command {
    /// Whether the command may write.
    pub fn writes(&self) -> bool {
        self.has_flag("write")
    }

    /// Whether the command has one of Redis' flags (`noscript`, `allow_busy` ...).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(' ').any(|f| f == flag)
    }
}

macro_rules! commands {
    ($($name:literal => $arity:literal, $handler:path, $flags:literal, $group:literal,
        ($first:literal, $last:literal, $step:literal);)*) => {
        const COUNT: usize = [$($name),*].len();
        /// Every command the agent implements.
        pub static COMMANDS: [Command; COUNT] = [
            $(Command {
                name: $name,
                arity: $arity,
                handler: $handler,
                flags: $flags,
                group: $group,
                keys: ($first, $last, $step),
                calls: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            },)*
        ];
    };
}

commands! {
    "ping" => -1, connection::ping, "fast", "connection", (0, 0, 0);
    "echo" => 2, connection::echo, "fast", "connection", (0, 0, 0);
    "quit" => -1, connection::quit, "noscript loading stale fast no_auth allow_busy", "connection", (0, 0, 0);
    "auth" => -2, connection::auth, "noscript loading stale fast no_auth allow_busy", "connection", (0, 0, 0);
    "hello" => -1, connection::hello, "noscript loading stale fast no_auth allow_busy", "connection", (0, 0, 0);
    "select" => 2, connection::select, "loading stale fast", "connection", (0, 0, 0);
    "client" => -2, connection::client, "admin noscript loading stale", "connection", (0, 0, 0);
    "info" => -1, server::info, "loading stale", "server", (0, 0, 0);
    "command" => -1, server::command, "loading stale", "connection", (0, 0, 0);
    "config" => -2, config::config, "admin noscript loading stale", "server", (0, 0, 0);
    "dbsize" => 1, server::dbsize, "readonly fast", "keyspace", (0, 0, 0);
    "flushdb" => -1, server::flushdb, "write", "keyspace", (0, 0, 0);
    "flushall" => -1, server::flushall, "write", "keyspace", (0, 0, 0);
    "time" => 1, server::time, "loading stale fast", "server", (0, 0, 0);
    "multi" => 1, transactions::multi, "noscript loading stale fast allow_busy", "transaction", (0, 0, 0);
    "exec" => 1, transactions::exec, "noscript loading stale skip_slowlog", "transaction", (0, 0, 0);
    "discard" => 1, transactions::discard, "noscript loading stale fast allow_busy", "transaction", (0, 0, 0);
    "watch" => -2, transactions::watch, "noscript loading stale fast allow_busy", "transaction", (1, -1, 1);
    "unwatch" => 1, transactions::unwatch, "noscript loading stale fast allow_busy", "transaction", (0, 0, 0);
    "eval" => -3, scripting::eval, "noscript stale skip_monitor no_mandatory_keys movablekeys", "scripting", (0, 0, 0);
    "evalsha" => -3, scripting::evalsha, "noscript stale skip_monitor no_mandatory_keys movablekeys", "scripting", (0, 0, 0);
    "eval_ro" => -3, scripting::eval_ro, "readonly noscript stale skip_monitor no_mandatory_keys movablekeys", "scripting", (0, 0, 0);
    "evalsha_ro" => -3, scripting::evalsha_ro, "readonly noscript stale skip_monitor no_mandatory_keys movablekeys", "scripting", (0, 0, 0);
    "script" => -2, scripting::script, "noscript", "scripting", (0, 0, 0);
    "subscribe" => -2, pubsub::subscribe, "pubsub noscript loading stale", "pubsub", (0, 0, 0);
    "psubscribe" => -2, pubsub::psubscribe, "pubsub noscript loading stale", "pubsub", (0, 0, 0);
    "unsubscribe" => -1, pubsub::unsubscribe, "pubsub noscript loading stale", "pubsub", (0, 0, 0);
    "punsubscribe" => -1, pubsub::punsubscribe, "pubsub noscript loading stale", "pubsub", (0, 0, 0);
    "publish" => 3, pubsub::publish, "pubsub loading stale fast", "pubsub", (0, 0, 0);
    "pubsub" => -2, pubsub::pubsub, "pubsub loading stale", "pubsub", (0, 0, 0);
    "del" => -2, keys::del, "write", "keyspace", (1, -1, 1);
    "unlink" => -2, keys::del, "write fast", "keyspace", (1, -1, 1);
    "exists" => -2, keys::exists, "readonly fast", "keyspace", (1, -1, 1);
    "type" => 2, keys::key_type, "readonly fast", "keyspace", (1, 1, 1);
    "expire" => -3, keys::expire, "write fast", "keyspace", (1, 1, 1);
    "pexpire" => -3, keys::pexpire, "write fast", "keyspace", (1, 1, 1);
    "expireat" => -3, keys::expireat, "write fast", "keyspace", (1, 1, 1);
    "pexpireat" => -3, keys::pexpireat, "write fast", "keyspace", (1, 1, 1);
    "persist" => 2, keys::persist, "write fast", "keyspace", (1, 1, 1);
    "ttl" => 2, keys::ttl, "readonly fast", "keyspace", (1, 1, 1);
    "pttl" => 2, keys::pttl, "readonly fast", "keyspace", (1, 1, 1);
    "expiretime" => 2, keys::expiretime, "readonly fast", "keyspace", (1, 1, 1);
    "pexpiretime" => 2, keys::pexpiretime, "readonly fast", "keyspace", (1, 1, 1);
    "touch" => -2, keys::exists, "readonly fast", "keyspace", (1, -1, 1);
    "scan" => -2, keys::scan, "readonly", "keyspace", (0, 0, 0);
    "keys" => 2, keys::keys, "readonly", "keyspace", (0, 0, 0);
    "rename" => 3, keys::rename, "write", "keyspace", (1, 2, 1);
    "renamenx" => 3, keys::renamenx, "write fast", "keyspace", (1, 2, 1);
    "copy" => -3, keys::copy, "write denyoom", "keyspace", (1, 2, 1);
    "randomkey" => 1, keys::randomkey, "readonly", "keyspace", (0, 0, 0);
    "object" => -2, keys::object, "readonly", "keyspace", (2, 2, 1);
    "get" => 2, strings::get, "readonly fast", "string", (1, 1, 1);
    "set" => -3, strings::set, "write denyoom", "string", (1, 1, 1);
    "setex" => 4, strings::setex, "write denyoom", "string", (1, 1, 1);
    "psetex" => 4, strings::psetex, "write denyoom", "string", (1, 1, 1);
    "setnx" => 3, strings::setnx, "write denyoom fast", "string", (1, 1, 1);
    "getdel" => 2, strings::getdel, "write fast", "string", (1, 1, 1);
    "getex" => -2, strings::getex, "write fast", "string", (1, 1, 1);
    "getset" => 3, strings::getset, "write denyoom fast", "string", (1, 1, 1);
    "mget" => -2, strings::mget, "readonly fast", "string", (1, -1, 1);
    "mset" => -3, strings::mset, "write denyoom", "string", (1, -1, 2);
    "msetnx" => -3, strings::msetnx, "write denyoom", "string", (1, -1, 2);
    "incr" => 2, strings::incr, "write denyoom fast", "string", (1, 1, 1);
    "decr" => 2, strings::decr, "write denyoom fast", "string", (1, 1, 1);
    "incrby" => 3, strings::incrby, "write denyoom fast", "string", (1, 1, 1);
    "decrby" => 3, strings::decrby, "write denyoom fast", "string", (1, 1, 1);
    "incrbyfloat" => 3, strings::incrbyfloat, "write denyoom fast", "string", (1, 1, 1);
    "append" => 3, strings::append, "write denyoom fast", "string", (1, 1, 1);
    "strlen" => 2, strings::strlen, "readonly fast", "string", (1, 1, 1);
    "getrange" => 4, strings::getrange, "readonly", "string", (1, 1, 1);
    "substr" => 4, strings::getrange, "readonly", "string", (1, 1, 1);
    "setrange" => 4, strings::setrange, "write denyoom", "string", (1, 1, 1);
    "setbit" => 4, strings::setbit, "write denyoom", "bitmap", (1, 1, 1);
    "getbit" => 3, strings::getbit, "readonly fast", "bitmap", (1, 1, 1);
    "bitcount" => -2, strings::bitcount, "readonly", "bitmap", (1, 1, 1);
    "hset" => -4, hashes::hset, "write denyoom fast", "hash", (1, 1, 1);
    "hmset" => -4, hashes::hmset, "write denyoom fast", "hash", (1, 1, 1);
    "hget" => 3, hashes::hget, "readonly fast", "hash", (1, 1, 1);
    "hmget" => -3, hashes::hmget, "readonly fast", "hash", (1, 1, 1);
    "hgetall" => 2, hashes::hgetall, "readonly", "hash", (1, 1, 1);
    "hdel" => -3, hashes::hdel, "write fast", "hash", (1, 1, 1);
    "hexists" => 3, hashes::hexists, "readonly fast", "hash", (1, 1, 1);
    "hlen" => 2, hashes::hlen, "readonly fast", "hash", (1, 1, 1);
    "hkeys" => 2, hashes::hkeys, "readonly", "hash", (1, 1, 1);
    "hvals" => 2, hashes::hvals, "readonly", "hash", (1, 1, 1);
    "hincrby" => 4, hashes::hincrby, "write denyoom fast", "hash", (1, 1, 1);
    "hincrbyfloat" => 4, hashes::hincrbyfloat, "write denyoom fast", "hash", (1, 1, 1);
    "hsetnx" => 4, hashes::hsetnx, "write denyoom fast", "hash", (1, 1, 1);
    "hstrlen" => 3, hashes::hstrlen, "readonly fast", "hash", (1, 1, 1);
    "hrandfield" => -2, hashes::hrandfield, "readonly", "hash", (1, 1, 1);
    "hscan" => -3, hashes::hscan, "readonly", "hash", (1, 1, 1);
    "sadd" => -3, sets::sadd, "write denyoom fast", "set", (1, 1, 1);
    "srem" => -3, sets::srem, "write fast", "set", (1, 1, 1);
    "smembers" => 2, sets::smembers, "readonly", "set", (1, 1, 1);
    "sismember" => 3, sets::sismember, "readonly fast", "set", (1, 1, 1);
    "smismember" => -3, sets::smismember, "readonly fast", "set", (1, 1, 1);
    "scard" => 2, sets::scard, "readonly fast", "set", (1, 1, 1);
    "spop" => -2, sets::spop, "write fast", "set", (1, 1, 1);
    "srandmember" => -2, sets::srandmember, "readonly", "set", (1, 1, 1);
    "smove" => 4, sets::smove, "write fast", "set", (1, 2, 1);
    "sscan" => -3, sets::sscan, "readonly", "set", (1, 1, 1);
    "sinter" => -2, sets::sinter, "readonly", "set", (1, -1, 1);
    "sunion" => -2, sets::sunion, "readonly", "set", (1, -1, 1);
    "sdiff" => -2, sets::sdiff, "readonly", "set", (1, -1, 1);
    "sinterstore" => -3, sets::sinterstore, "write denyoom", "set", (1, -1, 1);
    "sunionstore" => -3, sets::sunionstore, "write denyoom", "set", (1, -1, 1);
    "sdiffstore" => -3, sets::sdiffstore, "write denyoom", "set", (1, -1, 1);
    "sintercard" => -3, sets::sintercard, "readonly", "set", (0, 0, 0);
    "zadd" => -4, zsets::zadd, "write denyoom fast", "sortedset", (1, 1, 1);
    "zincrby" => 4, zsets::zincrby, "write denyoom fast", "sortedset", (1, 1, 1);
    "zrem" => -3, zsets::zrem, "write fast", "sortedset", (1, 1, 1);
    "zscore" => 3, zsets::zscore, "readonly fast", "sortedset", (1, 1, 1);
    "zmscore" => -3, zsets::zmscore, "readonly fast", "sortedset", (1, 1, 1);
    "zcard" => 2, zsets::zcard, "readonly fast", "sortedset", (1, 1, 1);
    "zcount" => 4, zsets::zcount, "readonly fast", "sortedset", (1, 1, 1);
    "zlexcount" => 4, zsets::zlexcount, "readonly fast", "sortedset", (1, 1, 1);
    "zrank" => 3, zsets::zrank, "readonly fast", "sortedset", (1, 1, 1);
    "zrevrank" => 3, zsets::zrevrank, "readonly fast", "sortedset", (1, 1, 1);
    "zrange" => -4, zsets::zrange, "readonly", "sortedset", (1, 1, 1);
    "zrangebyscore" => -4, zsets::zrangebyscore, "readonly", "sortedset", (1, 1, 1);
    "zrevrangebyscore" => -4, zsets::zrevrangebyscore, "readonly", "sortedset", (1, 1, 1);
    "zrevrange" => -4, zsets::zrevrange, "readonly", "sortedset", (1, 1, 1);
    "zrangebylex" => -4, zsets::zrangebylex, "readonly", "sortedset", (1, 1, 1);
    "zrevrangebylex" => -4, zsets::zrevrangebylex, "readonly", "sortedset", (1, 1, 1);
    "zremrangebyscore" => 4, zsets::zremrangebyscore, "write", "sortedset", (1, 1, 1);
    "zremrangebyrank" => 4, zsets::zremrangebyrank, "write", "sortedset", (1, 1, 1);
    "zremrangebylex" => 4, zsets::zremrangebylex, "write", "sortedset", (1, 1, 1);
    "zpopmin" => -2, zsets::zpopmin, "write fast", "sortedset", (1, 1, 1);
    "zpopmax" => -2, zsets::zpopmax, "write fast", "sortedset", (1, 1, 1);
    "zscan" => -3, zsets::zscan, "readonly", "sortedset", (1, 1, 1);
    "lpush" => -3, lists::lpush, "write denyoom fast", "list", (1, 1, 1);
    "rpush" => -3, lists::rpush, "write denyoom fast", "list", (1, 1, 1);
    "lpushx" => -3, lists::lpushx, "write denyoom fast", "list", (1, 1, 1);
    "rpushx" => -3, lists::rpushx, "write denyoom fast", "list", (1, 1, 1);
    "lpop" => -2, lists::lpop, "write fast", "list", (1, 1, 1);
    "rpop" => -2, lists::rpop, "write fast", "list", (1, 1, 1);
    "lrange" => 4, lists::lrange, "readonly", "list", (1, 1, 1);
    "llen" => 2, lists::llen, "readonly fast", "list", (1, 1, 1);
    "lindex" => 3, lists::lindex, "readonly", "list", (1, 1, 1);
    "lset" => 4, lists::lset, "write denyoom", "list", (1, 1, 1);
    "lrem" => 4, lists::lrem, "write", "list", (1, 1, 1);
    "ltrim" => 4, lists::ltrim, "write", "list", (1, 1, 1);
    "linsert" => 5, lists::linsert, "write denyoom", "list", (1, 1, 1);
    "lpos" => -3, lists::lpos, "readonly", "list", (1, 1, 1);
    "lmove" => 5, lists::lmove, "write denyoom", "list", (1, 2, 1);
    "rpoplpush" => 3, lists::rpoplpush, "write denyoom", "list", (1, 2, 1);
}

/// The command list the README and docs/sessions.md show: the commands of each group,
/// upper case, one line per group in the table's order.
pub fn command_list() -> String {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for command in &COMMANDS {
        let name = command.name.to_uppercase();
        match groups.iter_mut().find(|(group, _)| *group == command.group) {
            Some((_, names)) => names.push(name),
            None => groups.push((command.group, vec![name])),
        }
    }
    groups
        .into_iter()
        .map(|(group, names)| format!("* {group}: `{}`\n", names.join(" ")))
        .collect()
}

/// The longest command name.
const MAX_NAME: usize = 16;

/// Looks a command up by name, ignoring case.
pub fn lookup(name: &[u8]) -> Option<&'static Command> {
    static BY_NAME: LazyLock<foldhash::HashMap<&'static [u8], &'static Command>> =
        LazyLock::new(|| {
            COMMANDS
                .iter()
                .map(|command| (command.name.as_bytes(), command))
                .collect()
        });
    if name.len() > MAX_NAME {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    BY_NAME.get(&*lower).copied()
}

/// Runs one command (`args[0]` is its name) and returns the reply; inside `MULTI`, queues
/// it instead.
pub fn execute(ctx: &mut Ctx<'_>, args: Vec<Bytes>) -> Reply {
    let name = args.first().cloned().unwrap_or_default();
    let Some(command) = lookup(&name) else {
        transactions::flag(ctx.session);
        return unknown_command(&name, &args[1.min(args.len())..]);
    };
    let given = args.len() as i32;
    let arity_ok = if command.arity >= 0 {
        given == command.arity
    } else {
        given >= -command.arity
    };
    if !arity_ok {
        transactions::flag(ctx.session);
        return CmdError::Arity(command.name).to_reply();
    }
    // As Redis: unknown commands and wrong arities are answered first, then a client that
    // has not authenticated may only authenticate or leave.
    if !ctx.session.authenticated && !matches!(command.name, "auth" | "hello" | "quit") {
        transactions::flag(ctx.session);
        return Reply::Error("NOAUTH Authentication required.".into());
    }
    if let Some(refused) = pubsub::refused_while_subscribed(ctx.session, command, &args) {
        transactions::flag(ctx.session);
        return refused;
    }
    if ctx.session.multi.is_some()
        && !matches!(
            command.name,
            "exec" | "discard" | "multi" | "watch" | "quit"
        )
    {
        return transactions::queue(ctx.session, args);
    }
    run(ctx, command, args)
}

/// Whether Redis names this command with its subcommand (`pubsub|numpat`) in errors.
fn has_subcommands(command: &Command) -> bool {
    matches!(
        command.name,
        "config" | "client" | "command" | "object" | "pubsub" | "script"
    )
}

/// Marks the transaction a session is queuing, if any, as refused (`EXEC` then discards
/// it), as for a command refused while queuing.
pub fn flag_transaction(session: &mut ClientSession) {
    transactions::flag(session);
}

/// Runs a command whose name and arity were checked.
pub(crate) fn run(ctx: &mut Ctx<'_>, command: &'static Command, args: Vec<Bytes>) -> Reply {
    let flags = ctx.clients.settings().notify_flags();
    if notify::active(flags) && command.writes() {
        let words = args.clone();
        let reply = run_command(ctx, command, args);
        let touched = ctx.run(|ks, _| ks.take_touched());
        if !touched.is_empty() {
            notify::announce(ctx.clients.pubsub(), flags, command.name, &words, touched);
        }
        return reply;
    }
    run_command(ctx, command, args)
}

fn run_command(ctx: &mut Ctx<'_>, command: &'static Command, args: Vec<Bytes>) -> Reply {
    let mut args = Args::new(args);
    let _ = args.arg_opt();
    ctx.session.last_command = command.name;
    command.calls.fetch_add(1, Ordering::Relaxed);
    match (command.handler)(ctx, &mut args) {
        Ok(reply) => reply,
        Err(err) => {
            command.failed.fetch_add(1, Ordering::Relaxed);
            err.to_reply()
        }
    }
}

/// Redis' reply to an unknown command, quoting the first arguments.
fn unknown_command(name: &[u8], args: &[Bytes]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        sanitize(name)
    );
    for arg in args.iter().take(16) {
        text.push_str(&format!("'{}' ", sanitize(arg)));
    }
    Reply::Error(text)
}

/// Text safe to put in a one-line error: at most 128 bytes, no control characters.
pub fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(128)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README and docs/sessions.md list exactly the commands of the table, and every
    /// one of them is in a script that compares its replies with redis-server's.
    #[test]
    fn the_documented_commands_are_the_table_and_each_is_compared_with_redis() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let list = command_list();
        for doc in ["README.md", "docs/sessions.md"] {
            let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
            let block = text
                .split_once("<!-- commands -->\n")
                .and_then(|(_, rest)| rest.split_once("<!-- /commands -->"))
                .map(|(block, _)| block);
            assert_eq!(
                block,
                Some(list.as_str()),
                "{doc} lists other commands than the table; the list is:\n{list}"
            );
        }
        let mut scripts = std::fs::read_to_string(format!("{root}/tests/redis_compat.rs")).unwrap();
        for entry in std::fs::read_dir(format!("{root}/tests/compat")).unwrap() {
            scripts.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        let words: std::collections::HashSet<String> = scripts
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map(str::to_ascii_lowercase)
            .collect();
        let untested: Vec<&str> = COMMANDS
            .iter()
            .map(|c| c.name)
            .filter(|name| !words.contains(*name))
            .collect();
        assert!(
            untested.is_empty(),
            "compared with redis-server nowhere: {untested:?}"
        );
    }

    #[test]
    fn every_command_is_found_by_its_name_in_any_case() {
        for command in &COMMANDS {
            assert!(command.name.len() <= MAX_NAME, "{}", command.name);
            for name in [
                command.name.to_string(),
                command.name.to_uppercase(),
                command.name[..1].to_uppercase() + &command.name[1..],
            ] {
                let found = lookup(name.as_bytes()).map(|c| c.name);
                assert_eq!(found, Some(command.name), "{name}");
            }
        }
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(&[b'g'; 100]).is_none());
    }
}
