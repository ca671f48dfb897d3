//! Configuration layering: defaults, then the TOML file, then `TANDEM_*` variables and flags.
//!
//! clap reads each flag's environment variable itself (a flag wins over its variable), so
//! this module only lays the file over the defaults; the caller applies the flags last.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Lays the TOML file at `file` (if any) over `defaults`.
///
/// # Errors
/// A missing or malformed file, an unknown option, or an option of the wrong type; the
/// message names the file and the option.
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: T,
    file: Option<&Path>,
) -> anyhow::Result<T> {
    let Some(path) = file else {
        return Ok(defaults);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))?;
    overlay(defaults, &text).with_context(|| format!("config file {}", path.display()))
}

fn overlay<T: Serialize + DeserializeOwned>(defaults: T, text: &str) -> anyhow::Result<T> {
    let table: toml::Table = toml::from_str(text)?;
    let Value::Object(base) = serde_json::to_value(&defaults)? else {
        bail!("configuration is not a table");
    };
    let mut merged = base.clone();
    for (key, value) in table {
        if !base.contains_key(&key) {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            bail!("unknown option `{key}` (known: {})", known.join(", "));
        }
        let value = serde_json::to_value(value)?;
        // Each option is checked on its own so that an error names it.
        let mut single: Map<String, Value> = base.clone();
        single.insert(key.clone(), value.clone());
        serde_json::from_value::<T>(Value::Object(single))
            .with_context(|| format!("option `{key}`"))?;
        merged.insert(key, value);
    }
    Ok(serde_json::from_value(Value::Object(merged))?)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use clap::Parser;
    use tandem_common::config::{AgentConfig, BalancerConfig, LogFormat};

    use super::*;
    use crate::cli::{Cli, Command};

    /// Every test that parses flags runs under this, so that clap sees exactly these
    /// `TANDEM_*` variables (and tests that change the environment do not overlap).
    fn with_env<R>(vars: &[(&str, &str)], test: impl FnOnce() -> R) -> R {
        let present: Vec<String> = std::env::vars()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with("TANDEM_"))
            .collect();
        let mut all: Vec<(&str, Option<&str>)> =
            present.iter().map(|n| (n.as_str(), None)).collect();
        for (name, value) in vars {
            all.retain(|(n, _)| n != name);
            all.push((name, Some(value)));
        }
        temp_env::with_vars(all, test)
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["tandem"].iter().chain(args)).map(|cli| cli.command)
    }

    /// Builds an agent's configuration the way `main` does.
    fn agent_config(args: &[&str], file: Option<&str>) -> anyhow::Result<AgentConfig> {
        let Command::Agent(args) = parse(args)? else {
            panic!("not an agent command")
        };
        let mut config = match file {
            Some(text) => overlay(AgentConfig::default(), text)?,
            None => AgentConfig::default(),
        };
        args.apply(&mut config);
        Ok(config)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const FILE: &str = r#"
        node_id = "from-file"
        cluster = "file-cluster"
        gossip_addr = "0.0.0.0:1000"
        admin_addr = "0.0.0.0:1001"
        join = ["seed-a:7946", "seed-b:7946"]
        gossip_interval = "300ms"
    "#;

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let env = [
            ("TANDEM_CLUSTER", "env-cluster"),
            ("TANDEM_GOSSIP_ADDR", "0.0.0.0:2000"),
            ("TANDEM_ADMIN_ADDR", "0.0.0.0:2001"),
            ("TANDEM_PHI_THRESHOLD", "5.5"),
        ];
        let config = with_env(&env, || {
            agent_config(
                &[
                    "agent",
                    "--gossip-addr",
                    "0.0.0.0:3000",
                    "--app-url",
                    "http://a",
                ],
                Some(FILE),
            )
        })
        .unwrap();
        assert_eq!(config.node.node_id, "from-file"); // file only
        assert_eq!(config.node.cluster, "env-cluster"); // env over file
        assert_eq!(config.node.gossip_addr, addr("0.0.0.0:3000")); // flag over env and file
        assert_eq!(config.node.admin_addr, addr("0.0.0.0:2001"));
        assert_eq!(config.node.join, ["seed-a:7946", "seed-b:7946"]);
        assert_eq!(
            config.node.gossip.gossip_interval,
            Duration::from_millis(300)
        );
        assert_eq!(config.node.gossip.phi_threshold, 5.5); // env only
        assert_eq!(
            config.node.gossip.dead_node_grace_period,
            Duration::from_secs(900)
        ); // default
        assert_eq!(config.app_url.as_deref(), Some("http://a"));
    }

    #[test]
    fn the_file_keeps_host_defaults_it_does_not_mention() {
        let mut defaults = BalancerConfig::default();
        defaults.node.node_id = "host-1".into();
        let config = overlay(defaults.clone(), "listen = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(config.node.node_id, "host-1");
        assert_eq!(config.listen, addr("127.0.0.1:9000"));
        assert_eq!(overlay(defaults.clone(), "").unwrap(), defaults);
    }

    #[test]
    fn env_lists_are_comma_separated_and_flags_repeatable() {
        let env = [
            ("TANDEM_JOIN", "a:1,b:2"),
            ("TANDEM_NODE_ID", "1234"),
            ("TANDEM_LOG_FORMAT", "json"),
        ];
        let config = with_env(&env, || agent_config(&["agent"], None)).unwrap();
        assert_eq!(config.node.join, ["a:1", "b:2"]);
        assert_eq!(config.node.node_id, "1234");
        assert_eq!(config.node.log_format, LogFormat::Json);
        let config = with_env(&env, || {
            agent_config(&["agent", "--join", "c:3,d:4", "--join", "e:5"], None)
        })
        .unwrap();
        assert_eq!(config.node.join, ["c:3", "d:4", "e:5"]);
    }

    #[test]
    fn bad_values_name_their_option() {
        let err = with_env(&[("TANDEM_GOSSIP_ADDR", "not-an-address")], || {
            agent_config(&["agent"], None)
        })
        .unwrap_err();
        assert!(err.to_string().contains("--gossip-addr"), "{err}");

        let err = with_env(&[], || {
            agent_config(&["agent", "--gossip-interval", "soon"], None)
        })
        .unwrap_err();
        assert!(err.to_string().contains("--gossip-interval"), "{err}");

        let err = overlay(AgentConfig::default(), "gossip_interval = \"soon\"").unwrap_err();
        assert!(
            format!("{err:#}").contains("option `gossip_interval`"),
            "{err:#}"
        );

        let err = overlay(AgentConfig::default(), "gosip_addr = \"0.0.0.0:1\"").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown option `gosip_addr`"),
            "{err:#}"
        );

        let err = overlay(AgentConfig::default(), "listen = \"0.0.0.0:1\"").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown option `listen`"),
            "{err:#}"
        );

        assert!(overlay(AgentConfig::default(), "node_id = ").is_err());

        let missing = Path::new("/nonexistent/tandem.toml");
        let err = load(AgentConfig::default(), Some(missing)).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/tandem.toml"),
            "{err:#}"
        );
    }

    /// The systemd units' config files load as they are, and with every commented
    /// option uncommented.
    #[test]
    fn the_systemd_config_files_load() {
        let uncomment = |text: &str| -> String {
            text.lines()
                .map(|line| line.strip_prefix("# ").unwrap_or(line))
                .filter(|line| {
                    line.split_once(" = ")
                        .is_some_and(|(key, _)| !key.contains(' '))
                })
                .map(|line| format!("{line}\n"))
                .collect()
        };
        let agent = include_str!("../deploy/systemd/agent.toml");
        let balancer = include_str!("../deploy/systemd/balancer.toml");
        overlay(AgentConfig::default(), agent).unwrap();
        overlay(BalancerConfig::default(), balancer).unwrap();
        overlay(AgentConfig::default(), &uncomment(agent)).unwrap();
        overlay(BalancerConfig::default(), &uncomment(balancer)).unwrap();
    }

    /// The example file documents every option, and each example value is valid.
    #[test]
    fn example_file_documents_every_option() {
        let example = include_str!("../deploy/tandem.example.toml");
        let (agent_part, balancer_part) = example.split_once("# --- balancer only").unwrap();
        let uncomment = |text: &str| -> String {
            text.lines()
                .filter_map(|line| line.strip_prefix("# "))
                .filter(|line| {
                    line.split_once(" = ")
                        .is_some_and(|(key, _)| !key.contains(' '))
                })
                .map(|line| format!("{line}\n"))
                .collect()
        };
        let common_part = agent_part.split_once("# --- agent only").unwrap().0;
        let agent_text = uncomment(agent_part);
        let balancer_text = uncomment(common_part) + &uncomment(balancer_part);
        overlay(AgentConfig::default(), &agent_text).unwrap();
        overlay(BalancerConfig::default(), &balancer_text).unwrap();
        for (config, text) in [
            (
                serde_json::to_value(AgentConfig::default()).unwrap(),
                &agent_text,
            ),
            (
                serde_json::to_value(BalancerConfig::default()).unwrap(),
                &balancer_text,
            ),
        ] {
            for key in config.as_object().unwrap().keys() {
                assert!(
                    text.contains(&format!("{key} = ")),
                    "{key} is not documented"
                );
            }
        }
    }
}

/// Config files are written by hand: whatever they hold, loading answers a configuration
/// or an error naming the problem, and never panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use tandem_common::config::{AgentConfig, BalancerConfig};

    use super::*;

    /// Option names the defaults have, and some they do not.
    const KEYS: &[&str] = &[
        "node_id",
        "gossip_addr",
        "join",
        "admin_addr",
        "gossip_interval",
        "phi_threshold",
        "resp_addr",
        "max_value_bytes",
        "replication",
        "multicast",
        "sync_timeout",
        "listen",
        "cookie_max_age",
        "gossip_key_file",
        "threads",
        "no_such_option",
    ];

    fn values() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            any::<bool>().prop_map(|v| v.to_string()),
            ".{0,30}".prop_map(|v| format!("{v:?}")),
            "[\\[\\]{}\"'=,0-9a-z .:]{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = overlay(AgentConfig::default(), &text);
            let _ = overlay(BalancerConfig::default(), &text);
        }

        #[test]
        fn option_lines_load_or_name_the_problem(
            lines in proptest::collection::vec((0..KEYS.len(), values()), 0..6),
        ) {
            let text: String = lines
                .iter()
                .map(|(key, value)| format!("{} = {value}\n", KEYS[*key]))
                .collect();
            if let Err(err) = overlay(AgentConfig::default(), &text) {
                let message = format!("{err:#}");
                let names_an_option = lines.iter().any(|(key, _)| message.contains(KEYS[*key]));
                prop_assert!(
                    names_an_option || message.contains("TOML parse error"),
                    "{}", message
                );
            }
        }
    }
}
