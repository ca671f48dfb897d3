//! The `tandem` binary: parses the command line and hands over to the components.

mod cli;
mod config;
mod demo;
mod keyring;
mod members;
mod ops;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use tandem_common::config::{AgentConfig, BalancerConfig, LogFormat, NodeConfig};

use crate::cli::{CertsAction, CertsArgs, Cli, Command, KeygenArgs};

/// jemalloc frees without touching the freed block (its metadata lives apart), so
/// replacing a session's value costs no cache miss on the old one, and a store of many
/// equally sized sessions fragments less than under the system allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_error(err),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap renders them; a usage error is one line.
fn clap_error(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            eprintln!("{first} (see 'tandem --help')");
            ExitCode::from(2)
        }
    }
}

/// The async runtime: `threads` workers, or one per core. One thread is the scheduler
/// made for it, which runs every task on the calling thread: no work queue shared with
/// other workers, and no hand-over between the thread that waits and the one that runs.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) | Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(builder.enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("tandem {}", tandem_common::VERSION);
            Ok(())
        }
        Command::Agent(args) => {
            let mut defaults = AgentConfig::default();
            host_defaults(&mut defaults.node);
            let mut config = config::load(defaults, args.node.config.as_deref())?;
            args.apply(&mut config);
            init_logging(&config.node);
            runtime(Some(config.threads))?.block_on(tandem_agent::run(config))?;
            Ok(())
        }
        Command::Balancer(args) => {
            let mut defaults = BalancerConfig::default();
            host_defaults(&mut defaults.node);
            let mut config = config::load(defaults, args.node.config.as_deref())?;
            args.apply(&mut config);
            init_logging(&config.node);
            runtime(None)?.block_on(tandem_balancer::run(config))?;
            Ok(())
        }
        Command::Members(args) => runtime(None)?.block_on(members::run(args)),
        Command::Demo(args) => runtime(None)?.block_on(demo::run(args)),
        Command::Keygen(args) => keygen(args),
        Command::Keyring(args) => runtime(None)?.block_on(keyring::run(args)),
        Command::Certs(args) => certs(args),
        Command::Ha(args) => runtime(None)?.block_on(ops::ha(args)),
        Command::Drain(args) => runtime(None)?.block_on(ops::drain(args)),
        Command::Wait(args) => runtime(None)?.block_on(ops::wait(args)),
    }
}

/// `tandem keygen`: a new cluster key, on stdout or in a file only its owner reads.
fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let key = tandem_cluster::keyring::ClusterKey::generate().encode();
    let Some(path) = args.out else {
        println!("{key}");
        return Ok(());
    };
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            writeln!(file, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote a new cluster key to {}", path.display());
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && args.if_missing => {
            println!("kept the cluster key in {}", path.display());
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
    Ok(())
}

/// `tandem certs`: the cluster CA and node certificates.
fn certs(args: CertsArgs) -> anyhow::Result<()> {
    use tandem_agent::replication::tls;
    match args.action {
        CertsAction::Init { dir } => {
            if tls::init_ca(&dir)? {
                println!(
                    "created the cluster CA: {} (give it to every agent) and {} (keep it \
                     where certificates are issued, not on the nodes)",
                    dir.join("ca.pem").display(),
                    dir.join("ca.key").display()
                );
            } else {
                println!(
                    "{} already holds a cluster CA; left as it is",
                    dir.display()
                );
            }
        }
        CertsAction::Issue {
            node_ids,
            dir,
            if_missing,
        } => {
            for node_id in node_ids {
                let (cert, key) = tls::node_paths(&dir, &node_id);
                if tls::issue(&dir, &node_id)? {
                    println!("issued {} and {}", cert.display(), key.display());
                } else if if_missing {
                    println!("kept {}", cert.display());
                } else {
                    anyhow::bail!("{} exists; remove it to issue a new one", cert.display());
                }
            }
        }
    }
    Ok(())
}

/// Defaults that depend on the host.
fn host_defaults(node: &mut NodeConfig) {
    if let Ok(name) = nix::unistd::gethostname() {
        node.node_id = name.to_string_lossy().into_owned();
    }
}

fn init_logging(node: &NodeConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match node.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
