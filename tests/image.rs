//! The container image, built without pulling anything (deploy/image/build.sh), runs a
//! cluster on a private Docker network: a setup step makes the cluster key and the
//! certificates with tandem alone (the image has no shell), two agents pair with sealed
//! gossip and mutual TLS, and everything runs as a non-root user. Needs Docker.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::capability;
use tandem_common::member::MembersResponse;

/// Everything one test run creates, removed when dropped (also on failure).
struct Scratch {
    name: String,
    containers: Vec<String>,
}

impl Scratch {
    fn new() -> Scratch {
        let name = format!("tandem-image-test-{}", std::process::id());
        docker(&["network", "create", &name]);
        docker(&["volume", "create", &name]);
        Scratch {
            name,
            containers: Vec::new(),
        }
    }

    /// Runs `tandem ARGS` in a one-off container on the network with the volume at /data.
    fn tandem(&self, args: &[&str]) -> Output {
        let volume = format!("{}:/data", self.name);
        let mut command = vec!["run", "--rm", "--network", &self.name, "-v", &volume, IMAGE];
        command.extend(args);
        run_docker(&command)
    }

    /// Starts a long-running `tandem ARGS` container named `name`.
    fn start(&mut self, name: &str, args: &[&str]) {
        let volume = format!("{}:/data", self.name);
        let mut command = vec![
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            &self.name,
            "-v",
            &volume,
            IMAGE,
        ];
        command.extend(args);
        docker(&command);
        self.containers.push(name.to_string());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = run_docker(&["rm", "-f", container]);
        }
        let _ = run_docker(&["network", "rm", &self.name]);
        let _ = run_docker(&["volume", "rm", &self.name]);
    }
}

const IMAGE: &str = "tandem:test";

fn run_docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

/// `docker ARGS`, which must succeed.
fn docker(args: &[&str]) -> String {
    let output = run_docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn docker_available() -> bool {
    run_docker(&["info", "--format", "{{.ServerVersion}}"])
        .status
        .success()
}

#[test]
fn the_image_runs_a_sealed_paired_cluster_as_a_non_root_user() {
    if !capability("Docker (docker info)", docker_available()) {
        return;
    }
    let build = Command::new("deploy/image/build.sh")
        .arg(IMAGE)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "deploy/image/build.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut scratch = Scratch::new();

    // Setup, as a deployment runs it on every start: everything made once, then kept.
    for _ in 0..2 {
        for step in [
            &["keygen", "--out", "/data/cluster.key", "--if-missing"][..],
            &["certs", "init", "--dir", "/data/tls"],
            &[
                "certs",
                "issue",
                "agent-1",
                "agent-2",
                "--dir",
                "/data/tls",
                "--if-missing",
            ],
        ] {
            let output = scratch.tandem(step);
            assert!(
                output.status.success(),
                "tandem {step:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    let common = [
        "agent",
        "--gossip-key-file",
        "/data/cluster.key",
        "--tls-dir",
        "/data/tls",
        "--join",
        "agent-1:7946",
        "--resp-addr",
        "0.0.0.0:6380",
        "--demo-app",
        "0.0.0.0:8000",
    ];
    for node in ["agent-1", "agent-2"] {
        let mut args = common.to_vec();
        args.extend(["--node-id", node]);
        scratch.start(node, &args);
    }
    for node in ["agent-1", "agent-2"] {
        let user = docker(&["inspect", "--format", "{{.Config.User}}", node]);
        assert_eq!(
            user.trim(),
            "10001:10001",
            "{node} runs as the image's user"
        );
    }

    // Both agents paired with each other, as a third container on the network sees them.
    let started = Instant::now();
    let paired = loop {
        let output = scratch.tandem(&["members", "--admin", "agent-1:7951", "--json"]);
        if output.status.success() {
            let view: MembersResponse = serde_json::from_slice(&output.stdout).unwrap();
            if support::paired_in(&view, "agent-1", "agent-2") {
                break true;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs = |node: &str| {
        let output = run_docker(&["logs", "--tail", "20", node]);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(
        paired,
        "the agents did not pair\nagent-1:\n{}\nagent-2:\n{}",
        logs("agent-1"),
        logs("agent-2")
    );
    // Gossip was sealed from the start: no agent warned about running without a key.
    for node in ["agent-1", "agent-2"] {
        assert!(!logs(node).contains("gossip is not sealed"), "{node}");
    }
}
