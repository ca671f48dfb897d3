//! Transactions: MULTI EXEC DISCARD WATCH UNWATCH.
//!
//! `EXEC` runs the queued commands under one hold of the store's lock, so no other client
//! and no partner's write comes between them, and their mutations reach the link as one
//! unit when the hold ends: the partner applies it whole, and in sync mode `EXEC` is
//! answered once it has. `WATCH` remembers each key's version; `EXEC` runs only if none
//! changed (a write, a partner's write, an expiry), and a command that changed nothing
//! changes no version.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx, lookup, run};
use crate::resp::clients::{ClientSession, Transaction};
use crate::resp::parse::Args;
use crate::resp::reply::Reply;

/// Most bytes of arguments a transaction may queue; past it, the command is refused and
/// `EXEC` discards the transaction (a client cannot grow the agent's memory without bound).
pub const MAX_QUEUED_BYTES: usize = 256 << 20;

/// Marks the transaction being queued, if any, as refused (a command was).
pub fn flag(session: &mut ClientSession) {
    if let Some(transaction) = session.multi.as_mut() {
        transaction.aborted = true;
    }
}

/// Queues a command of a transaction.
pub fn queue(session: &mut ClientSession, args: Vec<Bytes>) -> Reply {
    let Some(transaction) = session.multi.as_mut() else {
        return Reply::Error("ERR no transaction".into());
    };
    let bytes: usize = args.iter().map(|a| a.len() + 16).sum();
    if transaction.bytes + bytes > MAX_QUEUED_BYTES {
        transaction.aborted = true;
        return Reply::Error(format!(
            "ERR transaction exceeds the limit of {MAX_QUEUED_BYTES} bytes of queued commands"
        ));
    }
    transaction.bytes += bytes;
    transaction.commands.push(args);
    Reply::Simple("QUEUED")
}

pub fn multi(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    if ctx.session.multi.is_some() {
        return Err(CmdError::Other("ERR MULTI calls can not be nested".into()));
    }
    ctx.session.multi = Some(Transaction::default());
    Ok(Reply::OK)
}

pub fn discard(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    if ctx.session.multi.take().is_none() {
        return Err(CmdError::Other("ERR DISCARD without MULTI".into()));
    }
    ctx.session.watched.clear();
    Ok(Reply::OK)
}

pub fn watch(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    if ctx.session.multi.is_some() {
        return Err(CmdError::Other(
            "ERR WATCH inside MULTI is not allowed".into(),
        ));
    }
    let db = ctx.session.db;
    for key in args.rest() {
        let mark = ctx.run(|ks, now| ks.watch_mark(&key, now));
        ctx.session.watched.push((db, key, mark));
    }
    Ok(Reply::OK)
}

pub fn unwatch(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    ctx.session.watched.clear();
    Ok(Reply::OK)
}

pub fn exec(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    let Some(transaction) = ctx.session.multi.take() else {
        return Err(CmdError::Other("ERR EXEC without MULTI".into()));
    };
    let watched = std::mem::take(&mut ctx.session.watched);
    if transaction.aborted {
        return Err(CmdError::Other(
            "EXECABORT Transaction discarded because of previous errors.".into(),
        ));
    }
    let now_ms = ctx.now_ms;
    ctx.holding(|inner| {
        let keyspace = inner.held.as_deref_mut().expect("held");
        let db = inner.session.db;
        let changed = watched.iter().any(|(watched_db, key, mark)| {
            let _ = keyspace.select(*watched_db);
            keyspace.changed_since(key, *mark, now_ms)
        });
        let _ = keyspace.select(db);
        if changed {
            return Ok(Reply::NilArray);
        }
        let replies = transaction
            .commands
            .into_iter()
            .map(|args| match lookup(&args[0]) {
                Some(command) => run(inner, command, args),
                None => Reply::Error("ERR unknown command".into()),
            })
            .collect();
        Ok(Reply::Array(replies))
    })
}
