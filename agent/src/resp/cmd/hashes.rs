//! Hash commands: HSET HMSET HGET HMGET HGETALL HDEL HEXISTS HLEN HKEYS HVALS HINCRBY
//! HINCRBYFLOAT HSETNX HSTRLEN HRANDFIELD HSCAN.

use super::keys::{collection_scan, pick, scan_reply};
use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;
use crate::store::glob_match;

pub fn hset(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let fields = args.pairs("hset")?;
    Ok(Reply::int(ctx.run(|ks, now| ks.hset(key, fields, now))?))
}

pub fn hmset(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let fields = args.pairs("hmset")?;
    ctx.run(|ks, now| ks.hset(key, fields, now))?;
    Ok(Reply::OK)
}

pub fn hsetnx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field, value) = (args.arg()?, args.arg()?, args.arg()?);
    Ok(Reply::bool(
        ctx.run(|ks, now| ks.hsetnx(key, field, value, now))?,
    ))
}

pub fn hget(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field) = (args.arg()?, args.arg()?);
    Ok(Reply::bulk_or_nil(
        ctx.run(|ks, now| ks.hget(&key, &field, now))?,
    ))
}

pub fn hmget(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let fields = args.rest();
    let values = ctx.run(|ks, now| {
        ks.with_hash(&key, now, |hash| {
            fields
                .iter()
                .map(|f| Reply::bulk_or_nil(hash.and_then(|h| h.get(f).cloned())))
                .collect()
        })
    })?;
    Ok(Reply::Array(values))
}

pub fn hgetall(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let all = ctx.run(|ks, now| ks.hgetall(&key, now))?;
    Ok(Reply::Map(
        all.into_iter()
            .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
            .collect(),
    ))
}

pub fn hdel(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let fields = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.hdel(key, fields, now))?))
}

pub fn hexists(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field) = (args.arg()?, args.arg()?);
    let found =
        ctx.run(|ks, now| ks.with_hash(&key, now, |h| h.is_some_and(|h| h.contains_key(&field))))?;
    Ok(Reply::bool(found))
}

pub fn hlen(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::int(ctx.run(|ks, now| {
        ks.with_hash(&key, now, |h| h.map_or(0, |h| h.len()))
    })?))
}

pub fn hkeys(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let all = ctx.run(|ks, now| ks.hgetall(&key, now))?;
    Ok(Reply::array_of_bulks(all.into_iter().map(|(f, _)| f)))
}

pub fn hvals(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let all = ctx.run(|ks, now| ks.hgetall(&key, now))?;
    Ok(Reply::array_of_bulks(all.into_iter().map(|(_, v)| v)))
}

pub fn hincrby(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field) = (args.arg()?, args.arg()?);
    let delta = args.next_i64()?;
    Ok(Reply::Int(
        ctx.run(|ks, now| ks.hincr_by(key, field, delta, now))?,
    ))
}

pub fn hincrbyfloat(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field, increment) = (args.arg()?, args.arg()?, args.arg()?);
    Ok(Reply::Bulk(ctx.run(|ks, now| {
        ks.hincr_by_float(key, field, &increment, now)
    })?))
}

pub fn hstrlen(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, field) = (args.arg()?, args.arg()?);
    let len = ctx.run(|ks, now| ks.hget(&key, &field, now))?;
    Ok(Reply::int(len.map_or(0, |v| v.len())))
}

/// `HRANDFIELD key [count [WITHVALUES]]`: a positive count gives distinct fields, a
/// negative one may repeat them.
pub fn hrandfield(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let count = args
        .arg_opt()
        .map(|c| crate::resp::parse::parse_int(&c))
        .transpose()?;
    let with_values = match args.arg_opt() {
        None => false,
        Some(option) if is(&option, "WITHVALUES") && count.is_some() => true,
        Some(_) => return Err(CmdError::Syntax),
    };
    if args.remaining() > 0 {
        return Err(CmdError::Syntax);
    }
    if count == Some(i64::MIN) {
        return Err(CmdError::Other(
            "ERR value is out of range, value must between -9223372036854775807 and \
             9223372036854775807"
                .into(),
        ));
    }
    if count.is_some_and(|c| with_values && c < -(i64::MAX / 2)) {
        return Err(CmdError::Other("ERR value is out of range".into()));
    }
    check_picks(count)?;
    let all = ctx.run(|ks, now| ks.hgetall(&key, now))?;
    let Some(count) = count else {
        if all.is_empty() {
            return Ok(Reply::Nil);
        }
        return Ok(Reply::Bulk(all[pick(all.len())].0.clone()));
    };
    let chosen = random_picks(&all, count);
    let protocol = ctx.session.protocol;
    Ok(Reply::Array(if with_values {
        pairs_reply(
            chosen
                .into_iter()
                .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v))),
            protocol,
        )
    } else {
        chosen.into_iter().map(|(f, _)| Reply::Bulk(f)).collect()
    }))
}

/// Most items a negative count may ask for (they may repeat, so the reply is built whole
/// whatever the collection's size): a bound on what one command makes the agent allocate.
pub const MAX_PICKS: u64 = 10_000_000;

/// Refuses a count whose picks would pass [`MAX_PICKS`].
pub fn check_picks(count: Option<i64>) -> Result<(), CmdError> {
    if count.is_some_and(|c| c.unsigned_abs() > MAX_PICKS && c < 0) {
        return Err(CmdError::Other(format!(
            "ERR count of {} random picks exceeds the limit of {MAX_PICKS}",
            count.unwrap_or_default().unsigned_abs()
        )));
    }
    Ok(())
}

/// `count` random items of `all`, as Redis' `*RANDMEMBER` and `HRANDFIELD` choose them:
/// all of them (in order) when a positive count reaches the size, distinct ones when it
/// is smaller, and `-count` picks that may repeat when it is negative.
pub fn random_picks<T: Clone>(all: &[T], count: i64) -> Vec<T> {
    if all.is_empty() || count == 0 {
        return Vec::new();
    }
    if count < 0 {
        return (0..count.unsigned_abs())
            .map(|_| all[pick(all.len())].clone())
            .collect();
    }
    let count = count as usize;
    if count >= all.len() {
        return all.to_vec();
    }
    let mut indexes: Vec<usize> = (0..all.len()).collect();
    for i in 0..count {
        let j = i + pick(all.len() - i);
        indexes.swap(i, j);
    }
    indexes[..count].iter().map(|&i| all[i].clone()).collect()
}

/// Pairs as Redis replies them: a flat array in RESP2, an array of pairs in RESP3.
pub fn pairs_reply(pairs: impl Iterator<Item = (Reply, Reply)>, protocol: u8) -> Vec<Reply> {
    if protocol >= 3 {
        pairs.map(|(a, b)| Reply::Array(vec![a, b])).collect()
    } else {
        pairs.flat_map(|(a, b)| [a, b]).collect()
    }
}

pub fn hscan(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let pattern = collection_scan(args)?;
    let all = ctx.run(|ks, now| ks.hgetall(&key, now))?;
    let items = all
        .into_iter()
        .filter(|(f, _)| pattern.as_ref().is_none_or(|p| glob_match(p, f)))
        .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
        .collect();
    Ok(scan_reply(items))
}
