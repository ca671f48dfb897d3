//! `tandem demo`: the README's first command brings up 4 agents and a balancer, which
//! `tandem members` shows, and Ctrl-C takes everything down.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use support::{get, members, signal, tandem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_four_agents_and_a_balancer_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = tandem()
        .args(["demo", "--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Read the demo's output on a thread; lines arrive as the demo prints them.
    let stdout = demo.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let admin = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("demo printed no members command:\n{}", printed.join("\n")));
        printed.push(line.clone());
        if let Some(url) = line.trim().strip_prefix("see it:  tandem members --admin ") {
            break url.trim_start_matches("http://").parse().unwrap();
        }
    };
    let text = printed.join("\n");
    assert!(text.contains("cluster formed: 5 live members"), "{text}");
    for name in ["agent-1", "agent-2", "agent-3", "agent-4", "balancer-1"] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    let view = members(admin).await.expect("demo admin endpoint answers");
    let mut seen: Vec<(String, bool)> = view
        .members
        .iter()
        .map(|m| (m.id.clone(), m.live))
        .collect();
    seen.sort();
    let expected: Vec<(String, bool)> = ["agent-1", "agent-2", "agent-3", "agent-4", "balancer-1"]
        .iter()
        .map(|id| (id.to_string(), true))
        .collect();
    assert_eq!(seen, expected);

    let output = tandem()
        .args(["members", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("5 live, 0 dead"), "{table}");

    signal(demo.id(), "INT");
    let status = tokio::task::spawn_blocking(move || demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exit status {status:?}");
    // Every node is gone with it.
    for node in view.members {
        let node_admin = node.admin.unwrap().parse().unwrap();
        assert!(
            get(node_admin, "/healthz").await.is_none(),
            "{} still answers",
            node.id
        );
    }
    for name in ["agent-1", "balancer-1"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(
            log.contains("stopped"),
            "{name} did not stop gracefully:\n{log}"
        );
    }
}
