//! String commands: GET SET SETEX PSETEX SETNX GETDEL GETEX GETSET MGET MSET MSETNX INCR
//! INCRBY DECR DECRBY INCRBYFLOAT APPEND STRLEN GETRANGE SETRANGE SETBIT GETBIT BITCOUNT.

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

/// `SET`'s and `GETEX`'s options, parsed as Redis parses them: a repeated option is
/// allowed (the last amount counts), conflicting ones are a syntax error, and the amount is
/// checked only once every option has been read.
#[derive(Default)]
struct ExpiryOptions {
    condition: Option<SetCondition>,
    get: bool,
    keep_ttl: bool,
    persist: bool,
    /// `EX`, `PX`, `EXAT` or `PXAT`, and its amount.
    deadline: Option<(Bytes, Bytes)>,
}

impl ExpiryOptions {
    /// `set`: the options of `SET`; otherwise those of `GETEX`.
    fn parse(args: &mut Args, set: bool) -> Result<ExpiryOptions, CmdError> {
        let mut options = ExpiryOptions::default();
        while let Some(option) = args.arg_opt() {
            let unit = options.deadline.as_ref().map(|(unit, _)| unit.clone());
            let other_unit = |name: &str| unit.as_ref().is_some_and(|u| !is(u, name));
            if set && is(&option, "NX") && options.condition != Some(SetCondition::IfPresent) {
                options.condition = Some(SetCondition::IfAbsent);
            } else if set && is(&option, "XX") && options.condition != Some(SetCondition::IfAbsent)
            {
                options.condition = Some(SetCondition::IfPresent);
            } else if set && is(&option, "GET") {
                options.get = true;
            } else if set && is(&option, "KEEPTTL") && unit.is_none() {
                options.keep_ttl = true;
            } else if !set && is(&option, "PERSIST") && unit.is_none() {
                options.persist = true;
            } else if ["EX", "PX", "EXAT", "PXAT"].iter().any(|u| is(&option, u))
                && !options.keep_ttl
                && !options.persist
                && !other_unit(std::str::from_utf8(&option).unwrap_or_default())
                && args.remaining() > 0
            {
                options.deadline = Some((option, args.arg()?));
            } else {
                return Err(CmdError::Syntax);
            }
        }
        Ok(options)
    }

    fn deadline(&self, command: &'static str) -> Result<Option<Deadline>, CmdError> {
        self.deadline
            .as_ref()
            .map(|(unit, amount)| Deadline::parse(unit, amount, command))
            .transpose()
    }
}

pub fn get(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::bulk_or_nil(ctx.run(|ks, now| ks.get(&key, now))?))
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts|KEEPTTL]`.
pub fn set(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, value) = (args.arg()?, args.arg()?);
    let options = ExpiryOptions::parse(args, true)?;
    let deadline = options.deadline("set")?;
    let condition = options.condition.unwrap_or(SetCondition::Always);
    let (get, keep_ttl) = (options.get, options.keep_ttl);
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

/// `GETSET key value`: `SET key value GET`.
pub fn getset(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, value) = (args.arg()?, args.arg()?);
    let (_, previous) =
        ctx.run(|ks, now| ks.set(key, value, SetExpiry::None, SetCondition::Always, true, now))?;
    Ok(Reply::bulk_or_nil(previous))
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
    let options = ExpiryOptions::parse(args, false)?;
    let deadline = options.deadline("getex")?;
    let persist = options.persist;
    ctx.run(|ks, now| -> CmdResult {
        let Some(value) = ks.get(&key, now)? else {
            return Ok(Reply::Nil);
        };
        if let Some(deadline) = deadline {
            let at = deadline.resolve(now, "getex")?;
            ks.expire(key, at, crate::store::ExpireCondition::ALWAYS, now);
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

pub fn msetnx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let pairs = args.pairs("msetnx")?;
    Ok(Reply::bool(ctx.run(|ks, now| ks.msetnx(pairs, now))?))
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

pub fn incrbyfloat(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, increment) = (args.arg()?, args.arg()?);
    Ok(Reply::Bulk(
        ctx.run(|ks, now| ks.incr_by_float(key, &increment, now))?,
    ))
}

pub fn append(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, suffix) = (args.arg()?, args.arg()?);
    Ok(Reply::int(ctx.run(|ks, now| ks.append(key, &suffix, now))?))
}

pub fn strlen(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let value = ctx.run(|ks, now| ks.string_at(&key, now))?;
    Ok(Reply::int(value.map_or(0, |v| v.len())))
}

/// `GETRANGE key start end` (and its old name `SUBSTR`), inclusive, negative from the end.
pub fn getrange(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (start, end) = (args.next_i64()?, args.next_i64()?);
    let value = ctx
        .run(|ks, now| ks.string_at(&key, now))?
        .unwrap_or_default();
    let len = value.len() as i64;
    // As Redis: both negative and start past end is empty; otherwise clamp.
    if start < 0 && end < 0 && start > end {
        return Ok(Reply::bulk(Bytes::new()));
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 { (len + end).max(0) } else { end };
    let end = end.min(len - 1);
    if len == 0 || start > end {
        return Ok(Reply::bulk(Bytes::new()));
    }
    Ok(Reply::Bulk(value.slice(start as usize..=end as usize)))
}

pub fn setrange(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let offset = args.next_i64()?;
    let patch = args.arg()?;
    let offset = usize::try_from(offset)
        .map_err(|_| CmdError::Other("ERR offset is out of range".into()))?;
    Ok(Reply::int(
        ctx.run(|ks, now| ks.setrange(key, offset, &patch, now))?,
    ))
}

/// A bit offset: 0 to 2^32 - 1, as Redis allows.
fn bit_offset(arg: &[u8]) -> Result<usize, CmdError> {
    let error = || CmdError::Other("ERR bit offset is not an integer or out of range".into());
    let offset = crate::resp::parse::parse_int(arg).map_err(|_| error())?;
    if !(0..(1i64 << 32)).contains(&offset) {
        return Err(error());
    }
    Ok(offset as usize)
}

pub fn setbit(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let offset = bit_offset(&args.arg()?)?;
    let on = match &args.arg()?[..] {
        b"1" => true,
        b"0" => false,
        _ => {
            return Err(CmdError::Other(
                "ERR bit is not an integer or out of range".into(),
            ));
        }
    };
    Ok(Reply::bool(
        ctx.run(|ks, now| ks.setbit(key, offset, on, now))?,
    ))
}

pub fn getbit(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let offset = bit_offset(&args.arg()?)?;
    let value = ctx
        .run(|ks, now| ks.string_at(&key, now))?
        .unwrap_or_default();
    let bit = value
        .get(offset / 8)
        .is_some_and(|byte| byte & (0x80 >> (offset % 8)) != 0);
    Ok(Reply::bool(bit))
}

/// `BITCOUNT key [start end [BYTE|BIT]]`.
pub fn bitcount(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    // Redis looks the key up first: a missing key counts 0 whatever the arguments are.
    let Some(value) = ctx.run(|ks, now| ks.string_at(&key, now))? else {
        return Ok(Reply::Int(0));
    };
    let range = match args.remaining() {
        0 => None,
        2 | 3 => {
            let (start, end) = (args.next_i64()?, args.next_i64()?);
            let bits = match args.arg_opt() {
                None => false,
                Some(unit) if is(&unit, "BYTE") => false,
                Some(unit) if is(&unit, "BIT") => true,
                Some(_) => return Err(CmdError::Syntax),
            };
            Some((start, end, bits))
        }
        _ => return Err(CmdError::Syntax),
    };
    let Some((start, end, bits)) = range else {
        return Ok(Reply::Int(
            value.iter().map(|b| i64::from(b.count_ones())).sum(),
        ));
    };
    // Redis answers 0 for two negative offsets in the wrong order before it clamps them.
    if start < 0 && end < 0 && start > end {
        return Ok(Reply::Int(0));
    }
    let len = if bits {
        value.len() as i64 * 8
    } else {
        value.len() as i64
    };
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 { (len + end).max(0) } else { end }.min(len - 1);
    if len == 0 || start > end {
        return Ok(Reply::Int(0));
    }
    let count = if bits {
        (start..=end)
            .filter(|&bit| value[(bit / 8) as usize] & (0x80 >> (bit % 8)) != 0)
            .count() as i64
    } else {
        value[start as usize..=end as usize]
            .iter()
            .map(|b| i64::from(b.count_ones()))
            .sum()
    };
    Ok(Reply::Int(count))
}
