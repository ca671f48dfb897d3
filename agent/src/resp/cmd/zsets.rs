//! Sorted-set commands: ZADD ZINCRBY ZREM ZSCORE ZMSCORE ZCARD ZCOUNT ZLEXCOUNT ZRANK
//! ZREVRANK ZRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE ZREVRANGE ZRANGEBYLEX ZREVRANGEBYLEX
//! ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZSCAN.

use bytes::Bytes;

use super::hashes::pairs_reply;
use super::keys::{collection_scan, scan_reply};
use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is, parse_int};
use crate::resp::reply::{Reply, format_double};
use crate::store::collections::SortedSet;
use crate::store::long_double::{parse_bound, parse_score};
use crate::store::{StoreError, ZaddOptions, glob_match};

fn score(arg: &[u8]) -> Result<f64, CmdError> {
    parse_score(arg).ok_or(CmdError::NotFloat)
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]`.
pub fn zadd(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let mut options = ZaddOptions::default();
    let mut changed = false;
    let mut rest = args.rest();
    let mut first = 0;
    for option in &rest {
        if is(option, "NX") {
            options.only_new = true;
        } else if is(option, "XX") {
            options.only_existing = true;
        } else if is(option, "CH") {
            changed = true;
        } else if is(option, "INCR") {
            options.incr = true;
        } else if is(option, "GT") {
            options.greater = true;
        } else if is(option, "LT") {
            options.less = true;
        } else {
            break;
        }
        first += 1;
    }
    let pairs = rest.split_off(first);
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(CmdError::Syntax);
    }
    if options.only_new && options.only_existing {
        return Err(CmdError::Other(
            "ERR XX and NX options at the same time are not compatible".into(),
        ));
    }
    if (options.greater || options.less) && options.only_new || (options.greater && options.less) {
        return Err(CmdError::Other(
            "ERR GT, LT, and/or NX options at the same time are not compatible".into(),
        ));
    }
    if options.incr && pairs.len() > 2 {
        return Err(CmdError::Other(
            "ERR INCR option supports a single increment-element pair".into(),
        ));
    }
    let mut members = Vec::with_capacity(pairs.len() / 2);
    let mut pairs = pairs.into_iter();
    while let (Some(s), Some(member)) = (pairs.next(), pairs.next()) {
        members.push((score(&s)?, member));
    }
    let outcome = ctx.run(|ks, now| ks.zadd(key, options, members, now))?;
    Ok(if options.incr {
        outcome.score.map_or(Reply::Nil, Reply::Double)
    } else if changed {
        Reply::int(outcome.added + outcome.updated)
    } else {
        Reply::int(outcome.added)
    })
}

pub fn zincrby(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let increment = score(&args.arg()?)?;
    let member = args.arg()?;
    let options = ZaddOptions {
        incr: true,
        ..ZaddOptions::default()
    };
    let outcome = ctx.run(|ks, now| ks.zadd(key, options, vec![(increment, member)], now))?;
    Ok(outcome.score.map_or(Reply::Nil, Reply::Double))
}

pub fn zrem(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let members = args.rest();
    Ok(Reply::int(ctx.run(|ks, now| ks.zrem(key, members, now))?))
}

/// Runs `read` over the sorted set at `key` (`None` when absent).
fn with_zset<T>(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    read: impl FnOnce(Option<&SortedSet>) -> T,
) -> Result<T, CmdError> {
    Ok(ctx.run(|ks, now| -> Result<T, StoreError> { Ok(read(ks.zset_at(key, now)?)) })?)
}

pub fn zscore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (key, member) = (args.arg()?, args.arg()?);
    let found = with_zset(ctx, &key, |z| z.and_then(|z| z.score(&member)))?;
    Ok(found.map_or(Reply::Nil, Reply::Double))
}

pub fn zmscore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let members = args.rest();
    let scores = with_zset(ctx, &key, |z| {
        members
            .iter()
            .map(|m| z.and_then(|z| z.score(m)).map_or(Reply::Nil, Reply::Double))
            .collect()
    })?;
    Ok(Reply::Array(scores))
}

pub fn zcard(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    Ok(Reply::int(with_zset(ctx, &key, |z| {
        z.map_or(0, SortedSet::len)
    })?))
}

/// A score range: each bound a float, `-inf`/`+inf`, exclusive after `(`.
#[derive(Debug, Clone, Copy)]
struct ScoreRange {
    min: f64,
    min_exclusive: bool,
    max: f64,
    max_exclusive: bool,
}

impl ScoreRange {
    fn parse(min: &[u8], max: &[u8]) -> Result<ScoreRange, CmdError> {
        let bound = |arg: &[u8]| -> Option<(f64, bool)> {
            match arg.strip_prefix(b"(") {
                Some(rest) => parse_bound(rest).map(|v| (v, true)),
                None => parse_bound(arg).map(|v| (v, false)),
            }
        };
        let error = || CmdError::Other("ERR min or max is not a float".into());
        let (min, min_exclusive) = bound(min).ok_or_else(error)?;
        let (max, max_exclusive) = bound(max).ok_or_else(error)?;
        Ok(ScoreRange {
            min,
            min_exclusive,
            max,
            max_exclusive,
        })
    }

    fn contains(&self, score: f64) -> bool {
        let above = if self.min_exclusive {
            score > self.min
        } else {
            score >= self.min
        };
        let below = if self.max_exclusive {
            score < self.max
        } else {
            score <= self.max
        };
        above && below
    }
}

/// A lexicographic range: `[x` inclusive, `(x` exclusive, `-` and `+` the ends.
#[derive(Debug, Clone)]
struct LexRange {
    min: LexBound,
    max: LexBound,
}

#[derive(Debug, Clone)]
enum LexBound {
    Lowest,
    Highest,
    Inclusive(Bytes),
    Exclusive(Bytes),
}

impl LexRange {
    fn parse(min: &Bytes, max: &Bytes) -> Result<LexRange, CmdError> {
        let bound = |arg: &Bytes| -> Option<LexBound> {
            match arg.first() {
                Some(b'-') if arg.len() == 1 => Some(LexBound::Lowest),
                Some(b'+') if arg.len() == 1 => Some(LexBound::Highest),
                Some(b'[') => Some(LexBound::Inclusive(arg.slice(1..))),
                Some(b'(') => Some(LexBound::Exclusive(arg.slice(1..))),
                _ => None,
            }
        };
        let error = || CmdError::Other("ERR min or max not valid string range item".into());
        Ok(LexRange {
            min: bound(min).ok_or_else(error)?,
            max: bound(max).ok_or_else(error)?,
        })
    }

    /// The members a lex range selects from `ordered` (by score, reversed when `reverse`),
    /// as Redis walks a compact sorted set: members of one score are in lex order, and
    /// across scores the range is only defined where it agrees with that order. Forward,
    /// the walk starts at the first member at or above the minimum and stops at the first
    /// past the maximum; in reverse, from the other end.
    fn walk<'a, T>(
        &'a self,
        ordered: &'a [(&'a Bytes, T)],
        reverse: bool,
    ) -> impl Iterator<Item = &'a (&'a Bytes, T)> + 'a {
        let above = |m: &[u8]| self.above_min(m);
        let below = |m: &[u8]| self.below_max(m);
        let (first, last) = (ordered.first(), ordered.last());
        // Redis' check that the range can hold anything: an empty range, or the ends of the
        // set outside it.
        let possible = !self.is_empty()
            && match (first, last, reverse) {
                (Some(first), Some(last), false) => above(last.0) && below(first.0),
                (Some(first), Some(last), true) => above(first.0) && below(last.0),
                _ => false,
            };
        let start = if !possible {
            ordered.len()
        } else if reverse {
            ordered
                .iter()
                .position(|(m, _)| below(m))
                .filter(|&i| above(ordered[i].0))
                .unwrap_or(ordered.len())
        } else {
            ordered
                .iter()
                .position(|(m, _)| above(m))
                .filter(|&i| below(ordered[i].0))
                .unwrap_or(ordered.len())
        };
        ordered[start..]
            .iter()
            .take_while(move |(m, _)| if reverse { above(m) } else { below(m) })
    }

    /// Whether no member can be in the range: its minimum past its maximum, or equal to it
    /// with either end exclusive (`-` and `+` count as exclusive, as in Redis).
    fn is_empty(&self) -> bool {
        let key = |b: &LexBound| -> (u8, Bytes, bool) {
            match b {
                LexBound::Lowest => (0, Bytes::new(), true),
                LexBound::Highest => (2, Bytes::new(), true),
                LexBound::Inclusive(v) => (1, v.clone(), false),
                LexBound::Exclusive(v) => (1, v.clone(), true),
            }
        };
        let (min, max) = (key(&self.min), key(&self.max));
        match (min.0, &min.1).cmp(&(max.0, &max.1)) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => min.2 || max.2,
            std::cmp::Ordering::Less => false,
        }
    }

    fn above_min(&self, member: &[u8]) -> bool {
        match &self.min {
            LexBound::Lowest => true,
            LexBound::Highest => false,
            LexBound::Inclusive(b) => member >= &b[..],
            LexBound::Exclusive(b) => member > &b[..],
        }
    }

    fn below_max(&self, member: &[u8]) -> bool {
        match &self.max {
            LexBound::Lowest => false,
            LexBound::Highest => true,
            LexBound::Inclusive(b) => member <= &b[..],
            LexBound::Exclusive(b) => member < &b[..],
        }
    }
}

/// What a range command selects.
#[derive(Debug, Clone)]
enum Selection {
    Rank(i64, i64),
    Score(ScoreRange),
    Lex(LexRange),
}

/// A parsed range request.
struct RangeQuery {
    selection: Selection,
    reverse: bool,
    /// `LIMIT offset count` (count < 0: no limit).
    limit: Option<(i64, i64)>,
    with_scores: bool,
}

/// The members a query selects, with their scores, in reply order.
fn select(zset: &SortedSet, query: &RangeQuery) -> Vec<(Bytes, f64)> {
    let ordered: Box<dyn Iterator<Item = (&Bytes, f64)>> = if query.reverse {
        Box::new(zset.iter().rev())
    } else {
        Box::new(zset.iter())
    };
    let chosen: Vec<(Bytes, f64)> = match &query.selection {
        Selection::Rank(start, stop) => {
            let len = zset.len() as i64;
            let start = if *start < 0 { len + start } else { *start }.max(0);
            let stop = if *stop < 0 { len + stop } else { *stop };
            if start > stop || start >= len {
                return Vec::new();
            }
            let stop = stop.min(len - 1);
            ordered
                .skip(start as usize)
                .take((stop - start + 1) as usize)
                .map(|(m, s)| (m.clone(), s))
                .collect()
        }
        Selection::Score(range) => ordered
            .filter(|(_, s)| range.contains(*s))
            .map(|(m, s)| (m.clone(), s))
            .collect(),
        Selection::Lex(range) => {
            let ordered: Vec<(&Bytes, f64)> = ordered.collect();
            range
                .walk(&ordered, query.reverse)
                .map(|(m, s)| ((*m).clone(), *s))
                .collect()
        }
    };
    match query.limit {
        None => chosen,
        Some((offset, _)) if offset < 0 => Vec::new(),
        Some((offset, count)) => {
            let taken = chosen.into_iter().skip(offset as usize);
            if count < 0 {
                taken.collect()
            } else {
                taken.take(count as usize).collect()
            }
        }
    }
}

fn range_reply(chosen: Vec<(Bytes, f64)>, with_scores: bool, protocol: u8) -> Reply {
    if !with_scores {
        return Reply::array_of_bulks(chosen.into_iter().map(|(m, _)| m));
    }
    Reply::Array(pairs_reply(
        chosen
            .into_iter()
            .map(|(m, s)| (Reply::Bulk(m), Reply::Double(s))),
        protocol,
    ))
}

/// How a range command takes its arguments.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `ZRANGE`: any of `BYSCORE`, `BYLEX`, `REV`.
    Generic,
    /// `ZRANGEBYSCORE`, `ZREVRANGEBYSCORE`.
    Score { reverse: bool },
    /// `ZRANGEBYLEX`, `ZREVRANGEBYLEX`.
    Lex { reverse: bool },
    /// `ZREVRANGE`.
    RevRank,
}

/// Parses `key min max [options]` of a range command, as Redis' zrangeGenericCommand:
/// options first, then conflicts, then the bounds.
fn parse_range(args: &mut Args, form: Form) -> Result<(Bytes, RangeQuery), CmdError> {
    let (key, mut min, mut max) = (args.arg()?, args.arg()?, args.arg()?);
    let (mut with_scores, mut limit) = (false, None);
    let mut reverse = matches!(
        form,
        Form::Score { reverse: true } | Form::Lex { reverse: true } | Form::RevRank
    );
    #[derive(PartialEq)]
    enum By {
        Rank,
        Score,
        Lex,
    }
    let mut by = match form {
        Form::Score { .. } => Some(By::Score),
        Form::Lex { .. } => Some(By::Lex),
        Form::RevRank => Some(By::Rank),
        Form::Generic => None,
    };
    while let Some(option) = args.arg_opt() {
        if is(&option, "WITHSCORES") {
            with_scores = true;
        } else if is(&option, "LIMIT") && args.remaining() >= 2 {
            limit = Some((parse_int(&args.arg()?)?, parse_int(&args.arg()?)?));
        } else if form == Form::Generic && is(&option, "REV") {
            reverse = true;
        } else if by.is_none() && is(&option, "BYLEX") {
            by = Some(By::Lex);
        } else if by.is_none() && is(&option, "BYSCORE") {
            by = Some(By::Score);
        } else {
            return Err(CmdError::Syntax);
        }
    }
    let by = by.unwrap_or(By::Rank);
    if limit.is_some() && by == By::Rank {
        return Err(CmdError::Other(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
                .into(),
        ));
    }
    if with_scores && by == By::Lex {
        return Err(CmdError::Other(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX".into(),
        ));
    }
    // A reversed range by score or lex is given as max, min.
    if reverse && by != By::Rank {
        std::mem::swap(&mut min, &mut max);
    }
    let selection = match by {
        By::Rank => Selection::Rank(parse_int(&min)?, parse_int(&max)?),
        By::Score => Selection::Score(ScoreRange::parse(&min, &max)?),
        By::Lex => Selection::Lex(LexRange::parse(&min, &max)?),
    };
    Ok((
        key,
        RangeQuery {
            selection,
            reverse,
            limit,
            with_scores,
        },
    ))
}

fn range_generic(ctx: &mut Ctx<'_>, args: &mut Args, form: Form) -> CmdResult {
    let (key, query) = parse_range(args, form)?;
    let chosen = with_zset(ctx, &key, |z| {
        z.map(|z| select(z, &query)).unwrap_or_default()
    })?;
    Ok(range_reply(chosen, query.with_scores, ctx.session.protocol))
}

pub fn zrange(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::Generic)
}

pub fn zrangebyscore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::Score { reverse: false })
}

pub fn zrevrangebyscore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::Score { reverse: true })
}

pub fn zrevrange(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::RevRank)
}

pub fn zrangebylex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::Lex { reverse: false })
}

pub fn zrevrangebylex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    range_generic(ctx, args, Form::Lex { reverse: true })
}

pub fn zcount(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let range = ScoreRange::parse(&args.arg()?, &args.arg()?)?;
    let count = with_zset(ctx, &key, |z| {
        z.map_or(0, |z| z.iter().filter(|(_, s)| range.contains(*s)).count())
    })?;
    Ok(Reply::int(count))
}

pub fn zlexcount(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (min, max) = (args.arg()?, args.arg()?);
    let range = LexRange::parse(&min, &max)?;
    let count = with_zset(ctx, &key, |z| {
        z.map_or(0, |z| {
            let ordered: Vec<(&Bytes, f64)> = z.iter().collect();
            range.walk(&ordered, false).count()
        })
    })?;
    Ok(Reply::int(count))
}

fn rank(ctx: &mut Ctx<'_>, args: &mut Args, reverse: bool) -> CmdResult {
    let (key, member) = (args.arg()?, args.arg()?);
    let rank = with_zset(ctx, &key, |z| {
        z.and_then(|z| {
            z.rank(&member)
                .map(|r| if reverse { z.len() - 1 - r } else { r })
        })
    })?;
    Ok(rank.map_or(Reply::Nil, Reply::int))
}

pub fn zrank(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    rank(ctx, args, false)
}

pub fn zrevrank(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    rank(ctx, args, true)
}

/// Removes what `selection` selects; how many.
fn remove_range(ctx: &mut Ctx<'_>, key: Bytes, selection: Selection) -> CmdResult {
    let query = RangeQuery {
        selection,
        reverse: false,
        limit: None,
        with_scores: false,
    };
    let removed = ctx.run(|ks, now| -> Result<usize, StoreError> {
        let chosen: Vec<Bytes> = match ks.zset_at(&key, now)? {
            Some(zset) => select(zset, &query).into_iter().map(|(m, _)| m).collect(),
            None => return Ok(0),
        };
        ks.zrem(key, chosen, now)
    })?;
    Ok(Reply::int(removed))
}

pub fn zremrangebyscore(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let range = ScoreRange::parse(&args.arg()?, &args.arg()?)?;
    remove_range(ctx, key, Selection::Score(range))
}

pub fn zremrangebyrank(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (start, stop) = (args.next_i64()?, args.next_i64()?);
    remove_range(ctx, key, Selection::Rank(start, stop))
}

pub fn zremrangebylex(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let (min, max) = (args.arg()?, args.arg()?);
    let range = LexRange::parse(&min, &max)?;
    remove_range(ctx, key, Selection::Lex(range))
}

fn pop(ctx: &mut Ctx<'_>, args: &mut Args, highest: bool) -> CmdResult {
    let key = args.arg()?;
    let count = match args.rest().as_slice() {
        [] => None,
        [count] => Some(super::sets::positive_count(count)?),
        _ => return Err(CmdError::Syntax),
    };
    let popped = ctx.run(|ks, now| ks.zpop(key, count.unwrap_or(1), highest, now))?;
    let pairs = popped
        .into_iter()
        .map(|(m, s)| (Reply::Bulk(m), Reply::Double(s)));
    // Without a count, one flat pair whatever the protocol.
    let protocol = if count.is_none() {
        2
    } else {
        ctx.session.protocol
    };
    Ok(Reply::Array(pairs_reply(pairs, protocol)))
}

pub fn zpopmin(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    pop(ctx, args, false)
}

pub fn zpopmax(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    pop(ctx, args, true)
}

pub fn zscan(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let key = args.arg()?;
    let pattern = collection_scan(args)?;
    let items = with_zset(ctx, &key, |z| {
        z.map(|z| {
            let compact = z.encoding() == "listpack";
            z.iter()
                .filter(|(m, _)| pattern.as_ref().is_none_or(|p| glob_match(p, m)))
                .flat_map(|(m, s)| [Reply::Bulk(m.clone()), Reply::bulk(scan_score(s, compact))])
                .collect()
        })
        .unwrap_or_default()
    })?;
    Ok(scan_reply(items))
}

/// A score as `ZSCAN` shows it: a compact sorted set keeps an integral score as an integer
/// (Redis' listpack), a large one prints it as `ZSCORE` does.
fn scan_score(score: f64, compact: bool) -> String {
    if compact && score.fract() == 0.0 && score.abs() < 9.223_372_036_854_775e18 {
        return format!("{}", score as i64);
    }
    format_double(score)
}
