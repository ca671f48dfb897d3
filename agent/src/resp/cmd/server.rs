//! Server commands: INFO COMMAND CONFIG DBSIZE.

use super::{COMMANDS, CmdError, CmdResult, Ctx, lookup};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;

/// The Redis version whose commands and replies the agent follows (clients check it).
pub const REDIS_VERSION: &str = "7.0.0";

pub fn dbsize(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    Ok(Reply::int(ctx.run(|ks, _| ks.len())))
}

/// `INFO [section ...]`: server, clients, memory, keyspace.
pub fn info(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let wanted: Vec<String> = args
        .rest()
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|s| s == "all" || s == "everything" || s == "default");
    let show = |section: &str| all || wanted.iter().any(|s| s == section);
    let (keys, used, expiring, max_memory) = ctx.run(|ks, _| {
        (
            ks.len(),
            ks.used_bytes(),
            ks.expiring(),
            ks.limits().max_memory_bytes,
        )
    });
    let mut text = String::new();
    if show("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\ntandem_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\n\r\n",
            tandem_common::VERSION,
            std::env::consts::OS,
            std::process::id(),
            ctx.session.laddr.port(),
        ));
    }
    if show("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            ctx.clients.count()
        ));
    }
    if show("memory") {
        let max = if max_memory == usize::MAX {
            0
        } else {
            max_memory
        };
        text.push_str(&format!(
            "# Memory\r\nused_memory:{used}\r\nmaxmemory:{max}\r\nmaxmemory_policy:noeviction\r\n\r\n"
        ));
    }
    if show("keyspace") {
        text.push_str("# Keyspace\r\n");
        if keys > 0 {
            text.push_str(&format!("db0:keys={keys},expires={expiring},avg_ttl=0\r\n"));
        }
        text.push_str("\r\n");
    }
    if text.ends_with("\r\n\r\n") {
        text.truncate(text.len() - 2);
    }
    Ok(Reply::bulk(text))
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS` (minimal: clients
/// use these for hints only).
pub fn command(_: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let Some(sub) = args.arg_opt() else {
        return Ok(Reply::Array(COMMANDS.iter().map(describe).collect()));
    };
    if is(&sub, "COUNT") {
        Ok(Reply::int(COMMANDS.len()))
    } else if is(&sub, "INFO") {
        let names = args.rest();
        if names.is_empty() {
            return Ok(Reply::Array(COMMANDS.iter().map(describe).collect()));
        }
        Ok(Reply::Array(
            names
                .iter()
                .map(|n| lookup(n).map_or(Reply::Nil, describe))
                .collect(),
        ))
    } else if is(&sub, "DOCS") {
        Ok(Reply::Map(vec![]))
    } else {
        Err(CmdError::Other(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            super::sanitize(&sub)
        )))
    }
}

/// `[name, arity, flags, first key, last key, step]`.
fn describe(command: &super::Command) -> Reply {
    let keyless = matches!(
        command.name,
        "ping"
            | "echo"
            | "quit"
            | "auth"
            | "hello"
            | "select"
            | "client"
            | "info"
            | "command"
            | "config"
            | "dbsize"
            | "scan"
            | "keys"
    );
    let (first, last, step) = match command.name {
        _ if keyless => (0, 0, 0),
        "del" | "unlink" | "exists" | "mget" => (1, -1, 1),
        "mset" => (1, -1, 2),
        _ => (1, 1, 1),
    };
    let flag = if command.write { "write" } else { "readonly" };
    Reply::Array(vec![
        Reply::text(command.name),
        Reply::Int(i64::from(command.arity)),
        Reply::Array(vec![Reply::Status(flag.to_string())]),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
    ])
}

/// `CONFIG GET pattern...` answers the few parameters clients and tools ask about;
/// the agent is configured by its own flags, so `CONFIG SET` is refused.
pub fn config(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    if !is(&sub, "GET") {
        return Err(CmdError::Other(format!(
            "ERR CONFIG {} is not supported: configure the agent with its flags",
            super::sanitize(&sub).to_ascii_uppercase()
        )));
    }
    let patterns = args.rest();
    if patterns.is_empty() {
        return Err(CmdError::Arity("config|get"));
    }
    let max_memory = ctx.run(|ks, _| ks.limits().max_memory_bytes);
    let max_memory = if max_memory == usize::MAX {
        0
    } else {
        max_memory
    };
    let known = [
        ("databases", "1".to_string()),
        ("maxmemory", max_memory.to_string()),
        ("maxmemory-policy", "noeviction".to_string()),
        ("save", String::new()),
        ("appendonly", "no".to_string()),
    ];
    let pairs = known
        .iter()
        .filter(|(name, _)| {
            patterns
                .iter()
                .any(|p| crate::store::glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .map(|(name, value)| (Reply::text(name), Reply::text(value)))
        .collect();
    Ok(Reply::Map(pairs))
}
