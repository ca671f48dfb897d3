//! Hosts on two subnets joined by a router, built from Linux network namespaces: real
//! addresses, multicast that stays in its subnet, and links a test can cut.
//!
//! Layout, for an instance with prefix `tn<x>` (`x` in 100..=199):
//!
//! ```text
//!   subnet A 10.<x>.1.0/24             subnet B 10.<x>.2.0/24
//!   a1 .1  a2 .2  a3 .3  lb .10        b1 .1  b2 .2
//!        \   |   /  /                     \   /
//!          br-a ───── .254 router .254 ──── br-b        (bridges in namespace tn<x>-sw)
//!           |
//!         .250 the test process (its own namespace, interface tn<x>-c)
//! ```
//!
//! Every host is namespace `tn<x>-<host>` with `lo` and `eth0`, and a default route
//! through the router (`tn<x>-r`). The test process reaches every host directly: A is on
//! its link, B through the router.
//!
//! The bridges live in a namespace of their own rather than the test's: where
//! `br_netfilter` is loaded (Docker loads it, and sets `FORWARD` to `DROP`), frames
//! bridged in the test's namespace go through its firewall and are dropped. A per-bridge
//! `nf_call_iptables 0` cannot turn that off; a fresh namespace has no firewall.
//!
//! A test killed before [`Topology`] drops leaves its namespaces behind; they only block
//! their own `x`. Remove them with `ip netns list | grep -o '^tn[0-9]*-[a-z0-9]*' | xargs
//! -rn1 ip netns del` and `ip link del tn<x>-c`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// `ip!("-n {netns} link set eth0 up")`: [`run_ip`] with `format!` arguments.
macro_rules! ip {
    ($($arg:tt)*) => {
        run_ip(&format!($($arg)*))
    };
}

/// Where `ip netns` keeps its namespaces (iproute2's `NETNS_RUN_DIR`).
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Every host, in address order within each subnet.
const HOSTS: &[&str] = &["a1", "a2", "a3", "b1", "b2", "lb"];

/// The last octet of the router's address in both subnets.
const ROUTER: u8 = 254;

/// The last octet of the test process's address in subnet A.
const CLIENT: u8 = 250;

/// Distinguishes the instances one process builds.
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// Two subnets of hosts joined by a router, torn down when dropped (also on panic).
pub struct Topology {
    /// `tn<x>`: the start of every namespace and interface name this instance owns.
    prefix: String,
    /// The second octet of every address.
    x: u8,
    /// Whether there may be something left to tear down.
    live: bool,
}

impl Topology {
    /// Whether this machine can build a topology: running as root, with `ip` and `sysctl`,
    /// and network namespaces that can be created.
    pub fn available() -> bool {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"0");
        if !root || run_ip("-V").is_err() {
            return false;
        }
        let probe = format!(
            "tn-probe-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        if ip!("netns add {probe}").is_err() {
            return false;
        }
        let sysctl = ip!("netns exec {probe} sysctl -n net.ipv4.ip_forward");
        let _ = ip!("netns del {probe}");
        sysctl.is_ok()
    }

    /// Builds a fresh topology whose names and subnets no other live one uses.
    ///
    /// # Errors
    ///
    /// The first `ip` command that fails, with its stderr; whatever was built until then
    /// is removed again.
    pub fn build() -> io::Result<Topology> {
        let topology = Topology::claim()?;
        topology.wire()?; // on error, dropping `topology` removes the part already built
        Ok(topology)
    }

    /// Every host's name.
    pub fn hosts() -> &'static [&'static str] {
        HOSTS
    }

    /// The address of `host`.
    pub fn host_ip(&self, host: &str) -> IpAddr {
        let (subnet, last) = place(host);
        self.address(subnet, last)
    }

    /// The address of the test process, in subnet A.
    pub fn client_ip(&self) -> IpAddr {
        self.address(1, CLIENT)
    }

    /// The network namespace `host` runs in.
    pub fn netns(&self, host: &str) -> String {
        place(host); // an unknown host panics here, not later in `ip`
        format!("{}-{host}", self.prefix)
    }

    /// `"A"` or `"B"`: the subnet `host` is on.
    pub fn subnet(&self, host: &str) -> &'static str {
        match place(host).0 {
            1 => "A",
            _ => "B",
        }
    }

    /// Cuts `host` off the network: its `eth0` goes down.
    pub fn link_down(&self, host: &str) {
        let netns = self.netns(host);
        ip!("-n {netns} link set eth0 down")
            .unwrap_or_else(|err| panic!("cutting {host} off: {err}"));
    }

    /// Connects `host` again after [`Topology::link_down`].
    pub fn link_up(&self, host: &str) {
        let netns = self.netns(host);
        let gateway = self.address(place(host).0, ROUTER).to_string();
        ip!("-n {netns} link set eth0 up")
            .and_then(|_| {
                // Taking the link down removed the default route through it.
                ip!("-n {netns} route replace default via {gateway}")
            })
            .unwrap_or_else(|err| panic!("connecting {host} again: {err}"));
    }

    /// Removes every namespace, interface, address and route of this topology; errors are
    /// ignored, a second call does nothing. Processes still running in a host's namespace
    /// keep it alive, cut off from everything.
    pub fn teardown(&mut self) {
        if !std::mem::replace(&mut self.live, false) {
            return;
        }
        let client = self.client_interface();
        let subnet_b = format!("{}/24", self.address(2, 0));
        let router_a = self.address(1, ROUTER).to_string();
        let client_address = format!("{}/24", self.client_ip());
        let _ = ip!("route del {subnet_b} via {router_a} dev {client}");
        let _ = ip!("addr del {client_address} dev {client}");
        // Deleting one end of a veth deletes both; the host ends inside the switch
        // namespace go with it, and the bridges with their namespace.
        let _ = ip!("link del {client}");
        for host in HOSTS.iter().chain(&["r", "sw"]) {
            let _ = ip!("netns del {}-{host}", self.prefix);
        }
    }

    /// Picks `x` and takes it by creating the switch namespace: creating a namespace that
    /// exists fails, so two instances (in any process) never share `x`.
    fn claim() -> io::Result<Topology> {
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let start = std::process::id().wrapping_add(instance) % 100;
        // Subnets the test's namespace already reaches are not free, whoever uses them.
        let routes = run_ip("-4 -o route show table all")?;
        let addresses = run_ip("-4 -o addr show")?;
        for offset in 0..100 {
            let x = (100 + (start + offset) % 100) as u8;
            let net = format!("10.{x}.");
            let prefix = format!("tn{x}");
            let switch = format!("{prefix}-sw");
            if routes.contains(&net)
                || addresses.contains(&net)
                || Path::new("/sys/class/net")
                    .join(format!("{prefix}-c"))
                    .exists()
            {
                continue;
            }
            match ip!("netns add {switch}") {
                Ok(_) => {
                    return Ok(Topology {
                        prefix,
                        x,
                        live: true,
                    });
                }
                Err(_) if Path::new(NETNS_RUN_DIR).join(&switch).exists() => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other(
            "no free topology: tn100..tn199 are all taken (leftovers? see tests/support/netns.rs)",
        ))
    }

    /// Everything after the switch namespace: bridges, router, hosts, the test's link.
    fn wire(&self) -> io::Result<()> {
        let switch = format!("{}-sw", self.prefix);
        for bridge in ["br-a", "br-b"] {
            ip!("-n {switch} link add {bridge} type bridge")?;
            // Snooping would stop multicast at the bridge until some host reports
            // membership with IGMP; flooding is what a plain switch does.
            ip!("-n {switch} link set {bridge} type bridge mcast_snooping 0")?;
            ip!("-n {switch} link set {bridge} up")?;
        }

        let router = format!("{}-r", self.prefix);
        ip!("netns add {router}")?;
        ip!("-n {router} link set lo up")?;
        for (subnet, port, eth) in [(1, "r-a", "eth0"), (2, "r-b", "eth1")] {
            self.plug(port, &router, eth, subnet)?;
            let address = format!("{}/24", self.address(subnet, ROUTER));
            ip!("-n {router} addr add {address} dev {eth}")?;
            ip!("-n {router} link set {eth} up")?;
        }
        ip!("netns exec {router} sysctl -w net.ipv4.ip_forward=1")?;

        for host in HOSTS {
            let (subnet, last) = place(host);
            let netns = self.netns(host);
            ip!("netns add {netns}")?;
            ip!("-n {netns} link set lo up")?;
            self.plug(host, &netns, "eth0", subnet)?;
            let address = format!("{}/24", self.address(subnet, last));
            ip!("-n {netns} addr add {address} dev eth0")?;
            ip!("-n {netns} link set eth0 up")?;
            let gateway = self.address(subnet, ROUTER).to_string();
            ip!("-n {netns} route add default via {gateway}")?;
        }

        // The test's own end: strict reverse-path filtering passes, since replies from B
        // come back through the router on this same interface, as the route says.
        let client = self.client_interface();
        ip!("link add {client} type veth peer name c netns {switch}")?;
        ip!("-n {switch} link set c master br-a up")?;
        let address = format!("{}/24", self.client_ip());
        ip!("addr add {address} dev {client}")?;
        ip!("link set {client} up")?;
        let subnet_b = format!("{}/24", self.address(2, 0));
        let router_a = self.address(1, ROUTER).to_string();
        ip!("route add {subnet_b} via {router_a} dev {client}")?;
        Ok(())
    }

    /// A veth from `port` on the bridge of `subnet` to `eth` inside `netns`.
    fn plug(&self, port: &str, netns: &str, eth: &str, subnet: u8) -> io::Result<()> {
        let switch = format!("{}-sw", self.prefix);
        let bridge = if subnet == 1 { "br-a" } else { "br-b" };
        ip!("-n {switch} link add {port} type veth peer name {eth} netns {netns}")?;
        ip!("-n {switch} link set {port} master {bridge} up")?;
        Ok(())
    }

    /// `10.<x>.<subnet>.<last>`.
    fn address(&self, subnet: u8, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.x, subnet, last))
    }

    /// The test's end of its link into subnet A.
    fn client_interface(&self) -> String {
        format!("{}-c", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The subnet (third octet) and last octet of `host`'s address.
fn place(host: &str) -> (u8, u8) {
    match host {
        "a1" => (1, 1),
        "a2" => (1, 2),
        "a3" => (1, 3),
        "b1" => (2, 1),
        "b2" => (2, 2),
        "lb" => (1, 10),
        _ => panic!("no host {host:?} in the topology; the hosts are {HOSTS:?}"),
    }
}

/// Runs `ip <args>` (split at whitespace: no argument here contains any) and returns its
/// stdout, or an error naming the command and its stderr.
fn run_ip(args: &str) -> io::Result<String> {
    let command = format!("ip {args}");
    let output = Command::new("ip")
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .map_err(|err| io::Error::new(err.kind(), format!("{command}: {err}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(io::Error::other(format!(
            "{command}: {} ({})",
            stderr.trim(),
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
