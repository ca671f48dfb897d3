//! String commands: GET SET SETEX PSETEX SETNX GETDEL GETEX MGET MSET INCR INCRBY DECR DECRBY.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;
use crate::store::{Entry, SetCondition, SetExpiry, Value};

/// An expiry as given on the command line, resolved against the clock when applied.
#[derive(Clone, Copy)]
enum Deadline {
    /// Milliseconds from now.
    In(i64),
    /// Milliseconds since the epoch.
    At(i64),
}

impl Deadline {
    /// Parses the amount after `EX`/`PX`/`EXAT`/`PXAT`: positive, and representable in ms.
    fn parse(option: &[u8], amount: &[u8], command: &'static str) -> Result<Deadline, CmdError> {
        let amount = crate::resp::parse::parse_int(amount)?;
        if amount <= 0 {
            return Err(CmdError::InvalidExpire(command));
        }
        let seconds = is(option, "EX") || is(option, "EXAT");
        let millis = if seconds {
            amount
                .checked_mul(1_000)
                .ok_or(CmdError::InvalidExpire(command))?
        } else {
            amount
        };
        Ok(if is(option, "EX") || is(option, "PX") {
            Deadline::In(millis)
        } else {
            Deadline::At(millis)
        })
    }

    fn resolve(self, now_ms: u64, command: &'static str) -> Result<u64, CmdError> {
        match self {
            Deadline::In(ms) => ms
                .checked_add(now_ms as i64)
                .map(|at| at as u64)
                .ok_or(CmdError::InvalidExpire(command)),
            Deadline::At(ms) => Ok(ms as u64),
        }
    }
}

fn is_deadline_option(option: &[u8]) -> bool {
    ["EX", "PX", "EXAT", "PXAT"].iter().any(|o| is(option, o))
}

pub fn get(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::bulk_or_nil(ctx.run(|ks, now| ks.get(&key, now))?))
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts|KEEPTTL]`.
pub fn set(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, value) = (args.arg()?, args.arg()?);
    let mut condition = SetCondition::Always;
    let mut deadline = None;
    let mut keep_ttl = false;
    let mut get = false;
    while let Some(option) = args.arg_opt() {
        if is(&option, "NX") && condition != SetCondition::IfPresent {
            condition = SetCondition::IfAbsent;
        } else if is(&option, "XX") && condition != SetCondition::IfAbsent {
            condition = SetCondition::IfPresent;
        } else if is(&option, "GET") {
            get = true;
        } else if is(&option, "KEEPTTL") && deadline.is_none() {
            keep_ttl = true;
        } else if is_deadline_option(&option) && deadline.is_none() && !keep_ttl {
            let amount = args.arg()?;
            deadline = Some(Deadline::parse(&option, &amount, "set")?);
        } else {
            return Err(CmdError::Syntax);
        }
    }
    let (written, previous) = ctx.run(|ks, now| -> Result<_, CmdError> {
        let expiry = match (deadline, keep_ttl) {
            (Some(deadline), _) => SetExpiry::At(deadline.resolve(now, "set")?),
            (None, true) => SetExpiry::Keep,
            (None, false) => SetExpiry::None,
        };
        Ok(ks.set(key, value, expiry, condition, get, now)?)
    })?;
    Ok(match (get, written) {
        (true, _) => Reply::bulk_or_nil(previous),
        (false, true) => Reply::OK,
        (false, false) => Reply::Nil,
    })
}

fn set_with_deadline(
    ctx: &mut Ctx<'_>,
    args: &mut Args,
    unit: &str,
    command: &'static str,
) -> CmdResult {
    let (key, amount, value) = (args.arg()?, args.arg()?, args.arg()?);
    let deadline = Deadline::parse(unit.as_bytes(), &amount, command)?;
    ctx.run(|ks, now| -> Result<_, CmdError> {
        let at = deadline.resolve(now, command)?;
        Ok(ks.set(
            key,
            value,
            SetExpiry::At(at),
            SetCondition::Always,
            false,
            now,
        )?)
    })?;
    Ok(Reply::OK)
}

pub fn setex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    set_with_deadline(ctx, args, "EX", "setex")
}

pub fn psetex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    set_with_deadline(ctx, args, "PX", "psetex")
}

pub fn setnx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, value) = (args.arg()?, args.arg()?);
    let (written, _) = ctx.run(|ks, now| {
        ks.set(
            key,
            value,
            SetExpiry::None,
            SetCondition::IfAbsent,
            false,
            now,
        )
    })?;
    Ok(Reply::bool(written))
}

pub fn getdel(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::bulk_or_nil(ctx.run(|ks, now| ks.getdel(key, now))?))
}

/// `GETEX key [EX s|PX ms|EXAT ts|PXAT ts|PERSIST]`.
pub fn getex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let mut deadline = None;
    let mut persist = false;
    while let Some(option) = args.arg_opt() {
        if is(&option, "PERSIST") && deadline.is_none() && !persist {
            persist = true;
        } else if is_deadline_option(&option) && deadline.is_none() && !persist {
            let amount = args.arg()?;
            deadline = Some(Deadline::parse(&option, &amount, "getex")?);
        } else {
            return Err(CmdError::Syntax);
        }
    }
    ctx.run(|ks, now| -> CmdResult {
        let Some(value) = ks.get(&key, now)? else {
            return Ok(Reply::Nil);
        };
        if let Some(deadline) = deadline {
            let at = deadline.resolve(now, "getex")?;
            ks.expire(key, at, crate::store::ExpireCondition::Always, now);
        } else if persist {
            ks.persist(key, now);
        }
        Ok(Reply::Bulk(value))
    })
}

pub fn mget(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let keys = args.rest();
    Ok(Reply::Array(ctx.run(|ks, now| {
        keys.iter()
            .map(|key| match ks.entry(key, now) {
                Some(Entry {
                    value: Value::Str(value),
                    ..
                }) => Reply::Bulk(value.clone()),
                _ => Reply::Nil,
            })
            .collect()
    })))
}

pub fn mset(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let pairs = args.pairs("mset")?;
    ctx.run(|ks, now| ks.mset(pairs, now))?;
    Ok(Reply::OK)
}

fn incr_by(ctx: &mut Ctx<'_>, key: Bytes, delta: i64) -> CmdResult {
    Ok(Reply::Int(ctx.run(|ks, now| ks.incr_by(key, delta, now))?))
}

pub fn incr(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    incr_by(ctx, key, 1)
}

pub fn decr(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    incr_by(ctx, key, -1)
}

pub fn incrby(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let delta = args.next_i64()?;
    incr_by(ctx, key, delta)
}

pub fn decrby(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let delta = args
        .next_i64()?
        .checked_neg()
        .ok_or_else(|| CmdError::Other("ERR decrement would overflow".into()))?;
    incr_by(ctx, key, delta)
}
