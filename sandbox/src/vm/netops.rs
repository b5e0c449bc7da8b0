//! The steps of a guest network's set-up as a trait ([`NetOps`]), with the link, rule and NAT
//! values they exchange: [`super::net`] decides the steps, [`super::rtnl`] does them with
//! netlink (and [`super::nft`] for the NAT table), and tests record them.

use std::fmt;
use std::net::Ipv4Addr;

use super::MacAddr;
use crate::SandboxError;

/// A network interface of the pod's namespace, as the set-up needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Carrier up (for a tap: a VMM has it open).
    pub lower_up: bool,
    /// A tun/tap device.
    pub tun: bool,
}

/// A policy routing rule: `pref PRIORITY [to TO/32] [iif IIF] lookup TABLE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub table: u32,
    pub to: Option<Ipv4Addr>,
    pub iif: Option<String>,
}

/// The steps of a guest's network set-up, in the namespace of the calling thread. The real
/// ones are netlink requests ([`super::rtnl`]); tests record them.
pub trait NetOps {
    fn links(&self) -> Result<Vec<Link>, SandboxError>;
    /// The first IPv4 address of `dev`, with its prefix length.
    fn ipv4_address(&self, dev: &str) -> Result<Option<(Ipv4Addr, u8)>, SandboxError>;
    /// The gateway of the main table's default route.
    fn default_gateway(&self) -> Result<Option<Ipv4Addr>, SandboxError>;
    /// The MAC address the neighbour table holds for `ip` on `dev`.
    fn neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<Option<MacAddr>, SandboxError>;
    /// Sends one datagram to `ip`, so the kernel resolves its MAC.
    fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError>;
    /// Creates a persistent tap device.
    fn add_tap(&self, name: &str) -> Result<(), SandboxError>;
    /// Sets the MTU and/or MAC address of `dev`, and brings it up when `up`.
    fn set_link(
        &self,
        dev: &str,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        up: bool,
    ) -> Result<(), SandboxError>;
    fn del_link(&self, dev: &str) -> Result<(), SandboxError>;
    /// Moves `dev` into the network namespace pinned at `netns`, named `name` there.
    fn move_link(&self, dev: &str, netns: &std::path::Path, name: &str)
    -> Result<(), SandboxError>;
    fn add_address(&self, dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), SandboxError>;
    /// Sets `net.ipv4...` style `key` to `value`.
    fn sysctl(&self, key: &str, value: &str) -> Result<(), SandboxError>;
    fn add_ingress(&self, dev: &str) -> Result<(), SandboxError>;
    fn del_ingress(&self, dev: &str) -> Result<(), SandboxError>;
    /// A match-all filter on `from`'s ingress: `mirred egress redirect` to `to`.
    fn redirect(&self, from: &str, to: &str) -> Result<(), SandboxError>;
    /// A filter on `dev`'s ingress, before the redirect, that lets IPv4 frames for `dst` go up
    /// the namespace's stack.
    fn pass_up(&self, dev: &str, dst: Ipv4Addr) -> Result<(), SandboxError>;
    /// A permanent neighbour entry.
    fn neigh_permanent(&self, dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), SandboxError>;
    /// `ip route replace DST/32 dev DEV src SRC table TABLE`.
    fn route_replace(
        &self,
        table: u32,
        dst: Ipv4Addr,
        dev: &str,
        src: Ipv4Addr,
    ) -> Result<(), SandboxError>;
    fn rules(&self) -> Result<Vec<Rule>, SandboxError>;
    fn add_rule(&self, rule: &Rule) -> Result<(), SandboxError>;
    fn del_rule(&self, rule: &Rule) -> Result<(), SandboxError>;
    /// Replaces crid's NAT table (a table left by a crash too) by one holding `rules`, in one
    /// nf_tables transaction.
    fn nat_table(&self, rules: &[NatRule]) -> Result<(), SandboxError>;
    /// Deletes crid's NAT table; fine when there is none.
    fn del_nat_table(&self) -> Result<(), SandboxError>;
}

/// A container port the guest serves (kubelet's `io.kubernetes.container.ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestPort {
    pub port: u16,
    pub udp: bool,
}

/// A chain of crid's NAT table: a `nat` chain on the hook of the same name, policy accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatChain {
    Prerouting,
    Output,
    Postrouting,
}

impl NatChain {
    pub const ALL: [NatChain; 3] = [
        NatChain::Prerouting,
        NatChain::Output,
        NatChain::Postrouting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NatChain::Prerouting => "prerouting",
            NatChain::Output => "output",
            NatChain::Postrouting => "postrouting",
        }
    }
}

/// What a NAT rule does to the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatAction {
    Dnat(Ipv4Addr),
    Snat(Ipv4Addr),
    Masquerade,
}

/// One rule of crid's NAT table: every match given, then the action. It displays as `nft list`
/// shows it (without the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRule {
    pub chain: NatChain,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// A source network: address and prefix length, a multiple of 8 (whole bytes are compared).
    pub saddr: Option<(Ipv4Addr, u8)>,
    pub daddr: Option<Ipv4Addr>,
    pub dport: Option<GuestPort>,
    pub action: NatAction,
}

impl NatRule {
    /// A rule in `chain` with no match yet.
    pub fn new(chain: NatChain, action: NatAction) -> NatRule {
        NatRule {
            chain,
            iif: None,
            oif: None,
            saddr: None,
            daddr: None,
            dport: None,
            action,
        }
    }
}

impl fmt::Display for NatRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(i) = &self.iif {
            parts.push(format!("iifname \"{i}\""));
        }
        if let Some(o) = &self.oif {
            parts.push(format!("oifname \"{o}\""));
        }
        match self.saddr {
            Some((a, 32)) => parts.push(format!("ip saddr {a}")),
            Some((a, p)) => parts.push(format!("ip saddr {a}/{p}")),
            None => {}
        }
        if let Some(d) = self.daddr {
            parts.push(format!("ip daddr {d}"));
        }
        if let Some(p) = self.dport {
            let proto = if p.udp { "udp" } else { "tcp" };
            parts.push(format!("{proto} dport {}", p.port));
        }
        parts.push(match self.action {
            NatAction::Dnat(to) => format!("dnat to {to}"),
            NatAction::Snat(to) => format!("snat to {to}"),
            NatAction::Masquerade => "masquerade".into(),
        });
        f.write_str(&parts.join(" "))
    }
}
