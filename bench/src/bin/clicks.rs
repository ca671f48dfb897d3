//! Sticky load for the failover benchmark: users of the demo app, each with a cookie jar
//! of its own, click `POST /api/counter` through the balancer without pause until the time
//! is up, and every answer is checked: a click either fails (an error or a non-2xx), or
//! returns the user's counter one higher than the click before. A counter that is reset,
//! repeated or rolled back is a lost session write.
//!
//!     clicks --balancer 127.0.0.1:8080 --users 200 --duration 20s
//!
//! Prints one JSON object: clicks, failed, lost, the latency percentiles, and per 100 ms
//! which node answered how many clicks (the `timeline`), with times in milliseconds since
//! the Unix epoch.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tandem_bench::percentile;

#[derive(Parser)]
struct Args {
    /// The balancer's HTTP address.
    #[arg(long)]
    balancer: String,
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    duration: Duration,
}

/// What the demo app answers (the fields used here).
#[derive(Deserialize)]
struct Counter {
    count: i64,
    node: String,
}

/// One user's clicks.
#[derive(Default)]
struct Seen {
    clicks: u64,
    failed: u64,
    lost: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    /// (answered at, ms since the epoch; node)
    answers: Vec<(u64, String)>,
}

#[derive(Serialize)]
struct Report {
    users: usize,
    clicks: u64,
    failed: u64,
    lost: u64,
    errors: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// 100 ms buckets: start (ms since the epoch) → node → answered clicks.
    timeline: BTreeMap<u64, BTreeMap<String, u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn user(id: usize, balancer: String, until: tokio::time::Instant) -> Seen {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut seen = Seen::default();
    let mut last: Option<i64> = None;
    while tokio::time::Instant::now() < until {
        seen.clicks += 1;
        let started = tokio::time::Instant::now();
        let answer = client
            .post(format!("http://{balancer}/api/counter"))
            .header(
                "idempotency-key",
                format!("user-{id}-click-{}", seen.clicks),
            )
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let counter = match answer {
            Ok(response) => response.json::<Counter>().await,
            Err(err) => Err(err),
        };
        match counter {
            Ok(counter) => {
                seen.latencies_us.push(started.elapsed().as_micros() as u64);
                if last.is_some_and(|last| counter.count != last + 1) {
                    seen.lost += 1;
                }
                last = Some(counter.count);
                seen.answers.push((now_ms(), counter.node));
            }
            Err(err) => {
                seen.failed += 1;
                let kind = match err.status() {
                    Some(status) => format!("HTTP {status}"),
                    None if err.is_timeout() => "timeout".to_string(),
                    None if err.is_connect() => "connect".to_string(),
                    None => "other".to_string(),
                };
                *seen.errors.entry(kind).or_default() += 1;
            }
        }
    }
    seen
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let until = tokio::time::Instant::now() + args.duration;
    let users: Vec<_> = (0..args.users)
        .map(|id| tokio::spawn(user(id, args.balancer.clone(), until)))
        .collect();
    let mut report = Report {
        users: args.users,
        clicks: 0,
        failed: 0,
        lost: 0,
        errors: BTreeMap::new(),
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        timeline: BTreeMap::new(),
    };
    let mut latencies = Vec::new();
    for task in users {
        let seen = task.await.context("a user's task")?;
        report.clicks += seen.clicks;
        report.failed += seen.failed;
        report.lost += seen.lost;
        for (kind, count) in seen.errors {
            *report.errors.entry(kind).or_default() += count;
        }
        latencies.extend(seen.latencies_us);
        for (at, node) in seen.answers {
            *report
                .timeline
                .entry(at / 100 * 100)
                .or_default()
                .entry(node)
                .or_default() += 1;
        }
    }
    latencies.sort_unstable();
    report.p50_ms = percentile(&latencies, 0.50);
    report.p99_ms = percentile(&latencies, 0.99);
    report.max_ms = percentile(&latencies, 1.0);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
