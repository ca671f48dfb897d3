//! Key commands: DEL UNLINK EXISTS TOUCH TYPE EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST TTL
//! PTTL EXPIRETIME PEXPIRETIME SCAN KEYS RENAME RENAMENX COPY RANDOMKEY OBJECT.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;
use crate::store::ExpireCondition;
use crate::store::keyspace::SHARDS;

pub fn del(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let keys = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.delete(&keys, now))))
}

pub fn exists(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let keys = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.exists(&keys, now))))
}

pub fn key_type(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let kind = ctx.run(|ks, now| ks.kind(&key, now));
    Ok(Reply::Status(kind.map_or("none", |k| k.name()).to_string()))
}

pub fn expire(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    expire_generic(ctx, args, "expire", 1_000, false)
}

pub fn pexpire(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    expire_generic(ctx, args, "pexpire", 1, false)
}

pub fn expireat(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    expire_generic(ctx, args, "expireat", 1_000, true)
}

pub fn pexpireat(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    expire_generic(ctx, args, "pexpireat", 1, true)
}

/// `<cmd> key amount [NX|XX|GT|LT]`, with the amount in `unit_ms`, relative or absolute.
fn expire_generic(
    ctx: &mut Ctx<'_>,
    args: &mut Args,
    name: &'static str,
    unit_ms: i64,
    absolute: bool,
) -> CmdResult {
    let key = args.arg()?;
    let amount = args.next_i64()?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in args.rest() {
        if is(&option, "NX") {
            nx = true;
        } else if is(&option, "XX") {
            xx = true;
        } else if is(&option, "GT") {
            gt = true;
        } else if is(&option, "LT") {
            lt = true;
        } else {
            return Err(CmdError::Other(format!(
                "ERR Unsupported option {}",
                super::sanitize(&option)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CmdError::Other(
            "ERR NX and XX, GT or LT options at the same time are not compatible".into(),
        ));
    }
    if gt && lt {
        return Err(CmdError::Other(
            "ERR GT and LT options at the same time are not compatible".into(),
        ));
    }
    let condition = ExpireCondition {
        if_none: nx,
        if_some: xx,
        if_later: gt,
        if_earlier: lt,
    };
    let millis = amount
        .checked_mul(unit_ms)
        .ok_or(CmdError::InvalidExpire(name))?;
    let changed = ctx.run(|ks, now| {
        let deadline = if absolute {
            Some(millis)
        } else {
            millis.checked_add(now as i64)
        };
        deadline.map(|at| ks.expire(key, at.max(0) as u64, condition, now))
    });
    changed
        .map(Reply::bool)
        .ok_or(CmdError::InvalidExpire(name))
}

pub fn persist(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::bool(ctx.run(|ks, now| ks.persist(key, now))))
}

pub fn ttl(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::Int(seconds(ctx.run(|ks, now| ks.pttl(&key, now)))))
}

/// Milliseconds (or a negative code) in seconds, rounded as Redis rounds `TTL` and
/// `EXPIRETIME`.
fn seconds(ms: i64) -> i64 {
    if ms < 0 { ms } else { (ms + 500) / 1_000 }
}

pub fn pttl(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::Int(ctx.run(|ks, now| ks.pttl(&key, now))))
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub fn scan(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let cursor = args.arg()?;
    let cursor: u64 = std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CmdError::Other("ERR invalid cursor".into()))?;
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    while let Some(option) = args.arg_opt() {
        if is(&option, "MATCH") {
            pattern = Some(args.arg()?);
        } else if is(&option, "COUNT") {
            let n = args.next_i64()?;
            if n < 1 {
                return Err(CmdError::Syntax);
            }
            count = n as usize;
        } else if is(&option, "TYPE") {
            kind = Some(args.arg()?);
        } else {
            return Err(CmdError::Syntax);
        }
    }
    let (next, keys) = if cursor >= SHARDS as u64 {
        (0, Vec::new())
    } else {
        ctx.run(|ks, now| ks.scan(cursor, pattern.as_deref(), count, kind.as_deref(), now))
    };
    Ok(Reply::Array(vec![
        Reply::text(&next.to_string()),
        Reply::array_of_bulks(keys),
    ]))
}

pub fn keys(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let pattern = args.arg()?;
    Ok(Reply::array_of_bulks(
        ctx.run(|ks, now| ks.keys(&pattern, now)),
    ))
}

pub fn expiretime(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::Int(seconds(
        ctx.run(|ks, now| ks.expire_time(&key, now)),
    )))
}

pub fn pexpiretime(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::Int(ctx.run(|ks, now| ks.expire_time(&key, now))))
}

fn rename_generic(ctx: &mut Ctx<'_>, args: &mut Args, only_new: bool) -> Result<bool, CmdError> {
    let (from, to) = (args.arg()?, args.arg()?);
    Ok(ctx.run(|ks, now| ks.rename(from, to, only_new, now))?)
}

pub fn rename(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    rename_generic(ctx, args, false)?;
    Ok(Reply::OK)
}

pub fn renamenx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    Ok(Reply::bool(rename_generic(ctx, args, true)?))
}

/// `COPY source destination [DB destination-db] [REPLACE]`.
pub fn copy(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (from, to) = (args.arg()?, args.arg()?);
    let (mut db, mut replace) = (None, false);
    while let Some(option) = args.arg_opt() {
        if is(&option, "REPLACE") {
            replace = true;
        } else if is(&option, "DB") && args.remaining() > 0 {
            let n = args.next_i64()?;
            db = Some(
                usize::try_from(n)
                    .map_err(|_| CmdError::Other("ERR DB index is out of range".into()))?,
            );
        } else {
            return Err(CmdError::Syntax);
        }
    }
    if db.unwrap_or(ctx.session.db) == ctx.session.db && from == to {
        return Err(CmdError::Other(
            "ERR source and destination objects are the same".into(),
        ));
    }
    Ok(Reply::bool(
        ctx.run(|ks, now| ks.copy(&from, to, db, replace, now))?,
    ))
}

pub fn randomkey(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    let pick = rand::random::<u32>() as usize;
    Ok(Reply::bulk_or_nil(
        ctx.run(|ks, now| ks.random_key(pick, now)),
    ))
}

const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
];

/// `OBJECT ENCODING|REFCOUNT|FREQ|IDLETIME|HELP`. The agent keeps no access times or
/// frequencies: `FREQ` answers as Redis does without an LFU policy, `IDLETIME` says so.
pub fn object(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    let lower = String::from_utf8_lossy(&sub).to_ascii_lowercase();
    if lower == "help" {
        return Ok(Reply::Array(
            OBJECT_HELP
                .iter()
                .map(|l| Reply::Status(l.to_string()))
                .collect(),
        ));
    }
    let name = match lower.as_str() {
        "encoding" => "object|encoding",
        "refcount" => "object|refcount",
        "freq" => "object|freq",
        "idletime" => "object|idletime",
        _ => {
            return Err(super::unknown_subcommand("OBJECT", &sub));
        }
    };
    if args.remaining() != 1 {
        return Err(CmdError::Arity(name));
    }
    let key = args.arg()?;
    let found = ctx.run(|ks, now| {
        ks.key_info(&key, now).map(|info| {
            let shared = ks
                .string_at(&key, now)
                .ok()
                .flatten()
                .and_then(|v| crate::store::keyspace::parse_i64(&v))
                .is_some_and(|n| (0..10_000).contains(&n));
            (info, shared)
        })
    });
    let Some((info, shared)) = found else {
        return Ok(Reply::Nil);
    };
    match name {
        "object|encoding" => Ok(Reply::text(info.encoding)),
        // Redis shares the integers 0-9999 between keys.
        "object|refcount" => Ok(Reply::Int(if shared { i64::from(i32::MAX) } else { 1 })),
        "object|freq" => Err(CmdError::Other(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please \
             note that when switching between policies at runtime LRU and LFU data will take \
             some time to adjust."
                .into(),
        )),
        _ => Err(CmdError::Other(
            "ERR OBJECT IDLETIME is not supported: the agent does not track access times".into(),
        )),
    }
}

/// `HSCAN`, `SSCAN`, `ZSCAN key cursor [MATCH pattern] [COUNT count]`: the cursor and the
/// pattern. The whole collection is returned in one reply with cursor 0, as Redis does for
/// a collection in its compact encoding; the agent's collections are bounded (32 MiB), and
/// one reply is what the SCAN contract allows for any size.
pub fn collection_scan(args: &mut Args) -> Result<Option<Bytes>, CmdError> {
    let cursor = args.arg()?;
    std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| CmdError::Other("ERR invalid cursor".into()))?;
    let mut pattern = None;
    while let Some(option) = args.arg_opt() {
        if is(&option, "MATCH") && args.remaining() > 0 {
            pattern = Some(args.arg()?);
        } else if is(&option, "COUNT") && args.remaining() > 0 {
            if args.next_i64()? < 1 {
                return Err(CmdError::Syntax);
            }
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok(pattern)
}

/// The reply of a collection scan: cursor 0 and the items.
pub fn scan_reply(items: Vec<Reply>) -> Reply {
    Reply::Array(vec![Reply::text("0"), Reply::Array(items)])
}

/// A random index below `len` (which is not 0).
pub fn pick(len: usize) -> usize {
    (rand::random::<u64>() % len as u64) as usize
}
