//! A guest's network inside the pod's network namespace.
//!
//! Two modes. A guest whose container declares ports is *routed* ([`setup_routed_with`]: a
//! private /30 behind the tap, nftables NAT of the declared ports, the pod interface left to
//! the sidecars). Otherwise the guest *takes over* the pod interface, as described next.
//!
//! The CNI plugins configured the pod's interface (`eth0`). A unikernel container gets a tap
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
//! Commands (iproute2's `ip` and `tc`, `sysctl`, `nft`) run from a thread that entered the
//! pod's namespace, so they inherit it without an `nsenter` per command, behind [`Runner`]
//! so the sequence is unit-tested without root.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use super::{GuestNet, MacAddr, qemu::check_ifname};
use crate::SandboxError;

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
const SIDECAR_TABLE: &str = "77";

/// Runs a program inside the pod's network namespace and returns its stdout.
pub trait Runner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, SandboxError>;

    /// Sends one datagram to `ip` from inside the namespace, so the kernel resolves its MAC.
    fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError>;
}

/// Runs commands from a thread that has entered the pod's network namespace (see
/// [`in_netns`]): the programs inherit the namespace, with no `nsenter` process per command,
/// and the neighbour probe is a plain socket.
struct InNetns;

impl Runner for InNetns {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, SandboxError> {
        // Nothing of crid's environment but PATH (the tools are found on it).
        let out = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SandboxError::GuestNetwork {
                op: format!("{program} {}", args.join(" ")),
                reason: format!("cannot run {program}: {e}"),
            })?;
        if !out.status.success() {
            return Err(SandboxError::GuestNetwork {
                op: format!("{program} {}", args.join(" ")),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| net_err("probe", e.to_string()))?;
        // The discard port; only the neighbour resolution matters.
        let _ = socket.send_to(&[0], (ip, 9));
        Ok(())
    }
}

/// Runs `f` with an [`InNetns`] runner on a dedicated thread inside the namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(&dyn Runner) -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    cni::netns::run_in(
        &[(cni::netns::NsKind::Net, netns.to_path_buf())],
        move || Ok(f(&InNetns)),
    )
    .map_err(|e| net_err("enter the pod network namespace", e.to_string()))?
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct AddrIface {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    gateway: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, s: &str) -> Result<T, SandboxError> {
    serde_json::from_str(s).map_err(|e| SandboxError::GuestNetwork {
        op: what.to_string(),
        reason: format!("unexpected ip output: {e}"),
    })
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
    in_netns(netns, move |r| {
        if ports.is_empty() {
            setup_with(r, &iface, &tap)
        } else {
            setup_routed_with(r, &iface, &tap, &ports)
        }
    })
}

/// A container port the guest serves (kubelet's `io.kubernetes.container.ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestPort {
    pub port: u16,
    pub udp: bool,
}

/// The namespace's side of the routed guest link.
pub const ROUTED_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 5);
/// The guest's address in routed mode.
pub const ROUTED_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 6);
/// The guest's MAC in routed mode (locally administered; one guest per pod network).
const ROUTED_GUEST_MAC: MacAddr = MacAddr([0x02, 0x00, 0xa9, 0xfe, 0x4d, 0x06]);
/// crid's nftables table in the pod's namespace (routed mode).
const NFT_TABLE: &str = "crid_guest";

/// Routed mode, for pods that mix runc sidecars and a guest (Knative's queue-proxy): the pod
/// interface stays as CNI made it, for the sidecars; the guest sits on a private link-local
/// /30 behind the tap ([`ROUTED_GUEST_ADDR`], gateway [`ROUTED_HOST_ADDR`]) and the pod
/// namespace, which forwards, NATs in an nftables table of its own:
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
    r: &dyn Runner,
    iface: &str,
    tap: &str,
    ports: &[GuestPort],
) -> Result<GuestNet, SandboxError> {
    check_ifname(iface)?;
    check_ifname(tap)?;
    if iface == tap {
        return Err(SandboxError::InvalidArgument {
            reason: "the tap cannot be the pod interface".into(),
        });
    }
    let links: Vec<Link> = parse("ip link", &r.run("ip", &["-j", "-d", "link", "show"])?)?;
    let eth = links
        .iter()
        .find(|l| l.ifname == iface)
        .ok_or_else(|| net_err("setup", format!("the pod has no interface {iface}")))?;
    let mtu = if eth.mtu == 0 { 1500 } else { eth.mtu };
    let addrs: Vec<AddrIface> = parse(
        "ip addr",
        &r.run("ip", &["-j", "-4", "addr", "show", "dev", iface])?,
    )?;
    let pod_ip: Ipv4Addr = addrs
        .iter()
        .flat_map(|a| a.addr_info.iter())
        .find(|a| a.family == "inet")
        .and_then(|a| a.local.parse().ok())
        .ok_or_else(|| net_err("setup", format!("{iface} has no IPv4 address")))?;
    clear_taps(r, &links, tap)?;
    let nft = nft_ruleset(iface, tap, pod_ip, ports);
    let mtu_s = mtu.to_string();
    let host = format!("{ROUTED_HOST_ADDR}/30");
    let result = (|| {
        r.run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
        r.run("ip", &["link", "set", "dev", tap, "mtu", &mtu_s, "up"])?;
        r.run("ip", &["addr", "add", &host, "dev", tap])?;
        r.run(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                &format!("net.ipv4.conf.{tap}.route_localnet=1"),
            ],
        )?;
        // A table left by a crash would keep stale rules.
        let _ = r.run("nft", &[&format!("delete table ip {NFT_TABLE}")]);
        r.run("nft", &[&nft])
    })();
    if let Err(e) = result {
        let _ = r.run("nft", &[&format!("delete table ip {NFT_TABLE}")]);
        let _ = r.run("ip", &["link", "del", "dev", tap]);
        return Err(e);
    }
    Ok(GuestNet {
        tap: tap.to_string(),
        ip: ROUTED_GUEST_ADDR,
        prefix: 30,
        gateway: Some(ROUTED_HOST_ADDR),
        mac: ROUTED_GUEST_MAC,
        mtu,
    })
}

/// The routed mode's nftables commands, one `nft` invocation (see [`setup_routed_with`]).
fn nft_ruleset(iface: &str, tap: &str, pod_ip: Ipv4Addr, ports: &[GuestPort]) -> String {
    let t = NFT_TABLE;
    let guest = ROUTED_GUEST_ADDR;
    let mut cmds = vec![
        format!("add table ip {t}"),
        format!(
            "add chain ip {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}"
        ),
        format!("add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}"),
        format!(
            "add chain ip {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}"
        ),
    ];
    for (proto, udp) in [("tcp", false), ("udp", true)] {
        let list: Vec<String> = ports
            .iter()
            .filter(|p| p.udp == udp)
            .map(|p| p.port.to_string())
            .collect();
        if list.is_empty() {
            continue;
        }
        let set = list.join(", ");
        cmds.push(format!(
            "add rule ip {t} prerouting iifname \"{iface}\" ip daddr {pod_ip} {proto} dport {{ {set} }} dnat to {guest}"
        ));
        cmds.push(format!(
            "add rule ip {t} output ip daddr {{ {pod_ip}, 127.0.0.1 }} {proto} dport {{ {set} }} dnat to {guest}"
        ));
    }
    cmds.push(format!(
        "add rule ip {t} postrouting oifname \"{tap}\" ip saddr 127.0.0.0/8 masquerade"
    ));
    cmds.push(format!(
        "add rule ip {t} postrouting oifname \"{iface}\" ip saddr {guest} snat to {pod_ip}"
    ));
    cmds.join("; ")
}

/// Removes crid taps left by a crash (no carrier) and this container's own stale tap; a live
/// tap of another container is `PodHasUnikernel` (one guest per pod network).
fn clear_taps(r: &dyn Runner, links: &[Link], tap: &str) -> Result<(), SandboxError> {
    for link in links {
        let is_tun = link
            .linkinfo
            .as_ref()
            .and_then(|li| li.info_kind.as_deref())
            == Some("tun");
        if !link.ifname.starts_with(TAP_PREFIX) || !is_tun {
            continue;
        }
        if link.ifname != tap && link.flags.iter().any(|f| f == "LOWER_UP") {
            return Err(SandboxError::PodHasUnikernel {
                tap: link.ifname.clone(),
            });
        }
        tracing::info!(tap = %link.ifname, "removing a stale guest tap");
        r.run("ip", &["link", "del", "dev", &link.ifname])?;
    }
    Ok(())
}

/// Removes the tap and the ingress qdisc; fine when they are already gone.
pub fn teardown_guest_net(netns: &Path, iface: &str, tap: &str) -> Result<(), SandboxError> {
    let (iface, tap) = (iface.to_owned(), tap.to_owned());
    in_netns(netns, move |r| teardown_with(r, &iface, &tap))
}

/// [`setup_guest_net`] with an injectable runner.
pub fn setup_with(r: &dyn Runner, iface: &str, tap: &str) -> Result<GuestNet, SandboxError> {
    check_ifname(iface)?;
    check_ifname(tap)?;
    if iface == tap {
        return Err(SandboxError::InvalidArgument {
            reason: "the tap cannot be the pod interface".into(),
        });
    }
    let links: Vec<Link> = parse("ip link", &r.run("ip", &["-j", "-d", "link", "show"])?)?;
    let eth = links
        .iter()
        .find(|l| l.ifname == iface)
        .ok_or_else(|| net_err("setup", format!("the pod has no interface {iface}")))?;
    let mac: MacAddr = eth
        .address
        .as_deref()
        .ok_or_else(|| net_err("setup", format!("{iface} has no MAC address")))?
        .parse()?;
    let mtu = if eth.mtu == 0 { 1500 } else { eth.mtu };

    let addrs: Vec<AddrIface> = parse(
        "ip addr",
        &r.run("ip", &["-j", "-4", "addr", "show", "dev", iface])?,
    )?;
    let addr = addrs
        .iter()
        .flat_map(|a| a.addr_info.iter())
        .find(|a| a.family == "inet")
        .ok_or_else(|| net_err("setup", format!("{iface} has no IPv4 address")))?;
    let ip: Ipv4Addr = addr
        .local
        .parse()
        .map_err(|_| net_err("setup", format!("bad address {:?}", addr.local)))?;
    let routes: Vec<Route> = parse(
        "ip route",
        &r.run("ip", &["-j", "-4", "route", "show", "default"])?,
    )?;
    let gateway = routes
        .iter()
        .find_map(|rt| rt.gateway.as_deref())
        .and_then(|g| g.parse::<Ipv4Addr>().ok());

    clear_taps(r, &links, tap)?;

    // Before the redirect, which sends every ARP reply on `eth0` to the guest.
    let gateway_mac = gateway.map(|g| neighbour_mac(r, iface, g));
    let mtu_s = mtu.to_string();
    let result = (|| {
        r.run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
        r.run("ip", &["link", "set", "dev", tap, "mtu", &mtu_s, "up"])?;
        // A qdisc left by a crash would make "add" fail; it redirected to a dead tap anyway.
        let _ = r.run("tc", &["qdisc", "del", "dev", iface, "ingress"]);
        redirect(r, iface, tap)?;
        redirect(r, tap, iface)
    })();
    if result.is_ok() {
        // Without it the guest still serves the pod IP to everyone but the pod's sidecars.
        let routed = match gateway_mac {
            Some(Ok(gateway_mac)) => sidecar_path(r, tap, ip, mac, gateway_mac),
            Some(Err(e)) => Err(e),
            None => Err(net_err("sidecar path", "the pod has no gateway")),
        };
        if let Err(e) = routed {
            tracing::warn!(tap, error = %e, "no route from the pod's own stack to the guest");
        }
    }
    if let Err(e) = result {
        // Everything above is ours: undo it without asking.
        let _ = r.run("tc", &["qdisc", "del", "dev", iface, "ingress"]);
        let _ = r.run("ip", &["link", "del", "dev", tap]);
        return Err(e);
    }
    Ok(GuestNet {
        tap: tap.to_string(),
        ip,
        prefix: addr.prefixlen,
        gateway,
        mac,
        mtu,
    })
}

/// Routes the namespace's own traffic for the guest's `ip` into the tap (see the module docs).
fn sidecar_path(
    r: &dyn Runner,
    tap: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
    gateway_mac: MacAddr,
) -> Result<(), SandboxError> {
    let (ip_s, host, sidecar) = (ip.to_string(), format!("{ip}/32"), SIDECAR_ADDR.to_string());
    r.run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            tap,
            "address",
            &gateway_mac.to_string(),
        ],
    )?;
    // Replies come from the pod IP, which is also `eth0`'s: accept them on the tap.
    r.run(
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{tap}.accept_local=1")],
    )?;
    r.run("ip", &["addr", "add", &format!("{sidecar}/32"), "dev", tap])?;
    r.run(
        "ip",
        &[
            "neigh",
            "replace",
            &ip_s,
            "lladdr",
            &mac.to_string(),
            "dev",
            tap,
            "nud",
            "permanent",
        ],
    )?;
    r.run(
        "ip",
        &[
            "route",
            "replace",
            &host,
            "dev",
            tap,
            "src",
            &sidecar,
            "table",
            SIDECAR_TABLE,
        ],
    )?;
    // The `local` table (rule 0) would deliver the pod IP to the namespace itself: move it
    // after a rule for locally made packets to the pod IP (once per namespace).
    let rules = r.run("ip", &["rule", "show"])?;
    if rules
        .lines()
        .any(|l| l.starts_with("0:") && l.contains("lookup local"))
    {
        r.run("ip", &["rule", "add", "pref", "100", "lookup", "local"])?;
        r.run("ip", &["rule", "del", "pref", "0", "lookup", "local"])?;
    }
    if !rules
        .lines()
        .any(|l| l.starts_with(&format!("{SIDECAR_TABLE}:")))
    {
        r.run(
            "ip",
            &[
                "rule",
                "add",
                "pref",
                SIDECAR_TABLE,
                "to",
                &host,
                "iif",
                "lo",
                "lookup",
                SIDECAR_TABLE,
            ],
        )?;
    }
    // A filter without an action, before the redirect: the frame goes up the stack.
    r.run(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            tap,
            "parent",
            "ffff:",
            "prio",
            "1",
            "protocol",
            "ip",
            "u32",
            "match",
            "ip",
            "dst",
            &format!("{sidecar}/32"),
            "flowid",
            "1:1",
        ],
    )?;
    Ok(())
}

/// The MAC address of `ip` on `iface`, resolving it first if needed (bounded: about a second).
fn neighbour_mac(r: &dyn Runner, iface: &str, ip: Ipv4Addr) -> Result<MacAddr, SandboxError> {
    #[derive(Deserialize)]
    struct Neighbour {
        #[serde(default)]
        lladdr: Option<String>,
    }
    let ip_s = ip.to_string();
    // ARP on a local bridge answers in well under a millisecond: look again soon, then back
    // off to 50 ms steps (about a second in all).
    for attempt in 0..25u32 {
        let out = r.run("ip", &["-j", "neigh", "show", &ip_s, "dev", iface])?;
        let found: Vec<Neighbour> = if out.trim().is_empty() {
            Vec::new()
        } else {
            parse("ip neigh", &out)?
        };
        if let Some(mac) = found.iter().find_map(|n| n.lladdr.as_deref()) {
            return mac.parse();
        }
        if attempt % 5 == 0 {
            r.probe(ip)?;
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

fn redirect(r: &dyn Runner, from: &str, to: &str) -> Result<(), SandboxError> {
    r.run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
    r.run(
        "tc",
        &[
            "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ],
    )?;
    Ok(())
}

/// [`teardown_guest_net`] with an injectable runner.
pub fn teardown_with(r: &dyn Runner, iface: &str, tap: &str) -> Result<(), SandboxError> {
    check_ifname(iface)?;
    check_ifname(tap)?;
    let links: Vec<Link> = parse("ip link", &r.run("ip", &["-j", "link", "show"])?)?;
    // Without this container's tap the redirect on the pod interface is not ours (another
    // unikernel's, when this one was refused): leave it. One left by a crash is replaced at
    // the next setup.
    if !links.iter().any(|l| l.ifname == tap) {
        return Ok(());
    }
    if links.iter().any(|l| l.ifname == iface) {
        let _ = r.run("tc", &["qdisc", "del", "dev", iface, "ingress"]);
    }
    // Routed mode's table; absent in tc mode.
    let _ = r.run("nft", &[&format!("delete table ip {NFT_TABLE}")]);
    r.run("ip", &["link", "del", "dev", tap])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake {
        calls: RefCell<Vec<String>>,
        probes: RefCell<Vec<Ipv4Addr>>,
        links: String,
        fail_on: Option<&'static str>,
    }

    impl Runner for Fake {
        fn run(&self, program: &str, args: &[&str]) -> Result<String, SandboxError> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.borrow_mut().push(line.clone());
            if self.fail_on.is_some_and(|f| line.starts_with(f)) {
                return Err(net_err(&line, "boom"));
            }
            Ok(match line.as_str() {
                "ip -j -d link show" | "ip -j link show" => self.links.clone(),
                "ip -j -4 addr show dev eth0" => {
                    r#"[{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.88.0.7","prefixlen":16}]}]"#.into()
                }
                "ip -j -4 route show default" => r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0"}]"#.into(),
                "ip -j neigh show 10.88.0.1 dev eth0" if !self.probes.borrow().is_empty() => {
                    r#"[{"dst":"10.88.0.1","lladdr":"0a:58:0a:58:00:01","state":["REACHABLE"]}]"#.into()
                }
                "ip rule show" => "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n".into(),
                _ => String::new(),
            })
        }

        fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
            self.probes.borrow_mut().push(ip);
            Ok(())
        }
    }

    fn links(extra: &str) -> String {
        format!(
            r#"[{{"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00","flags":["LOOPBACK","UP"]}},
               {{"ifname":"eth0","mtu":1450,"address":"0a:58:0a:58:00:07","flags":["UP","LOWER_UP"]}}{extra}]"#
        )
    }

    fn fake(extra: &str, fail_on: Option<&'static str>) -> Fake {
        Fake {
            calls: RefCell::new(vec![]),
            probes: RefCell::new(vec![]),
            links: links(extra),
            fail_on,
        }
    }

    #[test]
    fn setup_moves_address_to_guest_and_redirects_both_ways() {
        let f = fake("", None);
        let n = setup_with(&f, "eth0", "crtapabc").unwrap();
        assert_eq!(n.ip, Ipv4Addr::new(10, 88, 0, 7));
        assert_eq!(n.prefix, 16);
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(n.mac.to_string(), "0a:58:0a:58:00:07");
        assert_eq!(n.mtu, 1450);
        // The gateway's MAC is resolved (by a probe) before the redirect takes ARP away.
        assert_eq!(*f.probes.borrow(), [Ipv4Addr::new(10, 88, 0, 1)]);
        let calls = f.calls.borrow();
        let first_neigh = calls
            .iter()
            .position(|c| c.starts_with("ip -j neigh"))
            .unwrap();
        let tuntap = calls
            .iter()
            .position(|c| c.starts_with("ip tuntap"))
            .unwrap();
        assert!(first_neigh < tuntap);
        let calls: Vec<&str> = calls
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("ip -j neigh"))
            .collect();
        let want = [
            "ip tuntap add dev crtapabc mode tap",
            "ip link set dev crtapabc mtu 1450 up",
            "tc qdisc del dev eth0 ingress",
            "tc qdisc add dev eth0 ingress",
            "tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev crtapabc",
            "tc qdisc add dev crtapabc ingress",
            "tc filter add dev crtapabc parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0",
        ];
        assert_eq!(&calls[3..10], want);
        let want = [
            "ip link set dev crtapabc address 0a:58:0a:58:00:01",
            "sysctl -qw net.ipv4.conf.crtapabc.accept_local=1",
            "ip addr add 169.254.77.2/32 dev crtapabc",
            "ip neigh replace 10.88.0.7 lladdr 0a:58:0a:58:00:07 dev crtapabc nud permanent",
            "ip route replace 10.88.0.7/32 dev crtapabc src 169.254.77.2 table 77",
            "ip rule show",
            "ip rule add pref 100 lookup local",
            "ip rule del pref 0 lookup local",
            "ip rule add pref 77 to 10.88.0.7/32 iif lo lookup 77",
            "tc filter add dev crtapabc parent ffff: prio 1 protocol ip u32 match ip dst 169.254.77.2/32 flowid 1:1",
        ];
        assert_eq!(&calls[10..], want);
    }

    #[test]
    fn stale_taps_are_removed_live_ones_refuse() {
        let stale = r#",{"ifname":"crtapold","mtu":1500,"address":"aa:bb:cc:dd:ee:ff","flags":["NO-CARRIER","BROADCAST","UP"],"linkinfo":{"info_kind":"tun"}}"#;
        let f = fake(stale, None);
        setup_with(&f, "eth0", "crtapnew").unwrap();
        assert!(
            f.calls
                .borrow()
                .iter()
                .any(|c| c == "ip link del dev crtapold")
        );

        let own = r#",{"ifname":"crtapnew","mtu":1500,"address":"aa:bb:cc:dd:ee:ff","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"tun"}}"#;
        let f = fake(own, None);
        setup_with(&f, "eth0", "crtapnew").unwrap();
        assert!(
            f.calls
                .borrow()
                .iter()
                .any(|c| c == "ip link del dev crtapnew")
        );

        let live = r#",{"ifname":"crtapother","mtu":1500,"address":"aa:bb:cc:dd:ee:ff","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"tun"}}"#;
        let f = fake(live, None);
        let err = setup_with(&f, "eth0", "crtapnew").unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(!f.calls.borrow().iter().any(|c| c.contains("tuntap")));
    }

    #[test]
    fn failure_midway_tears_down() {
        let f = fake("", Some("tc filter add dev eth0"));
        assert!(setup_with(&f, "eth0", "crtapx").is_err());
        let calls = f.calls.borrow();
        assert_eq!(
            &calls[calls.len() - 2..],
            ["tc qdisc del dev eth0 ingress", "ip link del dev crtapx"]
        );
    }

    #[test]
    fn teardown_of_a_refused_guest_leaves_the_live_guests_redirect() {
        let live = r#",{"ifname":"crtapother","mtu":1500,"address":"aa:bb:cc:dd:ee:ff","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"tun"}}"#;
        let f = fake(live, None);
        assert!(setup_with(&f, "eth0", "crtapnew").is_err());
        teardown_with(&f, "eth0", "crtapnew").unwrap();
        let calls = f.calls.borrow();
        assert!(
            !calls.iter().any(|c| c.starts_with("tc qdisc del")),
            "{calls:?}"
        );

        let own = r#",{"ifname":"crtapnew","mtu":1500,"address":"aa:bb:cc:dd:ee:ff","flags":["UP","LOWER_UP"],"linkinfo":{"info_kind":"tun"}}"#;
        let f = fake(own, None);
        teardown_with(&f, "eth0", "crtapnew").unwrap();
        let calls = f.calls.borrow();
        assert_eq!(
            &calls[1..],
            [
                "tc qdisc del dev eth0 ingress",
                "nft delete table ip crid_guest",
                "ip link del dev crtapnew"
            ]
        );
    }

    #[test]
    fn routed_mode_keeps_eth0_and_nats_the_declared_ports() {
        let f = fake("", None);
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
        let calls = f.calls.borrow();
        // Nothing touches eth0: no qdisc, no address or MAC change.
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("dev eth0") && !c.starts_with("ip -j"))
        );
        let want = [
            "ip tuntap add dev crtapabc mode tap",
            "ip link set dev crtapabc mtu 1450 up",
            "ip addr add 169.254.77.5/30 dev crtapabc",
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.crtapabc.route_localnet=1",
            "nft delete table ip crid_guest",
        ];
        assert_eq!(&calls[2..7], want);
        let nft = &calls[7];
        for rule in [
            "add rule ip crid_guest prerouting iifname \"eth0\" ip daddr 10.88.0.7 tcp dport { 8080, 8012 } dnat to 169.254.77.6",
            "add rule ip crid_guest output ip daddr { 10.88.0.7, 127.0.0.1 } tcp dport { 8080, 8012 } dnat to 169.254.77.6",
            "add rule ip crid_guest output ip daddr { 10.88.0.7, 127.0.0.1 } udp dport { 53 } dnat to 169.254.77.6",
            "add rule ip crid_guest postrouting oifname \"crtapabc\" ip saddr 127.0.0.0/8 masquerade",
            "add rule ip crid_guest postrouting oifname \"eth0\" ip saddr 169.254.77.6 snat to 10.88.0.7",
        ] {
            assert!(nft.contains(rule), "{rule} missing from {nft}");
        }

        let f = fake("", Some("nft add table"));
        assert!(setup_routed_with(&f, "eth0", "crtapx", &ports).is_err());
        let calls = f.calls.borrow();
        assert_eq!(calls.last().unwrap(), "ip link del dev crtapx");
    }

    #[test]
    fn missing_interface_and_bad_names() {
        let f = fake("", None);
        assert!(setup_with(&f, "eth1", "crtapx").is_err());
        assert!(setup_with(&f, "eth0", "bad name").is_err());
        assert!(setup_with(&f, "eth0", "eth0").is_err());
        assert_eq!(tap_name("0123456789abcdef"), "crtap0123456789");
        assert!(tap_name("0123456789abcdef").len() <= 15);
    }

    #[test]
    fn teardown_is_idempotent() {
        let f = fake("", None);
        teardown_with(&f, "eth0", "crtapx").unwrap();
        assert!(
            !f.calls
                .borrow()
                .iter()
                .any(|c| c.starts_with("ip link del"))
        );
    }
}
