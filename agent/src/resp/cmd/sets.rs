//! Set commands: SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SMOVE
//! SSCAN SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE SINTERCARD.

use bytes::Bytes;

use super::hashes::{check_picks, random_picks};
use super::keys::{collection_scan, scan_reply};
use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is, parse_int};
use crate::resp::reply::Reply;
use crate::store::collections::MemberSet;
use crate::store::{Keyspace, StoreError, glob_match};

pub fn sadd(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let members = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.sadd(key, members, now))?))
}

pub fn srem(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let members = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.srem(key, members, now))?))
}

/// The members of the set at `key` in Redis' order (none when absent).
fn members(ks: &Keyspace, key: &[u8], now: u64) -> Result<Vec<Bytes>, StoreError> {
    Ok(ks
        .set_at(key, now)?
        .map(MemberSet::members)
        .unwrap_or_default())
}

pub fn smembers(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let all = ctx.run(|ks, now| members(ks, &key, now))?;
    Ok(Reply::Set(all.into_iter().map(Reply::Bulk).collect()))
}

pub fn sismember(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, member) = (args.arg()?, args.arg()?);
    let found = ctx.run(|ks, now| -> Result<bool, StoreError> {
        Ok(ks.set_at(&key, now)?.is_some_and(|s| s.contains(&member)))
    })?;
    Ok(Reply::bool(found))
}

pub fn smismember(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let asked = args.rest();
    let found = ctx.run(|ks, now| -> Result<Vec<Reply>, StoreError> {
        let set = ks.set_at(&key, now)?;
        Ok(asked
            .iter()
            .map(|m| Reply::bool(set.is_some_and(|s| s.contains(m))))
            .collect())
    })?;
    Ok(Reply::Array(found))
}

pub fn scard(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let len = ctx.run(|ks, now| -> Result<usize, StoreError> {
        Ok(ks.set_at(&key, now)?.map_or(0, MemberSet::len))
    })?;
    Ok(Reply::int(len))
}

/// A count argument that must not be negative (Redis says the same for one that is not a
/// number).
pub fn positive_count(arg: &[u8]) -> Result<usize, CmdError> {
    parse_int(arg)
        .ok()
        .and_then(|count| usize::try_from(count).ok())
        .ok_or_else(|| CmdError::Other("ERR value is out of range, must be positive".into()))
}

/// `SPOP key [count]`.
pub fn spop(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let count = match args.rest().as_slice() {
        [] => None,
        [count] => Some(positive_count(count)?),
        _ => return Err(CmdError::Syntax),
    };
    let popped = ctx.run(|ks, now| -> Result<Vec<Bytes>, StoreError> {
        let all = members(ks, &key, now)?;
        let chosen = random_picks(&all, count.unwrap_or(1) as i64);
        ks.srem(key, chosen.clone(), now)?;
        Ok(chosen)
    })?;
    Ok(match count {
        None => Reply::bulk_or_nil(popped.into_iter().next()),
        Some(_) => Reply::Set(popped.into_iter().map(Reply::Bulk).collect()),
    })
}

/// `SRANDMEMBER key [count]`.
pub fn srandmember(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let count = match args.rest().as_slice() {
        [] => None,
        [count] => Some(parse_int(count)?),
        _ => return Err(CmdError::Syntax),
    };
    check_picks(count)?;
    let all = ctx.run(|ks, now| members(ks, &key, now))?;
    Ok(match count {
        None if all.is_empty() => Reply::Nil,
        None => Reply::Bulk(random_picks(&all, 1).remove(0)),
        Some(count) => Reply::array_of_bulks(random_picks(&all, count)),
    })
}

pub fn smove(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (from, to, member) = (args.arg()?, args.arg()?, args.arg()?);
    Ok(Reply::bool(
        ctx.run(|ks, now| ks.smove(from, to, member, now))?,
    ))
}

pub fn sscan(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let pattern = collection_scan(args)?;
    let all = ctx.run(|ks, now| members(ks, &key, now))?;
    let items = all
        .into_iter()
        .filter(|m| pattern.as_ref().is_none_or(|p| glob_match(p, m)))
        .map(Reply::Bulk)
        .collect();
    Ok(scan_reply(items))
}

#[derive(Clone, Copy)]
enum Algebra {
    Inter,
    Union,
    Diff,
}

/// The members of the intersection, union or difference of the sets at `keys` (a missing
/// key is an empty set), in the order Redis lists them.
fn combine(
    ks: &Keyspace,
    keys: &[Bytes],
    algebra: Algebra,
    now: u64,
) -> Result<Vec<Bytes>, StoreError> {
    let mut sets = Vec::with_capacity(keys.len());
    for key in keys {
        sets.push(ks.set_at(key, now)?);
    }
    Ok(match algebra {
        Algebra::Inter => {
            if sets.iter().any(Option::is_none) {
                return Ok(Vec::new());
            }
            let sets: Vec<&MemberSet> = sets.into_iter().flatten().collect();
            // Redis walks the smallest set and keeps what every other one holds.
            let smallest = sets.iter().min_by_key(|s| s.len()).copied();
            smallest
                .map(MemberSet::members)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| sets.iter().all(|s| s.contains(m)))
                .collect()
        }
        Algebra::Union => {
            let all: MemberSet = sets.iter().flatten().flat_map(|s| s.members()).collect();
            all.members()
        }
        Algebra::Diff => {
            let Some(Some(first)) = sets.first() else {
                return Ok(Vec::new());
            };
            let rest = &sets[1..];
            let left: MemberSet = first
                .members()
                .into_iter()
                .filter(|m| !rest.iter().flatten().any(|s| s.contains(m)))
                .collect();
            left.members()
        }
    })
}

fn algebra(ctx: &mut Ctx<'_>, args: &mut Args, algebra: Algebra) -> CmdResult {
    let keys = args.rest();
    let result = ctx.run(|ks, now| combine(ks, &keys, algebra, now))?;
    Ok(Reply::Set(result.into_iter().map(Reply::Bulk).collect()))
}

pub fn sinter(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra(ctx, args, Algebra::Inter)
}

pub fn sunion(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra(ctx, args, Algebra::Union)
}

pub fn sdiff(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra(ctx, args, Algebra::Diff)
}

fn algebra_store(ctx: &mut Ctx<'_>, args: &mut Args, algebra: Algebra) -> CmdResult {
    let destination = args.arg()?;
    let keys = args.rest();
    let stored = ctx.run(|ks, now| -> Result<usize, StoreError> {
        let result = combine(ks, &keys, algebra, now)?;
        ks.store_set(destination, result, now)
    })?;
    Ok(Reply::int(stored))
}

pub fn sinterstore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra_store(ctx, args, Algebra::Inter)
}

pub fn sunionstore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra_store(ctx, args, Algebra::Union)
}

pub fn sdiffstore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    algebra_store(ctx, args, Algebra::Diff)
}

/// `SINTERCARD numkeys key [key ...] [LIMIT limit]`.
pub fn sintercard(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (keys, limit) = numkeys_and_limit(args)?;
    let count = ctx
        .run(|ks, now| combine(ks, &keys, Algebra::Inter, now))?
        .len();
    Ok(Reply::int(if limit == 0 {
        count
    } else {
        count.min(limit)
    }))
}

/// `numkeys key [key ...] [LIMIT limit]`, with Redis' errors.
fn numkeys_and_limit(args: &mut Args) -> Result<(Vec<Bytes>, usize), CmdError> {
    let numkeys = parse_int(&args.arg()?).unwrap_or(0);
    if numkeys <= 0 {
        return Err(CmdError::Other(
            "ERR numkeys should be greater than 0".into(),
        ));
    }
    let numkeys = numkeys as usize;
    if numkeys > args.remaining() {
        return Err(CmdError::Other(
            "ERR Number of keys can't be greater than number of args".into(),
        ));
    }
    let keys: Vec<Bytes> = (0..numkeys).map(|_| args.arg()).collect::<Result<_, _>>()?;
    let mut limit = 0;
    while let Some(option) = args.arg_opt() {
        if is(&option, "LIMIT") && args.remaining() > 0 {
            let n = parse_int(&args.arg()?)?;
            limit = usize::try_from(n)
                .map_err(|_| CmdError::Other("ERR LIMIT can't be negative".into()))?;
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok((keys, limit))
}
