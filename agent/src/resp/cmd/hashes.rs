//! Hash commands: HSET HMSET HGET HMGET HGETALL HDEL HEXISTS HLEN HKEYS HVALS HINCRBY HSETNX.

use super::{CmdResult, Ctx};
use crate::resp::parse::Args;
use crate::resp::reply::Reply;

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
