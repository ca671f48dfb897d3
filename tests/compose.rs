//! The docker compose cluster of deploy/compose, as a user starts it: two networks as two
//! subnets, six agents with demo apps, two balancers, key and certificates made by setup
//! steps. Sticky users keep their sessions through `docker kill` of an agent and through a
//! network link taken away (`docker network disconnect`). Needs root, Docker and
//! docker-compose; everything started is removed, also when the test fails.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::users::{Traffic, User, assert_moves, click_round, wait_protected_routes};
use support::{capability, members, partner_in, succeeded, wait_for};
use tandem_common::schema::ReplTransport;

const PROJECT: &str = "tandemtest";
const IMAGE: &str = "tandem:test";
const USERS: usize = 20;
const CLICKS: usize = 4;
const FORM: Duration = Duration::from_secs(90);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("TANDEM_IMAGE", IMAGE)
        .env("TANDEM_COMPOSE_PROJECT", PROJECT)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"))
}

fn must(program: &str, args: &[&str]) -> String {
    succeeded(&format!("{program} {args:?}"), run(program, args))
}

fn available() -> bool {
    let root = run("id", &["-u"]).stdout.trim_ascii() == b"0";
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    root && ok("docker", &["info"])
        && ok("docker-compose", &["version"])
        && ok("iptables", &["-L", "DOCKER-USER", "-n"])
}

/// The running cluster; `cluster.sh down` when dropped, and the network that held the
/// default subnet removed.
struct Cluster;

/// A network on the compose file's default subnet A, as a host may already have one:
/// cluster.sh must then choose other subnets.
const SQUATTER: &str = "tandemtest-squatter";

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test leaves what each container logged, before the cluster goes.
        if std::thread::panicking() {
            print_logs();
        }
        let _ = run("deploy/compose/cluster.sh", &["down"]);
        let _ = run("docker", &["network", "rm", SQUATTER]);
    }
}

/// Prints the last lines each container of the cluster logged.
fn print_logs() {
    let project = format!("label=com.docker.compose.project={PROJECT}");
    let names = run(
        "docker",
        &["ps", "-a", "--filter", &project, "--format", "{{.Names}}"],
    );
    for name in String::from_utf8_lossy(&names.stdout).lines() {
        let logs = run("docker", &["logs", "--tail", "80", name]);
        eprintln!(
            "--- {name} ---\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }
}

/// The first three octets of the subnet Docker gave the project's network `net`.
fn subnet_prefix(net: &str) -> String {
    let network = format!("{PROJECT}_{net}");
    let subnet = must(
        "docker",
        &[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            &network,
        ],
    );
    let prefix = subnet
        .trim()
        .strip_suffix(".0/24")
        .unwrap_or_else(|| panic!("{network} has subnet {subnet:?}, not a /24"));
    prefix.to_owned()
}

fn container(service: &str) -> String {
    format!("{PROJECT}_{service}_1")
}

fn admin(ip: &str) -> SocketAddr {
    format!("{ip}:7951").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_keep_their_sessions_through_a_killed_agent_and_a_lost_network_link() {
    if !capability(
        "root, Docker, docker-compose and iptables' DOCKER-USER chain",
        available(),
    ) {
        return;
    }
    must("deploy/image/build.sh", &[IMAGE]);
    // A cluster left over by an earlier run that was killed would hold the subnets.
    let _ = run("deploy/compose/cluster.sh", &["down"]);
    let _ = run("docker", &["network", "rm", SQUATTER]);
    let _cluster = Cluster;
    // Whether this creates it or the subnet was in use already, 172.28.1.0/24 is taken.
    let _ = run(
        "docker",
        &["network", "create", "--subnet", "172.28.1.0/24", SQUATTER],
    );
    must("deploy/compose/cluster.sh", &["up"]);
    let (net_a, net_b) = (subnet_prefix("net-a"), subnet_prefix("net-b"));
    assert_ne!(net_a, "172.28.1", "cluster.sh took a subnet already in use");
    assert_ne!(net_a, net_b);

    let (lb_a, a1) = (admin(&format!("{net_a}.21")), admin(&format!("{net_a}.11")));
    wait_protected_routes(lb_a, "lb-a", 6).await;
    // Pairs inside a subnet replicate by multicast; the pair across them by QUIC.
    wait_for("both transports in use", FORM, || async {
        members(a1).await.is_some_and(|view| {
            let count = |t: ReplTransport| {
                view.members
                    .iter()
                    .filter(|m| m.transport == Some(t))
                    .count()
            };
            count(ReplTransport::Multicast) == 4 && count(ReplTransport::Quic) == 2
        })
    })
    .await;

    let listen: SocketAddr = format!("{net_a}.21:8080").parse().unwrap();
    let users: Vec<User> = (0..USERS).map(User::new).collect();

    // A rolling restart of one pair with the script operators use, users clicking on.
    let traffic = Traffic::start(users, listen);
    let restart = format!("docker start {PROJECT}_{{node}}_1");
    let script = tokio::task::block_in_place(|| {
        run(
            "deploy/rolling-restart.sh",
            &[
                "--tandem",
                env!("CARGO_BIN_EXE_tandem"),
                "--admin-token-file",
                "deploy/compose/admin.token",
                "--restart",
                &restart,
                &format!("a1=http://{net_a}.11:7951"),
                &format!("a2=http://{net_a}.12:7951"),
            ],
        )
    });
    let said = String::from_utf8_lossy(&script.stdout).into_owned();
    assert!(
        script.status.success() && said.contains("all 2 agents restarted"),
        "{said}{}",
        String::from_utf8_lossy(&script.stderr)
    );
    let (users, _) = traffic.stop("the rolling restart of a1 and a2").await;
    wait_protected_routes(lb_a, "lb-a", 6).await;

    let (users, placed) = click_round(users, listen, CLICKS, "first clicks").await;

    // kill -9 the agent of the first user: its users go on at its partner.
    let view = members(a1).await.unwrap();
    let partner_of = |id: &str| partner_in(&view, id).unwrap();
    let victim = placed[&0].clone();
    let heir = partner_of(&victim);
    must("docker", &["kill", &container(&victim)]);
    let (users, after_kill) = click_round(users, listen, CLICKS, "after the kill").await;
    assert_moves(&placed, &after_kill, &[(victim.as_str(), heir.as_str())]);

    // Take a serving agent off its network (not the heir, whose partner is gone): its users
    // go on at its partner too.
    let cut = after_kill
        .values()
        .find(|node| **node != heir && partner_of(node) != victim)
        .cloned()
        .expect("a user on another pair");
    let keeper = partner_of(&cut);
    let network = format!("{PROJECT}_net-{}", &cut[..1]);
    must(
        "docker",
        &["network", "disconnect", &network, &container(&cut)],
    );
    let (_, after_cut) = click_round(users, listen, CLICKS, "after the link was cut").await;
    assert_moves(&after_kill, &after_cut, &[(cut.as_str(), keeper.as_str())]);
}
