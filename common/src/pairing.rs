//! Pairing: who replicates with whom, decided alike by every agent from the gossip view.
//!
//! A pure function of the view. Every agent computes the same matching of the *lone*
//! eligible agents (same subnet first, then across subnets, each by ascending id), so two
//! agents that see the same view agree on who pairs with whom and who proposes (the lower
//! id). Views differ for a moment while gossip converges; the proposal handshake (the
//! receiver accepts only while it is still lone) keeps that from ever putting an agent in
//! two pairs.

use std::collections::BTreeMap;

use crate::schema::{NodeState, PartnerRef, Protocol};

/// One agent as the pairing decision needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub id: String,
    pub live: bool,
    pub state: NodeState,
    pub ha_on: bool,
    /// What the agent advertises as its partner.
    pub partner: Option<PartnerRef>,
    /// Subnet in CIDR notation, if known.
    pub subnet: Option<String>,
    /// The protocol it speaks: only agents compatible with each other pair.
    pub protocol: Protocol,
}

impl AgentView {
    /// Live, serving (or syncing) and with HA on.
    pub fn eligible(&self) -> bool {
        self.live && self.ha_on && matches!(self.state, NodeState::Ready | NodeState::Syncing)
    }
}

/// What an agent should do about pairing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingDecision {
    /// Paired: the partner is live and advertises us back.
    Keep { partner: String },
    /// We advertise `partner` but it does not (yet) advertise us: a pair being formed.
    Confirming { partner: String },
    /// Our partner is gone (dead, leaving, or paired with another agent): take over its
    /// sessions and become lone.
    PartnerLost { partner: String },
    /// HA is switched off (as we or the partner see it): end the pair, keep the sessions.
    Unpair { partner: String },
    /// Propose a pair to this lone agent (we have the lower id).
    Propose { to: String },
    /// The lone agent we are matched with has the lower id: wait for its proposal.
    AwaitProposal { from: String },
    /// No lone agent to pair with: serve unprotected.
    Alone,
    /// Not eligible to pair (not ready, or HA off).
    Ineligible,
}

/// Decides for agent `me`, whose current partner (as it advertises it) is `my_partner`.
pub fn decide(me: &str, my_partner: Option<&PartnerRef>, view: &[AgentView]) -> PairingDecision {
    let Some(own) = view.iter().find(|a| a.id == me) else {
        return PairingDecision::Ineligible;
    };
    if let Some(partner) = my_partner {
        let theirs = view.iter().find(|a| a.id == partner.node_id);
        if !own.ha_on || theirs.is_some_and(|other| other.live && !other.ha_on) {
            return PairingDecision::Unpair {
                partner: partner.node_id.clone(),
            };
        }
        return match theirs {
            Some(other) if other.live && other.state != NodeState::Leaving => {
                match &other.partner {
                    Some(p) if p.node_id == me => PairingDecision::Keep {
                        partner: partner.node_id.clone(),
                    },
                    Some(_) => PairingDecision::PartnerLost {
                        partner: partner.node_id.clone(),
                    },
                    None => PairingDecision::Confirming {
                        partner: partner.node_id.clone(),
                    },
                }
            }
            _ => PairingDecision::PartnerLost {
                partner: partner.node_id.clone(),
            },
        };
    }
    if !own.eligible() {
        return PairingDecision::Ineligible;
    }
    // Agents that cannot talk to us are left out; the rest match as every one of them
    // computes it (in a cluster of one protocol, that is everybody).
    let compatible: Vec<AgentView> = view
        .iter()
        .filter(|a| own.protocol.compatible(a.protocol))
        .cloned()
        .collect();
    match matching(&compatible).get(me) {
        Some(other) if other.as_str() < me => PairingDecision::AwaitProposal {
            from: other.clone(),
        },
        Some(other) => PairingDecision::Propose { to: other.clone() },
        None => PairingDecision::Alone,
    }
}

/// The matching of lone eligible agents: id → matched id (both directions).
pub fn matching(view: &[AgentView]) -> BTreeMap<String, String> {
    let mut by_subnet: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for agent in view.iter().filter(|a| a.eligible() && a.partner.is_none()) {
        by_subnet
            .entry(agent.subnet.as_deref().unwrap_or(""))
            .or_default()
            .push(&agent.id);
    }
    let mut matched = BTreeMap::new();
    let mut pair = |a: &str, b: &str| {
        matched.insert(a.to_string(), b.to_string());
        matched.insert(b.to_string(), a.to_string());
    };
    let mut leftovers = Vec::new();
    for ids in by_subnet.values_mut() {
        ids.sort_unstable();
        let mut chunks = ids.chunks_exact(2);
        for two in chunks.by_ref() {
            pair(two[0], two[1]);
        }
        leftovers.extend(chunks.remainder().iter().copied());
    }
    leftovers.sort_unstable();
    for two in leftovers.chunks_exact(2) {
        pair(two[0], two[1]);
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, subnet: &str) -> AgentView {
        AgentView {
            id: id.into(),
            live: true,
            state: NodeState::Ready,
            ha_on: true,
            partner: None,
            subnet: Some(subnet.into()),
            protocol: Protocol::CURRENT,
        }
    }

    fn paired(mut view: AgentView, with: &str) -> AgentView {
        view.partner = Some(PartnerRef {
            node_id: with.into(),
            epoch: 1,
        });
        view
    }

    fn partner(id: &str) -> PartnerRef {
        PartnerRef {
            node_id: id.into(),
            epoch: 1,
        }
    }

    use PairingDecision::*;

    #[test]
    fn lone_agents_pair_lower_id_proposes() {
        let view = vec![agent("a", "n1"), agent("b", "n1")];
        assert_eq!(decide("a", None, &view), Propose { to: "b".into() });
        assert_eq!(decide("b", None, &view), AwaitProposal { from: "a".into() });
    }

    #[test]
    fn same_subnet_is_preferred_then_any() {
        // a,c in n1; b,d in n2: pairs are a–c and b–d, not a–b.
        let view = vec![
            agent("a", "n1"),
            agent("b", "n2"),
            agent("c", "n1"),
            agent("d", "n2"),
        ];
        assert_eq!(decide("a", None, &view), Propose { to: "c".into() });
        assert_eq!(decide("b", None, &view), Propose { to: "d".into() });
        // One left over in each subnet: they pair across.
        let view = vec![agent("a", "n1"), agent("b", "n2")];
        assert_eq!(decide("a", None, &view), Propose { to: "b".into() });
    }

    #[test]
    fn an_odd_agent_stays_alone() {
        let view = vec![agent("a", "n1"), agent("b", "n1"), agent("c", "n1")];
        assert_eq!(decide("c", None, &view), Alone);
        let view = vec![agent("solo", "n1")];
        assert_eq!(decide("solo", None, &view), Alone);
    }

    #[test]
    fn healthy_pairs_are_never_broken() {
        // a–b are paired; c and d join: c–d pair, a stays with b even though a < c.
        let view = vec![
            paired(agent("a", "n1"), "b"),
            paired(agent("b", "n2"), "a"),
            agent("c", "n1"),
            agent("d", "n1"),
        ];
        assert_eq!(
            decide("a", Some(&partner("b")), &view),
            Keep {
                partner: "b".into()
            }
        );
        assert_eq!(decide("c", None, &view), Propose { to: "d".into() });
        // A lone newcomer is not offered a paired agent.
        let view = vec![
            paired(agent("a", "n1"), "b"),
            paired(agent("b", "n1"), "a"),
            agent("c", "n1"),
        ];
        assert_eq!(decide("c", None, &view), Alone);
    }

    #[test]
    fn a_dead_leaving_or_unfaithful_partner_is_lost() {
        let mut dead = paired(agent("b", "n1"), "a");
        dead.live = false;
        let view = vec![paired(agent("a", "n1"), "b"), dead];
        assert_eq!(
            decide("a", Some(&partner("b")), &view),
            PartnerLost {
                partner: "b".into()
            }
        );

        let mut leaving = paired(agent("b", "n1"), "a");
        leaving.state = NodeState::Leaving;
        let view = vec![paired(agent("a", "n1"), "b"), leaving];
        assert_eq!(
            decide("a", Some(&partner("b")), &view),
            PartnerLost {
                partner: "b".into()
            }
        );

        let view = vec![paired(agent("a", "n1"), "b"), paired(agent("b", "n1"), "c")];
        assert_eq!(
            decide("a", Some(&partner("b")), &view),
            PartnerLost {
                partner: "b".into()
            }
        );

        let view = vec![paired(agent("a", "n1"), "gone")];
        assert_eq!(
            decide("a", Some(&partner("gone")), &view),
            PartnerLost {
                partner: "gone".into()
            }
        );
    }

    #[test]
    fn a_partner_not_yet_advertising_us_is_being_confirmed() {
        let view = vec![paired(agent("a", "n1"), "b"), agent("b", "n1")];
        assert_eq!(
            decide("a", Some(&partner("b")), &view),
            Confirming {
                partner: "b".into()
            }
        );
    }

    #[test]
    fn ha_switched_off_on_either_side_ends_the_pair() {
        let view = [paired(agent("a", "n1"), "b"), paired(agent("b", "n1"), "a")];
        for off in ["a", "b"] {
            let view: Vec<AgentView> = view
                .iter()
                .cloned()
                .map(|mut a| {
                    a.ha_on = a.id != off;
                    a
                })
                .collect();
            for (me, other) in [("a", "b"), ("b", "a")] {
                assert_eq!(
                    decide(me, Some(&partner(other)), &view),
                    Unpair {
                        partner: other.into()
                    },
                    "{off} off, as {me} sees it"
                );
            }
        }
        let mut off = vec![agent("a", "n1"), agent("b", "n1")];
        off[0].ha_on = false;
        off[1].ha_on = false;
        assert_eq!(decide("a", None, &off), Ineligible);
    }

    #[test]
    fn only_agents_of_compatible_protocols_pair() {
        let at = |id: &str, major, minor| {
            let mut view = agent(id, "n1");
            view.protocol = Protocol { major, minor };
            view
        };
        // 1.0 and 1.1 pair; 2.0 pairs only with 2.0, across the upgrade.
        let view = vec![at("a", 1, 0), at("b", 2, 0), at("c", 1, 1), at("d", 2, 0)];
        assert_eq!(decide("a", None, &view), Propose { to: "c".into() });
        assert_eq!(decide("b", None, &view), Propose { to: "d".into() });
        let view = vec![at("a", 1, 0), at("b", 2, 0)];
        assert_eq!(decide("a", None, &view), Alone);
        assert_eq!(decide("b", None, &view), Alone);
    }

    #[test]
    fn ineligible_agents_are_not_matched() {
        let mut joining = agent("b", "n1");
        joining.state = NodeState::Joining;
        let mut ha_off = agent("c", "n1");
        ha_off.ha_on = false;
        let mut dead = agent("d", "n1");
        dead.live = false;
        let view = vec![agent("a", "n1"), joining.clone(), ha_off.clone(), dead];
        assert_eq!(decide("a", None, &view), Alone);
        assert_eq!(decide("b", None, &view), Ineligible);
        assert_eq!(decide("c", None, &view), Ineligible);
        assert_eq!(decide("unknown", None, &view), Ineligible);
    }

    /// Whatever the order agents joined in, every lone agent's match matches it back, and
    /// at most one agent is left alone.
    #[test]
    fn matchings_are_symmetric_and_leave_at_most_one_alone() {
        let subnets = ["n1", "n2", "n3"];
        for count in 1..=12usize {
            // Ids in an order other than sorted, spread over three subnets.
            let view: Vec<AgentView> = (0..count)
                .rev()
                .map(|i| agent(&format!("agent-{i:02}"), subnets[(i * 7) % 3]))
                .collect();
            let matched = matching(&view);
            for (a, b) in &matched {
                assert_eq!(matched.get(b), Some(a), "asymmetric for {count}");
                assert_ne!(a, b);
            }
            assert_eq!(
                count - matched.len(),
                count % 2,
                "{count} agents: {matched:?}"
            );
        }
    }
}
