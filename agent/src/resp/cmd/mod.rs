//! Command dispatch: one table from name to arity and handler, handlers grouped by family.
//!
//! | file | commands |
//! | --- | --- |
//! | `connection.rs` | PING ECHO QUIT AUTH HELLO SELECT CLIENT |
//! | `server.rs` | INFO COMMAND CONFIG DBSIZE |
//! | `keys.rs` | DEL UNLINK EXISTS TYPE EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST TTL PTTL SCAN KEYS |
//! | `strings.rs` | GET SET SETEX PSETEX SETNX GETDEL GETEX MGET MSET INCR INCRBY DECR DECRBY |
//! | `hashes.rs` | HSET HMSET HGET HMGET HGETALL HDEL HEXISTS HLEN HKEYS HVALS HINCRBY HSETNX |

mod connection;
mod hashes;
mod keys;
mod server;
mod strings;

use std::sync::LazyLock;

use bytes::Bytes;
use tandem_common::frame::Writes;

use super::clients::{ClientSession, Clients};
use super::parse::Args;
use super::reply::Reply;
use crate::store::{Keyspace, SessionStore, StoreError};

/// What a command handler gets.
pub struct Ctx<'a> {
    pub store: &'a SessionStore,
    pub session: &'a mut ClientSession,
    pub clients: &'a Clients,
    /// Mutations made by the commands of the current batch, for replication.
    pub mutations: &'a mut Writes,
    /// The store's time when the current batch was read, in ms since the epoch.
    pub now_ms: u64,
}

impl Ctx<'_> {
    /// Runs a store command and keeps its mutations.
    pub fn run<T>(&mut self, command: impl FnOnce(&mut Keyspace, u64) -> T) -> T {
        self.store.run_at(self.now_ms, self.mutations, command)
    }
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
/// argument count including the name, or at least `-arity`), and its handler.
pub struct Command {
    pub name: &'static str,
    pub arity: i32,
    pub handler: Handler,
    /// Whether the command may write (for `COMMAND INFO`).
    pub write: bool,
}

macro_rules! commands {
    ($($name:literal => $arity:literal, $handler:path, $write:literal;)*) => {
        /// Every command the agent implements.
        pub static COMMANDS: &[Command] = &[
            $(Command { name: $name, arity: $arity, handler: $handler, write: $write },)*
        ];
    };
}

commands! {
    "ping" => -1, connection::ping, false;
    "echo" => 2, connection::echo, false;
    "quit" => -1, connection::quit, false;
    "auth" => -2, connection::auth, false;
    "hello" => -1, connection::hello, false;
    "select" => 2, connection::select, false;
    "client" => -2, connection::client, false;
    "info" => -1, server::info, false;
    "command" => -1, server::command, false;
    "config" => -2, server::config, false;
    "dbsize" => 1, server::dbsize, false;
    "del" => -2, keys::del, true;
    "unlink" => -2, keys::del, true;
    "exists" => -2, keys::exists, false;
    "type" => 2, keys::key_type, false;
    "expire" => -3, keys::expire, true;
    "pexpire" => -3, keys::pexpire, true;
    "expireat" => -3, keys::expireat, true;
    "pexpireat" => -3, keys::pexpireat, true;
    "persist" => 2, keys::persist, true;
    "ttl" => 2, keys::ttl, false;
    "pttl" => 2, keys::pttl, false;
    "scan" => -2, keys::scan, false;
    "keys" => 2, keys::keys, false;
    "get" => 2, strings::get, false;
    "set" => -3, strings::set, true;
    "setex" => 4, strings::setex, true;
    "psetex" => 4, strings::psetex, true;
    "setnx" => 3, strings::setnx, true;
    "getdel" => 2, strings::getdel, true;
    "getex" => -2, strings::getex, true;
    "mget" => -2, strings::mget, false;
    "mset" => -3, strings::mset, true;
    "incr" => 2, strings::incr, true;
    "decr" => 2, strings::decr, true;
    "incrby" => 3, strings::incrby, true;
    "decrby" => 3, strings::decrby, true;
    "hset" => -4, hashes::hset, true;
    "hmset" => -4, hashes::hmset, true;
    "hget" => 3, hashes::hget, false;
    "hmget" => -3, hashes::hmget, false;
    "hgetall" => 2, hashes::hgetall, false;
    "hdel" => -3, hashes::hdel, true;
    "hexists" => 3, hashes::hexists, false;
    "hlen" => 2, hashes::hlen, false;
    "hkeys" => 2, hashes::hkeys, false;
    "hvals" => 2, hashes::hvals, false;
    "hincrby" => 4, hashes::hincrby, true;
    "hsetnx" => 4, hashes::hsetnx, true;
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

/// Runs one command (`args[0]` is its name) and returns the reply.
pub fn execute(ctx: &mut Ctx<'_>, args: Vec<Bytes>) -> Reply {
    let mut args = Args::new(args);
    let name = args.arg_opt().unwrap_or_default();
    let Some(command) = lookup(&name) else {
        return unknown_command(&name, args.as_slice());
    };
    let given = args.remaining() as i32 + 1;
    let arity_ok = if command.arity >= 0 {
        given == command.arity
    } else {
        given >= -command.arity
    };
    if !arity_ok {
        return CmdError::Arity(command.name).to_reply();
    }
    // As Redis: unknown commands and wrong arities are answered first, then a client that
    // has not authenticated may only authenticate or leave.
    if !ctx.session.authenticated && !matches!(command.name, "auth" | "hello" | "quit") {
        return Reply::Error("NOAUTH Authentication required.".into());
    }
    ctx.session.last_command = command.name;
    match (command.handler)(ctx, &mut args) {
        Ok(reply) => reply,
        Err(err) => err.to_reply(),
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

    #[test]
    fn every_command_is_found_by_its_name_in_any_case() {
        for command in COMMANDS {
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
