//! The steps of a guest network's set-up as a trait ([`NetOps`]), with the link and rule
//! values they exchange: [`super::net`] decides the steps, [`super::rtnl`] does them with
//! netlink, and tests record them.

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
    /// Runs an nftables script (one `nft` process: no maintained pure-Rust nftables crate fits,
    /// see the README).
    fn nft(&self, script: &str) -> Result<(), SandboxError>;
}
