//! The Lua 5.1 interpreter scripts run in: its sandbox (sandbox.lua), the script cache by
//! SHA1, and one run of a script — KEYS and ARGV, `redis.call` into the command table,
//! and the conversions between Lua values and replies, with Redis' rules both ways.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use tracing::{info, warn};

use crate::resp::cmd::{self, Ctx};
use crate::resp::reply::{Reply, format_double, format_general};

/// Where a script's compile and run errors point: Redis' chunk name.
const CHUNK_NAME: &str = "@user_script";
/// The sandbox's own chunk: its frames are skipped when an error is located.
const SANDBOX_CHUNK: &str = "=sandbox";
/// The VM instructions between two checks for `SCRIPT KILL` (Redis checks as often).
const HOOK_EVERY: u32 = 100_000;
/// How deep a returned table may nest; deeper, the reply carries Redis' stack error.
const MAX_DEPTH: usize = 1_000;
const KILLED: &str = "Script killed by user with SCRIPT KILL...";

/// What the running script has done, read by `SCRIPT KILL` from other connections.
#[derive(Debug, Default)]
pub struct RunFlags {
    pub running: AtomicBool,
    pub kill: AtomicBool,
    pub wrote: AtomicBool,
}

/// Flags of a script's shebang line (`#!lua flags=no-writes,allow-oom`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptFlags {
    /// Without a shebang a script may do anything (Redis' "eval compatibility mode").
    pub shebang: bool,
    pub no_writes: bool,
}

struct Script {
    function: Function,
    flags: ScriptFlags,
    body: bytes::Bytes,
}

/// The interpreter and its cache of scripts.
pub struct Engine {
    lua: Lua,
    globals: Table,
    /// The sandbox's `run_state`: the per-run command function and the RESP version.
    state: Table,
    run: Function,
    failure: Function,
    env: Table,
    scripts: HashMap<String, Script>,
    /// Bytes of the cached scripts' bodies (`used_memory_scripts`).
    bodies: usize,
    flags: Arc<RunFlags>,
    memory_limit: usize,
    /// Registered once: scripts run by the thousand per second.
    runs: metrics::Counter,
}

/// A script could not be added to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError(pub String);

impl Engine {
    /// A fresh interpreter whose memory is bounded by `memory_limit` bytes.
    ///
    /// # Errors
    /// When Lua cannot be set up (out of memory).
    pub fn new(memory_limit: usize, flags: Arc<RunFlags>) -> mlua::Result<Engine> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::default(),
        )?;
        super::libs::register(&lua)?;
        let natives = lua.create_table()?;
        natives.raw_set(
            "sha1hex",
            lua.create_function(|_, text: mlua::LuaString| Ok(sha1_hex(&text.as_bytes())))?,
        )?;
        natives.raw_set(
            "log",
            lua.create_function(|_, (level, text): (u8, mlua::LuaString)| {
                let text = text.to_string_lossy();
                match level {
                    3 => warn!(target: "tandem::script", "{text}"),
                    2 => info!(target: "tandem::script", "{text}"),
                    _ => tracing::debug!(target: "tandem::script", "{text}"),
                }
                Ok(())
            })?,
        )?;
        natives.raw_set(
            "is_command",
            lua.create_function(|_, name: mlua::LuaString| {
                Ok(cmd::lookup(&name.as_bytes()).is_some())
            })?,
        )?;
        natives.raw_set("version", super::server_version())?;
        natives.raw_set("version_num", super::server_version_num())?;
        let random = Arc::new(Rand48::default());
        let seeded = random.clone();
        natives.raw_set(
            "random",
            lua.create_function(move |_, bounds: MultiValue| random.lua_random(bounds))?,
        )?;
        natives.raw_set(
            "randomseed",
            lua.create_function(move |_, seed: mlua::Number| {
                seeded.seed(seed as i32);
                Ok(())
            })?,
        )?;
        natives.raw_set(
            "trampoline",
            lua.create_function(|lua, f: Function| {
                // SAFETY: `trampoline` only moves values on the Lua stack and calls its
                // upvalue; the closure takes the function pushed as the argument.
                unsafe {
                    lua.exec_raw::<Function>(f, |state| {
                        mlua::ffi::lua_pushcclosure(state, trampoline, 1);
                    })
                }
            })?,
        )?;
        let killed = flags.clone();
        natives.raw_set(
            "handler",
            lua.create_function(move |lua, err: Value| {
                locate_error(lua, err, killed.kill.load(Ordering::Relaxed))
            })?,
        )?;
        let sandbox: Table = lua
            .load(include_str!("sandbox.lua"))
            .set_name(SANDBOX_CHUNK)
            .call(natives)?;
        let state: Table = sandbox.raw_get("state")?;
        // SAFETY: `command_native` follows Lua's protocol for C functions (see there).
        state.raw_set("command", unsafe { lua.create_c_function(command_native)? })?;
        state.raw_set("take_reply", lua.create_function(take_reply)?)?;
        let killed = flags.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if killed.kill.load(Ordering::Relaxed) {
                    return Err(mlua::Error::RuntimeError(KILLED.into()));
                }
                Ok(VmState::Continue)
            },
        )?;
        lua.set_memory_limit(memory_limit)?;
        Ok(Engine {
            globals: sandbox.raw_get("globals")?,
            state,
            run: sandbox.raw_get("run")?,
            failure: sandbox.raw_get("failure")?,
            env: sandbox.raw_get("env")?,
            lua,
            scripts: HashMap::new(),
            bodies: 0,
            flags,
            memory_limit,
            runs: metrics::counter!(super::names::SCRIPTS),
        })
    }

    /// Scripts in the cache.
    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    /// Whether the cache holds no script.
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// Bytes of the cached scripts' bodies.
    pub fn bodies_bytes(&self) -> usize {
        self.bodies
    }

    /// Bytes the interpreter holds.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Whether a script with this SHA1 (any case) is cached.
    pub fn contains(&self, sha: &[u8]) -> bool {
        sha.len() == 40
            && self
                .scripts
                .contains_key(&String::from_utf8_lossy(sha).to_ascii_lowercase())
    }

    /// Compiles `body` into the cache (once), returning its SHA1 and whether it is new.
    ///
    /// # Errors
    /// Redis' error text for a bad shebang or a script that does not compile.
    pub fn load(&mut self, body: &[u8]) -> Result<(String, bool), CompileError> {
        let sha = sha1_hex(body);
        if self.scripts.contains_key(&sha) {
            return Ok((sha, false));
        }
        let (flags, skip) = shebang(body).map_err(CompileError)?;
        // The shebang line is skipped but its line feed kept, so line numbers stay right.
        let compile = || {
            self.lua
                .load(&body[skip..])
                .set_name(CHUNK_NAME)
                .set_environment(self.env.clone())
                .into_function()
        };
        let function = match compile() {
            // Garbage may hold the memory: collected, there may be room.
            Err(mlua::Error::MemoryError(_)) => {
                let _ = self.lua.gc_collect();
                compile()
            }
            compiled => compiled,
        }
        .map_err(|err| {
            CompileError(format!(
                "ERR Error compiling script (new function): {}",
                lua_message(&err)
            ))
        })?;
        self.bodies += body.len() + 40;
        let body = bytes::Bytes::copy_from_slice(body);
        self.scripts.insert(
            sha.clone(),
            Script {
                function,
                flags,
                body,
            },
        );
        Ok((sha, true))
    }

    /// The bodies of every cached script.
    pub fn bodies(&self) -> Vec<bytes::Bytes> {
        self.scripts
            .values()
            .map(|script| script.body.clone())
            .collect()
    }

    /// Empties the cache (`SCRIPT FLUSH`).
    pub fn flush(&mut self) {
        self.scripts.clear();
        self.bodies = 0;
        let _ = self.lua.gc_collect();
    }

    /// The flags of a cached script.
    pub fn flags(&self, sha: &str) -> Option<ScriptFlags> {
        self.scripts.get(sha).map(|script| script.flags)
    }

    /// Runs the cached script `sha` (lower case) with `keys` and `args`, its commands
    /// against `ctx`'s keyspace (held by the caller for the whole run), and returns its
    /// reply. `read_only` refuses write commands (`EVAL_RO`, `#!lua flags=no-writes`).
    pub fn run(
        &mut self,
        ctx: &mut Ctx<'_>,
        sha: &str,
        keys: &[Bytes],
        args: &[Bytes],
        read_only: bool,
    ) -> Reply {
        let Some(script) = self.scripts.get(sha) else {
            return Reply::Error("NOSCRIPT No matching script. Please use EVAL.".into());
        };
        let function = script.function.clone();
        self.runs.increment(1);
        let flags = self.flags.clone();
        flags.kill.store(false, Ordering::Relaxed);
        flags.wrote.store(false, Ordering::Relaxed);
        flags.running.store(true, Ordering::Release);
        let outcome = self.call(ctx, sha, function, keys, args, read_only);
        // What a script left behind is garbage now: past half the bound, collect it before
        // the next script (one that ran out of memory leaves the bound full).
        if self.lua.used_memory() > self.memory_limit / 2 {
            let _ = self.lua.gc_collect();
            let _ = self.lua.gc_collect();
        }
        flags.running.store(false, Ordering::Release);
        flags.kill.store(false, Ordering::Relaxed);
        match outcome {
            Ok(reply) => reply,
            Err(err) => Reply::Error(sanitize(&format!(
                "ERR Error running script {sha}: {}",
                match err {
                    mlua::Error::MemoryError(_) => format!(
                        "out of memory (the scripting memory limit is {} bytes)",
                        self.memory_limit
                    ),
                    other => lua_message(&other),
                }
            ))),
        }
    }

    fn call(
        &mut self,
        ctx: &mut Ctx<'_>,
        sha: &str,
        function: Function,
        keys: &[Bytes],
        args: &[Bytes],
        read_only: bool,
    ) -> mlua::Result<Reply> {
        let mut running = Running {
            ctx,
            session: None,
            read_only,
            flags: &self.flags,
            failure: &self.failure,
            pending: Pending::None,
        };
        let _current = Current::enter(&mut running);
        // One protected call sets KEYS, ARGV and the run's state and runs the script: each
        // value set through the safe API would be a protected call of its own.
        //
        // SAFETY: the closure only calls Lua's API on the stack exec_raw gives it (the four
        // values pushed as arguments, then what it pushes), holds nothing that needs
        // dropping (a Lua error unwinds it by longjmp), and leaves exactly three results.
        let (ok, value, resp): (bool, Value, u8) = unsafe {
            self.lua
                .exec_raw((&self.globals, &self.state, &self.run, function), |state| {
                    use mlua::ffi;
                    for (name, items) in [(c"KEYS", keys), (c"ARGV", args)] {
                        ffi::lua_pushstring(state, name.as_ptr());
                        ffi::lua_createtable(state, items.len() as i32, 0);
                        for (i, item) in items.iter().enumerate() {
                            ffi::lua_pushlstring(state, item.as_ptr().cast(), item.len());
                            ffi::lua_rawseti(state, -2, i as i64 + 1);
                        }
                        ffi::lua_rawset(state, 1);
                    }
                    let set_state = |running: bool| {
                        ffi::lua_pushstring(state, c"resp".as_ptr());
                        ffi::lua_pushinteger(state, 2);
                        ffi::lua_rawset(state, 2);
                        ffi::lua_pushstring(state, c"running".as_ptr());
                        ffi::lua_pushboolean(state, i32::from(running));
                        ffi::lua_rawset(state, 2);
                    };
                    set_state(true);
                    ffi::lua_pushvalue(state, 3);
                    ffi::lua_pushvalue(state, 4);
                    ffi::lua_call(state, 1, 2);
                    ffi::lua_pushstring(state, c"resp".as_ptr());
                    ffi::lua_rawget(state, 2);
                    // After the run: not running, and the next one starts in RESP2.
                    set_state(false);
                    // Leaves the results: ok, value, resp.
                    for _ in 0..4 {
                        ffi::lua_remove(state, 1);
                    }
                })?
        };
        if ok {
            Ok(lua_to_reply(&value, resp, 0))
        } else {
            Ok(error_reply(&value, sha))
        }
    }
}

/// The run in progress, for the `command` native: what it needs of the run's caller.
struct Running<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    /// The script's own client session (`SELECT` inside a script lasts for the run);
    /// made from the caller's at the first command.
    session: Option<crate::resp::ClientSession>,
    read_only: bool,
    flags: &'a RunFlags,
    failure: &'a Function,
    /// The last command's reply, until the script takes it.
    pending: Pending,
}

thread_local! {
    /// The run in progress on this thread, or null: the `command` native is created once
    /// and finds its run here (a native per run would cost a closure and its removal).
    static CURRENT: std::cell::Cell<*mut ()> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Makes a run the current one until dropped, and the one before it current again.
struct Current(*mut ());

impl Current {
    fn enter(running: &mut Running<'_, '_>) -> Current {
        let ptr = std::ptr::from_mut(running).cast::<()>();
        Current(CURRENT.with(|current| current.replace(ptr)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

/// What a command left for `take_reply` to convert: replies the native cannot push itself
/// without allocating Lua values, which a Rust frame must not do (see `command_native`).
enum Pending {
    None,
    Reply(Reply),
    /// A command the script may not run: Redis' text, which gets the ERR code.
    Refused(&'static str),
}

/// Takes the current run out of CURRENT for the length of `f`, so that nothing else can
/// reach it meanwhile, and puts it back after.
fn with_running<T>(f: impl FnOnce(Option<&mut Running<'_, '_>>) -> T) -> T {
    let ptr = CURRENT.with(|current| current.replace(std::ptr::null_mut()));
    // Current again when `f` is done, whatever happens.
    let _restore = Current(ptr);
    // SAFETY: a non-null `ptr` was set by `Current::enter` from a `Running` that outlives
    // the run (`Engine::call` drops its `Current` only after the script returned), and it
    // was taken out of CURRENT above, so no other reference to it exists while this one
    // lives.
    f(unsafe { ptr.cast::<Running<'_, '_>>().as_mut() })
}

/// Runs one command of the current run for `redis.call` and `redis.pcall`: called as
/// `command(resp, name, args...)`, it returns `reply, failed, pending`. Replies that are
/// numbers, booleans, nil or a string it pushes itself; for any other, `pending` is true
/// and the script takes the reply from `take_reply`.
///
/// A raw C function, not one made by mlua: the arguments are read straight off Lua's
/// stack instead of becoming a value each, which is most of what a call would cost.
unsafe extern "C-unwind" fn command_native(state: *mut mlua::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // SAFETY: called by Lua with a valid state; reading values off the stack does not
    // allocate (numbers are read as numbers, not converted in place).
    let (resp, args) = unsafe {
        let given = ffi::lua_gettop(state);
        let resp = ffi::lua_tointeger(state, 1) as u8;
        let args = (2..=given)
            .map(|index| match ffi::lua_type(state, index) {
                ffi::LUA_TSTRING => {
                    let mut len = 0;
                    let data = ffi::lua_tolstring(state, index, &mut len);
                    Ok(Bytes::copy_from_slice(std::slice::from_raw_parts(
                        data.cast::<u8>(),
                        len,
                    )))
                }
                // Redis 7.0 prints every number as C's `%.17g`.
                ffi::LUA_TNUMBER => Ok(Bytes::from(format_double(ffi::lua_tonumber(state, index)))),
                _ => Err("Lua redis lib command arguments must be strings or integers"),
            })
            .collect::<Result<Vec<Bytes>, _>>();
        (resp, args)
    };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_running(|running| {
            let Some(running) = running else {
                return false;
            };
            running.pending = run_one(running, resp, args);
            true
        })
    }));
    let ran = matches!(ran, Ok(true));
    let running = CURRENT.with(std::cell::Cell::get).cast::<Running<'_, '_>>();
    // SAFETY: only pushes, within the slots Lua guarantees a C function (LUA_MINSTACK).
    // Nothing on this frame needs dropping from here on: the reply is owned by the run,
    // so a Lua error raised by allocating its string (out of memory) unwinds nothing.
    unsafe {
        if !ran || running.is_null() {
            // Outside a run (the sandbox checks first), or the command panicked.
            ffi::lua_pushnil(state);
            ffi::lua_pushboolean(state, 1);
            ffi::lua_pushboolean(state, 1);
            if let Some(running) = running.as_mut() {
                running.pending = Pending::Refused("the command failed inside the server");
            }
            return 3;
        }
        let running = &mut *running;
        let resp3 = resp >= 3;
        let simple = match &running.pending {
            Pending::Reply(Reply::Int(n)) => {
                ffi::lua_pushnumber(state, *n as f64);
                true
            }
            Pending::Reply(Reply::Nil | Reply::NilArray) if resp3 => {
                ffi::lua_pushnil(state);
                true
            }
            Pending::Reply(Reply::Nil | Reply::NilArray) => {
                ffi::lua_pushboolean(state, 0);
                true
            }
            Pending::Reply(Reply::Bool(b)) if resp3 => {
                ffi::lua_pushboolean(state, i32::from(*b));
                true
            }
            Pending::Reply(Reply::Bulk(bytes)) => {
                ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
                true
            }
            _ => false,
        };
        if simple {
            running.pending = Pending::None;
            ffi::lua_pushboolean(state, 0);
            ffi::lua_pushboolean(state, 0);
        } else {
            ffi::lua_pushnil(state);
            ffi::lua_pushnil(state);
            ffi::lua_pushboolean(state, 1);
        }
        3
    }
}

/// Runs one command of a run and returns its reply, or why the script may not run it.
fn run_one(
    running: &mut Running<'_, '_>,
    resp: u8,
    args: Result<Vec<Bytes>, &'static str>,
) -> Pending {
    let checked = args.and_then(|args| {
        if args.is_empty() {
            return Err("Please specify at least one argument for this redis lib call");
        }
        Ok((check_command(&args, running.read_only)?, args))
    });
    let (command, args) = match checked {
        Ok(checked) => checked,
        Err(text) => return Pending::Refused(text),
    };
    if command.writes() {
        running.flags.wrote.store(true, Ordering::Relaxed);
    }
    let ctx = &mut *running.ctx;
    let session = running
        .session
        .get_or_insert_with(|| ctx.session.for_script());
    session.protocol = resp;
    let mut inner = Ctx {
        store: ctx.store,
        session,
        clients: ctx.clients,
        scripts: ctx.scripts,
        recorded: &mut *ctx.recorded,
        now_ms: ctx.now_ms,
        held: ctx.held.as_deref_mut(),
    };
    Pending::Reply(cmd::run(&mut inner, command, args))
}

/// The reply `command_native` left pending, as the script sees it, and whether it failed.
fn take_reply(lua: &Lua, resp: u8) -> mlua::Result<(Value, bool)> {
    with_running(|running| {
        let Some(running) = running else {
            return Ok((Value::Nil, true));
        };
        let failure = running.failure;
        match std::mem::replace(&mut running.pending, Pending::None) {
            Pending::None => Ok((Value::Nil, false)),
            Pending::Refused(text) => Ok((failure.call::<Value>(text)?, true)),
            Pending::Reply(reply) => {
                let failed = matches!(reply, Reply::Error(_));
                Ok((reply_to_lua(lua, failure, reply, resp)?, failed))
            }
        }
    })
}

/// A C function that calls its upvalue with its arguments and returns all it returns:
/// Lua functions wrapped in it are called as C functions (see sandbox.lua).
unsafe extern "C-unwind" fn trampoline(state: *mut mlua::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // SAFETY: called by Lua with a valid state; the upvalue was set by `lua_pushcclosure`,
    // and one slot more than the arguments is within the stack Lua guarantees a C function
    // (LUA_MINSTACK), as `lua_checkstack` confirms.
    unsafe {
        let args = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 1, c"trampoline".as_ptr());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, args, ffi::LUA_MULTRET);
        ffi::lua_gettop(state)
    }
}

/// The reply to a script that failed: the error table's text, and where it failed.
fn error_reply(value: &Value, sha: &str) -> Reply {
    let Value::Table(table) = value else {
        let text = match value {
            Value::String(s) => s.to_string_lossy(),
            _ => "execution failure".into(),
        };
        return Reply::Error(sanitize(&format!(
            "ERR Error running script {sha}, {}",
            text.chars().take(100).collect::<String>()
        )));
    };
    let text = |key: &str| -> Option<String> {
        match table.raw_get::<Value>(key).ok()? {
            Value::String(s) => Some(s.to_string_lossy()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Number(n) => Some(format_lua_number(n)),
            _ => None,
        }
    };
    let mut message = text("err").unwrap_or_default();
    if let (Some(source), Some(line)) = (text("source"), text("line")) {
        message.push_str(&format!(" script: {sha}, on {source}:{line}."));
    }
    Reply::Error(sanitize(&message))
}

/// The engine's error handler: turns any error into Redis' error table and adds where the
/// script failed (the first frame that is the script's, not C's or the sandbox's).
fn locate_error(lua: &Lua, err: Value, killed: bool) -> mlua::Result<Table> {
    let table = match err {
        Value::Table(table) => table,
        other => {
            let text = match other {
                _ if killed => KILLED.to_string(),
                Value::String(s) => s.to_string_lossy(),
                Value::Error(err) => lua_message(&err),
                Value::Integer(n) => n.to_string(),
                Value::Number(n) => format_lua_number(n),
                Value::Nil => "nil".into(),
                Value::Boolean(b) => b.to_string(),
                other => other.type_name().to_string(),
            };
            let table = lua.create_table()?;
            table.raw_set("err", format!("ERR {text}"))?;
            table
        }
    };
    for level in 1.. {
        let Some(found) = lua.inspect_stack(level, |frame| {
            let source = frame.source();
            let script = source.what != "C" && source.source.as_deref() != Some(SANDBOX_CHUNK);
            script.then(|| {
                (
                    source.source.map(|s| s.into_owned()).unwrap_or_default(),
                    frame.current_line(),
                )
            })
        }) else {
            break;
        };
        if let Some((source, line)) = found {
            table.raw_set("source", source)?;
            if let Some(line) = line {
                table.raw_set("line", line)?;
            }
            break;
        }
    }
    Ok(table)
}

/// The text of a Lua error, without mlua's wrapping.
fn lua_message(err: &mlua::Error) -> String {
    match err {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) => message.clone(),
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        mlua::Error::MemoryError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// An error or status line as Redis sends it: no CR or LF inside.
fn sanitize(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The command a script may run, or Redis' error for one it may not.
fn check_command(args: &[Bytes], read_only: bool) -> Result<&'static cmd::Command, &'static str> {
    let Some(command) = cmd::lookup(&args[0]) else {
        return Err("Unknown Redis command called from script");
    };
    let given = args.len() as i32;
    if (command.arity >= 0 && given != command.arity) || given < -command.arity {
        return Err("Wrong number of args calling Redis command from script");
    }
    if command.has_flag("noscript") {
        return Err("This Redis command is not allowed from script");
    }
    if read_only && command.writes() {
        return Err("Write commands are not allowed from read-only scripts.");
    }
    Ok(command)
}

/// A command's reply as the script sees it, in the script's RESP version (`redis.setresp`):
/// integers as numbers, bulk strings as strings, nulls as `false` (RESP2) or `nil` (RESP3),
/// status as `{ok=}`, errors as `{err=}`, RESP3's maps, sets and doubles as `{map=}`,
/// `{set=}` and `{double=}`.
fn reply_to_lua(lua: &Lua, failure: &Function, reply: Reply, resp: u8) -> mlua::Result<Value> {
    let resp3 = resp >= 3;
    let single = |key: &str, value: Value| -> mlua::Result<Value> {
        let table = lua.create_table_with_capacity(0, 1)?;
        table.raw_set(key, value)?;
        Ok(Value::Table(table))
    };
    Ok(match reply {
        Reply::Simple(text) => single("ok", Value::String(lua.create_string(text)?))?,
        Reply::Status(text) => single("ok", Value::String(lua.create_string(&text)?))?,
        Reply::Error(text) => failure.call(format!("-{text}"))?,
        Reply::Int(n) => Value::Number(n as f64),
        Reply::Bulk(bytes) => Value::String(lua.create_string(&bytes)?),
        Reply::Nil | Reply::NilArray if resp3 => Value::Nil,
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Bool(b) if resp3 => Value::Boolean(b),
        Reply::Bool(b) => Value::Number(f64::from(u8::from(b))),
        Reply::Double(d) if resp3 => single("double", Value::Number(d))?,
        Reply::Double(d) => Value::String(lua.create_string(format_double(d))?),
        Reply::BigNumber(digits) if resp3 => {
            single("big_number", Value::String(lua.create_string(&digits)?))?
        }
        Reply::Verbatim(format, text) if resp3 => {
            let inner = lua.create_table_with_capacity(0, 2)?;
            inner.raw_set("string", lua.create_string(&text)?)?;
            inner.raw_set("format", lua.create_string(format)?)?;
            single("verbatim_string", Value::Table(inner))?
        }
        // In RESP2 both are bulk strings.
        Reply::BigNumber(text) | Reply::Verbatim(_, text) => {
            Value::String(lua.create_string(&text)?)
        }
        Reply::Array(items) | Reply::Push(items) | Reply::Frames(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                table.raw_set(i + 1, reply_to_lua(lua, failure, item, resp)?)?;
            }
            Value::Table(table)
        }
        Reply::Set(items) if resp3 => {
            let set = lua.create_table()?;
            for item in items {
                set.raw_set(reply_to_lua(lua, failure, item, resp)?, true)?;
            }
            single("set", Value::Table(set))?
        }
        Reply::Set(items) => reply_to_lua(lua, failure, Reply::Array(items), resp)?,
        Reply::Map(pairs) if resp3 => {
            let map = lua.create_table()?;
            for (key, value) in pairs {
                map.raw_set(
                    reply_to_lua(lua, failure, key, resp)?,
                    reply_to_lua(lua, failure, value, resp)?,
                )?;
            }
            single("map", Value::Table(map))?
        }
        Reply::Map(pairs) => {
            let flat = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
            reply_to_lua(lua, failure, Reply::Array(flat), resp)?
        }
    })
}

/// A script's return value as a reply: strings as bulk strings, numbers truncated to
/// integers, `true` as 1 and `false` as a null (RESP2) or booleans (RESP3), tables with
/// `err`, `ok`, `double`, `big_number`, `verbatim_string`, `map` or `set` as those
/// replies, any other table as an array up to its first `nil`, anything else as a null.
fn lua_to_reply(value: &Value, resp: u8, depth: usize) -> Reply {
    if depth > MAX_DEPTH {
        return Reply::Error("reached lua stack limit".into());
    }
    match value {
        Value::String(s) => Reply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Boolean(b) if resp >= 3 => Reply::Bool(*b),
        Value::Boolean(true) => Reply::Int(1),
        Value::Boolean(false) => Reply::Nil,
        Value::Integer(n) => Reply::Int(*n),
        Value::Number(n) => Reply::Int(*n as i64),
        Value::Table(table) => table_to_reply(table, resp, depth),
        _ => Reply::Nil,
    }
}

fn table_to_reply(table: &Table, resp: u8, depth: usize) -> Reply {
    let field = |key: &str| table.raw_get::<Value>(key).unwrap_or(Value::Nil);
    if let Value::String(err) = field("err") {
        return Reply::Error(sanitize(&err.to_string_lossy()));
    }
    if let Value::String(ok) = field("ok") {
        return Reply::Status(sanitize(&ok.to_string_lossy()));
    }
    match field("double") {
        Value::Number(d) => return Reply::Double(d),
        Value::Integer(n) => return Reply::Double(n as f64),
        _ => {}
    }
    if let Value::String(digits) = field("big_number") {
        return Reply::BigNumber(Bytes::from(sanitize(&digits.to_string_lossy())));
    }
    if let Value::Table(verbatim) = field("verbatim_string") {
        let format = verbatim.raw_get::<Value>("format");
        let text = verbatim.raw_get::<Value>("string");
        if let (Ok(Value::String(format)), Ok(Value::String(text))) = (format, text) {
            let mut code = [b' '; 3];
            for (slot, byte) in code.iter_mut().zip(format.as_bytes().iter()) {
                *slot = *byte;
            }
            return Reply::Verbatim(code, Bytes::copy_from_slice(&text.as_bytes()));
        }
    }
    if let Value::Table(map) = field("map") {
        let pairs = map
            .pairs::<Value, Value>()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                (
                    lua_to_reply(&k, resp, depth + 1),
                    lua_to_reply(&v, resp, depth + 1),
                )
            })
            .collect();
        return Reply::Map(pairs);
    }
    if let Value::Table(set) = field("set") {
        let members = set
            .pairs::<Value, Value>()
            .filter_map(Result::ok)
            .map(|(k, _)| lua_to_reply(&k, resp, depth + 1))
            .collect();
        return Reply::Set(members);
    }
    let mut items = Vec::new();
    for i in 1.. {
        match table.raw_get::<Value>(i) {
            Ok(Value::Nil) | Err(_) => break,
            Ok(item) => items.push(lua_to_reply(&item, resp, depth + 1)),
        }
    }
    Reply::Array(items)
}

/// A Lua number as Lua prints it (`%.14g`).
fn format_lua_number(n: f64) -> String {
    format_general(n, 14)
}

/// Lower-case hex SHA1, as scripts are named.
pub fn sha1_hex(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
    let mut hex = String::with_capacity(40);
    for byte in digest.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The flags of a `#!lua` first line, and how many bytes it takes (its line feed stays).
///
/// # Errors
/// Redis' error for a shebang it would refuse.
pub fn shebang(body: &[u8]) -> Result<(ScriptFlags, usize), String> {
    if !body.starts_with(b"#!") {
        return Ok((ScriptFlags::default(), 0));
    }
    let Some(end) = body.iter().position(|&b| b == b'\n') else {
        return Err("ERR Invalid script shebang".into());
    };
    let line = String::from_utf8_lossy(&body[..end]);
    let mut parts = line.split_whitespace();
    let Some(engine) = parts.next() else {
        return Err("ERR Invalid engine in script shebang".into());
    };
    if engine != "#!lua" {
        return Err(format!("ERR Unexpected engine in script shebang: {engine}"));
    }
    let mut flags = ScriptFlags {
        shebang: true,
        no_writes: false,
    };
    for part in parts {
        let Some(list) = part.strip_prefix("flags=") else {
            return Err(format!("ERR Unknown lua shebang option: {part}"));
        };
        for flag in list.split(',') {
            match flag {
                "no-writes" => flags.no_writes = true,
                "allow-oom" | "allow-stale" | "no-cluster" | "allow-cross-slot-keys" => {}
                other => return Err(format!("ERR Unexpected flag in script shebang: {other}")),
            }
        }
    }
    Ok((flags, end))
}

/// `math.random` as Redis gives it: the same sequence for the same seed on every machine
/// (48-bit linear congruential generator, as POSIX's `lrand48`).
#[derive(Debug)]
struct Rand48 {
    state: AtomicU64,
}

impl Default for Rand48 {
    fn default() -> Self {
        let rand = Rand48 {
            state: AtomicU64::new(0),
        };
        rand.seed(0);
        rand
    }
}

impl Rand48 {
    const MAX: u64 = i32::MAX as u64;

    fn seed(&self, seed: i32) {
        let x = ((seed as u32 as u64) << 16) | 0x330E;
        self.state.store(x, Ordering::Relaxed);
    }

    fn next(&self) -> u64 {
        let x = self.state.load(Ordering::Relaxed);
        let next = (x.wrapping_mul(0x5_DEEC_E66D).wrapping_add(0xB)) & ((1 << 48) - 1);
        self.state.store(next, Ordering::Relaxed);
        next >> 17
    }

    fn lua_random(&self, bounds: MultiValue) -> mlua::Result<f64> {
        let r = (self.next() % Self::MAX) as f64 / Self::MAX as f64;
        let number = |value: &Value, arg: usize| -> mlua::Result<f64> {
            match value {
                Value::Integer(n) => Ok(*n as f64),
                Value::Number(n) => Ok(n.trunc()),
                _ => Err(mlua::Error::RuntimeError(format!(
                    "bad argument #{arg} to 'random' (number expected)"
                ))),
            }
        };
        match bounds.len() {
            0 => Ok(r),
            1 => {
                let upper = number(&bounds[0], 1)?;
                if upper < 1.0 {
                    return Err(mlua::Error::RuntimeError(
                        "bad argument #1 to 'random' (interval is empty)".into(),
                    ));
                }
                Ok((r * upper).floor() + 1.0)
            }
            2 => {
                let lower = number(&bounds[0], 1)?;
                let upper = number(&bounds[1], 2)?;
                if lower > upper {
                    return Err(mlua::Error::RuntimeError(
                        "bad argument #2 to 'random' (interval is empty)".into(),
                    ));
                }
                Ok((r * (upper - lower + 1.0)).floor() + lower)
            }
            _ => Err(mlua::Error::RuntimeError(
                "wrong number of arguments".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_are_the_sha1_of_their_body() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn shebangs_as_redis_reads_them() {
        assert_eq!(shebang(b"return 1"), Ok((ScriptFlags::default(), 0)));
        let (flags, skip) = shebang(b"#!lua flags=no-writes\nreturn 1").unwrap();
        assert!(flags.shebang && flags.no_writes);
        assert_eq!(skip, 21);
        assert_eq!(
            shebang(b"#!lua"),
            Err("ERR Invalid script shebang".to_string())
        );
        assert_eq!(
            shebang(b"#!python\n"),
            Err("ERR Unexpected engine in script shebang: #!python".to_string())
        );
        assert_eq!(
            shebang(b"#!lua flags=fast\n"),
            Err("ERR Unexpected flag in script shebang: fast".to_string())
        );
        assert_eq!(
            shebang(b"#!lua name=x\n"),
            Err("ERR Unknown lua shebang option: name=x".to_string())
        );
    }

    #[test]
    fn the_random_sequence_is_lrand48s() {
        // lrand48() after srand48(0), as glibc gives it.
        let rand = Rand48::default();
        let first: Vec<u64> = (0..3).map(|_| rand.next()).collect();
        assert_eq!(first, [366_850_414, 1_610_402_240, 206_956_554]);
        rand.seed(7);
        assert_eq!(rand.next(), 572_184_555);
    }
}
