//! One client connection: bytes in, requests out; replies in, bytes out.
//!
//! Requests are RESP arrays of bulk strings or inline commands (a line of words, as typed
//! into telnet). Every complete request in the buffer is executed before replies are
//! written, so a pipeline costs one write.
//!
//! A request is parsed in one pass over its headers, which checks each declared length
//! against the limits as soon as it arrives and yields each argument as a slice of the
//! request. (Decoding with `redis-protocol` as well cost a fifth of the agent's CPU under
//! pipelined GETs: the limits need the headers walked anyway, and the crate walked them
//! again; the tests check the two agree.)

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::clients::{ClientSession, Clients};
use super::cmd::{Ctx, execute, flag_transaction, is_script_kill, lookup, runs_script};
use super::reply::Reply;
use super::{RespLimits, names};
use crate::scripting::Scripts;
use crate::sessions::Sessions;
use crate::store::SessionStore;
use crate::store::gate::Waited;

/// Redis' bound on a bulk string (`proto-max-bulk-len`, 512 MB): a longer declared length
/// is a protocol error, as there.
const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// Redis' limit on an inline request line.
const MAX_INLINE_LEN: usize = 64 * 1024;
/// How much a connection reads at once at first, and again once its client sends little.
const READ_CHUNK: usize = 16 * 1024;
/// The most a connection reads at once, for clients that pipeline large batches.
const MAX_READ_CHUNK: usize = 256 * 1024;

/// How much to read next, after `read` bytes came in with room for `room`. A read that
/// filled its room left more behind: a pipelined batch larger than the buffer, which is
/// answered with one write only if it is read in one go; the chunk doubles. Once reads
/// come in under half the chunk, it is back to the start.
fn next_read_chunk(chunk: usize, read: usize, room: usize) -> usize {
    if read >= room {
        (chunk * 2).min(MAX_READ_CHUNK)
    } else if read < chunk / 2 {
        READ_CHUNK
    } else {
        chunk
    }
}

/// Input that is not a valid request; the connection is answered and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn protocol_error(text: impl Into<String>) -> ProtocolError {
    ProtocolError(text.into())
}

/// What the parser took off the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request (empty for an empty request, ignored as Redis does).
    Request(Vec<Bytes>),
    /// A request with an argument past the limits: what was read of it is gone, and the
    /// rest is read and discarded as it arrives ([`Discard`]), never buffered; then the
    /// client is told, and the connection goes on.
    Oversized(Discard),
}

/// The rest of an oversized request, skipped as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    /// Bytes of the current argument (and its CRLF) still to skip.
    skip: u64,
    /// Arguments after the current one still to skip.
    args_left: u64,
    /// The error the client gets once the request is over.
    error: String,
}

impl Discard {
    /// Skips what `buf` holds of the request; `Ok(true)` once all of it is gone.
    ///
    /// # Errors
    /// [`ProtocolError`] for a malformed argument header.
    pub fn consume(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        loop {
            let skipped = self.skip.min(buf.len() as u64) as usize;
            let _ = buf.split_to(skipped);
            self.skip -= skipped as u64;
            if self.skip > 0 {
                return Ok(false);
            }
            if self.args_left == 0 {
                return Ok(true);
            }
            let Some(&kind) = buf.first() else {
                return Ok(false);
            };
            if kind != b'$' {
                return Err(protocol_error(format!(
                    "expected '$', got '{}'",
                    char::from(kind)
                )));
            }
            let mut pos = 0;
            let Some(len) = header_number(buf, &mut pos, "invalid bulk length")? else {
                if buf.len() > 32 {
                    return Err(protocol_error("invalid bulk length"));
                }
                return Ok(false);
            };
            if !(0..=MAX_BULK_LEN).contains(&len) {
                return Err(protocol_error("invalid bulk length"));
            }
            let _ = buf.split_to(pos);
            self.skip = len as u64 + 2;
            self.args_left -= 1;
        }
    }

    /// The error reply for the discarded request.
    pub fn error(&self) -> &str {
        &self.error
    }
}

/// Takes the next complete request off the front of `buf`: `Ok(None)` when more bytes are
/// needed.
///
/// # Errors
/// [`ProtocolError`] for malformed input, or declared lengths past the limits of a client
/// that has not authenticated.
pub fn next_request(
    buf: &mut BytesMut,
    limits: &RespLimits,
) -> Result<Option<Parsed>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return Ok(inline_request(buf)?.map(Parsed::Request));
    }
    let (len, count) = match walk_multibulk(buf, limits, |_, _| ())? {
        Walk::Incomplete => return Ok(None),
        Walk::Oversized { at, discard } => {
            let _ = buf.split_to(at);
            return Ok(Some(Parsed::Oversized(discard)));
        }
        Walk::Complete { len, count } => (len, count),
    };
    // The second walk over the (few, short) headers slices the arguments out of the
    // request; keeping their ranges from the first would take an allocation of its own.
    let request = buf.split_to(len).freeze();
    let mut args = Vec::with_capacity(count);
    walk_multibulk(&request, limits, |start, end| {
        args.push(request.slice(start..end));
    })?;
    Ok(Some(Parsed::Request(args)))
}

/// How far the walk over a request got.
enum Walk {
    Incomplete,
    Complete {
        len: usize,
        count: usize,
    },
    /// The argument whose header ends at `at` is past the limits.
    Oversized {
        at: usize,
        discard: Discard,
    },
}

/// Walks the multibulk request (`*<count>` then `$<len>` and the bytes, for each argument)
/// at the front of `buf`, handing `arg` the range of every argument. Returns the request's
/// length and argument count once all of it is there. Each declared length is checked when
/// its header arrives, before the payload, so a client cannot make the agent buffer past
/// the limits: an argument past them (or one that takes the request past its limit) makes
/// the request oversized, to be discarded as it arrives (before authentication, a protocol
/// error, as in Redis). A count of zero or less is an empty request, as in Redis.
fn walk_multibulk(
    buf: &[u8],
    limits: &RespLimits,
    mut arg: impl FnMut(usize, usize),
) -> Result<Walk, ProtocolError> {
    let mut pos = 0;
    let Some(count) = header_number(buf, &mut pos, "invalid multibulk length")? else {
        return Ok(Walk::Incomplete);
    };
    if count > limits.max_array_len as i64 {
        return Err(protocol_error(if limits.pre_auth {
            "unauthenticated multibulk length"
        } else {
            "invalid multibulk length"
        }));
    }
    let count = count.max(0) as usize;
    for i in 0..count {
        let Some(&kind) = buf.get(pos) else {
            return Ok(Walk::Incomplete);
        };
        if kind != b'$' {
            return Err(protocol_error(format!(
                "expected '$', got '{}'",
                char::from(kind)
            )));
        }
        let Some(len) = header_number(buf, &mut pos, "invalid bulk length")? else {
            return Ok(Walk::Incomplete);
        };
        // Past Redis' own bound (`proto-max-bulk-len`) a length is a protocol error there
        // too; below it, one past the limits is discarded.
        if !(0..=MAX_BULK_LEN).contains(&len) {
            return Err(protocol_error("invalid bulk length"));
        }
        let (start, end) = (pos, pos + len as usize);
        let too_long = len as usize > limits.max_bulk_bytes;
        if too_long || end.saturating_add(2) > limits.max_request_bytes {
            if limits.pre_auth {
                return Err(protocol_error("unauthenticated bulk length"));
            }
            let error = if too_long {
                format!(
                    "ERR value of {len} bytes exceeds the limit of {} bytes",
                    limits.max_value_bytes
                )
            } else {
                format!(
                    "ERR request exceeds the limit of {} bytes",
                    limits.max_request_bytes
                )
            };
            let discard = Discard {
                skip: len as u64 + 2,
                args_left: (count - i - 1) as u64,
                error,
            };
            return Ok(Walk::Oversized { at: pos, discard });
        }
        match buf.get(end..end + 2) {
            None => return Ok(Walk::Incomplete),
            Some(b"\r\n") => {}
            Some(_) => return Err(protocol_error("expected CRLF after a bulk string")),
        }
        arg(start, end);
        pos = end + 2;
    }
    Ok(Walk::Complete { len: pos, count })
}

/// Reads `<prefix><decimal>\r\n` at `pos`, advancing past it; `None` if incomplete.
fn header_number(buf: &[u8], pos: &mut usize, error: &str) -> Result<Option<i64>, ProtocolError> {
    let mut at = *pos + 1;
    let negative = buf.get(at) == Some(&b'-');
    if negative {
        at += 1;
    }
    let digits_start = at;
    let mut value = 0i64;
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(&digit @ b'0'..=b'9') => {
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i64::from(digit - b'0')))
                    .ok_or_else(|| protocol_error(error))?;
            }
            Some(b'\r') if at > digits_start => break,
            Some(_) => return Err(protocol_error(error)),
        }
        at += 1;
    }
    match buf.get(at + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(protocol_error(error)),
    }
    *pos = at + 2;
    Ok(Some(if negative { -value } else { value }))
}

fn inline_request(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(newline) = buf.iter().take(MAX_INLINE_LEN).position(|&b| b == b'\n') else {
        if buf.len() >= MAX_INLINE_LEN {
            return Err(protocol_error("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf.split_to(newline + 1).freeze();
    let text = line.slice(..newline);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    Ok(Some(
        text.split(|b| b.is_ascii_whitespace())
            .filter(|word| !word.is_empty())
            .map(|word| line.slice_ref(word))
            .collect(),
    ))
}

/// Writes `output`; a subscriber cut off by its publishers while its socket does not take
/// the write (it stopped reading) ends there.
async fn write_out(
    stream: &mut TcpStream,
    output: &[u8],
    session: &ClientSession,
) -> Result<(), ConnectionEnd> {
    match &session.pubsub {
        None => stream.write_all(output).await?,
        Some(subscription) => {
            tokio::select! {
                written = stream.write_all(output) => written?,
                () = subscription.cut_off() => return Err(ConnectionEnd::Overflow),
            }
        }
    }
    Ok(())
}

/// Moves the messages queued for a subscriber into its output.
fn drain_messages(session: &mut ClientSession, output: &mut BytesMut) {
    let protocol = session.protocol;
    if let Some(subscription) = session.pubsub.as_mut() {
        while let Some(message) = subscription.try_next() {
            subscription.taken(&message);
            message.encode(protocol, output);
        }
    }
}

/// The most scripts of one client run in one hand-over to the scripts' thread.
const SCRIPTS_PER_HAND_OVER: usize = 64;

/// Redis' reply to a command refused while a script runs past the busy threshold.
const BUSY: &str =
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.";

/// What a client may still run while a script is busy: what needs no keyspace and Redis
/// lets through (`AUTH HELLO MULTI DISCARD UNWATCH QUIT`), and `SCRIPT KILL`.
fn allowed_while_busy(args: &[Bytes]) -> bool {
    is_script_kill(args)
        || args
            .first()
            .and_then(|name| lookup(name))
            .is_some_and(|command| command.has_flag("allow_busy") && command.name != "watch")
}

/// Runs a connection's consecutive script requests on the scripts' thread, one after the
/// other, each with the keyspace locked for its whole run and the store's gate telling
/// everyone else to wait (or, past the threshold, that the server is busy) instead of
/// blocking on the lock; the runtime's threads stay free to serve them and `SCRIPT KILL`.
/// One hand-over for a pipeline of scripts, not one each. Returns the replies, in order,
/// and whether the scripts made a write the partner is to get.
async fn run_scripts(
    store: &SessionStore,
    clients: &Clients,
    scripts: &Scripts,
    session: &mut ClientSession,
    requests: Vec<Vec<Bytes>>,
) -> (Vec<Reply>, bool) {
    let count = requests.len();
    let (store, clients, runner) = (store.clone(), clients.clone(), scripts.clone());
    let mut stand_in = session.for_script();
    stand_in.protocol = session.protocol;
    let (done, ran) = tokio::sync::oneshot::channel();
    scripts.run_on_thread(move || {
        let mut recorded = false;
        let mut replies = Vec::with_capacity(requests.len());
        // One hold for them all: ending it after each script would wake every waiter to
        // find the next script under way. Each script's time counts from its own start.
        let hold = store.gate().begin();
        for args in requests {
            hold.restart();
            let mut keyspace = store.lock();
            let mut ctx = Ctx {
                store: &store,
                session: &mut stand_in,
                clients: &clients,
                scripts: &runner,
                recorded: &mut recorded,
                now_ms: store.now_ms(),
                held: Some(&mut keyspace),
            };
            replies.push(execute(&mut ctx, args));
        }
        drop(hold);
        // The hold is over before the caller hears of it: its next command finds the
        // keyspace free.
        let _ = done.send((replies, recorded));
    });
    session.last_command = "eval";
    ran.await.unwrap_or_else(|_| {
        warn!(client = session.id, "a script's run failed");
        let failed = || Reply::Error("ERR the script's run failed".into());
        ((0..count).map(|_| failed()).collect(), false)
    })
}

/// Whether a request is a script to run on the scripts' thread: outside a transaction
/// (queued there, it runs in `EXEC`), once the client is authenticated.
fn batches_script(args: &[Bytes], session: &ClientSession) -> bool {
    runs_script(args) && session.multi.is_none() && session.authenticated
}

/// Runs the script requests read so far and queues their replies.
async fn flush_scripts(
    store: &SessionStore,
    clients: &Clients,
    scripts: &Scripts,
    session: &mut ClientSession,
    pending: &mut Vec<Vec<Bytes>>,
    recorded: &mut bool,
    output: &mut BytesMut,
) {
    if pending.is_empty() {
        return;
    }
    let requests = std::mem::take(pending);
    let (replies, wrote) = run_scripts(store, clients, scripts, session, requests).await;
    *recorded |= wrote;
    for reply in replies {
        drain_messages(session, output);
        reply.encode(session.protocol, output);
    }
}

/// Answers a discarded request with its limit error (a transaction being queued is then
/// refused at `EXEC`).
fn refuse_oversized(session: &mut ClientSession, discard: &Discard, output: &mut BytesMut) {
    metrics::counter!(names::OVERSIZED).increment(1);
    warn!(client = session.id, addr = %session.addr, error = discard.error(), "refused an oversized RESP request");
    super::cmd::flag_transaction(session);
    Reply::Error(discard.error().to_string()).encode(session.protocol, output);
}

/// Serves one client until it quits, disconnects or sends something malformed.
pub async fn serve(
    mut stream: TcpStream,
    sessions: Sessions,
    clients: Clients,
    scripts: Scripts,
    limits: RespLimits,
    commands_total: metrics::Counter,
) {
    let (Ok(addr), Ok(laddr)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut session = clients.connect(addr, laddr);
    debug!(client = session.id, %addr, "RESP client connected");
    metrics::gauge!(names::CONNECTIONS).increment(1.0);
    let result = run(
        &mut stream,
        &sessions,
        &clients,
        &scripts,
        &mut session,
        &limits,
        &commands_total,
    )
    .await;
    metrics::gauge!(names::CONNECTIONS).decrement(1.0);
    clients.disconnect(session.id);
    if let Some(subscription) = &session.pubsub {
        clients.pubsub().disconnect(session.id, subscription);
    }
    match result {
        Ok(()) => debug!(client = session.id, "RESP client disconnected"),
        Err(ConnectionEnd::Protocol(err)) => {
            metrics::counter!(names::PROTOCOL_ERRORS).increment(1);
            warn!(client = session.id, %addr, error = %err, "closing RESP connection");
        }
        Err(ConnectionEnd::Overflow) => {
            warn!(client = session.id, %addr, "closing a subscriber past the pub/sub output limits");
        }
        Err(ConnectionEnd::Io(err)) => {
            debug!(client = session.id, %addr, error = %err, "RESP connection failed");
        }
    }
}

enum ConnectionEnd {
    Protocol(ProtocolError),
    Io(std::io::Error),
    /// A subscriber that did not read its messages, past the pub/sub output limits.
    Overflow,
}

impl From<std::io::Error> for ConnectionEnd {
    fn from(err: std::io::Error) -> Self {
        ConnectionEnd::Io(err)
    }
}

async fn run(
    stream: &mut TcpStream,
    sessions: &Sessions,
    clients: &Clients,
    scripts: &Scripts,
    session: &mut ClientSession,
    limits: &RespLimits,
    commands_total: &metrics::Counter,
) -> Result<(), ConnectionEnd> {
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut chunk = READ_CHUNK;
    let mut recorded = false;
    // The rest of an oversized request, skipped as it arrives.
    let mut discarding: Option<Discard> = None;
    loop {
        let mut failure = None;
        let mut commands = 0u64;
        // Script requests read and not yet run: consecutive ones run in one hand-over.
        let mut pending_scripts: Vec<Vec<Bytes>> = Vec::new();
        let mut now_ms = sessions.store.now_ms();
        loop {
            if let Some(discard) = discarding.as_mut() {
                match discard.consume(&mut input) {
                    Ok(true) => {
                        refuse_oversized(session, discard, &mut output);
                        discarding = None;
                    }
                    Ok(false) => break,
                    Err(err) => {
                        Reply::Error(format!("ERR {err}")).encode(session.protocol, &mut output);
                        failure = Some(err);
                        break;
                    }
                }
            }
            // Until it authenticated, a client may send no more than AUTH needs.
            let limits = if session.authenticated {
                limits
            } else {
                &RespLimits::UNAUTHENTICATED
            };
            let request = match next_request(&mut input, limits) {
                Ok(Some(Parsed::Request(args)))
                    if batches_script(&args, session)
                        && session.pubsub.is_none()
                        && pending_scripts.len() < SCRIPTS_PER_HAND_OVER
                        && !sessions.store.gate().is_active() =>
                {
                    commands += 1;
                    pending_scripts.push(args);
                    continue;
                }
                other => other,
            };
            // Everything else is answered after the scripts before it.
            if !pending_scripts.is_empty() {
                flush_scripts(
                    &sessions.store,
                    clients,
                    scripts,
                    session,
                    &mut pending_scripts,
                    &mut recorded,
                    &mut output,
                )
                .await;
                now_ms = sessions.store.now_ms();
            }
            match request {
                Ok(Some(Parsed::Oversized(discard))) => {
                    commands += 1;
                    discarding = Some(discard);
                }
                Ok(Some(Parsed::Request(args))) if args.is_empty() => continue,
                Ok(Some(Parsed::Request(args))) => {
                    commands += 1;
                    let gate = sessions.store.gate();
                    if gate.is_active() {
                        // A script holds the keyspace: wait for it, or past the busy
                        // threshold answer BUSY to all but what Redis lets through.
                        match gate.wait().await {
                            Waited::Idle => now_ms = sessions.store.now_ms(),
                            Waited::Busy if allowed_while_busy(&args) => {}
                            Waited::Busy => {
                                flag_transaction(session);
                                Reply::Error(BUSY.into()).encode(session.protocol, &mut output);
                                continue;
                            }
                        }
                    }
                    if batches_script(&args, session) {
                        // The gate is free now: the script runs with those after it (a
                        // subscriber's alone: the next request finds it pending and runs it
                        // first, so that messages keep their place between replies).
                        pending_scripts.push(args);
                        continue;
                    }
                    let reply = {
                        let mut ctx = Ctx {
                            store: &sessions.store,
                            session,
                            clients,
                            scripts,
                            recorded: &mut recorded,
                            now_ms,
                            held: None,
                        };
                        execute(&mut ctx, args)
                    };
                    // Messages already queued for this connection (its own PUBLISH to a
                    // channel it is subscribed to) go before the reply, as in Redis.
                    drain_messages(session, &mut output);
                    reply.encode(session.protocol, &mut output);
                    if session.quit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    Reply::Error(format!("ERR {err}")).encode(session.protocol, &mut output);
                    failure = Some(err);
                    break;
                }
            }
        }
        // Every way out of the loop above runs the scripts read before it.
        debug_assert!(pending_scripts.is_empty());
        if commands > 0 {
            commands_total.increment(commands);
        }
        // The batch's writes are applied locally and on their way to the partner; in sync
        // mode the replies wait until the partner has them too.
        if std::mem::take(&mut recorded) {
            sessions.replicator.replicated().await;
        }
        if !output.is_empty() {
            write_out(stream, &output, session).await?;
            output.clear();
        }
        if let Some(err) = failure {
            return Err(ConnectionEnd::Protocol(err));
        }
        if session.quit {
            return Ok(());
        }
        if chunk == READ_CHUNK && input.is_empty() && input.capacity() > 4 * READ_CHUNK {
            // A client that pipelined large batches and no longer does: give the memory back.
            input = BytesMut::with_capacity(READ_CHUNK);
        }
        if input.capacity() - input.len() < chunk {
            input.reserve(chunk);
        }
        let room = input.capacity() - input.len();
        let read = match session.pubsub.as_mut() {
            // A subscriber reads requests and writes messages as they come.
            Some(subscription) => {
                tokio::select! {
                    read = stream.read_buf(&mut input) => read?,
                    Some(message) = subscription.next() => {
                        subscription.taken(&message);
                        message.encode(session.protocol, &mut output);
                        drain_messages(session, &mut output);
                        if session.pubsub.as_ref().is_some_and(|s| s.overflowed()) {
                            return Err(ConnectionEnd::Overflow);
                        }
                        write_out(stream, &output, session).await?;
                        output.clear();
                        continue;
                    }
                }
            }
            None => stream.read_buf(&mut input).await?,
        };
        if read == 0 {
            return Ok(());
        }
        // Until it authenticated, a client gets no larger reads.
        if session.authenticated {
            chunk = next_read_chunk(chunk, read, room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_while_they_fill_their_room_and_shrink_when_the_client_sends_little() {
        // A 17.6 KB pipeline fills a 16 KiB read: the next reads are larger.
        assert_eq!(
            next_read_chunk(READ_CHUNK, READ_CHUNK, READ_CHUNK),
            2 * READ_CHUNK
        );
        assert_eq!(
            next_read_chunk(2 * READ_CHUNK, 17_600, 2 * READ_CHUNK),
            2 * READ_CHUNK
        );
        // Never past the most.
        assert_eq!(
            next_read_chunk(MAX_READ_CHUNK, MAX_READ_CHUNK, MAX_READ_CHUNK),
            MAX_READ_CHUNK
        );
        // One small command after large batches: back to the start.
        assert_eq!(
            next_read_chunk(8 * READ_CHUNK, 1_100, 8 * READ_CHUNK),
            READ_CHUNK
        );
        assert_eq!(next_read_chunk(READ_CHUNK, 1_100, READ_CHUNK), READ_CHUNK);
    }

    fn limits() -> RespLimits {
        RespLimits {
            max_bulk_bytes: 1_000,
            max_value_bytes: 1_000,
            max_request_bytes: 10_000,
            max_clients: 1,
            max_array_len: 1024 * 1024,
            pre_auth: false,
        }
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut requests = Vec::new();
        while let Some(parsed) = next_request(&mut buf, &limits())? {
            let Parsed::Request(args) = parsed else {
                panic!("oversized: {parsed:?}");
            };
            requests.push(args);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(requests)
    }

    fn words(request: &[Bytes]) -> Vec<&[u8]> {
        request.iter().map(|b| b.as_ref()).collect()
    }

    #[test]
    fn pipelined_multibulk_and_inline_requests() {
        let requests =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n  set  a  b \n*0\r\n").unwrap();
        assert_eq!(requests.len(), 4);
        assert_eq!(words(&requests[0]), [&b"GET"[..], b"k"]);
        assert_eq!(words(&requests[1]), [&b"PING"[..]]);
        assert_eq!(words(&requests[2]), [&b"set"[..], b"a", b"b"]);
        assert!(requests[3].is_empty());
        // As in Redis, a count below zero is an empty request too.
        assert_eq!(parse_all(b"*-5\r\n").unwrap(), vec![Vec::<Bytes>::new()]);
    }

    #[test]
    fn a_request_split_at_every_byte_is_decoded_once_complete() {
        let request = b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$10\r\n0123456789\r\n";
        for split in 1..request.len() {
            let mut buf = BytesMut::from(&request[..split]);
            assert_eq!(
                next_request(&mut buf, &limits()),
                Ok(None),
                "split at {split}"
            );
            buf.extend_from_slice(&request[split..]);
            let Some(Parsed::Request(args)) = next_request(&mut buf, &limits()).unwrap() else {
                panic!("not a request");
            };
            assert_eq!(words(&args), [&b"SET"[..], b"key:1", b"0123456789"]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn malformed_and_oversized_input_is_rejected_early() {
        let table: &[(&[u8], &str)] = &[
            (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
            (b"*1\r\n$536870913\r\n", "invalid bulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$abc\r\n", "invalid bulk length"),
            (b"*99999999999\r\n", "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (
                b"*123456789012345678901234567890",
                "invalid multibulk length",
            ),
            (b"*1\r\n:5\r\n", "expected '$', got ':'"),
            (b"*2\r\n$1\r\na\r\n+b\r\n", "expected '$', got '+'"),
            (b"*1\r\n$1\r\nab\r\n", "expected CRLF after a bulk string"),
            (b"*1\rx", "invalid multibulk length"),
            (b"*+1\r\n", "invalid multibulk length"),
            (b"*1\r\n$\r\n", "invalid bulk length"),
        ];
        for (input, expected) in table {
            let err = parse_all(input).unwrap_err();
            assert!(err.0.contains(expected), "{input:?}: {err}");
        }
        // A long line without a newline is not buffered forever.
        let mut buf = BytesMut::from(&vec![b'a'; MAX_INLINE_LEN][..]);
        assert!(next_request(&mut buf, &limits()).is_err());
    }

    /// Whatever its size, a request with an argument past the limits is skipped as it
    /// arrives (never buffered whole) and answered with the limit error; the requests after
    /// it are read as usual.
    #[test]
    fn oversized_requests_are_discarded_as_they_arrive_and_answered() {
        let huge = 5_000_000usize;
        let mut wire = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${huge}\r\n").into_bytes();
        wire.extend(std::iter::repeat_n(b'v', huge));
        wire.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
        // A request past the request limit made of arguments within it, then a command.
        let mut many = b"*20\r\n".to_vec();
        for _ in 0..20 {
            many.extend_from_slice(b"$900\r\n");
            many.extend_from_slice(&[b'x'; 900]);
            many.extend_from_slice(b"\r\n");
        }
        many.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        for (input, error) in [
            (
                wire,
                "ERR value of 5000000 bytes exceeds the limit of 1000 bytes",
            ),
            (many, "ERR request exceeds the limit of 10000 bytes"),
        ] {
            for chunk in [1_000, 4_096, 65_536] {
                let mut buf = BytesMut::new();
                let mut discard: Option<Discard> = None;
                let mut seen = Vec::new();
                for piece in input.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    assert!(buf.len() <= 12_000 + chunk, "never buffered whole");
                    loop {
                        if let Some(d) = discard.as_mut() {
                            if !d.consume(&mut buf).unwrap() {
                                break;
                            }
                            seen.push(d.error().to_string());
                            discard = None;
                        }
                        match next_request(&mut buf, &limits()).unwrap() {
                            None => break,
                            Some(Parsed::Oversized(d)) => discard = Some(d),
                            Some(Parsed::Request(args)) => {
                                seen.push(String::from_utf8_lossy(&args[0]).into_owned())
                            }
                        }
                    }
                }
                assert_eq!(seen, [error, "PING"], "in chunks of {chunk}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn garbage_bytes_are_an_inline_request_or_an_error_never_a_panic() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..2_000 {
            let len = (seed % 64) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                bytes.push(b"*$\r\n0123456789-abc"[(seed % 18) as usize]);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = next_request(&mut buf, &limits()) {}
        }
    }
}

/// Requests come from any client: whatever arrives, the parser answers a request, "more
/// bytes" or a protocol error, and never panics or runs past the limits.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const LIMITS: RespLimits = RespLimits {
        max_bulk_bytes: 4096,
        max_value_bytes: 4096,
        max_request_bytes: 16 * 1024,
        max_clients: 1,
        max_array_len: 64,
        pre_auth: false,
    };

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Take requests until the parser wants more or refuses: each step consumes.
            while let Ok(Some(_)) = next_request(&mut buf, &LIMITS) {
                if buf.is_empty() {
                    break;
                }
            }
        }

        #[test]
        fn arbitrary_requests_with_a_valid_header_never_panic(
            count in 0i64..100,
            rest in vec(any::<u8>(), 0..2048),
        ) {
            let mut buf = BytesMut::from(format!("*{count}\r\n").as_bytes());
            buf.extend_from_slice(&rest);
            let _ = next_request(&mut buf, &LIMITS);
        }

        #[test]
        fn commands_survive_any_split(
            args in vec(vec(any::<u8>(), 0..64), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = encode(&args);
            let at = cut.index(whole.len());
            let mut partial = BytesMut::from(&whole[..at]);
            prop_assert_eq!(next_request(&mut partial, &LIMITS).unwrap(), None);
            let mut full = BytesMut::from(&whole[..]);
            let Some(Parsed::Request(parsed)) = next_request(&mut full, &LIMITS).unwrap() else {
                panic!("not a request");
            };
            let parsed: Vec<Vec<u8>> = parsed.iter().map(|a| a.to_vec()).collect();
            prop_assert_eq!(&parsed, &args);
            prop_assert!(full.is_empty());
            // redis-protocol reads the same request the same way.
            let (frame, len) = redis_protocol::resp2::decode::decode(&whole).unwrap().unwrap();
            prop_assert_eq!(len, whole.len());
            let redis_protocol::resp2::types::OwnedFrame::Array(items) = frame else {
                panic!("not an array: {frame:?}");
            };
            let decoded: Vec<Vec<u8>> = items
                .into_iter()
                .map(|item| match item {
                    redis_protocol::resp2::types::OwnedFrame::BulkString(bytes) => bytes,
                    other => panic!("not a bulk string: {other:?}"),
                })
                .collect();
            prop_assert_eq!(decoded, parsed);
        }

        #[test]
        fn declared_lengths_past_the_limits_are_discarded_unread(
            len in (LIMITS.max_bulk_bytes as u64 + 1)..=MAX_BULK_LEN as u64,
        ) {
            let mut buf = BytesMut::from(format!("*1\r\n${len}\r\nxx").as_bytes());
            let parsed = next_request(&mut buf, &LIMITS).unwrap();
            let Some(Parsed::Oversized(mut discard)) = parsed else {
                panic!("not oversized: {parsed:?}");
            };
            prop_assert!(!discard.consume(&mut buf).unwrap());
            prop_assert!(buf.is_empty(), "what arrived of it is gone");
            // Before authentication, the same past its limit is a protocol error.
            if len > RespLimits::UNAUTHENTICATED.max_bulk_bytes as u64 {
                let mut buf = BytesMut::from(format!("*1\r\n${len}\r\nxx").as_bytes());
                prop_assert!(next_request(&mut buf, &RespLimits::UNAUTHENTICATED).is_err());
            }
        }
    }
}
