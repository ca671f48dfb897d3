//! Operations on a running cluster with real processes and users clicking all along: the
//! HA switch off and on again, a drain, a rolling restart of every agent, and nodes of
//! another protocol version. No request may fail and no counter may be reset.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::users::{
    DemoCluster, Traffic, User, assert_moves, click_round, start_balancer, wait_protected_routes,
};
use support::{Agent, members, paired_in, partner_in, succeeded, tandem, wait_for};

const USERS: usize = 12;
const SETTLE: Duration = Duration::from_secs(40);

/// `tandem ARGS` run to the end; panics with its output unless it succeeds.
fn run_tandem(args: &[&str]) -> String {
    succeeded(
        &format!("tandem {args:?}"),
        tandem().args(args).output().unwrap(),
    )
}

async fn run_tandem_async(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tandem(&args)
    })
    .await
    .unwrap()
}

fn url(admin: SocketAddr) -> String {
    format!("http://{admin}")
}

/// Waits until no agent has a partner (HA off has reached everyone).
async fn wait_unpaired(admin: SocketAddr, agents: usize) {
    wait_for("every agent to end its pair", SETTLE, || async {
        members(admin).await.is_some_and(|view| {
            let unpaired = view
                .members
                .iter()
                .filter(|m| m.live && m.id.starts_with("agent-") && m.partner.is_none())
                .count();
            unpaired == agents
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_off_and_on_again_under_traffic_fails_nothing_and_protects_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DemoCluster::start(dir.path(), 4).await;
    let (balancer, listen) = (cluster.balancer.admin, cluster.listen);
    let a1 = url(cluster.agent("agent-1").node.admin);
    let a3 = url(cluster.agent("agent-3").node.admin);
    let users: Vec<User> = (0..USERS).map(User::new).collect();
    let traffic = Traffic::start(users, listen);

    let said = run_tandem_async(vec!["ha".into(), "off".into(), "--admin".into(), a1]).await;
    assert!(said.starts_with("HA off"), "{said}");
    wait_unpaired(balancer, 4).await;
    // An agent whose partner turned HA off is unpaired before the switch itself reaches it
    // by gossip: it arrives a moment later.
    wait_for("the switch to reach agent-3", SETTLE, || {
        let args = vec!["ha".into(), "status".into(), "--admin".into(), a3.clone()];
        async { run_tandem_async(args).await.starts_with("HA off") }
    })
    .await;
    // A while with HA off: users stay where they are.
    tokio::time::sleep(Duration::from_secs(1)).await;

    run_tandem_async(vec!["ha".into(), "on".into(), "--admin".into(), a3.clone()]).await;
    wait_protected_routes(balancer, "balancer-1", 4).await;
    for agent in cluster.agents.values() {
        run_tandem_async(vec!["wait".into(), "--admin".into(), url(agent.node.admin)]).await;
    }
    let (users, clicks) = traffic.stop("HA off, then on").await;
    assert!(
        clicks >= USERS * 5,
        "the users clicked all along ({clicks})"
    );

    // Protected again: the death of any one agent loses no session.
    let (users, placed) = click_round(users, listen, 3, "before the kill").await;
    let view = members(balancer).await.unwrap();
    let victim = placed[&0].clone();
    let heir = partner_in(&view, &victim).expect("the victim is paired");
    cluster.agent(&victim).node.kill();
    let (_, after) = click_round(users, listen, 3, "after the kill").await;
    assert_moves(&placed, &after, &[(victim.as_str(), heir.as_str())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_hands_its_users_to_its_partner_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    // Two pairs and an odd agent out, which the survivor pairs with afterwards.
    let mut cluster = DemoCluster::start_with(dir.path(), 5, |_| Vec::new()).await;
    let (balancer, listen) = (cluster.balancer.admin, cluster.listen);
    wait_protected_routes(balancer, "balancer-1", 4).await;
    // Half the users click on through the drain; the other half only before and after.
    let users: Vec<User> = (0..2 * USERS).map(User::new).collect();
    let (users, placed) = click_round(users, listen, 3, "before the drain").await;

    let view = members(balancer).await.unwrap();
    let idle_user = 2 * USERS - 1;
    let drained = placed[&idle_user].clone();
    let heir = partner_in(&view, &drained).expect("a paired node");
    let lone = view
        .members
        .iter()
        .find(|m| m.id.starts_with("agent-") && m.partner.is_none())
        .expect("an agent left over")
        .id
        .clone();

    // SIGTERM drains: users keep clicking all along.
    let (active, idle): (Vec<User>, Vec<User>) = users.into_iter().partition(|u| u.id < USERS);
    let traffic = Traffic::start(active, listen);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = &mut cluster.agent(&drained).node;
    let status = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(30)));
    assert!(status.success(), "the drained agent exits 0: {status:?}");
    let log = node.log_text();
    assert!(log.contains("draining"), "{log}");
    assert!(
        log.contains("the partner confirms it holds every session"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut users, _) = traffic.stop("through the drain").await;

    // The survivor pairs again, with the agent that was left over.
    let heir_admin = cluster.agent(&heir).node.admin;
    let done = run_tandem_async(vec!["wait".into(), "--admin".into(), url(heir_admin)]).await;
    assert!(done.contains(&format!("paired with {lone}")), "{done}");

    // The drained node comes back, empty and alone: users whose cookies still name it
    // (they did not click meanwhile) go on at the partner that holds their sessions.
    let node = &mut cluster.agent(&drained).node;
    node.restart();
    let done = run_tandem_async(vec!["wait".into(), "--admin".into(), url(node.admin)]).await;
    assert!(done.contains("no other agent is free"), "{done}");
    users.extend(idle);
    let (_, after) = click_round(users, listen, 3, "after the drain").await;
    assert_moves(&placed, &after, &[(drained.as_str(), heir.as_str())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_agent_fails_no_request_and_resets_no_counter() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DemoCluster::start(dir.path(), 4).await;
    let listen = cluster.listen;
    let users: Vec<User> = (0..USERS).map(User::new).collect();
    let traffic = Traffic::start(users, listen);
    let names: Vec<String> = cluster.agents.keys().cloned().collect();
    for name in &names {
        let admin = url(cluster.agent(name).node.admin);
        let said = run_tandem_async(vec!["drain".into(), "--admin".into(), admin.clone()]).await;
        assert!(said.contains("left the cluster"), "{said}");
        let node = &mut cluster.agent(name).node;
        let status = tokio::task::block_in_place(|| node.wait_exit(Duration::from_secs(10)));
        assert!(
            status.success(),
            "{name} exits 0 after its drain: {status:?}"
        );
        node.restart();
        let done = run_tandem_async(vec!["wait".into(), "--admin".into(), admin]).await;
        assert!(done.contains("synced"), "{name}: {done}");
    }
    let (users, clicks) = traffic.stop("the rolling restart").await;
    assert!(
        clicks >= USERS * 10,
        "the users clicked all along ({clicks})"
    );
    // Every agent is a new incarnation, and the users' sessions are all there.
    let (_, on) = click_round(users, listen, 2, "after the rolling restart").await;
    assert_eq!(on.len(), USERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_minor_version_apart_pairs_and_another_major_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let protocol = |i: usize| match i {
        2 => vec!["--protocol".to_string(), "2.1".to_string()],
        3 => vec!["--protocol".to_string(), "3.0".to_string()],
        _ => Vec::new(),
    };
    let mut cluster = DemoCluster::start_with(dir.path(), 3, protocol).await;
    let admin = cluster.agent("agent-1").node.admin;
    wait_for(
        "agent-1 (2.2) and agent-2 (2.1) to pair",
        SETTLE,
        || async {
            members(admin)
                .await
                .is_some_and(|view| paired_in(&view, "agent-1", "agent-2"))
        },
    )
    .await;
    let view = members(admin).await.unwrap();
    let odd = view.members.iter().find(|m| m.id == "agent-3").unwrap();
    let problem = odd.problem.clone().unwrap_or_default();
    assert!(
        problem.contains("protocol 3.0") && problem.contains("2.1–2.3"),
        "{problem}"
    );
    assert!(odd.partner.is_none());
    let table = run_tandem(&["members", "--admin", &url(admin)]);
    assert!(table.contains("agent-3: not worked with"), "{table}");
    // The balancer (2.2) refuses agent-3 too: it never routes there.
    let balancer = cluster.balancer.admin;
    wait_for(
        "the balancer to route to agent-1 and agent-2",
        SETTLE,
        || async {
            let Some((200, body)) = support::get(balancer, "/v1/routes").await else {
                return false;
            };
            let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
            let ids: Vec<&str> = routes["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|b| b["id"].as_str())
                .collect();
            ids == ["agent-1", "agent-2"]
        },
    )
    .await;
    let log = cluster.agent("agent-3").node.log_text();
    assert!(
        log.contains("refusing a node of an incompatible protocol"),
        "{log}"
    );
}

/// The metrics the README lists: those of every node, those of agents, those of balancers.
/// `{a,b}` inside a name stands for each alternative; a trailing `{label,…}` names labels,
/// and `{label="x"|"y"}` also the values each must have a series for.
struct Documented {
    common: Vec<(String, Vec<String>)>,
    agent: Vec<(String, Vec<String>)>,
    balancer: Vec<(String, Vec<String>)>,
}

fn documented_metrics() -> Documented {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("Metrics (all named")
        .expect("the README's metrics list");
    let end = start + readme[start..].find("Balancers also serve").unwrap();
    let text = readme[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let (common, rest) = text.split_once("agents also:").unwrap();
    let (agent, balancer) = rest.split_once("balancers also:").unwrap();
    let parse = |part: &str| {
        part.split('`')
            .skip(1)
            .step_by(2)
            .filter(|span| *span != "tandem_*")
            .flat_map(parse_metric)
            .collect::<Vec<_>>()
    };
    Documented {
        common: parse(common),
        agent: parse(agent),
        balancer: parse(balancer),
    }
}

/// `name{a,b}_x{label="v"|"w"}` → (`name{a}_x`, series `label="v"`, `label="w"`), ….
fn parse_metric(span: &str) -> Vec<(String, Vec<String>)> {
    let (name, labels) = match span.strip_suffix('}') {
        Some(open) => {
            let at = open.rfind('{').unwrap();
            (&span[..at], &open[at + 1..])
        }
        None => (span, ""),
    };
    let series: Vec<String> = labels
        .split_once('=')
        .map(|(label, values)| {
            values
                .split('|')
                .map(|value| format!("{label}={value}"))
                .collect()
        })
        .unwrap_or_default();
    expand(name)
        .into_iter()
        .map(|name| (name, series.clone()))
        .collect()
}

fn expand(name: &str) -> Vec<String> {
    let Some(open) = name.find('{') else {
        return vec![name.to_string()];
    };
    let close = open + name[open..].find('}').unwrap();
    name[open + 1..close]
        .split(',')
        .flat_map(|choice| expand(&format!("{}{choice}{}", &name[..open], &name[close + 1..])))
        .collect()
}

/// The metric names a scrape declares (`# TYPE name kind`).
fn declared(scrape: &str) -> Vec<&str> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect()
}

/// Every metric the README lists is in `/metrics` from the start, before its first event
/// (an `increase()` alert sees the first one), on an agent and on a balancer; and every
/// metric they export is in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_from_the_start() {
    let documented = documented_metrics();
    assert!(documented.common.len() >= 10 && documented.agent.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "metrics-agent", &[]);
    let (balancer, _) = start_balancer(dir.path(), "metrics-balancer", agent.node.gossip);
    for (node, own) in [
        (&agent.node, &documented.agent),
        (&balancer, &documented.balancer),
    ] {
        wait_for(&format!("{}'s /metrics", node.name), SETTLE, || async {
            matches!(support::get(node.admin, "/metrics").await, Some((200, _)))
        })
        .await;
        // The first scrape that answers: the node has just started.
        let scrape = support::get(node.admin, "/metrics").await.unwrap().1;
        let names = declared(&scrape);
        let expected: Vec<_> = documented.common.iter().chain(own).collect();
        for (name, series) in &expected {
            assert!(
                names.contains(&name.as_str()),
                "{}: {name} missing\n{scrape}",
                node.name
            );
            for labels in series {
                assert!(
                    scrape
                        .lines()
                        .any(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels)),
                    "{}: no series {name}{{{labels}}}\n{scrape}",
                    node.name
                );
            }
        }
        let undocumented: Vec<_> = names
            .iter()
            .filter(|name| name.starts_with("tandem_"))
            .filter(|name| !expected.iter().any(|(documented, _)| documented == *name))
            .collect();
        assert!(
            undocumented.is_empty(),
            "{}: exported but not in the README: {undocumented:?}",
            node.name
        );
    }
}

#[test]
fn documented_names_expand_alternatives_and_read_label_values() {
    assert_eq!(
        parse_metric("tandem_gossip_{messages,bytes}_{sent,received}_total")
            .into_iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>(),
        [
            "tandem_gossip_messages_sent_total",
            "tandem_gossip_messages_received_total",
            "tandem_gossip_bytes_sent_total",
            "tandem_gossip_bytes_received_total",
        ]
    );
    assert_eq!(
        parse_metric(r#"tandem_x_total{reason="a"|"b"}"#),
        [(
            "tandem_x_total".to_string(),
            vec![r#"reason="a""#.to_string(), r#"reason="b""#.to_string()]
        )]
    );
    assert_eq!(
        parse_metric("tandem_members{role,liveness}"),
        [("tandem_members".to_string(), vec![])]
    );
}
