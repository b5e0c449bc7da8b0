//! crid's NAT table for a routed guest (see [`super::net::setup_routed_with`]) as nf_tables
//! netlink messages: one transaction (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`) on a
//! `NETLINK_NETFILTER` socket opened by the calling thread, so in the pod's namespace when that
//! thread entered it, after a `GETTABLE` lookup that tells whether a crash left the table to
//! replace. No `nft` process.
//!
//! The messages are built with `netlink-packet-netfilter` (rust-netlink, MIT: the family of the
//! `netlink-packet-route` crate crid uses for links and routes), whose types cover tables,
//! chains, rules and the `meta`, `payload`, `cmp` and `immediate` expressions. The `nat` and
//! `masq` expressions, which it does not model, are its generic named expression with
//! attributes from the kernel's UAPI (`include/uapi/linux/netfilter/nf_tables.h`). Every
//! message is what `nft` 1.0.6 sends for the same command, byte for byte except the netlink
//! header's sequence numbers and `NLM_F_ACK` (the tests compare with `golden.txt`, captured
//! from it).

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
    HookNumber, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator,
    Payload, Register, RuleAttribute, RuleMessage, TableAttribute, TableFlags, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::netops::{NatAction, NatChain, NatRule};

/// crid's table in the pod's namespace (family `ip`).
const TABLE: &str = "crid_guest";

/// `NFNL_SUBSYS_NFTABLES` (`linux/netfilter/nfnetlink.h`): a batch's resource id.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The `nat` chains' priorities (`NF_IP_PRI_NAT_DST`, `NF_IP_PRI_NAT_SRC`).
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
const NF_ACCEPT: u32 = 1;
/// `enum nft_payload_bases`.
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// Offsets in the IPv4 header, and of the destination port in a TCP or UDP header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
const L4_DPORT: u32 = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Interface names compare as `IFNAMSIZ` bytes, NUL-padded.
const IFNAMSIZ: usize = 16;
/// `enum nft_nat_attributes` and `enum nft_nat_types`.
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFT_NAT_SNAT: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;

/// One message of a transaction, with what it does (to name it in an error).
pub(super) struct Step {
    what: String,
    msg: NfTablesMessage,
    flags: u16,
}

/// A step the kernel refused (or a transaction it did not acknowledge).
#[derive(Debug)]
pub(super) struct StepError {
    pub what: String,
    pub error: io::Error,
}

/// crid's table with the three `nat` chains and `rules`. With `replace` (a crash left the
/// table) it goes first, in the same transaction: `add table` (a no-op on the old one), `delete
/// table`, then the new table.
pub(super) fn make_table(rules: &[NatRule], replace: bool) -> Vec<Step> {
    let mut steps = vec![add_table()];
    if replace {
        steps.extend([delete_table(), add_table()]);
    }
    steps.extend(NatChain::ALL.into_iter().map(chain));
    steps.extend(rules.iter().map(rule));
    steps
}

fn add_table() -> Step {
    Step {
        what: format!("add table {TABLE}"),
        msg: NfTablesMessage::NewTable(TableMessage {
            attributes: vec![
                TableAttribute::Name(TABLE.into()),
                TableAttribute::Flags(TableFlags::empty()),
            ],
        }),
        flags: 0,
    }
}

/// `delete table ip crid_guest`.
pub(super) fn delete_table() -> Step {
    Step {
        what: format!("delete table {TABLE}"),
        msg: NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
        flags: 0,
    }
}

/// `add chain ip crid_guest NAME { type nat hook NAME priority P; policy accept; }`.
fn chain(chain: NatChain) -> Step {
    let (hook, priority) = match chain {
        NatChain::Prerouting => (InetHookNumber::PreRouting, PRIORITY_DSTNAT),
        NatChain::Output => (InetHookNumber::LocalOut, PRIORITY_DSTNAT),
        NatChain::Postrouting => (InetHookNumber::PostRouting, PRIORITY_SRCNAT),
    };
    Step {
        what: format!("add chain {}", chain.name()),
        msg: NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(chain.name().into()),
                ChainAttribute::Type("nat".into()),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Hook(vec![
                    Hook::Number(HookNumber::Inet(hook)),
                    // The attribute is a big-endian s32; the crate takes its bits as a u32.
                    Hook::Priority(u32::from_ne_bytes(priority.to_ne_bytes())),
                ]),
            ],
        }),
        flags: NLM_F_CREATE,
    }
}

/// `add rule ip crid_guest CHAIN RULE`.
fn rule(rule: &NatRule) -> Step {
    Step {
        what: format!("add rule {} {rule}", rule.chain.name()),
        msg: NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(rule.chain.name().into()),
                RuleAttribute::Expressions(expressions(rule)),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_APPEND,
    }
}

/// The rule's expressions, all on register 1: each match loads a field and compares it, then
/// the action.
fn expressions(rule: &NatRule) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut e = Vec::new();
    if let Some(iif) = &rule.iif {
        e.push(meta(MetaKey::Iifname));
        e.push(cmp_eq(ifname(iif)));
    }
    if let Some(oif) = &rule.oif {
        e.push(meta(MetaKey::Oifname));
        e.push(cmp_eq(ifname(oif)));
    }
    if let Some((addr, prefix)) = rule.saddr {
        let bytes = usize::from(prefix.min(32) / 8);
        e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, IPV4_SADDR, bytes));
        e.push(cmp_eq(addr.octets()[..bytes].to_vec()));
    }
    if let Some(addr) = rule.daddr {
        e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, IPV4_DADDR, 4));
        e.push(cmp_eq(addr.octets().to_vec()));
    }
    if let Some(port) = rule.dport {
        e.push(meta(MetaKey::L4Proto));
        e.push(cmp_eq(vec![if port.udp {
            IPPROTO_UDP
        } else {
            IPPROTO_TCP
        }]));
        e.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, L4_DPORT, 2));
        e.push(cmp_eq(port.port.to_be_bytes().to_vec()));
    }
    match rule.action {
        NatAction::Dnat(to) => e.extend(nat(NFT_NAT_DNAT, to)),
        NatAction::Snat(to) => e.extend(nat(NFT_NAT_SNAT, to)),
        NatAction::Masquerade => e.push(named("masq", vec![])),
    }
    e
}

fn ifname(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(IFNAMSIZ.max(bytes.len()), 0);
    bytes
}

fn meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
    .into()
}

fn payload(base: u32, offset: u32, len: usize) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(u32::try_from(len).unwrap_or(4)),
    ])
    .into()
}

fn cmp_eq(value: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(value)),
    ])
    .into()
}

/// `immediate reg 1 ADDR`, then `nat KIND ip addr_min reg 1`.
fn nat(kind: u32, to: Ipv4Addr) -> [ListAttribute<ExpressionAttribute>; 2] {
    let immediate = Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Reg1),
        Immediate::Data(DataAttribute::Value(to.octets().to_vec())),
    ]);
    let reg1 = u32::from(Register::Reg1);
    let nat = named(
        "nat",
        vec![
            DefaultNla::new(NFTA_NAT_TYPE, kind.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_NAT_FAMILY, NFPROTO_IPV4.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_NAT_REG_ADDR_MIN, reg1.to_be_bytes().to_vec()),
        ],
    );
    [immediate.into(), nat]
}

/// An expression the crate has no type for, by name and attributes.
fn named(name: &str, attributes: Vec<DefaultNla>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Other {
        expression_type: name.into(),
        attributes,
    }
    .into()
}

/// The transaction as one datagram: `BATCH_BEGIN`, the steps with sequence numbers from 1,
/// `BATCH_END`. Only the last step asks for an acknowledgement: the kernel reports every
/// refused step anyway, before that ack, and one ack per step could overrun the socket's
/// receive buffer for a pod with many ports.
fn batch(steps: &[Step]) -> Vec<u8> {
    let control = |msg: ControlMessage, seq: u32| {
        let header = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
        packet(NetfilterMessage::new(header, msg), NLM_F_REQUEST, seq)
    };
    let last = u32::try_from(steps.len()).unwrap_or(u32::MAX);
    let mut out = control(ControlMessage::BatchBegin, 0);
    for (seq, step) in (1..).zip(steps) {
        let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
        let ack = if seq == last { NLM_F_ACK } else { 0 };
        out.extend(packet(
            NetfilterMessage::new(header, step.msg.clone()),
            NLM_F_REQUEST | ack | step.flags,
            seq,
        ));
    }
    out.extend(control(ControlMessage::BatchEnd, last.wrapping_add(1)));
    out
}

fn packet(msg: NetfilterMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut packet = NetlinkMessage::from(msg);
    packet.header.flags = flags;
    packet.header.sequence_number = seq;
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// A `NETLINK_NETFILTER` socket in the network namespace of the thread that opened it.
pub(super) struct Nft {
    socket: Socket,
}

fn whole(error: io::Error) -> StepError {
    StepError {
        what: "nftables transaction".into(),
        error,
    }
}

impl Nft {
    pub(super) fn open() -> Result<Nft, StepError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(whole)?;
        socket.bind_auto().map_err(whole)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(whole)?;
        Ok(Nft { socket })
    }

    /// Whether crid's table exists (a crash left it): `NFT_MSG_GETTABLE` by name. Asked
    /// first so that the usual transaction deletes nothing: a deleted table, even one the
    /// same transaction made, is destroyed by the kernel after an RCU grace period, and
    /// closing the socket waits for that (measured: 12-15 ms for the set-up against 0.6 ms,
    /// on a loaded machine).
    pub(super) fn table_exists(&self) -> Result<bool, StepError> {
        let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
        let get = NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        });
        let what = |error| StepError {
            what: format!("look up table {TABLE}"),
            error,
        };
        let request = packet(
            NetfilterMessage::new(header, get),
            NLM_F_REQUEST | NLM_F_ACK,
            1,
        );
        self.socket.send(&request, 0).map_err(&what)?;
        let mut exists = false;
        self.replies(|reply| match reply.payload {
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(exists),
                Some(code) if -code.get() == libc::ENOENT => Ok(false),
                Some(code) => Err(what(io::Error::from_raw_os_error(-code.get()))),
            }),
            NetlinkPayload::InnerMessage(_) => {
                exists = true;
                None
            }
            _ => None,
        })
    }

    /// Runs `steps` as one transaction: all or none take effect. The error names the first
    /// step the kernel refused.
    pub(super) fn apply(&self, steps: &[Step]) -> Result<(), StepError> {
        let datagram = batch(steps);
        // The kernel takes a batch as one datagram, which may exceed the default send buffer
        // (about 200 KiB: some 150 declared ports); `nft` raises it the same way.
        nix::sys::socket::setsockopt(
            &self.socket,
            nix::sys::socket::sockopt::SndBufForce,
            &datagram.len().saturating_add(4096),
        )
        .map_err(|e| whole(e.into()))?;
        self.socket.send(&datagram, 0).map_err(whole)?;
        let last = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        let step_name = |seq: u32| {
            usize::try_from(seq)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| steps.get(i))
                .map_or_else(|| "nftables transaction".into(), |s| s.what.clone())
        };
        self.replies(|reply| {
            let NetlinkPayload::Error(e) = &reply.payload else {
                return None;
            };
            let seq = reply.header.sequence_number;
            match e.code {
                Some(code) => Some(Err(StepError {
                    what: step_name(seq),
                    error: io::Error::from_raw_os_error(-code.get()),
                })),
                None if seq == last => Some(Ok(())),
                None => None,
            }
        })
    }

    /// Reads the replies to what was just sent until `done` returns a result for one. The
    /// kernel handles a request inside `send`, so its replies are queued by then: the socket
    /// is read without blocking, and running out of replies first is an error rather than a
    /// wait.
    fn replies<T>(
        &self,
        mut done: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Option<Result<T, StepError>>,
    ) -> Result<T, StepError> {
        self.socket.set_non_blocking(true).map_err(whole)?;
        loop {
            let data = match self.socket.recv_from_full() {
                Ok((data, _)) => data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(whole(io::Error::other("the kernel did not acknowledge it")));
                }
                Err(e) => return Err(whole(e)),
            };
            let mut at = 0;
            while at < data.len() {
                let reply =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&data[at..]).map_err(|e| {
                        whole(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                    })?;
                at += usize::try_from(reply.header.length)
                    .unwrap_or(data.len())
                    .max(1)
                    .next_multiple_of(4);
                if let Some(result) = done(reply) {
                    return result;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::netops::GuestPort;

    /// `golden.txt`: the messages `nft` sent, as `TYPE FLAGS PAYLOAD` (hex) lines.
    fn golden(section: &str) -> Vec<(u16, u16, Vec<u8>)> {
        let text = include_str!("golden.txt");
        let start = text
            .find(&format!("[{section}]"))
            .unwrap_or_else(|| panic!("no section {section}"));
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut f = l.split_whitespace();
                let mut num = || u16::from_str_radix(&f.next().unwrap()[2..], 16).unwrap();
                let (t, fl) = (num(), num());
                let hex = l.split_whitespace().nth(2).unwrap();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (t, fl, bytes)
            })
            .collect()
    }

    /// The datagram's messages as `(type, flags, seq, payload after the netlink header)`.
    fn split(datagram: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < datagram.len() {
            let len = u32::from_le_bytes(datagram[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_le_bytes(datagram[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_le_bytes(datagram[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_le_bytes(datagram[at + 8..at + 12].try_into().unwrap());
            out.push((ty, flags, seq, datagram[at + 16..at + len].to_vec()));
            at += len.next_multiple_of(4);
        }
        out
    }

    fn port(port: u16, udp: bool) -> GuestPort {
        GuestPort { port, udp }
    }

    /// The rules of `golden.txt`'s script.
    fn script_rules() -> Vec<NatRule> {
        vec![
            NatRule {
                iif: Some("eth0".into()),
                daddr: Some(Ipv4Addr::new(10, 88, 0, 7)),
                dport: Some(port(8080, false)),
                ..NatRule::new(
                    NatChain::Prerouting,
                    NatAction::Dnat(Ipv4Addr::new(169, 254, 77, 6)),
                )
            },
            NatRule {
                daddr: Some(Ipv4Addr::LOCALHOST),
                dport: Some(port(53, true)),
                ..NatRule::new(
                    NatChain::Output,
                    NatAction::Dnat(Ipv4Addr::new(169, 254, 77, 6)),
                )
            },
            NatRule {
                oif: Some("crtapabc".into()),
                saddr: Some((Ipv4Addr::new(127, 0, 0, 0), 8)),
                ..NatRule::new(NatChain::Postrouting, NatAction::Masquerade)
            },
            NatRule {
                oif: Some("eth0".into()),
                saddr: Some((Ipv4Addr::new(169, 254, 77, 6), 32)),
                ..NatRule::new(
                    NatChain::Postrouting,
                    NatAction::Snat(Ipv4Addr::new(10, 88, 0, 7)),
                )
            },
        ]
    }

    #[test]
    fn the_table_is_encoded_as_nft_encodes_it() {
        let rules = script_rules();
        // nft's batch: begin, add table, three chains, four rules, end.
        let got = split(&batch(&make_table(&rules, false)));
        let want = golden("add");
        assert_eq!(got.len(), want.len());
        for (n, ((ty, flags, _, payload), (want_ty, want_flags, want_payload))) in
            got.iter().zip(&want).enumerate()
        {
            assert_eq!(ty, want_ty, "message {n}");
            assert_eq!(flags & !NLM_F_ACK, *want_flags, "message {n}");
            assert_eq!(payload, want_payload, "message {n}: {:02x?}", payload);
        }
        // The replacement of a table a crash left: the same plus `delete table` and `add
        // table` after the first `add table`.
        let replace = split(&batch(&make_table(&rules, true)));
        assert_eq!(replace.len(), got.len() + 2);
        let delete = &golden("delete")[1];
        assert_eq!((replace[2].0, &replace[2].3), (delete.0, &delete.2));
        assert_eq!((replace[3].0, &replace[3].3), (got[1].0, &got[1].3));
        let rest = |m: &[(u16, u16, u32, Vec<u8>)]| -> Vec<(u16, Vec<u8>)> {
            m.iter().map(|(t, _, _, p)| (*t, p.clone())).collect()
        };
        assert_eq!(rest(&replace[4..]), rest(&got[2..]));
    }

    #[test]
    fn only_the_last_step_is_acknowledged_and_sequence_numbers_name_the_steps() {
        let steps = make_table(&script_rules(), true);
        let got = split(&batch(&steps));
        let seqs: Vec<u32> = got.iter().map(|m| m.2).collect();
        assert_eq!(
            seqs,
            (0..=u32::try_from(steps.len() + 1).unwrap()).collect::<Vec<_>>()
        );
        let acked: Vec<usize> = (0..got.len())
            .filter(|&i| got[i].1 & NLM_F_ACK != 0)
            .collect();
        assert_eq!(acked, [steps.len()]);
        assert_eq!(
            steps.iter().map(|s| s.what.as_str()).collect::<Vec<_>>(),
            [
                "add table crid_guest",
                "delete table crid_guest",
                "add table crid_guest",
                "add chain prerouting",
                "add chain output",
                "add chain postrouting",
                "add rule prerouting iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 8080 dnat to 169.254.77.6",
                "add rule output ip daddr 127.0.0.1 udp dport 53 dnat to 169.254.77.6",
                "add rule postrouting oifname \"crtapabc\" ip saddr 127.0.0.0/8 masquerade",
                "add rule postrouting oifname \"eth0\" ip saddr 169.254.77.6 snat to 10.88.0.7",
            ]
        );
    }

    #[test]
    fn delete_is_nfts_delete_table() {
        let got = split(&batch(&[delete_table()]));
        let want = golden("delete");
        assert_eq!(got.len(), want.len());
        for ((ty, flags, _, payload), (want_ty, want_flags, want_payload)) in got.iter().zip(&want)
        {
            assert_eq!(
                (ty, flags & !NLM_F_ACK, payload),
                (want_ty, *want_flags, want_payload)
            );
        }
    }

    /// In a network namespace of its own (a thread's, root only): a refused step is named and
    /// takes the whole transaction with it; a missing table is `ENOENT` on delete.
    #[test]
    fn a_refused_step_is_named_and_nothing_is_applied() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let nft = Nft::open().unwrap();
            assert!(!nft.table_exists().unwrap());
            let gone = nft.apply(&[delete_table()]).unwrap_err();
            assert_eq!(gone.what, "delete table crid_guest");
            assert_eq!(gone.error.raw_os_error(), Some(libc::ENOENT));

            // A rule for a chain that does not exist (no chains made).
            let rules = script_rules();
            let e = nft.apply(&[add_table(), rule(&rules[0])]).unwrap_err();
            assert_eq!(
                e.what,
                "add rule prerouting iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 8080 dnat to 169.254.77.6"
            );
            assert_eq!(e.error.raw_os_error(), Some(libc::ENOENT));
            // The table of the same transaction was not made either.
            assert!(!nft.table_exists().unwrap());

            nft.apply(&make_table(&rules, false)).unwrap();
            assert!(nft.table_exists().unwrap());
            // Replaced, as after a crash.
            nft.apply(&make_table(&rules, true)).unwrap();
            nft.apply(&[delete_table()]).unwrap();
            assert!(!nft.table_exists().unwrap());
        })
        .join()
        .unwrap();
    }
}
