//! `tandem ha`, `tandem drain` and `tandem wait`: the operations of a running cluster,
//! through a node's admin endpoint.

use std::time::Duration;

use anyhow::bail;
use tandem_cluster::admin::{DrainReply, HaRequest};
use tandem_common::member::{Member, MembersResponse};
use tandem_common::schema::{HaSwitch, NodeState, Role};

use crate::cli::{DrainArgs, HaAction, HaArgs, WaitArgs};
use crate::members::{AdminClient, fetch};

/// How often the waiting commands look again.
const POLL: Duration = Duration::from_millis(250);

pub async fn ha(args: HaArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&args.target)?;
    let switch: HaSwitch = match args.action {
        HaAction::Status => admin.get("/v1/ha").await?,
        HaAction::On => admin.post("/v1/ha", &HaRequest { on: true }).await?,
        HaAction::Off => admin.post("/v1/ha", &HaRequest { on: false }).await?,
    };
    let when = if switch.set_at_ms == 0 {
        "never switched: on by default".to_string()
    } else {
        format!(
            "set {}",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(switch.set_at_ms)
            )
        )
    };
    println!("HA {} ({when})", if switch.on { "on" } else { "off" });
    if !matches!(args.action, HaAction::Status) {
        println!("gossip carries the switch to every node; `tandem members` shows the pairs");
    }
    Ok(())
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&args.target)?;
    let reply: DrainReply = admin.post("/v1/drain", &serde_json::json!({})).await?;
    let id = reply.node_id;
    println!("{id}: draining");
    if args.no_wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut said = String::new();
    let mut generation = None;
    while tokio::time::Instant::now() < deadline {
        match admin.get::<MembersResponse>("/v1/members").await {
            // The admin endpoint closes as the process exits.
            Err(_) => {
                println!("{id}: left the cluster");
                return Ok(());
            }
            Ok(view) => {
                if let Some(me) = view.members.iter().find(|m| m.id == id) {
                    // A supervisor may have started the node again before we looked.
                    if *generation.get_or_insert(me.generation) != me.generation {
                        println!("{id}: left the cluster; a new incarnation already runs");
                        return Ok(());
                    }
                    let now = describe_drain(me);
                    if now != said {
                        println!("{id}: {now}");
                        said = now;
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("{id} is still running after {:?}", args.timeout)
}

fn describe_drain(me: &Member) -> String {
    let state = me.state.map_or("unknown".to_string(), |s| s.to_string());
    match &me.partner {
        Some(partner) => format!(
            "{state}; its users go on at {} ({} write batches unacknowledged)",
            partner.node_id, me.lag
        ),
        None => format!("{state}; no partner"),
    }
}

/// How long a lone node must stay without anyone to pair with before `wait` believes it:
/// a node that has just started may not have heard of everybody yet.
const LONE_FOR: Duration = Duration::from_secs(2);

pub async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut said = String::new();
    let mut lone_since: Option<tokio::time::Instant> = None;
    loop {
        let now = match fetch(&args.admin).await {
            Err(_) => Err(format!("{} not reachable yet", args.admin)),
            Ok(view) => protection(&view),
        };
        match now {
            Ok(Protection::Alone(done)) => {
                let since = *lone_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= LONE_FOR {
                    println!("{done}");
                    return Ok(());
                }
            }
            Ok(Protection::Paired(done)) => {
                println!("{done}");
                return Ok(());
            }
            Err(waiting) => {
                lone_since = None;
                if waiting != said {
                    println!("waiting: {waiting}");
                    said = waiting;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("gave up after {:?}: {said}", args.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A node that serves with its sessions as protected as they can be.
#[derive(Debug, PartialEq)]
enum Protection {
    /// Paired and synced.
    Paired(String),
    /// Without a partner, and nobody to pair with (HA off, or an odd agent out).
    Alone(String),
}

impl Protection {
    #[cfg(test)]
    fn text(&self) -> &str {
        match self {
            Protection::Paired(text) | Protection::Alone(text) => text,
        }
    }
}

/// Whether the node that answered serves with its sessions protected, as far as it can
/// be: `Ok` with what holds, `Err` with what is still awaited.
fn protection(view: &MembersResponse) -> Result<Protection, String> {
    let by_id = |id: &str| view.members.iter().find(|m| m.id == id);
    let me = by_id(&view.self_id).ok_or("the node does not list itself yet")?;
    let id = &me.id;
    if me.state != Some(NodeState::Ready) {
        let state = me.state.map_or("unknown".to_string(), |s| s.to_string());
        return Err(format!("{id} is {state}"));
    }
    if let Some(snapshot) = me.snapshot {
        return Err(format!(
            "{id} is sending its partner a snapshot ({snapshot})"
        ));
    }
    let Some(partner) = &me.partner else {
        let ha = HaSwitch::newest(view.members.iter().filter_map(|m| m.ha));
        if !ha.on {
            return Ok(Protection::Alone(format!(
                "{id} serves; HA is off, so it has no partner"
            )));
        }
        // Free: without a partner, or naming one that does not name it back (a pair that
        // is forming or falling apart).
        let mutual = |m: &Member| {
            m.partner.as_ref().is_some_and(|p| {
                by_id(&p.node_id)
                    .and_then(|other| other.partner.as_ref())
                    .is_some_and(|back| back.node_id == m.id)
            })
        };
        let lone: Vec<&str> = view
            .members
            .iter()
            .filter(|m| {
                m.id != *id
                    && m.live
                    && m.role == Some(Role::Agent)
                    && m.problem.is_none()
                    && !mutual(m)
                    && matches!(m.state, Some(NodeState::Ready | NodeState::Syncing))
            })
            .map(|m| m.id.as_str())
            .collect();
        return if lone.is_empty() {
            Ok(Protection::Alone(format!(
                "{id} serves unprotected: no other agent is free to pair with"
            )))
        } else {
            Err(format!("{id} is about to pair (free: {})", lone.join(", ")))
        };
    };
    let other = by_id(&partner.node_id)
        .filter(|m| m.live)
        .ok_or_else(|| format!("{id}'s partner {} is not live", partner.node_id))?;
    if other.partner.as_ref().map(|p| p.node_id.as_str()) != Some(id.as_str()) {
        return Err(format!("{} has not confirmed the pair yet", other.id));
    }
    if other.state != Some(NodeState::Ready) {
        let state = other.state.map_or("unknown".to_string(), |s| s.to_string());
        return Err(format!("{id}'s partner {} is {state}", other.id));
    }
    if let Some(snapshot) = other.snapshot {
        return Err(format!(
            "{} is sending {id} a snapshot ({snapshot})",
            other.id
        ));
    }
    if me.unprotected || other.unprotected {
        return Err(format!("the pair {id} ⇄ {} is catching up", other.id));
    }
    Ok(Protection::Paired(format!(
        "{id} serves, paired with {} and synced ({} transport)",
        other.id,
        me.transport.map_or("?".to_string(), |t| t.to_string())
    )))
}

#[cfg(test)]
mod tests {
    use tandem_common::schema::{NodeAdvert, PartnerRef, SyncProgress};

    use super::*;

    fn agent(id: &str, partner: Option<&str>, state: NodeState) -> Member {
        let mut advert = NodeAdvert::new(Role::Agent, "t");
        advert.state = state;
        advert.partner = partner.map(|p| PartnerRef {
            node_id: p.into(),
            epoch: 1,
        });
        advert.unprotected = partner.is_none();
        Member::new(id, 1, "g".into(), true, Ok(advert))
    }

    fn view(members: Vec<Member>) -> MembersResponse {
        MembersResponse {
            cluster: "c".into(),
            self_id: "a".into(),
            members,
        }
    }

    #[test]
    fn a_node_is_done_when_paired_and_synced_both_ways() {
        let ready = NodeState::Ready;
        let paired = view(vec![
            agent("a", Some("b"), ready),
            agent("b", Some("a"), ready),
        ]);
        assert!(protection(&paired).is_ok());

        let mut syncing = paired.clone();
        syncing.members[0].state = Some(NodeState::Syncing);
        assert!(protection(&syncing).unwrap_err().contains("a is syncing"));

        let mut sending = paired.clone();
        sending.members[1].snapshot = Some(SyncProgress { sent: 1, total: 9 });
        assert!(protection(&sending).unwrap_err().contains("snapshot (1/9)"));

        let one_sided = view(vec![agent("a", Some("b"), ready), agent("b", None, ready)]);
        assert!(
            protection(&one_sided)
                .unwrap_err()
                .contains("not confirmed")
        );

        let mut lagging = paired.clone();
        lagging.members[0].unprotected = true;
        assert!(protection(&lagging).unwrap_err().contains("catching up"));
    }

    #[test]
    fn a_lone_node_is_done_only_when_nobody_could_pair_with_it() {
        let ready = NodeState::Ready;
        let free = view(vec![agent("a", None, ready), agent("c", None, ready)]);
        assert!(
            protection(&free)
                .unwrap_err()
                .contains("about to pair (free: c)")
        );
        let odd = view(vec![
            agent("a", None, ready),
            agent("b", Some("c"), ready),
            agent("c", Some("b"), ready),
        ]);
        assert!(protection(&odd).unwrap().text().contains("unprotected"));
        // b names a, which does not name it back: their pair is in flux, b may be free.
        let flux = view(vec![agent("a", None, ready), agent("b", Some("a"), ready)]);
        assert!(protection(&flux).unwrap_err().contains("free: b"));
        let mut ha_off = free.clone();
        ha_off.members[1].ha = Some(HaSwitch {
            on: false,
            set_at_ms: 5,
        });
        assert!(protection(&ha_off).unwrap().text().contains("HA is off"));
    }
}
