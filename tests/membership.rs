//! Gossip membership with real processes on loopback: formation, failure detection,
//! restart as a new incarnation, graceful leave.

mod support;

use std::time::Duration;

use support::{Node, get, member, members, wait_for};
use tandem_common::schema::{NodeState, Role};

/// Generous bounds: these tests assert what happens, not how fast (see BENCHMARKS.md).
const FORM: Duration = Duration::from_secs(20);
const DETECT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_and_a_balancer_detect_a_killed_agent_and_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = Node::start(dir.path(), "agent", "a1", &[]);
    let seeds = [a1.gossip];
    let a2 = Node::start(dir.path(), "agent", "a2", &seeds);
    let mut a3 = Node::start(dir.path(), "agent", "a3", &seeds);
    let b1 = Node::start(dir.path(), "balancer", "b1", &seeds);
    let all = [
        ("a1", a1.admin),
        ("a2", a2.admin),
        ("a3", a3.admin),
        ("b1", b1.admin),
    ];

    for (name, admin) in all {
        wait_for(
            &format!("{name} to see 4 live, ready members"),
            FORM,
            || async {
                members(admin).await.is_some_and(|view| {
                    view.members
                        .iter()
                        .filter(|m| m.live && m.state == Some(NodeState::Ready))
                        .count()
                        == 4
                })
            },
        )
        .await;
    }
    let view = members(b1.admin).await.unwrap();
    assert_eq!(view.self_id, "b1");
    assert_eq!(view.cluster, "tandem");
    for m in &view.members {
        let expected_role = if m.id == "b1" {
            Role::Balancer
        } else {
            Role::Agent
        };
        assert_eq!(m.role, Some(expected_role), "{m:?}");
        assert_eq!(m.state, Some(NodeState::Ready), "{m:?}");
        assert_eq!(m.sessions, 0);
        assert!(m.generation > 0);
        assert!(m.admin.is_some() && m.problem.is_none(), "{m:?}");
    }
    let a3_seen = view.members.iter().find(|m| m.id == "a3").unwrap();
    assert_eq!(a3_seen.gossip_addr, a3.gossip.to_string());
    assert_eq!(
        a3_seen.admin.as_deref(),
        Some(a3.admin.to_string().as_str())
    );
    let first_generation = a3_seen.generation;

    for (name, admin) in all {
        assert_eq!(get(admin, "/healthz").await.unwrap().0, 200);
        // Two of the agents pair meanwhile, and each is `syncing` (503) until it has its
        // partner's snapshot: ready is what it settles on.
        wait_for(&format!("{name} to answer ready"), FORM, || async {
            get(admin, "/readyz").await == Some((200, "ready\n".into()))
        })
        .await;
    }
    // The gauges are refreshed every gossip round.
    let expected_lines = [
        r#"tandem_members{role="agent",liveness="live"} 3"#,
        r#"tandem_members{role="balancer",liveness="live"} 1"#,
        r#"tandem_members{role="agent",liveness="dead"} 0"#,
    ];
    wait_for("b1's membership gauges", FORM, || async {
        let metrics = get(b1.admin, "/metrics").await.unwrap().1;
        expected_lines
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line))
    })
    .await;
    let metrics = get(b1.admin, "/metrics").await.unwrap().1;
    for name in [
        "tandem_gossip_messages_sent_total",
        "tandem_gossip_bytes_sent_total",
        "tandem_gossip_messages_received_total",
        "tandem_gossip_bytes_received_total",
    ] {
        let value = metric_value(&metrics, name);
        assert!(value > 0.0, "{name} = {value}");
    }
    let names_ok = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .all(|l| l.starts_with("tandem_"));
    assert!(names_ok, "every metric is named tandem_*\n{metrics}");

    a3.kill();
    let killed_at = std::time::Instant::now();
    for (name, admin) in all.into_iter().filter(|(name, _)| *name != "a3") {
        wait_for(&format!("{name} to report a3 dead"), DETECT, || async {
            member(admin, "a3").await.is_some_and(|m| !m.live)
        })
        .await;
        println!(
            "{name} reported the killed a3 dead {:?} after the kill",
            killed_at.elapsed()
        );
    }
    wait_for("b1's gauges to count a dead agent", FORM, || async {
        let metrics = get(b1.admin, "/metrics").await.unwrap().1;
        metrics
            .lines()
            .any(|l| l == r#"tandem_members{role="agent",liveness="dead"} 1"#)
    })
    .await;

    a3.restart();
    let restarted_at = std::time::Instant::now();
    for (name, admin) in all {
        wait_for(&format!("{name} to see a3 live again"), DETECT, || async {
            member(admin, "a3")
                .await
                .is_some_and(|m| m.live && m.generation > first_generation)
        })
        .await;
        println!(
            "{name} saw a3 live {:?} after its restart",
            restarted_at.elapsed()
        );
    }
    // The old incarnation is not listed beside the new one.
    let view = members(a1.admin).await.unwrap();
    assert_eq!(view.members.iter().filter(|m| m.id == "a3").count(), 1);
    assert_eq!(view.members.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_advertises_leaving_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = Node::start(dir.path(), "agent", "a1", &[]);
    let mut a2 = Node::start(dir.path(), "agent", "a2", &[a1.gossip]);
    wait_for("a1 to see a2 live", FORM, || async {
        member(a1.admin, "a2").await.is_some_and(|m| m.live)
    })
    .await;

    let status = a2.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    // a2 waited for its `leaving` to be gossiped before it stopped.
    let seen = member(a1.admin, "a2").await.unwrap();
    assert_eq!(seen.state, Some(NodeState::Leaving), "{seen:?}");
    let log = a2.log_text();
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_down_at_start_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let seed_addr = support::free_udp_addr();
    let late = Node::start(dir.path(), "agent", "late", &[seed_addr]);
    // Joining until someone answers: not ready, but running.
    wait_for("late to answer /readyz", FORM, || async {
        get(late.admin, "/readyz").await.is_some()
    })
    .await;
    assert_eq!(
        get(late.admin, "/readyz").await.unwrap(),
        (503, "joining\n".into())
    );

    // The seed comes up on the address the node was told about.
    let seed = Node::start_at(dir.path(), "agent", "seed", &[], seed_addr);
    wait_for("late to join through the seed", FORM, || async {
        member(late.admin, "seed").await.is_some_and(|m| m.live)
    })
    .await;
    wait_for("late to become ready", FORM, || async {
        get(late.admin, "/readyz").await == Some((200, "ready\n".into()))
    })
    .await;
    assert!(member(seed.admin, "late").await.is_some_and(|m| m.live));
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}\n{text}"))
}
