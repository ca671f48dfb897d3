//! Draws a benchmark script's results as a PNG chart: bars for Tandem next to its anchor,
//! or lines for a quantity over time.
//!
//!     chart --title "SET, 50 clients" --y-label "requests/s" --out set.png < results.csv
//!     chart --lines --x-label "seconds" --title … --y-label … --out t.png < timeline.csv
//!
//! The CSV on standard input has lines `group,series,value` (a header line is allowed):
//! for bars, one group of bars per group and one bar per series; for lines, the group is
//! the x value (a number) and each series a line.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tandem_bench::chart;

#[derive(Parser)]
#[command(about = "A PNG bar chart from group,series,value lines on standard input")]
struct Args {
    #[arg(long)]
    title: String,
    #[arg(long)]
    y_label: String,
    #[arg(long)]
    out: PathBuf,
    /// Lines over a numeric x axis instead of bars.
    #[arg(long)]
    lines: bool,
    /// The x axis' label, for lines.
    #[arg(long, default_value = "")]
    x_label: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the CSV from standard input")?;
    let (groups, series) = chart::read_bars(&text)?;
    if args.lines {
        let xs = groups
            .iter()
            .map(|x| {
                x.parse::<f64>()
                    .with_context(|| format!("x value {x} is not a number"))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let lines: Vec<chart::Series> = series
            .into_iter()
            .map(|(name, ys)| chart::Series {
                name,
                points: xs.iter().copied().zip(ys).collect(),
            })
            .collect();
        chart::lines(&args.out, &args.title, &args.x_label, &args.y_label, &lines)?;
    } else {
        chart::bars(&args.out, &args.title, &args.y_label, &groups, &series)?;
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
