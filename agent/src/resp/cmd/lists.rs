//! List commands: LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LRANGE LLEN LINDEX LSET LREM LTRIM
//! LINSERT LPOS LMOVE RPOPLPUSH. Blocking commands (BLPOP, BLMOVE, ...) are not offered:
//! they get Redis' unknown-command error.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is, parse_int};
use crate::resp::reply::Reply;
use crate::store::StoreError;
use crate::store::collections::ItemList;

fn push(ctx: &mut Ctx<'_>, args: &mut Args, left: bool, only_existing: bool) -> CmdResult {
    let key = args.arg()?;
    let items = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| {
        ks.push(key, left, items, only_existing, now)
    })?))
}

pub fn lpush(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    push(ctx, args, true, false)
}

pub fn rpush(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    push(ctx, args, false, false)
}

pub fn lpushx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    push(ctx, args, true, true)
}

pub fn rpushx(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    push(ctx, args, false, true)
}

/// `LPOP key [count]` and `RPOP`.
fn pop(ctx: &mut Ctx<'_>, args: &mut Args, left: bool) -> CmdResult {
    let key = args.arg()?;
    let count = match args.rest().as_slice() {
        [] => None,
        [count] => Some(super::sets::positive_count(count)?),
        _ => return Err(CmdError::Arity(if left { "lpop" } else { "rpop" })),
    };
    match count {
        None => {
            let popped = ctx.run(|ks, now| ks.pop(key, left, 1, now))?;
            Ok(Reply::bulk_or_nil(
                popped.and_then(|p| p.into_iter().next()),
            ))
        }
        Some(count) => {
            let popped = ctx.run(|ks, now| -> Result<_, StoreError> {
                // A count of 0 answers an empty array for a list, a nil one without.
                if count == 0 {
                    return Ok(ks.list_at(&key, now)?.map(|_| Vec::new()));
                }
                ks.pop(key, left, count, now)
            })?;
            Ok(popped.map_or(Reply::NilArray, Reply::array_of_bulks))
        }
    }
}

pub fn lpop(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    pop(ctx, args, true)
}

pub fn rpop(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    pop(ctx, args, false)
}

/// Runs `read` over the list at `key` (`None` when absent).
fn with_list<T>(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    read: impl FnOnce(Option<&ItemList>) -> T,
) -> Result<T, CmdError> {
    Ok(ctx.run(|ks, now| -> Result<T, StoreError> { Ok(read(ks.list_at(key, now)?)) })?)
}

pub fn lrange(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (start, stop) = (args.next_i64()?, args.next_i64()?);
    let items = with_list(ctx, &key, |list| {
        let Some(list) = list else {
            return Vec::new();
        };
        match crate::store::keyspace::list_range(start, stop, list.len()) {
            Some((from, to)) => list
                .iter()
                .skip(from)
                .take(to - from + 1)
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    })?;
    Ok(Reply::array_of_bulks(items))
}

pub fn llen(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::int(with_list(ctx, &key, |l| {
        l.map_or(0, ItemList::len)
    })?))
}

pub fn lindex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, index) = (args.arg()?, args.arg()?);
    // Redis looks the key up before it reads the index: a missing key is nil whatever it is.
    let item =
        with_list(ctx, &key, |list| -> Result<_, CmdError> {
            let Some(list) = list else {
                return Ok(None);
            };
            let index = parse_int(&index)?;
            Ok(crate::store::keyspace::list_index(index, list.len())
                .and_then(|i| list.get(i).cloned()))
        })??;
    Ok(Reply::bulk_or_nil(item))
}

pub fn lset(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, index, value) = (args.arg()?, args.arg()?, args.arg()?);
    let index = match parse_int(&index) {
        Ok(index) => index,
        // Redis looks the key up before it reads the index.
        Err(err) => {
            return match with_list(ctx, &key, |list| list.is_some())? {
                true => Err(err),
                false => Err(StoreError::NoSuchKey.into()),
            };
        }
    };
    ctx.run(|ks, now| ks.lset(key, index, value, now))?;
    Ok(Reply::OK)
}

pub fn lrem(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let count = args.next_i64()?;
    let element = args.arg()?;
    Ok(Reply::int(
        ctx.run(|ks, now| ks.lrem(key, count, &element, now))?,
    ))
}

pub fn ltrim(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (start, stop) = (args.next_i64()?, args.next_i64()?);
    ctx.run(|ks, now| ks.ltrim(key, start, stop, now))?;
    Ok(Reply::OK)
}

pub fn linsert(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let place = args.arg()?;
    let before = if is(&place, "BEFORE") {
        true
    } else if is(&place, "AFTER") {
        false
    } else {
        return Err(CmdError::Syntax);
    };
    let (pivot, element) = (args.arg()?, args.arg()?);
    Ok(Reply::Int(ctx.run(|ks, now| {
        ks.linsert(key, before, &pivot, element, now)
    })?))
}

/// `LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]`.
/// A count Redis reads with `getPositiveLongFromObjectOrReply`: anything but a
/// non-negative integer gets `error`.
fn non_negative(arg: &[u8], error: &'static str) -> Result<usize, CmdError> {
    parse_int(arg)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| CmdError::Other(error.into()))
}

pub fn lpos(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, element) = (args.arg()?, args.arg()?);
    let (mut rank, mut count, mut maxlen) = (1i64, None, 0usize);
    while let Some(option) = args.arg_opt() {
        if is(&option, "RANK") && args.remaining() > 0 {
            rank = parse_int(&args.arg()?)?;
            if rank == 0 {
                return Err(CmdError::Other(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the \
                     second ... or use negative to start from the end of the list"
                        .into(),
                ));
            }
            if rank == i64::MIN {
                return Err(CmdError::Other("ERR value is out of range".into()));
            }
        } else if is(&option, "COUNT") && args.remaining() > 0 {
            count = Some(non_negative(&args.arg()?, "ERR COUNT can't be negative")?);
        } else if is(&option, "MAXLEN") && args.remaining() > 0 {
            maxlen = non_negative(&args.arg()?, "ERR MAXLEN can't be negative")?;
        } else {
            return Err(CmdError::Syntax);
        }
    }
    let found = with_list(ctx, &key, |list| {
        let Some(list) = list else {
            return Vec::new();
        };
        let len = list.len();
        let scanned = if maxlen == 0 { len } else { maxlen.min(len) };
        let wanted = match count {
            Some(0) => usize::MAX,
            Some(n) => n,
            None => 1,
        };
        let matches = |i: usize| list.get(i).is_some_and(|item| item[..] == element[..]);
        let skip = (rank.unsigned_abs() - 1) as usize;
        let positions: Box<dyn Iterator<Item = usize>> = if rank > 0 {
            Box::new(0..scanned)
        } else {
            Box::new((len - scanned..len).rev())
        };
        positions
            .filter(|&i| matches(i))
            .skip(skip)
            .take(wanted)
            .collect::<Vec<usize>>()
    })?;
    Ok(match count {
        Some(_) => Reply::Array(found.into_iter().map(Reply::int).collect()),
        None => found.first().map_or(Reply::Nil, |&i| Reply::int(i)),
    })
}

/// `LEFT` or `RIGHT`: whether left.
fn side(arg: &Bytes) -> Result<bool, CmdError> {
    if is(arg, "LEFT") {
        Ok(true)
    } else if is(arg, "RIGHT") {
        Ok(false)
    } else {
        Err(CmdError::Syntax)
    }
}

pub fn lmove(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (from, to) = (args.arg()?, args.arg()?);
    let (from_left, to_left) = (side(&args.arg()?)?, side(&args.arg()?)?);
    Ok(Reply::bulk_or_nil(ctx.run(|ks, now| {
        ks.lmove(from, to, from_left, to_left, now)
    })?))
}

pub fn rpoplpush(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (from, to) = (args.arg()?, args.arg()?);
    Ok(Reply::bulk_or_nil(
        ctx.run(|ks, now| ks.lmove(from, to, false, true, now))?,
    ))
}
