//! [`NetOps`] on netlink: the guest network's set-up as netlink requests from a thread inside
//! the pod's network namespace (built with `netlink-packet-route`, sent with
//! [`cni::netlink::Netlink`]; the routed mode's NAT table as one nf_tables transaction, see
//! [`super::nft`]), the tap by `TUNSETIFF`, the sysctls by writes to `/proc/sys/net` (which
//! shows the calling thread's namespace). No process is started.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};

use cni::netlink::Netlink;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::MacAddr;
use super::netops::{Link, NatRule, NetOps, Rule};
use super::nft;
use crate::SandboxError;

const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_REPLACE: u16 = 0x100;
/// `ETH_P_ALL` and `ETH_P_IP`, as tc filters take them (network byte order).
const ETH_P_ALL: u16 = 0x0003_u16.to_be();
const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// The ingress qdisc's handle (`ffff:`), also the parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Filter priorities on an ingress qdisc: the sidecar path's pass-up filter goes first.
const PASS_PRIO: u16 = 1;
const REDIRECT_PRIO: u16 = 10;

/// The netlink operations, on a socket in the calling thread's network namespace.
pub(super) struct Rtnl {
    nl: RefCell<Netlink>,
}

fn err(op: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::GuestNetwork {
        op: op.to_string(),
        reason: e.to_string(),
    }
}

impl Rtnl {
    /// Opens the socket; call on the thread that entered the namespace.
    pub(super) fn open() -> Result<Rtnl, SandboxError> {
        Ok(Rtnl {
            nl: RefCell::new(Netlink::open().map_err(|e| err("open a netlink socket", e))?),
        })
    }

    fn request(&self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), SandboxError> {
        self.nl
            .borrow_mut()
            .request(msg, flags)
            .map_err(|e| err(op, e))
    }

    fn dump(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, SandboxError> {
        self.nl.borrow_mut().dump(msg).map_err(|e| err(op, e))
    }

    /// The interface index of `name`.
    fn index(&self, name: &str) -> Result<u32, SandboxError> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| err("find interface", format!("no interface {name}")))
    }

    fn qdisc_message(&self, dev: &str) -> Result<TcMessage, SandboxError> {
        let mut msg = TcMessage::with_index(i32::try_from(self.index(dev)?).unwrap_or(-1));
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = INGRESS_HANDLE;
        Ok(msg)
    }

    fn filter_message(
        &self,
        dev: &str,
        prio: u16,
        protocol: u16,
    ) -> Result<TcMessage, SandboxError> {
        let mut msg = TcMessage::with_index(i32::try_from(self.index(dev)?).unwrap_or(-1));
        msg.header.parent = INGRESS_HANDLE;
        msg.header.info = (u32::from(prio) << 16) | u32::from(protocol);
        Ok(msg)
    }
}

/// A u32 selector over one key, terminal (a match ends the classification).
fn selector(key: TcU32Key) -> TcU32Selector {
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];
    sel
}

fn u32_filter(msg: &mut TcMessage, options: Vec<TcFilterU32Option>) {
    msg.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
    msg.attributes.push(TcAttribute::Options(
        options.into_iter().map(TcOption::U32).collect(),
    ));
}

impl NetOps for Rtnl {
    fn links(&self) -> Result<Vec<Link>, SandboxError> {
        let replies = self.dump(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .map(|l| {
                let mut link = Link {
                    index: l.header.index,
                    lower_up: l.header.flags.contains(LinkFlags::LowerUp),
                    ..Link::default()
                };
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => link.name.clone_from(n),
                        LinkAttribute::Mtu(m) => link.mtu = *m,
                        LinkAttribute::Address(mac) => {
                            link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok().map(MacAddr);
                        }
                        LinkAttribute::LinkInfo(infos) => {
                            link.tun = infos
                                .iter()
                                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
                        }
                        _ => {}
                    }
                }
                link
            })
            .collect())
    }

    fn ipv4_address(&self, dev: &str) -> Result<Option<(Ipv4Addr, u8)>, SandboxError> {
        let index = self.index(dev)?;
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.dump("list addresses", RouteNetlinkMessage::GetAddress(req))?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    fn default_gateway(&self) -> Result<Option<Ipv4Addr>, SandboxError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.dump("list routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    fn neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<Option<MacAddr>, SandboxError> {
        let index = self.index(dev)?;
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.dump("list neighbours", RouteNetlinkMessage::GetNeighbour(req))?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n)
                if n.header.ifindex == index
                    && n.attributes.iter().any(|a| {
                        *a == NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))
                    }) =>
            {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(mac) => {
                        <[u8; 6]>::try_from(mac.as_slice()).ok().map(MacAddr)
                    }
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    fn probe(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
        let socket =
            std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| err("probe", e))?;
        // The discard port; only the neighbour resolution matters.
        let _ = socket.send_to(&[0], (ip, 9));
        Ok(())
    }

    fn add_tap(&self, name: &str) -> Result<(), SandboxError> {
        super::sys::create_persistent_tap(name).map_err(|e| err(&format!("create tap {name}"), e))
    }

    fn set_link(
        &self,
        dev: &str,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        up: bool,
    ) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(dev)?;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        self.request(
            &format!("set link {dev}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    fn del_link(&self, dev: &str) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(dev)?;
        self.request(
            &format!("delete link {dev}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    fn move_link(
        &self,
        dev: &str,
        netns: &std::path::Path,
        name: &str,
    ) -> Result<(), SandboxError> {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(netns).map_err(|e| SandboxError::io(netns, e))?;
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(dev)?;
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(
            &format!("move link {dev} to {} as {name}", netns.display()),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    fn add_address(&self, dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), SandboxError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = self.index(dev)?;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            &format!("add address {ip}/{prefix} to {dev}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), SandboxError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| err(&format!("sysctl {key}={value}"), e))
    }

    fn add_ingress(&self, dev: &str) -> Result<(), SandboxError> {
        let mut msg = self.qdisc_message(dev)?;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            &format!("add ingress qdisc to {dev}"),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn del_ingress(&self, dev: &str) -> Result<(), SandboxError> {
        let msg = self.qdisc_message(dev)?;
        self.request(
            &format!("delete ingress qdisc of {dev}"),
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            0,
        )
    }

    fn redirect(&self, from: &str, to: &str) -> Result<(), SandboxError> {
        let target = self.index(to)?;
        let mut msg = self.filter_message(from, REDIRECT_PRIO, ETH_P_ALL)?;
        // `match u8 0 0`: every frame; `action mirred egress redirect dev TO`.
        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = target;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        u32_filter(
            &mut msg,
            vec![
                TcFilterU32Option::Selector(selector(TcU32Key::default())),
                TcFilterU32Option::Action(vec![action]),
            ],
        );
        self.request(
            &format!("redirect {from} to {to}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn pass_up(&self, dev: &str, dst: Ipv4Addr) -> Result<(), SandboxError> {
        let mut msg = self.filter_message(dev, PASS_PRIO, ETH_P_IP)?;
        // `match ip dst DST/32 flowid 1:1`, no action: the frame goes up the stack. The key is
        // the IPv4 header's destination address, 16 bytes in.
        let mut key = TcU32Key::default();
        key.mask = u32::MAX;
        key.val = u32::from(dst);
        key.off = 16;
        u32_filter(
            &mut msg,
            vec![
                TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 }),
                TcFilterU32Option::Selector(selector(key)),
            ],
        );
        self.request(
            &format!("pass {dst} up from {dev}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn neigh_permanent(&self, dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), SandboxError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.index(dev)?;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.request(
            &format!("neighbour {ip} on {dev}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn route_replace(
        &self,
        table: u32,
        dst: Ipv4Addr,
        dev: &str,
        src: Ipv4Addr,
    ) -> Result<(), SandboxError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.header.table = u8::try_from(table).unwrap_or(0);
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        msg.attributes.push(RouteAttribute::Oif(self.index(dev)?));
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        msg.attributes.push(RouteAttribute::Table(table));
        self.request(
            &format!("route {dst} via {dev} in table {table}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn rules(&self) -> Result<Vec<Rule>, SandboxError> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.dump("list rules", RouteNetlinkMessage::GetRule(req))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(r),
                _ => None,
            })
            .map(|r| {
                let mut rule = Rule {
                    table: u32::from(r.header.table),
                    ..Rule::default()
                };
                for a in &r.attributes {
                    match a {
                        // The kernel leaves the priority out when it is 0.
                        RuleAttribute::Priority(p) => rule.priority = *p,
                        RuleAttribute::Table(t) => rule.table = *t,
                        RuleAttribute::Destination(IpAddr::V4(d)) => rule.to = Some(*d),
                        RuleAttribute::Iifname(i) => rule.iif = Some(i.clone()),
                        _ => {}
                    }
                }
                rule
            })
            .collect())
    }

    fn add_rule(&self, rule: &Rule) -> Result<(), SandboxError> {
        self.request(
            &format!("add rule {}", rule.priority),
            RouteNetlinkMessage::NewRule(rule_message(rule)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn del_rule(&self, rule: &Rule) -> Result<(), SandboxError> {
        self.request(
            &format!("delete rule {}", rule.priority),
            RouteNetlinkMessage::DelRule(rule_message(rule)),
            0,
        )
    }

    fn nat_table(&self, rules: &[NatRule]) -> Result<(), SandboxError> {
        let nft = nft::Nft::open().map_err(nft_err)?;
        let replace = nft.table_exists().map_err(nft_err)?;
        nft.apply(&nft::make_table(rules, replace)).map_err(nft_err)
    }

    fn del_nat_table(&self) -> Result<(), SandboxError> {
        match nft::Nft::open().and_then(|nft| nft.apply(&[nft::delete_table()])) {
            Err(e) if e.error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.map_err(nft_err),
        }
    }
}

fn nft_err(e: nft::StepError) -> SandboxError {
    err(&format!("nftables: {}", e.what), e.error)
}

/// The rule as an `RTM_NEWRULE`/`RTM_DELRULE` message (the priority always given, so that
/// rule 0 is matched as such on delete).
fn rule_message(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(rule.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    msg.attributes.push(RuleAttribute::Table(rule.table));
    if let Some(to) = rule.to {
        msg.header.dst_len = 32;
        msg.attributes
            .push(RuleAttribute::Destination(IpAddr::V4(to)));
    }
    if let Some(iif) = &rule.iif {
        msg.attributes.push(RuleAttribute::Iifname(iif.clone()));
    }
    msg
}
