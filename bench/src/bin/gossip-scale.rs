//! Gossip convergence and traffic for clusters of 50 to 500 agents (see
//! `tandem_bench::scale`).
//!
//! `--transport memory` (the default) simulates in virtual time: the protocol's own times,
//! as on hosts with a CPU each. `--transport udp` runs real sealed UDP on loopback in real
//! time, a check of the simulation at sizes this machine's cores can carry.
//!
//! Writes `gossip-scale-<transport>.csv` and the charts `gossip-convergence-<transport>.png`
//! and `gossip-traffic-<transport>.png` into `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use metrics_exporter_prometheus::PrometheusBuilder;
use tandem_bench::chart::{self, Series};
use tandem_bench::scale::{self, Outcome, Scenario, Transport};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Memory,
    Udp,
}

#[derive(Parser)]
#[command(about = "Gossip convergence and traffic for clusters of many agents")]
struct Args {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,500")]
    nodes: Vec<usize>,
    /// Gossip interval (the agent's default is 200ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    interval: Duration,
    /// How long a settled cluster's traffic is measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    window: Duration,
    #[arg(long, value_enum, default_value = "memory")]
    transport: TransportKind,
    /// Where the CSV and the charts are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("metrics recorder")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let mut outcomes = Vec::new();
    for &n in &args.nodes {
        let mut runtime = match args.transport {
            TransportKind::Memory => {
                let mut builder = tokio::runtime::Builder::new_current_thread();
                builder.start_paused(true);
                builder
            }
            TransportKind::Udp => tokio::runtime::Builder::new_multi_thread(),
        };
        let runtime = runtime.enable_all().build()?;
        let wall = std::time::Instant::now();
        let scenario = Scenario {
            nodes: n,
            transport: match args.transport {
                TransportKind::Memory => Transport::Memory,
                TransportKind::Udp => Transport::Udp,
            },
            interval: args.interval,
            window: args.window,
        };
        let outcome = runtime.block_on(scale::measure(&scenario, &metrics))?;
        runtime.shutdown_timeout(Duration::from_secs(1));
        eprintln!(
            "{n} nodes: measured in {:.1?} of wall-clock time",
            wall.elapsed()
        );
        outcomes.push(outcome);
    }

    let label = match args.transport {
        TransportKind::Memory => "memory",
        TransportKind::Udp => "udp",
    };
    let mut csv = String::from(
        "nodes,formation_s,join_seen_by_all_s,death_seen_by_all_s,bytes_per_node_s,messages_per_node_s\n",
    );
    for o in &outcomes {
        writeln!(
            csv,
            "{},{:.2},{:.2},{:.2},{:.0},{:.1}",
            o.nodes, o.formed, o.join, o.death, o.bytes, o.messages
        )?;
    }
    let csv_path = args.out.join(format!("gossip-scale-{label}.csv"));
    std::fs::write(&csv_path, &csv).with_context(|| format!("{}", csv_path.display()))?;
    print!("{csv}");

    let curve = |f: fn(&Outcome) -> f64| outcomes.iter().map(|o| (o.nodes as f64, f(o))).collect();
    let largest = outcomes.iter().map(|o| o.nodes).max().unwrap_or(0) as f64;
    chart::lines(
        &args.out.join(format!("gossip-convergence-{label}.png")),
        &format!(
            "Gossip convergence ({} transport, {:?} interval)",
            label, args.interval
        ),
        "nodes in the cluster",
        "seconds until every node knows",
        &[
            Series {
                name: "a join, seen by all".to_string(),
                points: curve(|o| o.join),
            },
            Series {
                name: "a death, seen by all".to_string(),
                points: curve(|o| o.death),
            },
            Series {
                name: "formation (all start at once)".to_string(),
                points: curve(|o| o.formed),
            },
            Series {
                name: "goal for a join: 2 s".to_string(),
                points: vec![(0.0, 2.0), (largest, 2.0)],
            },
        ],
    )?;
    chart::lines(
        &args.out.join(format!("gossip-traffic-{label}.png")),
        &format!("Gossip traffic per node ({label} transport)"),
        "nodes in the cluster",
        "KiB sent per node per second",
        &[Series {
            name: "KiB/s sent by each node".to_string(),
            points: curve(|o| o.bytes / 1024.0),
        }],
    )?;
    eprintln!("wrote {} and its charts", csv_path.display());
    Ok(())
}
