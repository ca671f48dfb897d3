//! Scripting: EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT.
//!
//! A script runs with the keyspace held: a connection runs `EVAL` on the scripts' thread
//! with the keyspace locked and the store's gate announcing the hold (see
//! `connection.rs`), `EXEC` runs it under the transaction's hold. Its writes join the
//! caller's batch and replicate as one unit.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is};
use crate::resp::reply::Reply;

const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

pub fn eval(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    eval_body(ctx, args, false)
}

pub fn eval_ro(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    eval_body(ctx, args, true)
}

/// `EVAL body numkeys ...`: the body is cached (compiled once), then run.
fn eval_body(ctx: &mut Ctx<'_>, args: &mut Args, read_only: bool) -> CmdResult {
    let body = args.arg()?;
    let sha = ctx
        .scripts
        .load(&body)
        .map_err(|err| CmdError::Other(err.0))?;
    run(ctx, &sha, args, read_only)
}

pub fn evalsha(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sha = args.arg()?;
    run(ctx, &script_name(&sha)?, args, false)
}

pub fn evalsha_ro(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sha = args.arg()?;
    run(ctx, &script_name(&sha)?, args, true)
}

/// A SHA1 as the cache names it (lower case); any other length is never cached.
fn script_name(sha: &[u8]) -> Result<String, CmdError> {
    if sha.len() != 40 {
        return Err(CmdError::Other(NOSCRIPT.into()));
    }
    Ok(String::from_utf8_lossy(sha).to_ascii_lowercase())
}

/// Runs a cached script with the `numkeys keys... args...` that follow.
fn run(ctx: &mut Ctx<'_>, sha: &str, args: &mut Args, read_only: bool) -> CmdResult {
    let numkeys = args.next_i64()?;
    let rest = args.rest();
    if numkeys > rest.len() as i64 {
        return Err(CmdError::Other(
            "ERR Number of keys can't be greater than number of args".into(),
        ));
    }
    if numkeys < 0 {
        return Err(CmdError::Other(
            "ERR Number of keys can't be negative".into(),
        ));
    }
    let (keys, argv) = rest.split_at(numkeys as usize);
    let scripts = ctx.scripts;
    let mut engine = scripts.engine();
    let Some(flags) = engine.flags(sha) else {
        return Err(CmdError::Other(NOSCRIPT.into()));
    };
    if read_only && flags.shebang && !flags.no_writes {
        return Err(CmdError::Other(
            "ERR Can not execute a script with write flag using *_ro command.".into(),
        ));
    }
    Ok(ctx.holding(|caller| engine.run(caller, sha, keys, argv, read_only || flags.no_writes)))
}

/// `SCRIPT LOAD|EXISTS|FLUSH|KILL|HELP`.
pub fn script(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    let rest: Vec<Bytes> = args.rest();
    let arity = |name: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(CmdError::Arity(name))
        }
    };
    if is(&sub, "LOAD") {
        arity("script|load", rest.len() == 1)?;
        match ctx.scripts.load(&rest[0]) {
            Ok(sha) => Ok(Reply::bulk(sha)),
            Err(err) => Err(CmdError::Other(err.0)),
        }
    } else if is(&sub, "EXISTS") {
        arity("script|exists", !rest.is_empty())?;
        let engine = ctx.scripts.engine();
        Ok(Reply::Array(
            rest.iter()
                .map(|sha| Reply::bool(engine.contains(sha)))
                .collect(),
        ))
    } else if is(&sub, "FLUSH") {
        let mode_ok = match rest.as_slice() {
            [] => true,
            [mode] => is(mode, "ASYNC") || is(mode, "SYNC"),
            _ => false,
        };
        if !mode_ok {
            return Err(CmdError::Other(
                "ERR SCRIPT FLUSH only support SYNC|ASYNC option".into(),
            ));
        }
        ctx.scripts.engine().flush();
        Ok(Reply::OK)
    } else if is(&sub, "KILL") {
        arity("script|kill", rest.is_empty())?;
        Ok(ctx.scripts.kill())
    } else if is(&sub, "HELP") {
        arity("script|help", rest.is_empty())?;
        Ok(super::help(HELP))
    } else {
        Err(super::unknown_subcommand("SCRIPT", &sub))
    }
}

/// Whether a request is `SCRIPT KILL`, which runs while a script holds the keyspace.
pub fn is_script_kill(args: &[Bytes]) -> bool {
    args.len() == 2 && is(&args[0], "SCRIPT") && is(&args[1], "KILL")
}

/// Whether a request runs a script (and so holds the keyspace while it runs).
pub fn runs_script(args: &[Bytes]) -> bool {
    args.first().is_some_and(|name| {
        is(name, "EVAL") || is(name, "EVALSHA") || is(name, "EVAL_RO") || is(name, "EVALSHA_RO")
    })
}

const HELP: &[&str] = &[
    "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "EXISTS <sha1> [<sha1> ...]",
    "    Return information about the existence of the scripts in the script cache.",
    "FLUSH [ASYNC|SYNC]",
    "    Flush the Lua scripts cache. Very dangerous on replicas.",
    "    When called without the optional mode argument, the behavior is determined by the",
    "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
    "    * ASYNC: Asynchronously flush the scripts cache.",
    "    * SYNC: Synchronously flush the scripts cache.",
    "KILL",
    "    Kill the currently executing Lua script.",
    "LOAD <script>",
    "    Load a script into the scripts cache without executing it.",
    "HELP",
    "    Prints this help.",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripting::sha1_hex;

    #[test]
    fn scripts_are_named_by_the_lower_case_sha1_of_their_body() {
        assert_eq!(
            script_name(b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB").unwrap(),
            sha1_hex(b"return 1")
        );
        assert!(script_name(b"abc").is_err());
    }
}
