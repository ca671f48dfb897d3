//! The routing table: where each user goes, a pure function of the gossip view, so every
//! balancer answers alike.

use std::collections::{BTreeMap, BTreeSet};

use crate::cookie::RouteCookie;
use crate::member::Member;
use crate::schema::{HaSwitch, NodeState, Role};

/// How deep a route follows partners of partners (each failover re-pairs once).
const CHAIN_DEPTH: usize = 4;

/// An agent that users can be sent to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backend {
    pub id: String,
    /// The app URL users are proxied to.
    pub app: String,
    /// The partner, when the pair is mutual.
    pub partner: Option<String>,
    /// The partner the node itself names, mutual or not. When the node dies or is cut off
    /// its partner takes its sessions over and soon stops naming it, yet this still says
    /// where those sessions went.
    pub named_partner: Option<String>,
    /// Live and serving (`ready` or `syncing`): may take users. Draining, leaving and dead
    /// nodes keep none: their users go to the partner, which holds their sessions.
    pub usable: bool,
    /// Paired and keeping up: its sessions survive its death.
    pub protected: bool,
    /// Primary sessions it reports.
    pub sessions: u64,
    /// When this incarnation started (seconds since the Unix epoch): a restarted node holds
    /// none of the sessions of users routed to it before.
    pub started_at: u64,
}

/// Why a request goes where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReason {
    /// The cookie's node.
    Sticky,
    /// The cookie's node cannot serve; this node holds its sessions.
    Failover { from: String },
    /// No usable route in the cookie (or no cookie): a new placement.
    Placed,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub node: String,
    pub app: String,
    /// The partner to write into the cookie.
    pub partner: Option<String>,
    pub reason: RouteReason,
}

/// Every agent with an app, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    backends: BTreeMap<String, Backend>,
    /// The cluster-wide HA switch: with it off nodes keep no copies of each other's
    /// sessions, and users stay on their node (or are placed anew) without failover.
    ha_on: bool,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable {
            backends: BTreeMap::new(),
            ha_on: true,
        }
    }
}

impl RoutingTable {
    /// Derives the table from the members view.
    pub fn build(members: &[Member]) -> Self {
        let agents: BTreeMap<&str, &Member> = members
            .iter()
            // A member with a problem (an incompatible protocol) is not routed to.
            .filter(|m| m.role == Some(Role::Agent) && m.problem.is_none())
            .map(|m| (m.id.as_str(), m))
            .collect();
        let mut backends = BTreeMap::new();
        for member in agents.values() {
            let Some(app) = &member.app else { continue };
            let named_partner = member.partner.as_ref().map(|p| p.node_id.as_str());
            let partner = named_partner.filter(|p| {
                agents
                    .get(p)
                    .and_then(|other| other.partner.as_ref())
                    .is_some_and(|back| back.node_id == member.id)
            });
            let usable =
                member.live && matches!(member.state, Some(NodeState::Ready | NodeState::Syncing));
            backends.insert(
                member.id.clone(),
                Backend {
                    id: member.id.clone(),
                    app: app.clone(),
                    partner: partner.map(str::to_string),
                    named_partner: named_partner.map(str::to_string),
                    usable,
                    protected: partner.is_some() && !member.unprotected,
                    sessions: member.sessions,
                    started_at: member.generation / 1_000_000_000,
                },
            );
        }
        let ha = HaSwitch::newest(members.iter().filter_map(|m| m.ha));
        RoutingTable {
            backends,
            ha_on: ha.on,
        }
    }

    /// Whether HA is on, as the newest switch among the members says.
    pub fn ha_on(&self) -> bool {
        self.ha_on
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.values()
    }

    pub fn backend(&self, id: &str) -> Option<&Backend> {
        self.backends.get(id)
    }

    /// Routes a request: its cookie's node if it can serve, else the first that can among
    /// the cookie's partner and the partners each of them names (who hold the session after
    /// a failover), else a new placement by `place`. `down` marks nodes this balancer found
    /// unreachable before gossip did; `load` is the load to balance new users by.
    ///
    /// A node the cookie names that restarted after the cookie was issued lost the
    /// session with its old incarnation: the partners, who hold it, come first, and the
    /// restarted node only when none of them can serve. With HA off users stay on their
    /// node only: nobody else holds their sessions.
    pub fn route(
        &self,
        cookie: Option<&RouteCookie>,
        down: impl Fn(&str) -> bool,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<Route> {
        let serving = |id: &str| self.backends.get(id).filter(|b| b.usable && !down(id));
        if let Some(cookie) = cookie {
            let named = |id: &str| id == cookie.node || cookie.partner.as_deref() == Some(id);
            let mut restarted: Option<&Backend> = None;
            let mut seen = BTreeSet::new();
            let mut frontier: Vec<String> = std::iter::once(cookie.node.clone())
                .chain(cookie.partner.clone().filter(|_| self.ha_on))
                .collect();
            for _ in 0..CHAIN_DEPTH {
                let mut next = Vec::new();
                for id in frontier {
                    if !seen.insert(id.clone()) {
                        continue;
                    }
                    if let Some(backend) = serving(&id) {
                        if named(&id) && backend.started_at > cookie.issued_at {
                            restarted.get_or_insert(backend);
                        } else {
                            return Some(route_to(backend, reason_for(backend, cookie)));
                        }
                    }
                    if let Some(partner) =
                        self.backends.get(&id).and_then(|b| b.named_partner.clone())
                    {
                        next.push(partner);
                    }
                }
                if !self.ha_on {
                    break;
                }
                frontier = next;
            }
            if let Some(backend) = restarted {
                return Some(route_to(backend, reason_for(backend, cookie)));
            }
        }
        self.place(down, load)
            .map(|backend| route_to(backend, RouteReason::Placed))
    }

    /// A node for a new user: usable, protected if any is, with the least load (ties by id).
    pub fn place(
        &self,
        down: impl Fn(&str) -> bool,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<&Backend> {
        let candidates: Vec<&Backend> = self
            .backends
            .values()
            .filter(|b| b.usable && !down(&b.id))
            .collect();
        let protected: Vec<&Backend> = candidates.iter().copied().filter(|b| b.protected).collect();
        let pool = if protected.is_empty() {
            candidates
        } else {
            protected
        };
        pool.into_iter().min_by_key(|b| (load(b), b.id.clone()))
    }
}

fn reason_for(backend: &Backend, cookie: &RouteCookie) -> RouteReason {
    if backend.id == cookie.node {
        RouteReason::Sticky
    } else {
        RouteReason::Failover {
            from: cookie.node.clone(),
        }
    }
}

fn route_to(backend: &Backend, reason: RouteReason) -> Route {
    Route {
        node: backend.id.clone(),
        app: backend.app.clone(),
        partner: backend.partner.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{NodeAdvert, PartnerRef};

    fn agent(
        id: &str,
        partner: Option<&str>,
        state: NodeState,
        live: bool,
        sessions: u64,
    ) -> Member {
        let mut advert = NodeAdvert::new(Role::Agent, "t");
        advert.state = state;
        advert.app = Some(format!("http://{id}:8000"));
        advert.partner = partner.map(|p| PartnerRef {
            node_id: p.into(),
            epoch: 1,
        });
        advert.unprotected = partner.is_none();
        advert.sessions = sessions;
        Member::new(id, 1, "g".into(), live, Ok(advert))
    }

    fn ready(id: &str, partner: Option<&str>) -> Member {
        agent(id, partner, NodeState::Ready, true, 0)
    }

    fn cookie(node: &str, partner: Option<&str>) -> RouteCookie {
        RouteCookie {
            node: node.into(),
            partner: partner.map(Into::into),
            issued_at: 0,
        }
    }

    fn route(table: &RoutingTable, cookie: Option<&RouteCookie>) -> Option<(String, RouteReason)> {
        table
            .route(cookie, |_| false, |b| b.sessions)
            .map(|r| (r.node, r.reason))
    }

    fn two_pairs() -> Vec<Member> {
        vec![
            ready("a", Some("b")),
            ready("b", Some("a")),
            ready("c", Some("d")),
            ready("d", Some("c")),
        ]
    }

    #[test]
    fn sticky_when_the_node_serves() {
        let table = RoutingTable::build(&two_pairs());
        assert_eq!(
            route(&table, Some(&cookie("c", Some("d")))),
            Some(("c".into(), RouteReason::Sticky))
        );
        assert_eq!(table.backend("a").unwrap().partner.as_deref(), Some("b"));
        assert!(table.backend("a").unwrap().protected);
    }

    #[test]
    fn dead_draining_or_leaving_nodes_fail_over_to_their_partner() {
        for state in [NodeState::Draining, NodeState::Leaving] {
            let mut members = two_pairs();
            members[0] = agent("a", Some("b"), state, true, 0);
            let table = RoutingTable::build(&members);
            let expected = Some(("b".into(), RouteReason::Failover { from: "a".into() }));
            assert_eq!(
                route(&table, Some(&cookie("a", Some("b")))),
                expected,
                "{state:?}"
            );
        }
        let mut members = two_pairs();
        members[0] = agent("a", Some("b"), NodeState::Ready, false, 0);
        let table = RoutingTable::build(&members);
        // A dead node's users go to its partner.
        assert_eq!(route(&table, Some(&cookie("a", Some("b")))).unwrap().0, "b");
        // This balancer found `a` unreachable before gossip did.
        let table = RoutingTable::build(&two_pairs());
        let failover = table.route(
            Some(&cookie("a", Some("b"))),
            |id| id == "a",
            |b| b.sessions,
        );
        assert_eq!(failover.map(|r| r.node), Some("b".into()));
    }

    #[test]
    fn the_chain_is_followed_when_the_partner_has_re_paired() {
        // a died; b took over a's sessions and paired with e; then b died too: e holds them.
        let members = vec![
            agent("a", None, NodeState::Ready, false, 0),
            agent("b", Some("e"), NodeState::Ready, false, 0),
            ready("e", Some("b")),
            ready("c", Some("d")),
            ready("d", Some("c")),
        ];
        let table = RoutingTable::build(&members);
        assert_eq!(
            route(&table, Some(&cookie("a", Some("b")))),
            Some(("e".into(), RouteReason::Failover { from: "a".into() }))
        );
    }

    #[test]
    fn a_node_cut_off_sends_its_users_to_the_partner_that_dropped_it() {
        // a was cut off after pairing with b; b took a's sessions over, dropped a and
        // paired with e. A cookie from before a's pairing with b names no partner. b has
        // the most load: a new placement would never choose it.
        let members = vec![
            agent("a", Some("b"), NodeState::Ready, false, 0),
            agent("b", Some("e"), NodeState::Ready, true, 1_000),
            ready("e", Some("b")),
            ready("c", Some("d")),
            ready("d", Some("c")),
        ];
        let table = RoutingTable::build(&members);
        assert_eq!(
            table.backend("a").unwrap().partner,
            None,
            "not mutual any more"
        );
        for cookie in [cookie("a", None), cookie("a", Some("gone"))] {
            assert_eq!(
                route(&table, Some(&cookie)),
                Some(("b".into(), RouteReason::Failover { from: "a".into() })),
                "{cookie:?}"
            );
        }
    }

    #[test]
    fn a_node_restarted_since_the_cookie_sends_its_users_to_the_partner_first() {
        let restarted_at = |mut member: Member, secs: u64| {
            member.generation = secs * 1_000_000_000;
            member
        };
        let issued = |node: &str, partner: Option<&str>, at: u64| RouteCookie {
            issued_at: at,
            ..cookie(node, partner)
        };
        // a restarted at 100 and paired with b again (b took a's users over meanwhile).
        let mut members = two_pairs();
        members[0] = restarted_at(ready("a", Some("b")), 100);
        let table = RoutingTable::build(&members);
        assert_eq!(
            route(&table, Some(&issued("a", Some("b"), 90))),
            Some(("b".into(), RouteReason::Failover { from: "a".into() })),
            "a cookie from before the restart"
        );
        assert_eq!(
            route(&table, Some(&issued("a", None, 90))).unwrap().0,
            "b",
            "through the partner a names now"
        );
        assert_eq!(
            route(&table, Some(&issued("a", Some("b"), 100))),
            Some(("a".into(), RouteReason::Sticky)),
            "a cookie from this incarnation"
        );
        // No partner can serve: the restarted node is still the user's node.
        members[1] = agent("b", Some("a"), NodeState::Ready, false, 0);
        let table = RoutingTable::build(&members);
        assert_eq!(
            route(&table, Some(&issued("a", Some("b"), 90))),
            Some(("a".into(), RouteReason::Sticky))
        );
    }

    #[test]
    fn with_ha_off_users_stay_on_their_node_and_nowhere_else() {
        let off = |mut member: Member| {
            member.ha = Some(HaSwitch {
                on: false,
                set_at_ms: 10,
            });
            member
        };
        let mut members: Vec<Member> = vec![
            agent("a", None, NodeState::Ready, true, 0),
            agent("b", None, NodeState::Ready, true, 5),
            agent("c", None, NodeState::Ready, true, 9),
        ];
        members[2] = off(members[2].clone());
        let table = RoutingTable::build(&members);
        assert!(!table.ha_on(), "the newest switch wins");
        assert_eq!(
            route(&table, Some(&cookie("b", Some("a")))),
            Some(("b".into(), RouteReason::Sticky))
        );
        // b dies: a holds nothing of b's users (HA off), so they are placed anew.
        members[1] = agent("b", None, NodeState::Ready, false, 5);
        let table = RoutingTable::build(&members);
        assert_eq!(
            route(&table, Some(&cookie("b", Some("c")))),
            Some(("a".into(), RouteReason::Placed))
        );
    }

    #[test]
    fn both_gone_means_a_new_placement() {
        let mut members = two_pairs();
        members[0] = agent("a", Some("b"), NodeState::Ready, false, 0);
        members[1] = agent("b", Some("a"), NodeState::Ready, false, 0);
        let table = RoutingTable::build(&members);
        let (node, reason) = route(&table, Some(&cookie("a", Some("b")))).unwrap();
        assert!(node == "c" || node == "d");
        assert_eq!(reason, RouteReason::Placed);
    }

    #[test]
    fn new_users_go_to_protected_nodes_with_the_least_load() {
        let members = vec![
            agent("a", Some("b"), NodeState::Ready, true, 50),
            agent("b", Some("a"), NodeState::Ready, true, 10),
            agent("c", None, NodeState::Ready, true, 0),
        ];
        let table = RoutingTable::build(&members);
        assert_eq!(route(&table, None), Some(("b".into(), RouteReason::Placed)));
        // Local placements count too: the load function decides.
        let placed = table.route(
            None,
            |_| false,
            |b| if b.id == "b" { 100 } else { b.sessions },
        );
        assert_eq!(placed.map(|r| r.node), Some("a".into()));
        // Unprotected nodes take users only when no protected node can.
        let lone = RoutingTable::build(&[agent("c", None, NodeState::Ready, true, 0)]);
        assert_eq!(route(&lone, None).unwrap().0, "c");
    }

    #[test]
    fn no_usable_node_no_route() {
        let members = vec![
            agent("a", None, NodeState::Joining, true, 0),
            agent("b", None, NodeState::Ready, false, 0),
        ];
        let table = RoutingTable::build(&members);
        assert_eq!(route(&table, None), None);
        assert_eq!(
            route(&RoutingTable::default(), Some(&cookie("x", None))),
            None
        );
    }

    #[test]
    fn one_sided_pairs_are_not_pairs() {
        let members = vec![
            ready("a", Some("b")),
            ready("b", Some("c")),
            ready("c", Some("b")),
        ];
        let table = RoutingTable::build(&members);
        assert_eq!(table.backend("a").unwrap().partner, None);
        assert!(!table.backend("a").unwrap().protected);
        assert_eq!(table.backend("b").unwrap().partner.as_deref(), Some("c"));
    }
}
