//! Pub/sub: SUBSCRIBE PSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE PUBLISH PUBSUB.
//!
//! Subscription replies are push frames (`>` in RESP3, arrays in RESP2), one per channel.
//! A RESP2 connection with subscriptions may only run (un)subscribe commands, `PING` and
//! `QUIT` (see [`refused_while_subscribed`]); a RESP3 one may run anything.

use bytes::Bytes;

use super::{CmdError, CmdResult, Command, Ctx};
use crate::resp::clients::ClientSession;
use crate::resp::parse::{Args, is};
use crate::resp::pubsub::Subscription;
use crate::resp::reply::Reply;

/// One reply per subscription change: `[kind, channel, subscriptions now]`.
fn change(kind: &str, channel: Option<Bytes>, session: &ClientSession) -> Reply {
    let count = session.pubsub.as_ref().map_or(0, Subscription::count);
    Reply::Push(vec![
        Reply::text(kind),
        channel.map_or(Reply::Nil, Reply::Bulk),
        Reply::int(count),
    ])
}

/// Replies of a command that answers once per channel, as one run of frames.
fn frames(replies: Vec<Reply>) -> Reply {
    Reply::Frames(replies)
}

fn subscribe_to(ctx: &mut Ctx<'_>, args: &mut Args, pattern: bool) -> CmdResult {
    let kind = if pattern { "psubscribe" } else { "subscribe" };
    let pubsub = ctx.clients.pubsub();
    let id = ctx.session.id;
    let mut replies = Vec::new();
    for channel in args.rest() {
        let subscription = ctx.session.pubsub.get_or_insert_with(Subscription::new);
        pubsub.subscribe(id, subscription, channel.clone(), pattern);
        replies.push(change(kind, Some(channel), ctx.session));
    }
    Ok(frames(replies))
}

fn unsubscribe_from(ctx: &mut Ctx<'_>, args: &mut Args, pattern: bool) -> CmdResult {
    let kind = if pattern {
        "punsubscribe"
    } else {
        "unsubscribe"
    };
    let pubsub = ctx.clients.pubsub();
    let id = ctx.session.id;
    let mut named = args.rest();
    if named.is_empty() {
        // All of them, or one reply with no channel when there are none.
        named = ctx.session.pubsub.as_ref().map_or_else(Vec::new, |s| {
            let set = if pattern { &s.patterns } else { &s.channels };
            set.iter().cloned().collect()
        });
        if named.is_empty() {
            return Ok(frames(vec![change(kind, None, ctx.session)]));
        }
    }
    let mut replies = Vec::new();
    for channel in named {
        if let Some(subscription) = ctx.session.pubsub.as_mut() {
            pubsub.unsubscribe(id, subscription, &channel, pattern);
        }
        replies.push(change(kind, Some(channel), ctx.session));
    }
    Ok(frames(replies))
}

pub fn subscribe(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    subscribe_to(ctx, args, false)
}

pub fn psubscribe(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    subscribe_to(ctx, args, true)
}

pub fn unsubscribe(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    unsubscribe_from(ctx, args, false)
}

pub fn punsubscribe(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    unsubscribe_from(ctx, args, true)
}

pub fn publish(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let channel = args.arg()?;
    let message = args.arg()?;
    Ok(Reply::int(ctx.clients.pubsub().publish(&channel, &message)))
}

/// `PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT | SHARDCHANNELS [pattern] |
/// SHARDNUMSUB [channel ...] | HELP` (no shard channels: there is no cluster mode).
pub fn pubsub(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    let rest = args.rest();
    let pubsub = ctx.clients.pubsub();
    let arity = |name: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(CmdError::Arity(name))
        }
    };
    if is(&sub, "CHANNELS") {
        arity("pubsub|channels", rest.len() <= 1)?;
        Ok(Reply::array_of_bulks(
            pubsub.channels(rest.first().map(|p| &p[..])),
        ))
    } else if is(&sub, "NUMSUB") {
        Ok(Reply::Array(
            rest.into_iter()
                .flat_map(|channel| {
                    let count = pubsub.numsub(&channel);
                    [Reply::Bulk(channel), Reply::int(count)]
                })
                .collect(),
        ))
    } else if is(&sub, "NUMPAT") {
        arity("pubsub|numpat", rest.is_empty())?;
        Ok(Reply::int(pubsub.numpat()))
    } else if is(&sub, "SHARDCHANNELS") {
        arity("pubsub|shardchannels", rest.len() <= 1)?;
        Ok(Reply::Array(Vec::new()))
    } else if is(&sub, "SHARDNUMSUB") {
        Ok(Reply::Array(
            rest.into_iter()
                .flat_map(|channel| [Reply::Bulk(channel), Reply::Int(0)])
                .collect(),
        ))
    } else if is(&sub, "HELP") {
        Ok(super::help(HELP))
    } else {
        Err(super::unknown_subcommand("PUBSUB", &sub))
    }
}

/// Redis' refusal of a command on a RESP2 connection with subscriptions, if `command` is
/// one it refuses there.
pub fn refused_while_subscribed(
    session: &ClientSession,
    command: &Command,
    args: &[Bytes],
) -> Option<Reply> {
    if session.protocol >= 3 || session.pubsub.as_ref().is_none_or(|s| s.count() == 0) {
        return None;
    }
    if matches!(
        command.name,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit"
    ) {
        return None;
    }
    let name = match args.get(1) {
        Some(sub) if super::has_subcommands(command) => format!(
            "{}|{}",
            command.name,
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        ),
        _ => command.name.to_string(),
    };
    Some(Reply::Error(format!(
        "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    )))
}

/// Whether a RESP2 connection is subscribed, so that `PING` answers `["pong", text]`.
pub fn subscribed_resp2(session: &ClientSession) -> bool {
    session.protocol < 3 && session.pubsub.as_ref().is_some_and(|s| s.count() > 0)
}

const HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];
