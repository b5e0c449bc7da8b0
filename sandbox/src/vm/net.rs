//! A guest's network inside the pod's network namespace.
//!
//! Two modes. A guest whose container declares ports is *routed* ([`setup_routed_with`]: a
//! private /30 behind the tap, nftables NAT of the declared ports, the pod interface left to
//! the sidecars). Otherwise the guest *takes over* the pod interface, as described next.
//!
//! The CNI plugins configured the pod's interface (`eth0` below: the one their result names
//! inside the sandbox, else the `CNI_IFNAME` crid passed). A unikernel container gets a tap
//! device in the same namespace, connected to `eth0` by tc: an ingress qdisc on each with a
//! match-all u32 filter whose action is `mirred egress redirect` to the other. Every frame that
//! arrives on `eth0` leaves through the tap into the guest and back, so the guest takes over
//! the pod's IP address, prefix, gateway and `eth0`'s MAC: from outside, the guest *is* the pod.
//!
//! `eth0` keeps its address, but nothing reaches the namespace's own stack through it any
//! more. So that a runc sidecar in the same pod can reach the guest on the pod IP, the
//! namespace's own traffic to the pod IP is routed into the tap instead of being delivered
//! locally: a policy rule (before the `local` table) sends locally made packets for the pod
//! IP to a table with a route through the tap, from [`SIDECAR_ADDR`] (a link-local address on
//! the tap, known only inside the pod), to the guest's MAC. The guest answers via its gateway,
//! so the tap takes the gateway's MAC and a first tc filter on the tap passes frames for
//! [`SIDECAR_ADDR`] to the namespace's stack instead of redirecting them. A sidecar still has no
//! way out of the pod (replies arriving on `eth0` go to the guest); the guest answers on the
//! pod IP to everyone else. One unikernel per pod: a live
//! tap (carrier up, its VMM running) of another container is a `FailedPrecondition`; a tap
//! left behind by a crash (no carrier) is removed, as is this container's own stale tap.
//!
//! Everything is done in-process from a thread that entered the pod's namespace (`setns`):
//! netlink requests for links, addresses, routes, rules, neighbours, qdiscs and filters, the
//! `TUNSETIFF` ioctl for the tap, writes to `/proc/sys/net` for the sysctls (see
//! `vm::rtnl`), and for the routed mode's NAT table one nf_tables netlink transaction
//! (`vm::nft`): no process is started. The steps are behind `NetOps`, so the sequence is
//! unit-tested without root.

use std::net::Ipv4Addr;
use std::path::Path;

pub use super::netops::GuestPort;
use super::netops::{Link, NatAction, NatChain, NatRule, NetOps, Rule};
use super::{GuestNet, MacAddr, qemu::check_ifname};
use crate::error::{SandboxError, invalid};

/// Tap devices crid creates start with this.
pub const TAP_PREFIX: &str = "crtap";

/// The tap name for a container: `crtap` + the first 10 characters of its id.
pub fn tap_name(container_id: &str) -> String {
    let suffix: String = container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("{TAP_PREFIX}{suffix}")
}

/// The address a pod's own network stack (a runc sidecar) uses towards its guest.
pub const SIDECAR_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

/// The routing table (and rule preference) of the sidecar path.
const SIDECAR_TABLE: u32 = 77;
/// The kernel's `local` table, and the preference its rule moves to.
const LOCAL_TABLE: u32 = 255;
const LOCAL_RULE_MOVED: u32 = 100;

/// Runs `f` on a dedicated thread inside the namespace at `netns`, with netlink operations on
/// a socket opened there.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(&dyn NetOps) -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    cni::netns::run_in(
        &[(cni::netns::NsKind::Net, netns.to_path_buf())],
        move || Ok(super::rtnl::Rtnl::open().and_then(|ops| f(&ops))),
    )
    .map_err(|e| net_err("enter the pod network namespace", e.to_string()))?
}

fn net_err(op: &str, reason: impl Into<String>) -> SandboxError {
    SandboxError::GuestNetwork {
        op: op.to_string(),
        reason: reason.into(),
    }
}

/// Creates the tap and its wiring in the namespace at `netns` and returns the guest's network:
/// with no `ports`, the tc redirects (the guest takes over the pod interface); with declared
/// ports, the routed mode ([`setup_routed_with`]).
pub fn setup_guest_net(
    netns: &Path,
    iface: &str,
    tap: &str,
    ports: &[GuestPort],
) -> Result<GuestNet, SandboxError> {
    let (iface, tap, ports) = (iface.to_owned(), tap.to_owned(), ports.to_vec());
    in_netns(netns, move |ops| {
        if ports.is_empty() {
            setup_with(ops, &iface, &tap)
        } else {
            setup_routed_with(ops, &iface, &tap, &ports)
        }
    })
}

/// [`setup_guest_net`] for a guest whose VMM started before its pod was known (a prepared
/// QEMU, see [`super::qemu_pool`]) with its tap `pool_tap` in the namespace at `pool_netns`:
/// the tap moves into the pod's namespace as `tap` (the VMM keeps it open) and is wired as a
/// new one would be, the guest keeping the MAC it was started with (`mac`): in routed mode
/// the guest's MAC is the pod's business only; taking over, the pod interface takes it.
pub fn adopt_guest_net(
    pool_netns: &Path,
    pool_tap: &str,
    netns: &Path,
    iface: &str,
    tap: &str,
    ports: &[GuestPort],
    mac: MacAddr,
) -> Result<GuestNet, SandboxError> {
    check_ifname(tap)?;
    let (pool_tap, to, name) = (pool_tap.to_owned(), netns.to_path_buf(), tap.to_owned());
    in_netns(pool_netns, move |ops| ops.move_link(&pool_tap, &to, &name))?;
    let (iface, tap, ports) = (iface.to_owned(), tap.to_owned(), ports.to_vec());
    in_netns(netns, move |ops| {
        if ports.is_empty() {
            setup_tc(ops, &iface, &tap, Some(mac))
        } else {
            setup_routed(ops, &iface, &tap, &ports, Some(mac))
        }
    })
}

/// The namespace's side of the routed guest link.
pub const ROUTED_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 5);
/// The guest's address in routed mode.
pub const ROUTED_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 6);
/// The guest's MAC in routed mode (locally administered; one guest per pod network).
const ROUTED_GUEST_MAC: MacAddr = MacAddr([0x02, 0x00, 0xa9, 0xfe, 0x4d, 0x06]);

/// The pod interface's link, checked names first.
fn pod_link(ops: &dyn NetOps, iface: &str, tap: &str) -> Result<(Vec<Link>, Link), SandboxError> {
    check_ifname(iface)?;
    check_ifname(tap)?;
    if iface == tap {
        return Err(invalid("the tap cannot be the pod interface"));
    }
    let links = ops.links()?;
    let eth = links
        .iter()
        .find(|l| l.name == iface)
        .cloned()
        .ok_or_else(|| net_err("setup", format!("the pod has no interface {iface}")))?;
    Ok((links, eth))
}

/// Routed mode, for pods that mix runc sidecars and a guest (Knative's queue-proxy): the pod
/// interface stays as CNI made it, for the sidecars; the guest sits on a private link-local
/// /30 behind the tap ([`ROUTED_GUEST_ADDR`], gateway [`ROUTED_HOST_ADDR`]) and the pod
/// namespace, which forwards, NATs in an nftables table of its own (`nat_rules`):
/// - DNAT of the declared ports from the pod IP (traffic arriving on `iface`: Services,
///   probes, the activator) and, for the namespace's own traffic, from the pod IP and
///   127.0.0.1 (`route_localnet` on the tap only, so loopback packets may leave through it);
/// - masquerade of loopback-sourced packets towards the guest (the guest would answer
///   127.0.0.1 itself), and SNAT of the guest's outbound traffic to the pod IP.
///
/// Limits: only declared ports reach the guest (the others are the namespace's); the guest
/// sees its private address, not the pod IP; a sidecar listening on a declared port is
/// shadowed for connections to the pod IP and 127.0.0.1.
pub fn setup_routed_with(
    ops: &dyn NetOps,
    iface: &str,
    tap: &str,
    ports: &[GuestPort],
) -> Result<GuestNet, SandboxError> {
    setup_routed(ops, iface, tap, ports, None)
}

/// [`setup_routed_with`]; with `adopted`, the tap is already there (see [`adopt_guest_net`])
/// and the guest has that MAC.
fn setup_routed(
    ops: &dyn NetOps,
    iface: &str,
    tap: &str,
    ports: &[GuestPort],
    adopted: Option<MacAddr>,
) -> Result<GuestNet, SandboxError> {
    let (links, eth) = pod_link(ops, iface, tap)?;
    let mtu = if eth.mtu == 0 { 1500 } else { eth.mtu };
    let (pod_ip, _) = ops
        .ipv4_address(iface)?
        .ok_or_else(|| net_err("setup", format!("{iface} has no IPv4 address")))?;
    clear_taps(ops, &links, tap, adopted.is_some())?;
    let rules = nat_rules(iface, tap, pod_ip, ports);
    let result = (|| {
        if adopted.is_none() {
            ops.add_tap(tap)?;
        }
        ops.set_link(tap, Some(mtu), None, true)?;
        ops.add_address(tap, ROUTED_HOST_ADDR, 30)?;
        ops.sysctl("net.ipv4.ip_forward", "1")?;
        ops.sysctl(&format!("net.ipv4.conf.{tap}.route_localnet"), "1")?;
        ops.nat_table(&rules)
    })();
    if let Err(e) = result {
        let _ = ops.del_nat_table();
        let _ = ops.del_link(tap);
        return Err(e);
    }
    Ok(GuestNet {
        tap: tap.to_string(),
        ip: ROUTED_GUEST_ADDR,
        prefix: 30,
        gateway: Some(ROUTED_HOST_ADDR),
        mac: adopted.unwrap_or(ROUTED_GUEST_MAC),
        mtu,
    })
}

/// The routed mode's NAT rules (see [`setup_routed_with`]), one per declared port and
/// address: what an `nft` script would write with anonymous sets (`tcp dport { 8080, 8012 }`),
/// spelled out so that each rule is a plain sequence of compares.
fn nat_rules(iface: &str, tap: &str, pod_ip: Ipv4Addr, ports: &[GuestPort]) -> Vec<NatRule> {
    let dnat = NatAction::Dnat(ROUTED_GUEST_ADDR);
    let mut rules: Vec<NatRule> = ports
        .iter()
        .map(|p| NatRule {
            iif: Some(iface.to_owned()),
            daddr: Some(pod_ip),
            dport: Some(*p),
            ..NatRule::new(NatChain::Prerouting, dnat)
        })
        .collect();
    for daddr in [pod_ip, Ipv4Addr::LOCALHOST] {
        rules.extend(ports.iter().map(|p| NatRule {
            daddr: Some(daddr),
            dport: Some(*p),
            ..NatRule::new(NatChain::Output, dnat)
        }));
    }
    rules.push(NatRule {
        oif: Some(tap.to_owned()),
        saddr: Some((Ipv4Addr::new(127, 0, 0, 0), 8)),
        ..NatRule::new(NatChain::Postrouting, NatAction::Masquerade)
    });
    rules.push(NatRule {
        oif: Some(iface.to_owned()),
        saddr: Some((ROUTED_GUEST_ADDR, 32)),
        ..NatRule::new(NatChain::Postrouting, NatAction::Snat(pod_ip))
    });
    rules
}

/// Removes crid taps left by a crash (no carrier) and this container's own stale tap (unless
/// `keep_own`: adopted with its VMM); a live tap of another container is `PodHasUnikernel`
/// (one guest per pod network).
fn clear_taps(
    ops: &dyn NetOps,
    links: &[Link],
    tap: &str,
    keep_own: bool,
) -> Result<(), SandboxError> {
    for link in links {
        if !link.name.starts_with(TAP_PREFIX) || !link.tun || (keep_own && link.name == tap) {
            continue;
        }
        if link.name != tap && link.lower_up {
            return Err(SandboxError::PodHasUnikernel {
                tap: link.name.clone(),
            });
        }
        tracing::info!(tap = %link.name, "removing a stale guest tap");
        ops.del_link(&link.name)?;
    }
    Ok(())
}

/// Removes the tap and the ingress qdisc; fine when they are already gone.
pub fn teardown_guest_net(netns: &Path, iface: &str, tap: &str) -> Result<(), SandboxError> {
    let (iface, tap) = (iface.to_owned(), tap.to_owned());
    in_netns(netns, move |ops| teardown_with(ops, &iface, &tap))
}

/// [`setup_guest_net`] in tc mode, on any `NetOps`.
pub fn setup_with(ops: &dyn NetOps, iface: &str, tap: &str) -> Result<GuestNet, SandboxError> {
    setup_tc(ops, iface, tap, None)
}

/// [`setup_with`]; with `adopted`, the tap is already there (see [`adopt_guest_net`]) and the
/// guest has that MAC, which the pod interface takes, since the guest takes it over.
fn setup_tc(
    ops: &dyn NetOps,
    iface: &str,
    tap: &str,
    adopted: Option<MacAddr>,
) -> Result<GuestNet, SandboxError> {
    let (links, eth) = pod_link(ops, iface, tap)?;
    let mac = match adopted {
        Some(mac) => {
            ops.set_link(iface, None, Some(mac), false)?;
            mac
        }
        None => eth
            .mac
            .ok_or_else(|| net_err("setup", format!("{iface} has no MAC address")))?,
    };
    let mtu = if eth.mtu == 0 { 1500 } else { eth.mtu };
    let (ip, prefix) = ops
        .ipv4_address(iface)?
        .ok_or_else(|| net_err("setup", format!("{iface} has no IPv4 address")))?;
    let gateway = ops.default_gateway()?;

    clear_taps(ops, &links, tap, adopted.is_some())?;

    // Ask for the gateway's MAC first: the answer arrives while the tap is made, instead of
    // the start waiting for it afterwards. A new MAC on the pod interface is always announced
    // so: the request teaches the gateway (and a bridge) the pod IP's new MAC.
    if let Some(g) = gateway {
        if adopted.is_some() || ops.neighbour(iface, g)?.is_none() {
            ops.probe(g)?;
        }
    }
    let made = match adopted {
        Some(_) => Ok(()),
        None => ops.add_tap(tap),
    }
    .and_then(|()| ops.set_link(tap, Some(mtu), None, true));
    // Before the redirect, which sends every ARP reply on `eth0` to the guest.
    let gateway_mac = match &made {
        Ok(()) => gateway.map(|g| neighbour_mac(ops, iface, g)),
        Err(_) => None,
    };
    let result = made.and_then(|()| {
        // A qdisc left by a crash would make "add" fail; it redirected to a dead tap anyway.
        let _ = ops.del_ingress(iface);
        redirect(ops, iface, tap)?;
        redirect(ops, tap, iface)
    });
    if result.is_ok() {
        // Without it the guest still serves the pod IP to everyone but the pod's sidecars.
        let routed = match gateway_mac {
            Some(Ok(gateway_mac)) => sidecar_path(ops, tap, ip, mac, gateway_mac),
            Some(Err(e)) => Err(e),
            None => Err(net_err("sidecar path", "the pod has no gateway")),
        };
        if let Err(e) = routed {
            tracing::warn!(tap, error = %e, "no route from the pod's own stack to the guest");
        }
    }
    if let Err(e) = result {
        // Everything above is ours: undo it without asking.
        let _ = ops.del_ingress(iface);
        let _ = ops.del_link(tap);
        return Err(e);
    }
    Ok(GuestNet {
        tap: tap.to_string(),
        ip,
        prefix,
        gateway,
        mac,
        mtu,
    })
}

/// Routes the namespace's own traffic for the guest's `ip` into the tap (see the module docs).
fn sidecar_path(
    ops: &dyn NetOps,
    tap: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
    gateway_mac: MacAddr,
) -> Result<(), SandboxError> {
    ops.set_link(tap, None, Some(gateway_mac), false)?;
    // Replies come from the pod IP, which is also `eth0`'s: accept them on the tap.
    ops.sysctl(&format!("net.ipv4.conf.{tap}.accept_local"), "1")?;
    ops.add_address(tap, SIDECAR_ADDR, 32)?;
    ops.neigh_permanent(tap, ip, mac)?;
    ops.route_replace(SIDECAR_TABLE, ip, tap, SIDECAR_ADDR)?;
    // The `local` table (rule 0) would deliver the pod IP to the namespace itself: move it
    // after a rule for locally made packets to the pod IP (once per namespace).
    let rules = ops.rules()?;
    let local_at = |priority: u32| {
        rules
            .iter()
            .any(|r| r.priority == priority && r.table == LOCAL_TABLE)
    };
    if local_at(0) {
        if !local_at(LOCAL_RULE_MOVED) {
            ops.add_rule(&Rule {
                priority: LOCAL_RULE_MOVED,
                table: LOCAL_TABLE,
                ..Rule::default()
            })?;
        }
        ops.del_rule(&Rule {
            priority: 0,
            table: LOCAL_TABLE,
            ..Rule::default()
        })?;
    }
    if !rules.iter().any(|r| r.priority == SIDECAR_TABLE) {
        ops.add_rule(&Rule {
            priority: SIDECAR_TABLE,
            table: SIDECAR_TABLE,
            to: Some(ip),
            iif: Some("lo".into()),
        })?;
    }
    // A filter without an action, before the redirect: the frame goes up the stack.
    ops.pass_up(tap, SIDECAR_ADDR)
}

/// The MAC address of `ip` on `iface`, resolving it first if needed (bounded: about a second).
fn neighbour_mac(ops: &dyn NetOps, iface: &str, ip: Ipv4Addr) -> Result<MacAddr, SandboxError> {
    // ARP on a local bridge answers in well under a millisecond: look again soon, then back
    // off to 50 ms steps (about a second in all).
    for attempt in 0..25u32 {
        if let Some(mac) = ops.neighbour(iface, ip)? {
            return Ok(mac);
        }
        if attempt % 5 == 0 {
            ops.probe(ip)?;
        }
        std::thread::sleep(std::time::Duration::from_millis(
            (2u64 << attempt.min(5)).min(50),
        ));
    }
    Err(net_err(
        "sidecar path",
        format!("the gateway {ip} does not answer ARP"),
    ))
}

fn redirect(ops: &dyn NetOps, from: &str, to: &str) -> Result<(), SandboxError> {
    ops.add_ingress(from)?;
    ops.redirect(from, to)
}

/// [`teardown_guest_net`] on any `NetOps`.
pub fn teardown_with(ops: &dyn NetOps, iface: &str, tap: &str) -> Result<(), SandboxError> {
    check_ifname(iface)?;
    check_ifname(tap)?;
    let links = ops.links()?;
    // Without this container's tap the redirect on the pod interface is not ours (another
    // unikernel's, when this one was refused): leave it. One left by a crash is replaced at
    // the next setup.
    if !links.iter().any(|l| l.name == tap) {
        return Ok(());
    }
    // A routed guest's tap carries the namespace's side of its /30, and its NAT table goes
    // with it; a tc-mode guest's pod interface has the redirect.
    if ops.ipv4_address(tap)?.map(|(a, _)| a) == Some(ROUTED_HOST_ADDR) {
        // Left behind, it would NAT the declared ports to a guest that is gone; the next
        // routed guest replaces it anyway.
        if let Err(e) = ops.del_nat_table() {
            tracing::warn!(tap, error = %e, "the guest's NAT table stays");
        }
    } else if links.iter().any(|l| l.name == iface) {
        let _ = ops.del_ingress(iface);
    }
    ops.del_link(tap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records each step as a line; answers queries from a pod with `eth0` 10.88.0.7/16
    /// behind gateway 10.88.0.1, whose MAC is known once it was probed.
    struct Fake {
        calls: RefCell<Vec<String>>,
        probes: RefCell<Vec<Ipv4Addr>>,
        links: Vec<Link>,
        tap_addr: Option<Ipv4Addr>,
        fail_on: Option<&'static str>,
    }

    impl Fake {
        fn step(&self, line: String) -> Result<(), SandboxError> {
            self.calls.borrow_mut().push(line.clone());
            if self.fail_on.is_some_and(|f| line.starts_with(f)) {
                return Err(net_err(&line, "boom"));
            }
            Ok(())
        }
    }

    impl NetOps for Fake {
        fn links(&self) -> Result<Vec<Link>, SandboxError> {
            self.step("links".into())?;
            Ok(self.links.clone())
        }
        fn ipv4_address(&self, dev: &str) -> Result<Option<(Ipv4Addr, u8)>, SandboxError> {
            self.step(format!("addr show {dev}"))?;
            Ok(match dev {
                "eth0" => Some((Ipv4Addr::new(10, 88, 0, 7), 16)),
                _ => self.tap_addr.map(|a| (a, 30)),
            })
        }
        fn default_gateway(&self) -> Result<Option<Ipv4Addr>, SandboxError> {
            self.step("route show default".into())?;
            Ok(Some(Ipv4Addr::new(10, 88, 0, 1)))
        }
        fn neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<Option<MacAddr>, SandboxError> {
            self.step(format!("neigh show {ip} dev {dev}"))?;
            Ok((!self.probes.borrow().is_empty()).then(|| "0a:58:0a:58:00:01".parse().unwrap()))
        }
        fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
            self.probes.borrow_mut().push(ip);
            Ok(())
        }
        fn add_tap(&self, name: &str) -> Result<(), SandboxError> {
            self.step(format!("tap add {name}"))
        }
        fn set_link(
            &self,
            dev: &str,
            mtu: Option<u32>,
            mac: Option<MacAddr>,
            up: bool,
        ) -> Result<(), SandboxError> {
            let mut line = format!("link set {dev}");
            if let Some(m) = mtu {
                line += &format!(" mtu {m}");
            }
            if let Some(m) = mac {
                line += &format!(" address {m}");
            }
            if up {
                line += " up";
            }
            self.step(line)
        }
        fn del_link(&self, dev: &str) -> Result<(), SandboxError> {
            self.step(format!("link del {dev}"))
        }
        fn move_link(&self, dev: &str, netns: &Path, name: &str) -> Result<(), SandboxError> {
            self.step(format!(
                "link set {dev} netns {} name {name}",
                netns.display()
            ))
        }
        fn add_address(&self, dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), SandboxError> {
            self.step(format!("addr add {ip}/{prefix} dev {dev}"))
        }
        fn sysctl(&self, key: &str, value: &str) -> Result<(), SandboxError> {
            self.step(format!("sysctl {key}={value}"))
        }
        fn add_ingress(&self, dev: &str) -> Result<(), SandboxError> {
            self.step(format!("qdisc add {dev} ingress"))
        }
        fn del_ingress(&self, dev: &str) -> Result<(), SandboxError> {
            self.step(format!("qdisc del {dev} ingress"))
        }
        fn redirect(&self, from: &str, to: &str) -> Result<(), SandboxError> {
            self.step(format!("filter add {from} redirect {to}"))
        }
        fn pass_up(&self, dev: &str, dst: Ipv4Addr) -> Result<(), SandboxError> {
            self.step(format!("filter add {dev} pass {dst}"))
        }
        fn neigh_permanent(
            &self,
            dev: &str,
            ip: Ipv4Addr,
            mac: MacAddr,
        ) -> Result<(), SandboxError> {
            self.step(format!(
                "neigh replace {ip} lladdr {mac} dev {dev} permanent"
            ))
        }
        fn route_replace(
            &self,
            table: u32,
            dst: Ipv4Addr,
            dev: &str,
            src: Ipv4Addr,
        ) -> Result<(), SandboxError> {
            self.step(format!(
                "route replace {dst}/32 dev {dev} src {src} table {table}"
            ))
        }
        fn rules(&self) -> Result<Vec<Rule>, SandboxError> {
            self.step("rule show".into())?;
            Ok(vec![
                Rule {
                    priority: 0,
                    table: 255,
                    ..Rule::default()
                },
                Rule {
                    priority: 32766,
                    table: 254,
                    ..Rule::default()
                },
            ])
        }
        fn add_rule(&self, r: &Rule) -> Result<(), SandboxError> {
            self.step(format!(
                "rule add pref {} to {:?} iif {:?} lookup {}",
                r.priority, r.to, r.iif, r.table
            ))
        }
        fn del_rule(&self, r: &Rule) -> Result<(), SandboxError> {
            self.step(format!("rule del pref {} lookup {}", r.priority, r.table))
        }
        fn nat_table(&self, rules: &[NatRule]) -> Result<(), SandboxError> {
            let rules: Vec<String> = rules
                .iter()
                .map(|r| format!("{}: {r}", r.chain.name()))
                .collect();
            self.step(format!("nat table {}", rules.join("; ")))
        }
        fn del_nat_table(&self) -> Result<(), SandboxError> {
            self.step("nat table delete".into())
        }
    }

    fn link(index: u32, name: &str, lower_up: bool, tun: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mtu: if name == "eth0" { 1450 } else { 1500 },
            mac: Some(if name == "eth0" {
                "0a:58:0a:58:00:07".parse().unwrap()
            } else {
                "aa:bb:cc:dd:ee:ff".parse().unwrap()
            }),
            lower_up,
            tun,
        }
    }

    fn fake(extra: Option<Link>, fail_on: Option<&'static str>) -> Fake {
        let mut links = vec![link(1, "lo", true, false), link(2, "eth0", true, false)];
        links.extend(extra);
        Fake {
            calls: RefCell::new(vec![]),
            probes: RefCell::new(vec![]),
            links,
            tap_addr: None,
            fail_on,
        }
    }

    fn steps(f: &Fake) -> Vec<String> {
        f.calls.borrow().clone()
    }

    #[test]
    fn setup_moves_address_to_guest_and_redirects_both_ways() {
        let f = fake(None, None);
        let n = setup_with(&f, "eth0", "crtapabc").unwrap();
        assert_eq!(n.ip, Ipv4Addr::new(10, 88, 0, 7));
        assert_eq!(n.prefix, 16);
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(n.mac.to_string(), "0a:58:0a:58:00:07");
        assert_eq!(n.mtu, 1450);
        // The gateway is probed before the tap is made and its MAC resolved before the
        // redirect takes ARP away.
        assert_eq!(*f.probes.borrow(), [Ipv4Addr::new(10, 88, 0, 1)]);
        let calls = steps(&f);
        let tap = calls.iter().position(|c| c.starts_with("tap add")).unwrap();
        assert_eq!(calls[tap - 1], "neigh show 10.88.0.1 dev eth0");
        let want = [
            "tap add crtapabc",
            "link set crtapabc mtu 1450 up",
            "neigh show 10.88.0.1 dev eth0",
            "qdisc del eth0 ingress",
            "qdisc add eth0 ingress",
            "filter add eth0 redirect crtapabc",
            "qdisc add crtapabc ingress",
            "filter add crtapabc redirect eth0",
            "link set crtapabc address 0a:58:0a:58:00:01",
            "sysctl net.ipv4.conf.crtapabc.accept_local=1",
            "addr add 169.254.77.2/32 dev crtapabc",
            "neigh replace 10.88.0.7 lladdr 0a:58:0a:58:00:07 dev crtapabc permanent",
            "route replace 10.88.0.7/32 dev crtapabc src 169.254.77.2 table 77",
            "rule show",
            "rule add pref 100 to None iif None lookup 255",
            "rule del pref 0 lookup 255",
            "rule add pref 77 to Some(10.88.0.7) iif Some(\"lo\") lookup 77",
            "filter add crtapabc pass 169.254.77.2",
        ];
        assert_eq!(&calls[tap..], want);
    }

    #[test]
    fn stale_taps_are_removed_live_ones_refuse() {
        let f = fake(Some(link(3, "crtapold", false, true)), None);
        setup_with(&f, "eth0", "crtapnew").unwrap();
        assert!(steps(&f).iter().any(|c| c == "link del crtapold"));

        let f = fake(Some(link(3, "crtapnew", true, true)), None);
        setup_with(&f, "eth0", "crtapnew").unwrap();
        assert!(steps(&f).iter().any(|c| c == "link del crtapnew"));

        let f = fake(Some(link(3, "crtapother", true, true)), None);
        let err = setup_with(&f, "eth0", "crtapnew").unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(!steps(&f).iter().any(|c| c.starts_with("tap add")));

        // Not a tap of crid's: left alone.
        let f = fake(Some(link(3, "crtapveth", true, false)), None);
        setup_with(&f, "eth0", "crtapnew").unwrap();
        assert!(!steps(&f).iter().any(|c| c == "link del crtapveth"));
    }

    #[test]
    fn an_adopted_tap_is_wired_as_it_is_and_the_guest_keeps_its_mac() {
        let guest_mac: MacAddr = "02:c1:d0:00:00:01".parse().unwrap();
        // Taking over: the pod interface takes the guest's MAC, which a probe of the gateway
        // announces even though its MAC is known; the tap (the VMM's, carrier up) stays.
        let f = fake(Some(link(3, "crtapabc", true, true)), None);
        f.probes.borrow_mut().push(Ipv4Addr::new(10, 88, 0, 1));
        let n = setup_tc(&f, "eth0", "crtapabc", Some(guest_mac)).unwrap();
        assert_eq!(n.mac, guest_mac);
        assert_eq!(n.ip, Ipv4Addr::new(10, 88, 0, 7));
        assert_eq!(f.probes.borrow().len(), 2, "probed again");
        let calls = steps(&f);
        assert!(calls.contains(&"link set eth0 address 02:c1:d0:00:00:01".to_owned()));
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("tap add") || c.starts_with("link del")),
            "{calls:?}"
        );
        assert!(calls.contains(&"link set crtapabc mtu 1450 up".to_owned()));
        assert!(calls.contains(&"filter add eth0 redirect crtapabc".to_owned()));
        assert!(calls.contains(&format!(
            "neigh replace 10.88.0.7 lladdr {guest_mac} dev crtapabc permanent"
        )));

        // Routed: eth0 is left alone; the guest keeps its MAC behind the tap.
        let f = fake(Some(link(3, "crtapabc", true, true)), None);
        let ports = [GuestPort {
            port: 8080,
            udp: false,
        }];
        let n = setup_routed(&f, "eth0", "crtapabc", &ports, Some(guest_mac)).unwrap();
        assert_eq!((n.ip, n.mac), (ROUTED_GUEST_ADDR, guest_mac));
        let calls = steps(&f);
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("tap add") || c.starts_with("link del")),
            "{calls:?}"
        );
        assert!(!calls.iter().any(|c| c.starts_with("link set eth0")));
    }

    #[test]
    fn failure_midway_tears_down() {
        let f = fake(None, Some("filter add eth0"));
        assert!(setup_with(&f, "eth0", "crtapx").is_err());
        let calls = steps(&f);
        assert_eq!(
            &calls[calls.len() - 2..],
            ["qdisc del eth0 ingress", "link del crtapx"]
        );
    }

    #[test]
    fn teardown_of_a_refused_guest_leaves_the_live_guests_redirect() {
        let f = fake(Some(link(3, "crtapother", true, true)), None);
        assert!(setup_with(&f, "eth0", "crtapnew").is_err());
        teardown_with(&f, "eth0", "crtapnew").unwrap();
        let calls = steps(&f);
        assert!(
            !calls.iter().any(|c| c.starts_with("qdisc del")),
            "{calls:?}"
        );

        // tc mode: the redirect and the tap go; the NAT table is not touched.
        let f = fake(Some(link(3, "crtapnew", true, true)), None);
        teardown_with(&f, "eth0", "crtapnew").unwrap();
        assert_eq!(
            &steps(&f)[1..],
            [
                "addr show crtapnew",
                "qdisc del eth0 ingress",
                "link del crtapnew"
            ]
        );

        // Routed mode: the NAT table and the tap go.
        let mut f = fake(Some(link(3, "crtapnew", true, true)), None);
        f.tap_addr = Some(ROUTED_HOST_ADDR);
        teardown_with(&f, "eth0", "crtapnew").unwrap();
        assert_eq!(
            &steps(&f)[1..],
            [
                "addr show crtapnew",
                "nat table delete",
                "link del crtapnew"
            ]
        );
    }

    #[test]
    fn routed_mode_keeps_eth0_and_nats_the_declared_ports() {
        let f = fake(None, None);
        let ports = [
            GuestPort {
                port: 8080,
                udp: false,
            },
            GuestPort {
                port: 8012,
                udp: false,
            },
            GuestPort {
                port: 53,
                udp: true,
            },
        ];
        let n = setup_routed_with(&f, "eth0", "crtapabc", &ports).unwrap();
        assert_eq!(n.ip, ROUTED_GUEST_ADDR);
        assert_eq!(n.prefix, 30);
        assert_eq!(n.gateway, Some(ROUTED_HOST_ADDR));
        assert_eq!(n.mtu, 1450);
        let calls = steps(&f);
        // Nothing touches eth0: no qdisc, no address or MAC change.
        assert!(!calls.iter().any(|c| c.contains("eth0")
            && !c.starts_with("addr show")
            && !c.starts_with("nat table")));
        let want = [
            "tap add crtapabc",
            "link set crtapabc mtu 1450 up",
            "addr add 169.254.77.5/30 dev crtapabc",
            "sysctl net.ipv4.ip_forward=1",
            "sysctl net.ipv4.conf.crtapabc.route_localnet=1",
        ];
        assert_eq!(&calls[2..7], want);
        // One NAT table request (it replaces a table a crash left), every port of each
        // protocol DNATed from the pod IP on eth0 and, for the namespace's own traffic, from
        // the pod IP and 127.0.0.1.
        let nat: Vec<_> = calls.iter().filter(|c| c.starts_with("nat")).collect();
        assert_eq!(nat.len(), 1);
        let rules: Vec<&str> = nat[0]
            .strip_prefix("nat table ")
            .unwrap()
            .split("; ")
            .collect();
        assert_eq!(
            rules,
            [
                "prerouting: iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 8080 dnat to 169.254.77.6",
                "prerouting: iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 8012 dnat to 169.254.77.6",
                "prerouting: iifname \"eth0\" ip daddr 10.88.0.7 udp dport 53 dnat to 169.254.77.6",
                "output: ip daddr 10.88.0.7 tcp dport 8080 dnat to 169.254.77.6",
                "output: ip daddr 10.88.0.7 tcp dport 8012 dnat to 169.254.77.6",
                "output: ip daddr 10.88.0.7 udp dport 53 dnat to 169.254.77.6",
                "output: ip daddr 127.0.0.1 tcp dport 8080 dnat to 169.254.77.6",
                "output: ip daddr 127.0.0.1 tcp dport 8012 dnat to 169.254.77.6",
                "output: ip daddr 127.0.0.1 udp dport 53 dnat to 169.254.77.6",
                "postrouting: oifname \"crtapabc\" ip saddr 127.0.0.0/8 masquerade",
                "postrouting: oifname \"eth0\" ip saddr 169.254.77.6 snat to 10.88.0.7",
            ]
        );

        // A refused table: the tap goes, and whatever part of a table there was.
        let f = fake(None, Some("nat table prerouting"));
        assert!(setup_routed_with(&f, "eth0", "crtapx", &ports).is_err());
        let calls = steps(&f);
        assert_eq!(
            &calls[calls.len() - 2..],
            ["nat table delete", "link del crtapx"]
        );
    }

    #[test]
    fn missing_interface_and_bad_names() {
        let f = fake(None, None);
        assert!(setup_with(&f, "eth1", "crtapx").is_err());
        assert!(setup_with(&f, "eth0", "bad name").is_err());
        assert!(setup_with(&f, "eth0", "eth0").is_err());
        assert_eq!(tap_name("0123456789abcdef"), "crtap0123456789");
        assert!(tap_name("0123456789abcdef").len() <= 15);
    }

    #[test]
    fn teardown_is_idempotent() {
        let f = fake(None, None);
        teardown_with(&f, "eth0", "crtapx").unwrap();
        assert!(!steps(&f).iter().any(|c| c.starts_with("link del")));
    }
}
