//! The files under deploy/ that cannot run here (no Kubernetes cluster, no Prometheus, no
//! Grafana, no systemd in a container) are checked for what would break them: syntax,
//! required fields, selectors that match, probes on the admin port, flags the binary
//! knows, and metric names the code records.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|err| panic!("{dir}: {err}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no .{extension} files in {dir}");
    found
}

fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn text<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {node:?}"))
}

/// Every metric name the code records (`tandem_…` string literals in the sources).
fn recorded_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for crate_dir in [
        "src",
        "common/src",
        "cluster/src",
        "agent/src",
        "balancer/src",
    ] {
        let mut stack = vec![root().join(crate_dir)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let source = std::fs::read_to_string(&path).unwrap();
                    for literal in source.split('"').skip(1).step_by(2) {
                        if literal.starts_with("tandem_")
                            && literal
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            names.insert(literal.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

/// The `tandem_…` metric names a PromQL expression uses, without the suffixes Prometheus
/// adds to histograms.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tandem_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_string()
        })
        .collect()
}

fn assert_metrics_exist(expr: &str, recorded: &BTreeSet<String>, whose: &str) {
    for metric in metrics_in(expr) {
        assert!(
            recorded.contains(&metric),
            "{whose}: no metric {metric} is recorded"
        );
    }
}

/// The long flags `tandem ROLE --help` lists.
fn known_flags(role: &str) -> BTreeSet<String> {
    let output = support::tandem().args([role, "--help"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .to_string()
        })
        .collect()
}

#[test]
fn kubernetes_manifests_are_complete_and_consistent() {
    let mut objects = Vec::new();
    for path in files("deploy/kubernetes", "yaml") {
        for doc in yaml_documents(&path) {
            objects.push((path.display().to_string(), doc));
        }
    }
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|(file, o)| text(&o["kind"], file))
        .collect();
    for kind in [
        "Namespace",
        "Secret",
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
    let mut workload_labels = Vec::new();
    for (file, object) in &objects {
        let kind = text(&object["kind"], file);
        let what = format!("{file}: {kind}");
        text(&object["apiVersion"], &what);
        let name = text(&object["metadata"]["name"], &what);
        let what = format!("{what} {name}");
        if kind != "Namespace" {
            assert_eq!(
                text(&object["metadata"]["namespace"], &what),
                "tandem",
                "{what}"
            );
        }
        if kind == "StatefulSet" || kind == "Deployment" {
            let spec = &object["spec"];
            let template = &spec["template"];
            let labels = template["metadata"]["labels"]
                .as_hash()
                .expect("pod labels");
            for (key, value) in spec["selector"]["matchLabels"].as_hash().expect("selector") {
                assert_eq!(labels.get(key), Some(value), "{what}: selector {key:?}");
            }
            workload_labels.push(labels.clone());
            let pod = &template["spec"];
            let containers = pod["containers"].as_vec().expect("containers");
            for container in containers {
                text(&container["image"], &what);
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert_eq!(
                        container[probe]["httpGet"]["port"].as_i64(),
                        Some(7951),
                        "{what}: {probe} on the admin port"
                    );
                }
                let security = &container["securityContext"];
                assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{what}");
                assert_eq!(
                    security["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{what}"
                );
                let args: Vec<&str> = container["args"]
                    .as_vec()
                    .expect("args")
                    .iter()
                    .map(|a| text(a, &what))
                    .collect();
                let role = args[0];
                let known = known_flags(role);
                for flag in args.iter().filter_map(|a| a.strip_prefix("--")) {
                    assert!(
                        known.contains(flag),
                        "{what}: `tandem {role}` has no --{flag}"
                    );
                }
            }
            if kind == "StatefulSet" {
                assert!(
                    !containers[0]["lifecycle"]["preStop"].is_badvalue(),
                    "{what}: a preStop drain"
                );
            }
        }
    }
    // Every Service and disruption budget selects pods some workload makes.
    for (file, object) in &objects {
        let kind = text(&object["kind"], file);
        let selector = match kind {
            "Service" => &object["spec"]["selector"],
            "PodDisruptionBudget" => &object["spec"]["selector"]["matchLabels"],
            _ => continue,
        };
        let selector = selector
            .as_hash()
            .unwrap_or_else(|| panic!("{file}: {kind} selector"));
        assert!(
            workload_labels
                .iter()
                .any(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v))),
            "{file}: the {kind} {:?} selects no pod",
            object["metadata"]["name"]
        );
    }
}

#[test]
fn alert_rules_and_scrape_config_name_real_metrics() {
    let recorded = recorded_metrics();
    let scrape = yaml_documents(&root().join("deploy/prometheus/prometheus.yml"));
    let jobs = scrape[0]["scrape_configs"]
        .as_vec()
        .expect("scrape_configs");
    assert!(
        jobs.iter()
            .any(|job| job["job_name"].as_str() == Some("tandem"))
    );
    let alerts = yaml_documents(&root().join("deploy/prometheus/alerts.yml"));
    let mut names = BTreeSet::new();
    for group in alerts[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = text(&rule["alert"], "alert").to_string();
            let expr = text(&rule["expr"], &name);
            assert_metrics_exist(expr, &recorded, &name);
            text(&rule["labels"]["severity"], &name);
            text(&rule["annotations"]["summary"], &name);
            names.insert(name);
        }
    }
    for needed in [
        "TandemNodeDown",
        "TandemAgentUnprotected",
        "TandemReplicationLag",
        "TandemBalancer5xx",
    ] {
        assert!(names.contains(needed), "no {needed} alert among {names:?}");
    }
}

#[test]
fn the_dashboard_is_grafana_json_over_real_metrics() {
    let recorded = recorded_metrics();
    let path = root().join("deploy/grafana/tandem-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["title"], "Tandem");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "{title}: id taken"
        );
        assert!(
            panel["type"].is_string() && panel["gridPos"].is_object(),
            "{title}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(!metrics_in(expr).is_empty(), "{title}: {expr}");
            assert_metrics_exist(expr, &recorded, title);
        }
    }
}

#[test]
fn systemd_units_run_the_binary_unprivileged_and_hardened() {
    for unit in files("deploy/systemd", "service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{}: no {key}=", unit.display()))
                .to_string()
        };
        let exec = value("ExecStart");
        let role = if exec.contains(" agent") {
            "agent"
        } else {
            "balancer"
        };
        assert!(exec.starts_with("/usr/local/bin/tandem "), "{exec}");
        let known = known_flags(role);
        for flag in exec.split_whitespace().filter_map(|a| a.strip_prefix("--")) {
            assert!(known.contains(flag), "{}: no --{flag}", unit.display());
        }
        assert_eq!(value("User"), "tandem");
        assert_eq!(value("Restart"), "on-failure");
        for hardening in [
            "NoNewPrivileges",
            "ProtectSystem",
            "PrivateTmp",
            "CapabilityBoundingSet",
        ] {
            value(hardening);
        }
    }
}
