//! Connection commands: PING ECHO QUIT AUTH HELLO SELECT CLIENT.

use bytes::Bytes;

use tandem_common::secret::constant_time_eq;
use tracing::warn;

use super::{CmdError, CmdResult, Ctx};
use crate::resp::parse::{Args, is, parse_int};
use crate::resp::reply::Reply;

pub fn ping(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    if args.remaining() > 1 {
        return Err(CmdError::Arity("ping"));
    }
    let text = args.arg_opt();
    // A RESP2 connection with subscriptions gets a message-like array, as in Redis.
    if super::pubsub::subscribed_resp2(ctx.session) {
        return Ok(Reply::Array(vec![
            Reply::text("pong"),
            Reply::Bulk(text.unwrap_or_default()),
        ]));
    }
    Ok(text.map_or(Reply::Simple("PONG"), Reply::Bulk))
}

pub fn echo(_: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    Ok(Reply::Bulk(args.arg()?))
}

pub fn quit(ctx: &mut Ctx<'_>, _: &mut Args) -> CmdResult {
    ctx.session.quit = true;
    Ok(Reply::OK)
}

/// `AUTH [username] password`: the only user is `default`, as in Redis without ACLs.
pub fn auth(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let (user, password) = match args.remaining() {
        1 => (None, args.arg()?),
        2 => (Some(args.arg()?), args.arg()?),
        _ => return Err(CmdError::Syntax),
    };
    if ctx.session.password.is_none() && user.is_none() {
        return Err(CmdError::Other(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?"
                .into(),
        ));
    }
    authenticate(ctx, user.as_deref(), &password)?;
    Ok(Reply::OK)
}

/// Checks a user and password; on success the session may run commands.
fn authenticate(ctx: &mut Ctx<'_>, user: Option<&[u8]>, password: &[u8]) -> Result<(), CmdError> {
    let user_ok = user.is_none_or(|user| user == b"default");
    // Without a password the default user takes any (Redis' `nopass`).
    let password_ok = ctx
        .session
        .password
        .as_deref()
        .is_none_or(|required| constant_time_eq(required.as_bytes(), password));
    if user_ok && password_ok {
        ctx.session.authenticated = true;
        return Ok(());
    }
    metrics::counter!(crate::resp::names::AUTH_FAILURES).increment(1);
    warn!(client = ctx.session.id, addr = %ctx.session.addr, "RESP client gave a wrong password");
    Err(CmdError::Other(
        "WRONGPASS invalid username-password pair or user is disabled.".into(),
    ))
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
pub fn hello(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let mut protocol = ctx.session.protocol;
    if let Some(version) = args.arg_opt() {
        protocol = match parse_int(&version) {
            Ok(2) => 2,
            Ok(3) => 3,
            Ok(_) => {
                return Err(CmdError::Other(
                    "NOPROTO unsupported protocol version".into(),
                ));
            }
            Err(_) => {
                return Err(CmdError::Other(
                    "ERR Protocol version is not an integer or out of range".into(),
                ));
            }
        };
    }
    let mut name = None;
    while let Some(option) = args.arg_opt() {
        if is(&option, "AUTH") {
            let (user, password) = (args.arg()?, args.arg()?);
            authenticate(ctx, Some(&user), &password)?;
        } else if is(&option, "SETNAME") {
            name = Some(valid_client_name(args.arg()?)?);
        } else {
            return Err(CmdError::Other(format!(
                "ERR Syntax error in HELLO option '{}'",
                super::sanitize(&option)
            )));
        }
    }
    if !ctx.session.authenticated {
        return Err(CmdError::Other(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time"
                .into(),
        ));
    }
    ctx.session.protocol = protocol;
    if let Some(name) = name {
        ctx.session.name = name;
    }
    ctx.clients.update(ctx.session);
    Ok(Reply::Map(vec![
        (Reply::text("server"), Reply::text("redis")),
        (
            Reply::text("version"),
            Reply::text(super::server::REDIS_VERSION),
        ),
        (Reply::text("proto"), Reply::Int(i64::from(protocol))),
        (Reply::text("id"), Reply::Int(ctx.session.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(vec![])),
    ]))
}

/// `SELECT db`: the database this connection's commands run against.
pub fn select(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let db = args.next_i64()?;
    let databases = ctx.store.limits().databases;
    let db = usize::try_from(db)
        .ok()
        .filter(|&db| db < databases)
        .ok_or_else(|| CmdError::Other("ERR DB index is out of range".into()))?;
    ctx.session.db = db;
    ctx.clients.update(ctx.session);
    Ok(Reply::OK)
}

/// `CLIENT SETNAME|GETNAME|ID|SETINFO|INFO|LIST`.
pub fn client(ctx: &mut Ctx<'_>, args: &mut Args) -> CmdResult {
    let sub = args.arg()?;
    let sub_lower = String::from_utf8_lossy(&sub).to_ascii_lowercase();
    let arity = |expected: usize, name: &'static str, args: &Args| {
        if args.remaining() == expected {
            Ok(())
        } else {
            Err(CmdError::Arity(name))
        }
    };
    match sub_lower.as_str() {
        "setname" => {
            arity(1, "client|setname", args)?;
            ctx.session.name = valid_client_name(args.arg()?)?;
            ctx.clients.update(ctx.session);
            Ok(Reply::OK)
        }
        "getname" => {
            arity(0, "client|getname", args)?;
            Ok(Reply::bulk_or_nil(ctx.session.name.clone()))
        }
        "id" => {
            arity(0, "client|id", args)?;
            Ok(Reply::Int(ctx.session.id as i64))
        }
        "setinfo" => {
            arity(2, "client|setinfo", args)?;
            let (attribute, value) = (args.arg()?, args.arg()?);
            if value
                .iter()
                .any(|b| *b == b' ' || *b == b'\n' || *b < 0x21 || *b > 0x7e)
            {
                return Err(CmdError::Other(format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&attribute).to_ascii_lowercase()
                )));
            }
            if is(&attribute, "LIB-NAME") {
                ctx.session.lib_name = Some(value);
            } else if is(&attribute, "LIB-VER") {
                ctx.session.lib_ver = Some(value);
            } else {
                return Err(CmdError::Other(format!(
                    "ERR Unrecognized option '{}'",
                    super::sanitize(&attribute)
                )));
            }
            ctx.clients.update(ctx.session);
            Ok(Reply::OK)
        }
        "info" => {
            arity(0, "client|info", args)?;
            ctx.session.last_command = "client|info";
            Ok(Reply::Verbatim(
                *b"txt",
                format!("{}\n", ctx.session.describe()).into(),
            ))
        }
        "list" => {
            ctx.session.last_command = "client|list";
            let ids = client_list_filter(args)?;
            Ok(Reply::Verbatim(
                *b"txt",
                ctx.clients.list(ctx.session, ids.as_deref()).into(),
            ))
        }
        _ => Err(super::unknown_subcommand("CLIENT", &sub)),
    }
}

/// Client names are printable ASCII without spaces; an empty name clears it.
fn valid_client_name(name: Bytes) -> Result<Option<Bytes>, CmdError> {
    if name.is_empty() {
        return Ok(None);
    }
    if name.iter().any(|b| *b < b'!' || *b > b'~') {
        return Err(CmdError::Other(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    Ok(Some(name))
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id [id ...]]`: the ids to list,
/// `None` for all. Every client of the agent is of type `normal`.
fn client_list_filter(args: &mut Args) -> Result<Option<Vec<u64>>, CmdError> {
    let mut ids: Option<Vec<u64>> = None;
    while let Some(option) = args.arg_opt() {
        if is(&option, "TYPE") && args.remaining() > 0 {
            let kind = args.arg()?;
            let lower = String::from_utf8_lossy(&kind).to_ascii_lowercase();
            match lower.as_str() {
                "normal" => {}
                "master" | "replica" | "slave" | "pubsub" => ids = Some(Vec::new()),
                _ => {
                    return Err(CmdError::Other(format!(
                        "ERR Unknown client type '{}'",
                        super::sanitize(&kind)
                    )));
                }
            }
        } else if is(&option, "ID") && args.remaining() > 0 {
            let mut wanted = Vec::new();
            while let Some(id) = args.arg_opt() {
                let id = parse_int(&id)
                    .ok()
                    .and_then(|id| u64::try_from(id).ok())
                    .filter(|&id| id > 0)
                    .ok_or_else(|| CmdError::Other("ERR Invalid client ID".into()))?;
                wanted.push(id);
            }
            ids = Some(match ids {
                Some(existing) if existing.is_empty() => Vec::new(),
                _ => wanted,
            });
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok(ids)
}
