//! Lua scripting, as Redis' `EVAL`: one embedded Lua 5.1 interpreter for the agent, its
//! cache of scripts by SHA1, and the state `SCRIPT KILL` reads while a script runs.
//!
//! A script runs with the keyspace locked for its whole run, so it is atomic: no other
//! client's command and no partner's write comes between its commands. Its writes reach
//! the partner's link as one unit when the hold ends, like a transaction's,
//! and in sync mode the reply waits until the partner has them; the script itself never
//! travels. Lock order: the keyspace, then the engine.

mod engine;
mod libs;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

pub use self::engine::{CompileError, Engine, RunFlags, ScriptFlags, sha1_hex};
use crate::replication::ScriptCache;
use crate::resp::reply::Reply;

/// Metric names of scripting.
pub mod names {
    /// Counter: scripts run (`EVAL`, `EVALSHA` and their `_RO` forms).
    pub const SCRIPTS: &str = "tandem_resp_scripts_total";
    /// Counter: scripts stopped by `SCRIPT KILL`.
    pub const KILLED: &str = "tandem_resp_scripts_killed_total";
}

/// Default bound on the memory of the scripting interpreter (its scripts and what they
/// allocate while running).
pub const DEFAULT_MEMORY_LIMIT: usize = 128 << 20;

/// The interpreter and its run state; cheap to clone.
#[derive(Clone)]
pub struct Scripts {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Mutex<Engine>,
    /// The thread that runs the scripts of RESP requests, one after the other.
    runner: Mutex<std::sync::mpsc::Sender<Job>>,
    flags: Arc<RunFlags>,
    /// Told of each script new to the cache (replication sends it to the partner).
    on_new: std::sync::OnceLock<Box<dyn Fn(Bytes) + Send + Sync>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The interpreter could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the Lua interpreter: {0}")]
pub struct ScriptingError(String);

impl Scripts {
    /// An interpreter bounded to `memory_limit` bytes.
    ///
    /// # Errors
    /// [`ScriptingError`] when Lua cannot be set up.
    pub fn new(memory_limit: usize) -> Result<Scripts, ScriptingError> {
        let flags = Arc::new(RunFlags::default());
        let engine =
            Engine::new(memory_limit, flags.clone()).map_err(|e| ScriptingError(e.to_string()))?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tandem-scripts".into())
            .spawn(move || {
                for job in queue {
                    // A panic inside one script must not stop the next.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a script run panicked");
                    }
                }
            })
            .map_err(|e| ScriptingError(e.to_string()))?;
        Ok(Scripts {
            shared: Arc::new(Shared {
                engine: Mutex::new(engine),
                runner: Mutex::new(jobs),
                flags,
                on_new: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Runs `job` on the scripts' thread, after the scripts queued before it. One thread
    /// for all: scripts take the keyspace one at a time anyway, and under load the thread
    /// goes from one to the next without sleeping, where a thread per script would wake,
    /// contend for the lock and sleep again.
    pub fn run_on_thread(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.shared.runner.lock().send(Box::new(job));
    }

    /// The interpreter, locked (after the keyspace, if both are taken).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.shared.engine.lock()
    }

    /// Compiles `body` into the cache (`SCRIPT LOAD`, `EVAL`); a new script is handed to
    /// whoever asked to hear of them ([`Scripts::on_new_script`]). Returns its SHA1.
    ///
    /// # Errors
    /// Redis' error for a script that does not compile.
    pub fn load(&self, body: &[u8]) -> Result<String, CompileError> {
        let (sha, new) = self.engine().load(body)?;
        if new && let Some(on_new) = self.shared.on_new.get() {
            on_new(Bytes::copy_from_slice(body));
        }
        Ok(sha)
    }

    /// Hands every script new to the cache to `on_new` (once set, for good).
    pub fn on_new_script(&self, on_new: impl Fn(Bytes) + Send + Sync + 'static) {
        let _ = self.shared.on_new.set(Box::new(on_new));
    }

    /// `SCRIPT KILL`: stops the running script at its next check, unless it has written
    /// (its writes cannot be undone, so it must run to its end, as in Redis).
    pub fn kill(&self) -> Reply {
        let flags = &self.shared.flags;
        if !flags.running.load(Ordering::Acquire) {
            return Reply::Error("NOTBUSY No scripts in execution right now.".into());
        }
        if flags.wrote.load(Ordering::Relaxed) {
            return Reply::Error(
                "UNKILLABLE Sorry the script already executed write commands against the dataset. You can either wait the script termination or kill the server in a hard way using the SHUTDOWN NOSAVE command."
                    .into(),
            );
        }
        flags.kill.store(true, Ordering::Relaxed);
        metrics::counter!(names::KILLED).increment(1);
        tracing::warn!("the running script is being killed (SCRIPT KILL)");
        Reply::OK
    }
}

/// The partner's scripts join the cache without being sent back.
impl ScriptCache for Scripts {
    fn bodies(&self) -> Vec<Bytes> {
        self.engine().bodies()
    }

    fn learn(&self, bodies: Vec<Bytes>) {
        let mut engine = self.engine();
        for body in bodies {
            if let Err(err) = engine.load(&body) {
                tracing::warn!(error = %err.0, "a script from the partner does not compile here");
            }
        }
    }
}

/// The Redis version scripts see in `redis.REDIS_VERSION`.
fn server_version() -> &'static str {
    crate::resp::cmd::REDIS_VERSION
}

/// `redis.REDIS_VERSION_NUM`: 0x00MMmmpp.
fn server_version_num() -> i64 {
    let mut parts = server_version()
        .split('.')
        .map(|part| part.parse::<i64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (major << 16) | (minor << 8) | patch
}
