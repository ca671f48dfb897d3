//! Writes a replica has before the client hears back: the load that compares the agent's
//! sync mode with redis-server made to give the same guarantee.
//!
//! Each client sends `--pipeline` SETs of `--size` bytes to random keys and, with `--wait`,
//! then `WAIT 1 <timeout>`, Redis' way to return only once a replica has the writes before
//! it. Without `--wait` the client sends the SETs alone: an agent in sync mode answers a
//! write only once its partner has it.
//!
//! With `--session`, each write is what a session store sends to save a session: a
//! transaction `MULTI`, `HSET session:<key> data <value> lastAccessedTime <ms>`,
//! `EXPIRE session:<key> 1800`, `EXEC` (Spring Session's and Redisson's shape).
//!
//!     acked-writes --addr 127.0.0.1:6379 --wait
//!     acked-writes --addr 127.0.0.1:6380 --pipeline 16
//!     acked-writes --addr 127.0.0.1:6380 --session
//!
//! Prints one CSV line: writes/s, p50 and p99 latency of a write in ms, and how many
//! writes WAIT did not see on a replica in time (always 0 without `--wait`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tandem_bench::percentile;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The server's Redis-protocol address.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Writes in all, spread over the clients.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Keys are drawn from this many.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// SETs sent before the replies are read (and before the WAIT).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Follow each pipeline of SETs with `WAIT 1 <timeout>`.
    #[arg(long)]
    wait: bool,
    /// Each write is a session save in `MULTI`/`EXEC` (`HSET` of two fields, `EXPIRE`).
    #[arg(long)]
    session: bool,
    /// WAIT's timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    timeout: Duration,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Per pipeline, in µs, divided over its writes.
    latencies_us: Vec<u64>,
    /// Writes WAIT did not find on a replica.
    unacknowledged: u64,
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Reads one reply line; an error reply ends the run.
async fn reply<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut String,
) -> anyhow::Result<()> {
    line.clear();
    if reader.read_line(line).await? == 0 {
        bail!("the server closed the connection");
    }
    if line.starts_with('-') {
        bail!("the server answered {}", line.trim_end());
    }
    Ok(())
}

async fn client(id: u64, args: &Args, writes: usize) -> anyhow::Result<Seen> {
    let stream = TcpStream::connect(&args.addr)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let value = vec![b'x'; args.size];
    let wait = format!("{}", args.timeout.as_millis());
    // xorshift64: a key sequence of each client's own, cheap enough not to show.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (id + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut seen = Seen::default();
    let mut request = Vec::new();
    let mut line = String::new();
    let mut done = 0;
    while done < writes {
        let batch = args.pipeline.min(writes - done);
        request.clear();
        for _ in 0..batch {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = state % args.keys;
            if args.session {
                let key = format!("session:{key:012}");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                request.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n*6\r\n");
                for arg in [&b"HSET"[..], key.as_bytes(), b"data"] {
                    bulk(&mut request, arg);
                }
                bulk(&mut request, &value);
                bulk(&mut request, b"lastAccessedTime");
                bulk(&mut request, now.to_string().as_bytes());
                request.extend_from_slice(b"*3\r\n");
                for arg in [&b"EXPIRE"[..], key.as_bytes(), b"1800"] {
                    bulk(&mut request, arg);
                }
                request.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
            } else {
                request.extend_from_slice(b"*3\r\n");
                bulk(&mut request, b"SET");
                bulk(&mut request, format!("key:{key:012}").as_bytes());
                bulk(&mut request, &value);
            }
        }
        if args.wait {
            request.extend_from_slice(b"*3\r\n");
            bulk(&mut request, b"WAIT");
            bulk(&mut request, b"1");
            bulk(&mut request, wait.as_bytes());
        }
        let started = Instant::now();
        writer.write_all(&request).await?;
        for _ in 0..batch {
            if args.session {
                // +OK, +QUEUED twice, then EXEC's array of HSET's and EXPIRE's integers.
                for _ in 0..3 {
                    reply(&mut reader, &mut line).await?;
                }
                reply(&mut reader, &mut line).await?;
                if line.trim_end() != "*2" {
                    bail!("EXEC answered {}", line.trim_end());
                }
                for _ in 0..2 {
                    reply(&mut reader, &mut line).await?;
                }
            } else {
                reply(&mut reader, &mut line).await?;
            }
        }
        if args.wait {
            reply(&mut reader, &mut line).await?;
            let replicas: i64 = line
                .trim_end()
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("WAIT answered {line:?}"))?;
            if replicas < 1 {
                seen.unacknowledged += batch as u64;
            }
        }
        let each = started.elapsed().as_micros() as u64;
        seen.latencies_us.extend(std::iter::repeat_n(each, batch));
        done += batch;
    }
    Ok(seen)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            let args = args.clone();
            let writes =
                args.requests / args.clients + usize::from(id < args.requests % args.clients);
            tokio::spawn(async move { client(id as u64, &args, writes).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut unacknowledged = 0;
    for task in tasks {
        let seen = task.await.context("a client's task")??;
        latencies.extend(seen.latencies_us);
        unacknowledged += seen.unacknowledged;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "{:.0},{:.3},{:.3},{}",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        unacknowledged
    );
    Ok(())
}
