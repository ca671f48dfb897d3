//! Server commands: INFO COMMAND DBSIZE FLUSHDB FLUSHALL TIME (CONFIG: `config.rs`).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{COMMANDS, CmdError, CmdResult, Command, Ctx, lookup};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;

/// The Redis version whose commands and replies the agent follows (clients check it).
pub const REDIS_VERSION: &str = "7.0.0";

pub fn dbsize(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    Ok(Reply::int(ctx.run(|ks, now| ks.db_len(now))))
}

/// `FLUSHDB [ASYNC|SYNC]` and `FLUSHALL [ASYNC|SYNC]`: both flush at once (a flush is a
/// delete of each key, replicated as such).
fn flush_mode(args: &mut Args) -> Result<(), CmdError> {
    match args.rest().as_slice() {
        [] => Ok(()),
        [mode] if is(mode, "ASYNC") || is(mode, "SYNC") => Ok(()),
        _ => Err(CmdError::Syntax),
    }
}

pub fn flushdb(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    flush_mode(args)?;
    ctx.run(|ks, now| ks.flush_db(now));
    Ok(Reply::OK)
}

pub fn flushall(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    flush_mode(args)?;
    ctx.run(|ks, now| ks.flush_all(now));
    Ok(Reply::OK)
}

/// `TIME`: seconds and microseconds of the host's clock.
pub fn time(_: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Reply::Array(vec![
        Reply::text(&now.as_secs().to_string()),
        Reply::text(&now.subsec_micros().to_string()),
    ]))
}

/// Sections `INFO` shows without arguments, in Redis' order.
const DEFAULT_SECTIONS: [&str; 7] = [
    "server",
    "clients",
    "memory",
    "stats",
    "replication",
    "cpu",
    "keyspace",
];

/// `INFO [section ...]`: server, clients, memory, stats, replication, cpu, commandstats,
/// keyspace, with Redis' field names.
pub fn info(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let wanted: Vec<String> = args
        .rest()
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let everything = wanted.iter().any(|s| s == "all" || s == "everything");
    let default = wanted.is_empty() || wanted.iter().any(|s| s == "default");
    let show = |section: &str| {
        everything
            || (default && DEFAULT_SECTIONS.contains(&section))
            || wanted.iter().any(|s| s == section)
    };
    let mut text = String::new();
    if show("server") {
        server_section(ctx, &mut text);
    }
    if show("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n\r\n",
            ctx.clients.count(),
            ctx.clients.max_clients(),
        );
    }
    if show("memory") {
        let (used, max_memory) = ctx.run(|ks, _| (ks.used_bytes(), ks.limits().max_memory_bytes));
        let max = if max_memory == usize::MAX {
            0
        } else {
            max_memory
        };
        let _ = write!(
            text,
            "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nmaxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:noeviction\r\n\r\n",
            human(used),
            human(max),
        );
    }
    if show("stats") {
        let commands: u64 = COMMANDS
            .iter()
            .map(|c| c.calls.load(Ordering::Relaxed))
            .sum();
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{commands}\r\nexpired_keys:{}\r\nevicted_keys:0\r\n\r\n",
            ctx.clients.connections_received(),
            ctx.store.expired_total(),
        );
    }
    if show("replication") {
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if show("cpu") {
        let (user, system) = cpu_times();
        let _ = write!(
            text,
            "# CPU\r\nused_cpu_sys:{system:.6}\r\nused_cpu_user:{user:.6}\r\n\r\n"
        );
    }
    if everything || wanted.iter().any(|s| s == "commandstats") {
        text.push_str("# Commandstats\r\n");
        for command in &COMMANDS {
            let calls = command.calls.load(Ordering::Relaxed);
            if calls > 0 {
                let _ = write!(
                    text,
                    "cmdstat_{}:calls={calls},rejected_calls=0,failed_calls={}\r\n",
                    command.name,
                    command.failed.load(Ordering::Relaxed),
                );
            }
        }
        text.push_str("\r\n");
    }
    if show("keyspace") {
        text.push_str("# Keyspace\r\n");
        let databases = ctx.run(|ks, now| {
            let selected = ks.selected();
            let mut lines = Vec::new();
            for db in 0..ks.databases() {
                if ks.select(db).is_ok() {
                    let keys = ks.db_len(now);
                    if keys > 0 {
                        lines.push((db, keys, ks.expiring(now)));
                    }
                }
            }
            let _ = ks.select(selected);
            lines
        });
        for (db, keys, expires) in databases {
            let _ = write!(text, "db{db}:keys={keys},expires={expires},avg_ttl=0\r\n");
        }
        text.push_str("\r\n");
    }
    if text.ends_with("\r\n\r\n") {
        text.truncate(text.len() - 2);
    }
    // A verbatim string in RESP3, as Redis answers INFO.
    Ok(Reply::Verbatim(*b"txt", text.into()))
}

fn server_section(ctx: &Ctx<'_>, text: &mut String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let uptime = ctx.clients.started().elapsed().as_secs();
    let _ = write!(
        text,
        "# Server\r\nredis_version:{REDIS_VERSION}\r\ntandem_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nserver_time_usec:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\r\n",
        tandem_common::VERSION,
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::process::id(),
        ctx.session.laddr.port(),
        now.as_micros(),
        uptime / 86_400,
    );
}

/// Bytes as Redis' `*_human` fields show them.
fn human(bytes: usize) -> String {
    let bytes = bytes as f64;
    let units = [
        (1u64 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (size, unit) in units {
        if bytes >= size as f64 {
            return format!("{:.2}{unit}", bytes / size as f64);
        }
    }
    format!("{bytes}B")
}

/// The process' user and system CPU time, in seconds.
fn cpu_times() -> (f64, f64) {
    // /proc/self/stat: fields 14 and 15 are utime and stime in clock ticks (100 a second
    // on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 3, so utime (14) is index 11.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND LIST`, `COMMAND INFO name...`, `COMMAND DOCS
/// [name...]`, all from the command table.
pub fn command(_: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let Some(sub) = args.arg_opt() else {
        return Ok(Reply::Array(COMMANDS.iter().map(describe).collect()));
    };
    let names = args.rest();
    if is(&sub, "COUNT") {
        Ok(Reply::int(COMMANDS.len()))
    } else if is(&sub, "LIST") {
        Ok(Reply::Array(
            COMMANDS.iter().map(|c| Reply::text(c.name)).collect(),
        ))
    } else if is(&sub, "INFO") {
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
        let docs = |command: &Command| {
            (
                Reply::text(command.name),
                Reply::Map(vec![(Reply::text("group"), Reply::text(command.group))]),
            )
        };
        let chosen: Vec<&Command> = if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names.iter().filter_map(|n| lookup(n)).collect()
        };
        Ok(Reply::Map(chosen.into_iter().map(docs).collect()))
    } else {
        Err(super::unknown_subcommand("COMMAND", &sub))
    }
}

/// `[name, arity, flags, first key, last key, step, ACL categories, tips, key specs,
/// subcommands]`, as Redis 7 describes a command.
fn describe(command: &Command) -> Reply {
    let (first, last, step) = command.keys;
    let flags = command
        .flags
        .split(' ')
        .map(|flag| Reply::Status(flag.to_string()))
        .collect();
    let mut categories = vec![
        format!("@{}", if command.writes() { "write" } else { "read" }),
        format!("@{}", command.group),
    ];
    let fast = command.flags.split(' ').any(|f| f == "fast");
    categories.push(if fast { "@fast" } else { "@slow" }.to_string());
    Reply::Array(vec![
        Reply::text(command.name),
        Reply::Int(i64::from(command.arity)),
        Reply::Set(flags),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
        Reply::Set(categories.into_iter().map(Reply::Status).collect()),
        Reply::Set(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}
