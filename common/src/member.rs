//! The member view: one row per node as `/v1/members` serves it and `tandem members` prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::schema::{
    HaSwitch, NodeAdvert, NodeState, PartnerRef, Protocol, ReplTransport, Role, SchemaError,
    Subnet, SyncProgress,
};

/// One node of the cluster as this process sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Start time of this incarnation (nanoseconds since the Unix epoch); a restart changes it.
    pub generation: u64,
    pub gossip_addr: String,
    /// Whether the failure detector considers the node alive.
    pub live: bool,
    /// `None` when the node has not (yet) published a readable advertisement.
    pub role: Option<Role>,
    pub state: Option<NodeState>,
    pub app: Option<String>,
    pub repl: Option<String>,
    pub admin: Option<String>,
    pub subnet: Option<Subnet>,
    pub partner: Option<PartnerRef>,
    pub sessions: u64,
    pub ha: Option<HaSwitch>,
    pub version: Option<String>,
    /// Agents: writes are not safely on a partner.
    pub unprotected: bool,
    /// Agents: how writes reach the partner, while paired.
    pub transport: Option<ReplTransport>,
    /// The protocol it speaks.
    pub protocol: Option<Protocol>,
    /// Agents: write batches not yet acknowledged by the partner.
    pub lag: u64,
    /// Agents: the snapshot being sent to a new partner.
    pub snapshot: Option<SyncProgress>,
    /// Why the advertisement could not be read, or why this node is not worked with.
    pub problem: Option<String>,
}

impl Member {
    /// Builds the view of one node from its identity, liveness and advertisement.
    pub fn new(
        id: &str,
        generation: u64,
        gossip_addr: String,
        live: bool,
        advert: Result<NodeAdvert, SchemaError>,
    ) -> Self {
        let mut member = Member {
            id: id.to_string(),
            generation,
            gossip_addr,
            live,
            role: None,
            state: None,
            app: None,
            repl: None,
            admin: None,
            subnet: None,
            partner: None,
            sessions: 0,
            ha: None,
            version: None,
            unprotected: false,
            transport: None,
            protocol: None,
            lag: 0,
            snapshot: None,
            problem: None,
        };
        match advert {
            Ok(advert) => {
                member.role = Some(advert.role);
                member.state = Some(advert.state);
                member.app = advert.app;
                member.repl = advert.repl;
                member.admin = advert.admin;
                member.subnet = advert.subnet;
                member.partner = advert.partner;
                member.sessions = advert.sessions;
                member.ha = Some(advert.ha);
                member.version = Some(advert.version);
                member.unprotected = advert.unprotected;
                member.transport = advert.transport;
                member.protocol = Some(advert.protocol);
                member.lag = advert.lag;
                member.snapshot = advert.snapshot;
            }
            Err(err) => member.problem = Some(err.to_string()),
        }
        member
    }
}

/// Keeps only the newest incarnation of each node id, sorted by id.
///
/// A restarted node is a new gossip identity (new generation) while its previous
/// incarnation lingers as dead until the grace period ends; operators want the current one.
pub fn newest_incarnations(members: impl IntoIterator<Item = Member>) -> Vec<Member> {
    let mut newest: BTreeMap<String, Member> = BTreeMap::new();
    for member in members {
        match newest.get(&member.id) {
            Some(kept) if kept.generation >= member.generation => {}
            _ => {
                newest.insert(member.id.clone(), member);
            }
        }
    }
    newest.into_values().collect()
}

/// The body of `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersResponse {
    pub cluster: String,
    /// Id of the node that answered.
    pub self_id: String,
    pub members: Vec<Member>,
}

/// Renders members as an aligned text table.
pub fn members_table(members: &[Member]) -> String {
    const HEADER: [&str; 10] = [
        "ID",
        "ROLE",
        "STATE",
        "ADDRESS",
        "LIVE",
        "PARTNER",
        "TRANSPORT",
        "SESSIONS",
        "LAG",
        "SYNC",
    ];
    let rows: Vec<[String; 10]> = members
        .iter()
        .map(|m| {
            let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
            [
                m.id.clone(),
                or_dash(m.role.map(|r| r.to_string())),
                or_dash(m.state.map(|s| s.to_string())),
                m.gossip_addr.clone(),
                if m.live { "live" } else { "dead" }.to_string(),
                match (&m.partner, m.unprotected) {
                    (Some(p), false) => p.node_id.clone(),
                    (Some(p), true) => format!("{} (lagging)", p.node_id),
                    (None, true) => "- (unprotected)".to_string(),
                    (None, false) => "-".to_string(),
                },
                or_dash(m.partner.as_ref().and(m.transport).map(|t| t.to_string())),
                agent_only(m, m.sessions.to_string()),
                agent_only(m, m.lag.to_string()),
                or_dash(m.snapshot.map(|s| format!("sending {s}"))),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for m in members.iter().filter(|m| m.problem.is_some()) {
        let _ = writeln!(
            out,
            "{}: {}",
            m.id,
            m.problem.as_deref().unwrap_or_default()
        );
    }
    out
}

fn agent_only(member: &Member, value: String) -> String {
    if member.role == Some(Role::Agent) {
        value
    } else {
        "-".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, generation: u64, live: bool) -> Member {
        let mut advert = NodeAdvert::new(Role::Agent, "0.1.0");
        advert.state = NodeState::Ready;
        advert.sessions = generation;
        Member::new(id, generation, "127.0.0.1:7946".into(), live, Ok(advert))
    }

    #[test]
    fn newest_incarnation_wins() {
        let members = newest_incarnations(vec![
            member("b", 5, true),
            member("a", 9, false),
            member("a", 12, true),
            member("a", 3, false),
        ]);
        let seen: Vec<(&str, u64, bool)> = members
            .iter()
            .map(|m| (m.id.as_str(), m.generation, m.live))
            .collect();
        assert_eq!(seen, [("a", 12, true), ("b", 5, true)]);
    }

    #[test]
    fn table_aligns_columns_and_marks_unknowns() {
        let broken = Member::new(
            "garbled-node",
            1,
            "10.0.0.9:7946".into(),
            false,
            Err("role".parse::<Role>().unwrap_err()),
        );
        let table = members_table(&[member("web-1", 4, true), broken]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("ID            ROLE   STATE  ADDRESS"));
        assert_eq!(
            lines[1],
            "web-1         agent  ready  127.0.0.1:7946  live  - (unprotected)  -          4         0    -"
        );
        assert!(lines[2].starts_with("garbled-node  -      -      10.0.0.9:7946   dead"));
        assert!(
            lines[3].starts_with("garbled-node: gossip key `role`"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn unreadable_adverts_carry_the_reason() {
        let broken = Member::new(
            "x",
            1,
            "a".into(),
            true,
            Err("bad".parse::<Role>().unwrap_err()),
        );
        assert!(broken.problem.unwrap().contains("role"));
        assert_eq!(broken.role, None);
    }
}
