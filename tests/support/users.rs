//! Virtual users of the demo app behind a balancer: each with its own cookie jar,
//! clicking a counter that lives in its session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Agent, Node, free_tcp_addr, free_udp_addr, wait_for_port};

const FORM: Duration = Duration::from_secs(40);

/// Agents with demo apps and a balancer in front of them, on loopback.
pub struct DemoCluster {
    pub agents: BTreeMap<String, Agent>,
    pub balancer: Node,
    /// Where users connect.
    pub listen: SocketAddr,
}

/// A balancer with the cluster's key and no cookie secret of its own: it signs route
/// cookies with the secret every balancer derives from the key.
pub fn start_balancer(dir: &Path, name: &str, seed: SocketAddr) -> (Node, SocketAddr) {
    start_balancer_with(dir, name, seed, &[])
}

/// Like [`start_balancer`], with the arguments `extra` too.
pub fn start_balancer_with(
    dir: &Path,
    name: &str,
    seed: SocketAddr,
    extra: &[&str],
) -> (Node, SocketAddr) {
    let listen = free_tcp_addr();
    let mut args = vec!["--listen".to_string(), listen.to_string()];
    args.extend(extra.iter().map(ToString::to_string));
    (
        Node::start_with(dir, "balancer", name, &[seed], free_udp_addr(), args),
        listen,
    )
}

impl DemoCluster {
    /// `count` agents `agent-1`… with demo apps and `balancer-1`, every agent protected.
    pub async fn start(dir: &Path, count: usize) -> DemoCluster {
        let cluster = DemoCluster::start_with(dir, count, |_| Vec::new()).await;
        wait_protected_routes(cluster.balancer.admin, &cluster.balancer.name, count).await;
        cluster
    }

    /// Like [`DemoCluster::start`], agent `i` (from 1) with the arguments `extra(i)` too,
    /// and without waiting for pairs.
    pub async fn start_with(
        dir: &Path,
        count: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> DemoCluster {
        let mut agents = BTreeMap::new();
        let mut seed = None;
        for i in 1..=count {
            let name = format!("agent-{i}");
            let mut args = vec!["--demo-app".to_string(), free_tcp_addr().to_string()];
            if let Some(seed) = seed {
                args.extend(["--join".to_string(), format!("{seed}")]);
            }
            args.extend(extra(i));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let agent = Agent::start(dir, &name, &args);
            seed.get_or_insert(agent.node.gossip);
            agents.insert(name, agent);
        }
        let (balancer, listen) = start_balancer(dir, "balancer-1", seed.unwrap());
        wait_for_port(listen).await;
        DemoCluster {
            agents,
            balancer,
            listen,
        }
    }

    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents
            .get_mut(name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }
}

/// A user and the answers to its clicks.
pub type Clicked = (User, Vec<Result<Counter, String>>);

/// Users clicking without a pause until stopped, as real traffic does while operators work.
pub struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Clicked>>,
}

impl Traffic {
    pub fn start(users: Vec<User>, balancer: SocketAddr) -> Traffic {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = users
            .into_iter()
            .map(|mut user| {
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !*stopped.borrow() {
                        answers.push(user.click(balancer).await);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    (user, answers)
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    /// Stops the users and checks what each saw: no failed request, and a counter that
    /// went up by one with every click, never reset, repeated or rolled back. Returns the
    /// users and how many clicks were answered in all.
    pub async fn stop(self, what: &str) -> (Vec<User>, usize) {
        let _ = self.stop.send(true);
        let (mut users, mut clicks) = (Vec::new(), 0);
        for task in self.tasks {
            let (user, answers) = task.await.unwrap();
            let before = (user.sent - answers.len()) as i64;
            for (i, answer) in answers.iter().enumerate() {
                let count = match answer {
                    Ok(counter) => counter.count,
                    Err(err) => panic!("{what}: user {} saw a failed request: {err}", user.id),
                };
                assert_eq!(
                    count,
                    before + i as i64 + 1,
                    "{what}: user {}'s counter did not go on (answers {:?})",
                    user.id,
                    answers
                        .iter()
                        .map(|a| a.as_ref().map(|c| (c.count, c.node.clone())).ok())
                        .collect::<Vec<_>>()
                );
            }
            clicks += answers.len();
            users.push(user);
        }
        (users, clicks)
    }
}

/// One virtual user: its own cookie jar.
pub struct User {
    client: reqwest::Client,
    pub id: usize,
    pub sent: usize,
}

#[derive(Debug, serde::Deserialize)]
pub struct Counter {
    pub count: i64,
    pub node: String,
    pub partner: Option<String>,
}

impl User {
    pub fn new(id: usize) -> User {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        User {
            client,
            id,
            sent: 0,
        }
    }

    /// One click: POST /api/counter with an idempotency key, as the demo page sends it.
    pub async fn click(&mut self, balancer: SocketAddr) -> Result<Counter, String> {
        self.sent += 1;
        let response = self
            .client
            .post(format!("http://{balancer}/api/counter"))
            .header(
                "idempotency-key",
                format!("user-{}-click-{}", self.id, self.sent),
            )
            .send()
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            ));
        }
        response.json().await.map_err(|err| err.to_string())
    }
}

/// Every user clicks `clicks` times; returns each user's answers.
pub async fn run_users(users: Vec<User>, balancer: SocketAddr, clicks: usize) -> Vec<Clicked> {
    run_users_around(users, balancer, clicks, None).await
}

/// Something that happens while the users click: it runs once `after` clicks have been
/// answered in all, and every user pauses after half its clicks until it has run, so that
/// each user clicks both before and after it while others have requests in flight.
pub struct Interruption {
    pub after: usize,
    pub done: tokio::sync::watch::Receiver<bool>,
    pub answered: Arc<std::sync::atomic::AtomicUsize>,
    pub reached: Arc<tokio::sync::Notify>,
}

pub async fn run_users_around(
    users: Vec<User>,
    balancer: SocketAddr,
    clicks: usize,
    interruption: Option<&Interruption>,
) -> Vec<Clicked> {
    let tasks: Vec<_> = users
        .into_iter()
        .map(|mut user| {
            let pause = interruption.map(|i| {
                (
                    i.after,
                    i.done.clone(),
                    i.answered.clone(),
                    i.reached.clone(),
                )
            });
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for click in 0..clicks {
                    if let Some((_, done, ..)) = &pause
                        && click == clicks / 2
                    {
                        let mut done = done.clone();
                        let _ = done.wait_for(|done| *done).await;
                    }
                    answers.push(user.click(balancer).await);
                    if let Some((after, _, answered, reached)) = &pause
                        && answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == *after
                    {
                        reached.notify_one();
                    }
                }
                (user, answers)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Waits until the balancer whose admin endpoint is `admin` routes to `count` usable,
/// protected backends (`/v1/routes`).
pub async fn wait_protected_routes(admin: SocketAddr, name: &str, count: usize) {
    super::wait_for(
        &format!("{name} to route to {count} protected nodes"),
        Duration::from_secs(40),
        || async {
            let Some((200, body)) = super::get(admin, "/v1/routes").await else {
                return false;
            };
            let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
            routes["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["usable"] == true && b["protected"] == true)
                .count()
                == count
        },
    )
    .await;
}

/// Every user clicks `clicks` times through the balancer: no request fails, each user's
/// counter goes on from where it was (nothing lost, nothing stale), and each user stays on
/// one node. Returns the users and the node each one is on.
pub async fn click_round(
    users: Vec<User>,
    balancer: SocketAddr,
    clicks: usize,
    round: &str,
) -> (Vec<User>, std::collections::BTreeMap<usize, String>) {
    let mut on = std::collections::BTreeMap::new();
    let mut back = Vec::new();
    for (user, answers) in run_users(users, balancer, clicks).await {
        let answers: Vec<Counter> = answers
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|err| panic!("{round}: user {} saw a failed request: {err}", user.id));
        let before = (user.sent - clicks) as i64;
        let counts: Vec<i64> = answers.iter().map(|a| a.count).collect();
        assert_eq!(
            counts,
            (before + 1..=before + clicks as i64).collect::<Vec<_>>(),
            "{round}: user {} lost, repeated or rolled back a click",
            user.id
        );
        let node = &answers.last().unwrap().node;
        assert!(
            answers.iter().all(|a| a.node == *node),
            "{round}: user {} moved more than once: {answers:?}",
            user.id
        );
        on.insert(user.id, node.clone());
        back.push(user);
    }
    (back, on)
}

/// Where each user went between two rounds: users of a node in `moved` are on its
/// replacement now, every other user stayed where it was.
pub fn assert_moves(
    before: &std::collections::BTreeMap<usize, String>,
    after: &std::collections::BTreeMap<usize, String>,
    moved: &[(&str, &str)],
) {
    for (user, was) in before {
        let expected = moved
            .iter()
            .find(|(from, _)| from == was)
            .map_or(was.as_str(), |(_, to)| *to);
        assert_eq!(after[user], expected, "user {user} was on {was}");
    }
}
