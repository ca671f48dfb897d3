//! Key commands: DEL UNLINK EXISTS TYPE EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST TTL PTTL
//! SCAN KEYS.

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
    let condition = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
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
    let pttl = ctx.run(|ks, now| ks.pttl(&key, now));
    Ok(Reply::Int(if pttl < 0 {
        pttl
    } else {
        (pttl + 500) / 1_000
    }))
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
