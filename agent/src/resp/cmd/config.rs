//! `CONFIG GET|SET|RESETSTAT|REWRITE|HELP`: the parameters clients probe, with the agent's
//! true values. What the agent's own flags decide is refused with the flag to use; Redis'
//! tunables that mean nothing here (encoding thresholds) are accepted and reported back;
//! `notify-keyspace-events`, `busy-reply-threshold` and `client-output-buffer-limit` take
//! effect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{COMMANDS, CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;
use crate::store::{ExpiryListener, glob_match};

/// The `client-output-buffer-limit` Redis starts with.
pub const DEFAULT_OUTPUT_LIMITS: &str =
    "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";

/// The endpoint's settable state, shared by its connections.
#[derive(Debug)]
pub struct Settings {
    /// `notify-keyspace-events` as flag bits (see `notify.rs`).
    notify: AtomicU32,
    busy_ms: AtomicU64,
    /// Accepted values of the tunables, by canonical name.
    tunables: Mutex<HashMap<&'static str, String>>,
}

impl Settings {
    pub fn new(busy_after: Duration) -> Settings {
        Settings {
            notify: AtomicU32::new(0),
            busy_ms: AtomicU64::new(busy_after.as_millis() as u64),
            tunables: Mutex::new(HashMap::new()),
        }
    }

    /// The keyspace notification classes switched on.
    pub fn notify_flags(&self) -> u32 {
        self.notify.load(Ordering::Relaxed)
    }

    fn tunable(&self, param: &Param) -> String {
        self.tunables
            .lock()
            .get(param.name)
            .cloned()
            .unwrap_or_else(|| param.default.to_string())
    }
}

/// How a parameter is read and set.
#[derive(Clone, Copy)]
enum Kind {
    /// Fixed for the agent's life (Redis' immutable ones): `CONFIG SET` refused as Redis.
    Immutable,
    /// Set by an agent flag (`--name`) or fixed (a reason): `CONFIG SET` of the same value
    /// is accepted, any other refused naming the flag or the reason.
    Flag(&'static str),
    /// Accepted and reported back; an integer within the range, or any text.
    Tunable(Option<(i64, i64)>),
    /// `notify-keyspace-events`.
    Notify,
    /// `busy-reply-threshold`: applies to scripts at once.
    Busy,
    /// `client-output-buffer-limit`: classes and three sizes each.
    OutputLimits,
}

struct Param {
    name: &'static str,
    alias: Option<&'static str>,
    kind: Kind,
    /// The value of a tunable until set, or a fixed one (empty: computed).
    default: &'static str,
}

const fn param(name: &'static str, kind: Kind, default: &'static str) -> Param {
    Param {
        name,
        alias: None,
        kind,
        default,
    }
}

const fn aliased(
    name: &'static str,
    alias: &'static str,
    kind: Kind,
    default: &'static str,
) -> Param {
    Param {
        name,
        alias: Some(alias),
        kind,
        default,
    }
}

const LONG: Option<(i64, i64)> = Some((0, i64::MAX));

const PARAMS: &[Param] = &[
    param("databases", Kind::Immutable, ""),
    param("maxmemory", Kind::Flag("--max-memory-bytes"), ""),
    param(
        "maxmemory-policy",
        Kind::Flag("nothing is evicted (the bound is --max-memory-bytes)"),
        "noeviction",
    ),
    param("maxclients", Kind::Flag("--max-clients"), ""),
    param("proto-max-bulk-len", Kind::Flag("--max-value-bytes"), ""),
    param("port", Kind::Immutable, ""),
    param("bind", Kind::Immutable, ""),
    param("timeout", Kind::Flag("idle clients stay connected"), "0"),
    param(
        "save",
        Kind::Flag("sessions are kept by the partner, not on disk"),
        "",
    ),
    param(
        "appendonly",
        Kind::Flag("sessions are kept by the partner, not on disk"),
        "no",
    ),
    aliased(
        "replica-read-only",
        "slave-read-only",
        Kind::Flag("an agent is never a read-only replica"),
        "yes",
    ),
    param("cluster-enabled", Kind::Immutable, "no"),
    param("notify-keyspace-events", Kind::Notify, ""),
    aliased("busy-reply-threshold", "lua-time-limit", Kind::Busy, ""),
    param(
        "client-output-buffer-limit",
        Kind::OutputLimits,
        DEFAULT_OUTPUT_LIMITS,
    ),
    aliased(
        "hash-max-listpack-entries",
        "hash-max-ziplist-entries",
        Kind::Tunable(LONG),
        "512",
    ),
    aliased(
        "hash-max-listpack-value",
        "hash-max-ziplist-value",
        Kind::Tunable(LONG),
        "64",
    ),
    param("set-max-intset-entries", Kind::Tunable(LONG), "512"),
    aliased(
        "zset-max-listpack-entries",
        "zset-max-ziplist-entries",
        Kind::Tunable(LONG),
        "128",
    ),
    aliased(
        "zset-max-listpack-value",
        "zset-max-ziplist-value",
        Kind::Tunable(LONG),
        "64",
    ),
    aliased(
        "list-max-listpack-size",
        "list-max-ziplist-size",
        Kind::Tunable(Some((i64::MIN, i64::MAX))),
        "-2",
    ),
    param(
        "list-compress-depth",
        Kind::Tunable(Some((0, i32::MAX as i64))),
        "0",
    ),
    param("lazyfree-lazy-user-flush", Kind::Tunable(None), "no"),
];

fn find(name: &[u8]) -> Option<&'static Param> {
    PARAMS.iter().find(|p| {
        name.eq_ignore_ascii_case(p.name.as_bytes())
            || p.alias
                .is_some_and(|a| name.eq_ignore_ascii_case(a.as_bytes()))
    })
}

fn value(ctx: &Ctx<'_>, param: &Param) -> String {
    let limits = ctx.store.limits();
    match param.name {
        "databases" => limits.databases.to_string(),
        "maxmemory" if limits.max_memory_bytes == usize::MAX => "0".into(),
        "maxmemory" => limits.max_memory_bytes.to_string(),
        "maxclients" => ctx.clients.max_clients().to_string(),
        "proto-max-bulk-len" => limits.max_value_bytes.to_string(),
        "port" => ctx.session.laddr.port().to_string(),
        "bind" => ctx.session.laddr.ip().to_string(),
        "notify-keyspace-events" => {
            super::notify::flags_to_string(ctx.clients.settings().notify_flags())
        }
        "busy-reply-threshold" => ctx
            .clients
            .settings()
            .busy_ms
            .load(Ordering::Relaxed)
            .to_string(),
        _ => match param.kind {
            Kind::Tunable(_) | Kind::OutputLimits => ctx.clients.settings().tunable(param),
            _ => param.default.to_string(),
        },
    }
}

pub fn config(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    let rest: Vec<Bytes> = args.rest();
    if is(&sub, "GET") {
        if rest.is_empty() {
            return Err(CmdError::Arity("config|get"));
        }
        get(ctx, &rest)
    } else if is(&sub, "SET") {
        if rest.len() < 2 {
            return Err(CmdError::Arity("config|set"));
        }
        set(ctx, &rest)
    } else if is(&sub, "RESETSTAT") {
        if !rest.is_empty() {
            return Err(CmdError::Arity("config|resetstat"));
        }
        for command in &COMMANDS {
            command.calls.store(0, Ordering::Relaxed);
            command.failed.store(0, Ordering::Relaxed);
        }
        Ok(Reply::OK)
    } else if is(&sub, "REWRITE") {
        Err(CmdError::Other(
            "ERR The server is running without a config file".into(),
        ))
    } else if is(&sub, "HELP") {
        Ok(super::help(HELP))
    } else {
        Err(super::unknown_subcommand("CONFIG", &sub))
    }
}

/// Exact names (or aliases) answer under the name asked; patterns match names and
/// aliases, ignoring case, as Redis 7.0 does.
fn get(ctx: &Ctx<'_>, patterns: &[Bytes]) -> CmdResult {
    let mut matched: Vec<(String, &'static Param)> = Vec::new();
    let add = |name: String, param: &'static Param, matched: &mut Vec<(String, &'static Param)>| {
        if !matched.iter().any(|(n, _)| *n == name) {
            matched.push((name, param));
        }
    };
    for pattern in patterns {
        if !pattern.iter().any(|b| matches!(b, b'[' | b'*' | b'?')) {
            if let Some(param) = find(pattern) {
                add(
                    String::from_utf8_lossy(pattern).into_owned(),
                    param,
                    &mut matched,
                );
            }
            continue;
        }
        let lower = pattern.to_ascii_lowercase();
        for param in PARAMS {
            for name in std::iter::once(param.name).chain(param.alias) {
                if glob_match(&lower, name.as_bytes()) {
                    add(name.to_string(), param, &mut matched);
                }
            }
        }
    }
    Ok(Reply::Map(
        matched
            .into_iter()
            .map(|(name, param)| (Reply::text(&name), Reply::text(&value(ctx, param))))
            .collect(),
    ))
}

/// All pairs are checked before any takes effect, as Redis does.
fn set(ctx: &mut Ctx<'_>, pairs: &[Bytes]) -> CmdResult {
    if !pairs.len().is_multiple_of(2) {
        return Err(CmdError::Syntax);
    }
    let failed = |name: &str, why: &str| {
        CmdError::Other(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    let mut changes: Vec<(&'static Param, String)> = Vec::new();
    for pair in pairs.chunks(2) {
        let (name, new) = (&pair[0], String::from_utf8_lossy(&pair[1]).into_owned());
        let Some(param) = find(name) else {
            return Err(CmdError::Other(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                super::sanitize(name)
            )));
        };
        let shown = String::from_utf8_lossy(name).into_owned();
        if changes.iter().any(|(p, _)| std::ptr::eq(*p, param)) {
            return Err(failed(&shown, "duplicate parameter"));
        }
        match param.kind {
            Kind::Immutable => return Err(failed(&shown, "can't set immutable config")),
            Kind::Flag(_)
                if value(ctx, param).parse::<i64>().is_ok() && new.parse::<i64>().is_err() =>
            {
                return Err(failed(
                    &shown,
                    "argument couldn't be parsed into an integer",
                ));
            }
            Kind::Flag(flag) if new != value(ctx, param) => {
                let why = if flag.starts_with("--") {
                    format!("set it with the agent's {flag} flag")
                } else {
                    format!("fixed in the agent: {flag}")
                };
                return Err(failed(&shown, &why));
            }
            Kind::Flag(_) => {}
            Kind::Tunable(Some((min, max))) => {
                integer_within(&new, min, max).map_err(|why| failed(&shown, &why))?;
            }
            Kind::Tunable(None) => {}
            Kind::Notify => {
                if super::notify::flags_from_string(&new).is_none() {
                    return Err(failed(
                        &shown,
                        "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.",
                    ));
                }
            }
            Kind::Busy => {
                integer_within(&new, 0, i64::MAX).map_err(|why| failed(&shown, &why))?;
            }
            Kind::OutputLimits => {
                if output_limits(&new).is_none() {
                    return Err(failed(
                        &shown,
                        "Wrong number of arguments in buffer limit configuration.",
                    ));
                }
            }
        }
        changes.push((param, new));
    }
    let settings = ctx.clients.settings();
    for (param, new) in changes {
        match param.kind {
            Kind::Notify => {
                let flags = super::notify::flags_from_string(&new).unwrap_or(0);
                settings.notify.store(flags, Ordering::Relaxed);
                let listener: Option<ExpiryListener> = super::notify::active(flags).then(|| {
                    let clients = ctx.clients.clone();
                    let announce: ExpiryListener = std::sync::Arc::new(move |expired| {
                        let flags = clients.settings().notify_flags();
                        for (db, key) in expired {
                            super::notify::publish(
                                clients.pubsub(),
                                flags,
                                super::notify::EXPIRED,
                                "expired",
                                db,
                                &key,
                            );
                        }
                    });
                    announce
                });
                let on = listener.is_some();
                ctx.store.set_expiry_listener(listener);
                ctx.run(|ks, _| ks.set_tracking(on));
            }
            Kind::Busy => {
                let ms = new.parse::<u64>().unwrap_or(0);
                settings.busy_ms.store(ms, Ordering::Relaxed);
                ctx.store.gate().set_busy_after(Duration::from_millis(ms));
            }
            Kind::OutputLimits => {
                let mut merged = output_limits(&settings.tunable(param)).unwrap_or_default();
                for (class, limits) in output_limits(&new).unwrap_or_default() {
                    match merged.iter_mut().find(|(c, _)| *c == class) {
                        Some(slot) => slot.1 = limits,
                        None => merged.push((class, limits)),
                    }
                }
                let text = merged
                    .iter()
                    .map(|(class, (hard, soft, secs))| format!("{class} {hard} {soft} {secs}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                settings.tunables.lock().insert(param.name, text);
                ctx.clients.pubsub().set_limits(pubsub_limits(settings));
            }
            Kind::Tunable(_) => {
                settings.tunables.lock().insert(param.name, new);
            }
            Kind::Immutable | Kind::Flag(_) => {}
        }
    }
    Ok(Reply::OK)
}

/// An integer parameter's value, or Redis' reason for refusing it.
fn integer_within(value: &str, min: i64, max: i64) -> Result<i64, String> {
    match value.parse::<i64>() {
        Err(_) => Err("argument couldn't be parsed into an integer".into()),
        Ok(n) if n < min || n > max => Err(format!(
            "argument must be between {min} and {max} inclusive"
        )),
        Ok(n) => Ok(n),
    }
}

/// A class's output limits: hard and soft bytes, and seconds over the soft limit.
pub type OutputLimit = (u64, u64, u64);

/// `class hard soft seconds ...`, classes `normal`, `slave`/`replica`, `pubsub`, sizes in
/// bytes or with Redis' units.
pub fn output_limits(text: &str) -> Option<Vec<(String, OutputLimit)>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(4) {
        return None;
    }
    words
        .chunks(4)
        .map(|w| {
            let class = match w[0].to_ascii_lowercase().as_str() {
                "normal" => "normal",
                "slave" | "replica" => "slave",
                "pubsub" => "pubsub",
                _ => return None,
            };
            Some((
                class.to_string(),
                (memory(w[1])?, memory(w[2])?, w[3].parse().ok()?),
            ))
        })
        .collect()
}

/// A size as Redis writes it in its configuration: bytes, or `k kb m mb g gb`.
fn memory(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let units: [(&str, u64); 6] = [
        ("kb", 1024),
        ("k", 1000),
        ("mb", 1 << 20),
        ("m", 1_000_000),
        ("gb", 1 << 30),
        ("g", 1_000_000_000),
    ];
    for (suffix, scale) in units {
        if let Some(number) = lower.strip_suffix(suffix) {
            return number.parse::<u64>().ok()?.checked_mul(scale);
        }
    }
    lower.parse().ok()
}

/// The current pub/sub output limits: (hard, soft, soft seconds).
pub fn pubsub_limits(settings: &Settings) -> (u64, u64, u64) {
    let text = settings
        .tunables
        .lock()
        .get("client-output-buffer-limit")
        .cloned()
        .unwrap_or_else(|| DEFAULT_OUTPUT_LIMITS.to_string());
    output_limits(&text)
        .and_then(|classes| classes.into_iter().find(|(c, _)| c == "pubsub"))
        .map_or((32 << 20, 8 << 20, 60), |(_, limits)| limits)
}

const HELP: &[&str] = &[
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET <directive> <value>",
    "    Set the configuration <directive> to <value>.",
    "RESETSTAT",
    "    Reset statistics reported by the INFO command.",
    "REWRITE",
    "    Rewrite the configuration file.",
    "HELP",
    "    Prints this help.",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_limits_parse_as_redis_writes_them() {
        assert_eq!(
            output_limits("pubsub 32mb 8mb 60"),
            Some(vec![("pubsub".to_string(), (32 << 20, 8 << 20, 60))])
        );
        assert_eq!(
            output_limits(DEFAULT_OUTPUT_LIMITS).map(|l| l.len()),
            Some(3)
        );
        assert_eq!(output_limits("pubsub 1 2"), None);
        assert_eq!(output_limits("other 1 2 3"), None);
    }
}
