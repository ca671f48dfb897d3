//! Agents on separate hosts (network namespaces) in two subnets joined by a router, and a
//! balancer on a host of its own: partners in one subnet replicate by multicast, partners
//! across subnets (or where multicast is off) over QUIC, and either way no acknowledged
//! write is lost and no user's session is lost or rolled back when a host dies or is cut
//! off. Needs root and `ip netns`.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::netns::Topology;
use support::users::{User, assert_moves, click_round, wait_protected_routes};
use support::{Node, Reply, Resp, capability, cmd, member, members, wait_for, wait_for_port};
use tandem_common::schema::ReplTransport;

const GOSSIP: u16 = 7946;
const ADMIN: u16 = 7951;
const RESP: u16 = 6380;
const APP: u16 = 8080;
const LISTEN: u16 = 8000;
/// Users of the demo app behind the balancer, and the clicks of each per round.
const USERS: usize = 30;
const CLICKS: usize = 5;
const FORM: Duration = Duration::from_secs(40);

struct Host {
    node: Node,
    ip: IpAddr,
}

impl Host {
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, ADMIN)
    }

    fn resp(&self) -> SocketAddr {
        SocketAddr::new(self.ip, RESP)
    }
}

/// Starts an agent on `host`, every endpoint on the host's own address.
fn start_agent(net: &Topology, dir: &std::path::Path, host: &str, extra: &[&str]) -> Host {
    let ip = net.host_ip(host);
    let seed = SocketAddr::new(net.host_ip("a1"), GOSSIP);
    let seeds = if host == "a1" { vec![] } else { vec![seed] };
    let mut args: Vec<String> = vec![
        "--resp-addr".into(),
        SocketAddr::new(ip, RESP).to_string(),
        "--api-addr".into(),
        SocketAddr::new(ip, 7950).to_string(),
        "--repl-addr".into(),
        "0.0.0.0:7947".into(),
        "--tls-dir".into(),
        dir.join("tls").display().to_string(),
        "--demo-app".into(),
        SocketAddr::new(ip, APP).to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let node = Node::start_in(
        &net.netns(host),
        dir,
        "agent",
        host,
        &seeds,
        SocketAddr::new(ip, GOSSIP),
        SocketAddr::new(ip, ADMIN),
        args,
    );
    Host { node, ip }
}

/// Starts the balancer on host `lb`, with its defaults; returns it and where users reach it.
/// A cut host answers nothing: requests already sent to it are given up once gossip
/// declares it dead, and go to its partner.
fn start_balancer(net: &Topology, dir: &std::path::Path) -> (Node, SocketAddr) {
    let ip = net.host_ip("lb");
    let secret = dir.join("cookie-secret");
    std::fs::write(&secret, "the route cookie secret of this test cluster").unwrap();
    let listen = SocketAddr::new(ip, LISTEN);
    let node = Node::start_in(
        &net.netns("lb"),
        dir,
        "balancer",
        "lb",
        &[SocketAddr::new(net.host_ip("a1"), GOSSIP)],
        SocketAddr::new(ip, GOSSIP),
        SocketAddr::new(ip, ADMIN),
        vec![
            "--listen".into(),
            listen.to_string(),
            "--cookie-secret-file".into(),
            secret.display().to_string(),
        ],
    );
    (node, listen)
}

/// Waits until `host` is paired and reports replicating to its partner by `transport`;
/// returns the partner's id.
async fn wait_paired(host: &Host, transport: ReplTransport) -> String {
    let admin = host.admin();
    let id = host.node.name.clone();
    wait_for(
        &format!("{id} paired, replicating by {transport}"),
        FORM,
        || async {
            member(admin, &id).await.is_some_and(|m| {
                m.partner.is_some() && !m.unprotected && m.transport == Some(transport)
            })
        },
    )
    .await;
    member(admin, &id).await.unwrap().partner.unwrap().node_id
}

/// Writes `count` 1 KiB sessions through `host`'s RESP port (sync mode: each reply means
/// the partner has it) and returns them.
async fn write_sessions(host: &Host, prefix: &str, count: usize) -> BTreeMap<String, Vec<u8>> {
    wait_for_port(host.resp()).await;
    let mut resp = Resp::connect(host.resp()).await;
    let mut written = BTreeMap::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(50) {
        let commands: Vec<Vec<Vec<u8>>> = batch
            .iter()
            .map(|i| {
                let key = format!("{prefix}:{i}");
                let mut value = format!("{prefix}-{i}-").into_bytes();
                value.resize(1024, b'x');
                written.insert(key.clone(), value.clone());
                cmd(&[&"SET", &key, &value])
            })
            .collect();
        for reply in resp.pipeline(&commands).await {
            assert_eq!(reply, Reply::SimpleString("OK".into()));
        }
    }
    written
}

/// The first session in `expected` that the node at `addr` does not hold as written, with
/// what it answered instead.
async fn first_mismatch(
    addr: SocketAddr,
    expected: &BTreeMap<String, Vec<u8>>,
) -> Option<(String, Reply, Vec<u8>)> {
    let mut resp = Resp::connect(addr).await;
    for (key, value) in expected {
        let reply = resp.call(&["GET", key]).await;
        if reply != Reply::BulkString(value.clone()) {
            return Some((key.clone(), reply, value.clone()));
        }
    }
    None
}

async fn assert_sessions(host: &Host, expected: &BTreeMap<String, Vec<u8>>) {
    if let Some((key, reply, value)) = first_mismatch(host.resp(), expected).await {
        assert_eq!(
            reply,
            Reply::BulkString(value),
            "{key} on {}",
            host.node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_inside_a_subnet_quic_across_and_no_session_lost() {
    if !capability(
        "root and network namespaces (ip netns)",
        Topology::available(),
    ) {
        return;
    }
    let net = Topology::build().expect("network namespaces");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // Subnet A: three agents; subnet B: two, with multicast off there. The first pair
    // forms inside A; the odd agent of A pairs with b1 across the router.
    let mut hosts: BTreeMap<&str, Host> = BTreeMap::new();
    for name in ["a1", "a2"] {
        hosts.insert(name, start_agent(&net, dir, name, &[]));
    }
    let a_partner = wait_paired(&hosts["a1"], ReplTransport::Multicast).await;
    assert_eq!(a_partner, "a2");
    wait_paired(&hosts["a2"], ReplTransport::Multicast).await;
    hosts.insert("a3", start_agent(&net, dir, "a3", &[]));
    hosts.insert("b1", start_agent(&net, dir, "b1", &["--multicast", "off"]));
    assert_eq!(wait_paired(&hosts["a3"], ReplTransport::Quic).await, "b1");
    assert_eq!(wait_paired(&hosts["b1"], ReplTransport::Quic).await, "a3");
    hosts.insert("b2", start_agent(&net, dir, "b2", &["--multicast", "off"]));

    // A newcomer learns the transports from gossip.
    let b2_admin = hosts["b2"].admin();
    wait_for("b2 sees which transport each pair uses", FORM, || async {
        members(b2_admin).await.is_some_and(|view| {
            let transport = |id: &str| {
                view.members
                    .iter()
                    .find(|m| m.id == id)
                    .and_then(|m| m.transport)
            };
            transport("a1") == Some(ReplTransport::Multicast)
                && transport("a2") == Some(ReplTransport::Multicast)
                && transport("a3") == Some(ReplTransport::Quic)
                && transport("b1") == Some(ReplTransport::Quic)
        })
    })
    .await;

    // Without an admin token, state-changing admin calls are taken from loopback only: the
    // test process is another host to a1.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v1/keyring/plain", hosts["a1"].admin()))
        .json(&serde_json::json!({ "accept": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Users through the balancer on its own host land on every paired node.
    let (_balancer, listen) = start_balancer(&net, dir);
    wait_for_port(listen).await;
    let lb_admin = SocketAddr::new(net.host_ip("lb"), ADMIN);
    wait_protected_routes(lb_admin, "lb", 4).await;
    let users: Vec<User> = (0..USERS).map(User::new).collect();
    let (users, placed) = click_round(users, listen, CLICKS, "first clicks").await;
    for node in ["a1", "a2", "a3", "b1"] {
        assert!(
            placed.values().any(|on| on == node),
            "no user on {node}: {placed:?}"
        );
    }

    // Sessions written on a node survive its kill -9, whichever transport carried them.
    let on_a1 = write_sessions(&hosts["a1"], "a1", 500).await;
    let on_a3 = write_sessions(&hosts["a3"], "a3", 500).await;
    let sent_by_multicast = |host: &Host| {
        let admin = host.admin();
        async move {
            let (_, metrics) = support::get(admin, "/metrics").await.unwrap();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("tandem_repl_multicast_frames_sent_total "))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    assert!(sent_by_multicast(&hosts["a1"]).await > 0.0);
    assert_eq!(sent_by_multicast(&hosts["a3"]).await, 0.0);
    hosts.get_mut("a1").unwrap().node.kill();
    hosts.get_mut("a3").unwrap().node.kill();
    assert_sessions(&hosts["a2"], &on_a1).await;
    assert_sessions(&hosts["b1"], &on_a3).await;
    // Their users go on at the partner, which has their sessions.
    let (users, after_kill) = click_round(users, listen, CLICKS, "after the kills").await;
    assert_moves(&placed, &after_kill, &[("a1", "a2"), ("a3", "b1")]);

    // Cut a host off instead of killing it: its partner keeps every session and serves
    // them as its own; newer writes there are not undone when the link comes back. Of
    // the three survivors two pair again (which two depends on who was lone first).
    let survivors = ["a2", "b1", "b2"];
    let pair = {
        let admins: Vec<(&str, SocketAddr)> =
            survivors.iter().map(|h| (*h, hosts[h].admin())).collect();
        let paired = |admins: Vec<(&'static str, SocketAddr)>| async move {
            for (id, admin) in admins {
                if let Some(m) = member(admin, id).await
                    && !m.unprotected
                    && let Some(p) = m.partner
                    && survivors.contains(&p.node_id.as_str())
                {
                    return Some((id, p.node_id));
                }
            }
            None
        };
        wait_for("two survivors paired again", FORM, || {
            let admins = admins.clone();
            async move { paired(admins).await.is_some() }
        })
        .await;
        paired(admins).await.unwrap()
    };
    let (cut, keeper) = (pair.0, hosts.get(pair.1.as_str()).unwrap());
    let (users, paired_again) = click_round(users, listen, CLICKS, "after pairing again").await;
    assert_moves(&after_kill, &paired_again, &[]);
    let on_cut = write_sessions(&hosts[cut], cut, 300).await;
    net.link_down(cut);
    assert_sessions(keeper, &on_cut).await;
    let (users, after_cut) = click_round(users, listen, CLICKS, "after the cut").await;
    assert_moves(
        &paired_again,
        &after_cut,
        &[(cut, keeper.node.name.as_str())],
    );
    let mut expected = on_cut.clone();
    {
        let mut resp = Resp::connect(keeper.resp()).await;
        for (key, value) in on_cut.iter().take(20) {
            let mut newer = value.clone();
            newer[..5].copy_from_slice(b"NEWER");
            assert_eq!(
                resp.call(&["SET", key, std::str::from_utf8(&newer).unwrap()])
                    .await,
                Reply::SimpleString("OK".into())
            );
            expected.insert(key.clone(), newer);
        }
    }
    net.link_up(cut);
    // Back on the network, the cut host is seen again; nothing stale it held comes back
    // on the keeper, and if the two pair again it converges on the newest writes.
    let (keeper_admin, cut_admin) = (keeper.admin(), hosts[cut].admin());
    wait_for(&format!("{cut} seen live again"), FORM, || async {
        member(keeper_admin, cut).await.is_some_and(|m| m.live)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a few gossip rounds, any re-pairing
    assert_sessions(keeper, &expected).await;
    // No user is sent back to the stale copy: every counter goes on.
    let (_, healed) = click_round(users, listen, CLICKS, "after the link came back").await;
    assert_moves(&after_cut, &healed, &[]);
    let rejoined = member(cut_admin, cut)
        .await
        .and_then(|m| m.partner)
        .is_some_and(|p| p.node_id == keeper.node.name);
    if rejoined {
        let cut_resp = hosts[cut].resp();
        wait_for(
            &format!("{cut} converged on the newest writes"),
            FORM,
            || {
                let expected = expected.clone();
                async move { first_mismatch(cut_resp, &expected).await.is_none() }
            },
        )
        .await;
    }
}
