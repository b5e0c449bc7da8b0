//! The guest network in a real network namespace (root): a netns with a veth `eth0`, as CNI
//! would leave it, gets a tap and the tc redirects; frames arriving on `eth0` go to the tap; a
//! stale tap is replaced; teardown leaves neither tap nor qdisc. A routed guest's NAT table,
//! made over netlink, is what `nft` lists.
//!
//! Needs root, iproute2, nsenter and nft (as the oracle); in CI (CI=true) their absence fails.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;

mod common;
use common::{in_ns, pod};

use sandbox::vm::net::{GuestPort, setup_guest_net, tap_name, teardown_guest_net};

fn links(ns: &Path) -> String {
    in_ns(ns, &["ip", "-o", "link", "show"])
}

/// Packets the eth0 ingress filter redirected, from `tc -s filter show`.
fn redirected_packets(ns: &Path) -> u64 {
    let out = in_ns(
        ns,
        &["tc", "-s", "filter", "show", "dev", "eth0", "ingress"],
    );
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Sent ")?;
            let mut it = rest.split_whitespace();
            let _bytes = it.next()?;
            let _ = it.next()?; // "bytes"
            it.next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn tap_redirects_the_pod_interface_to_the_guest() {
    let octet = 20 + (std::process::id() % 200) as u8;
    let Some(p) = pod(octet) else { return };
    let tap = tap_name("0123456789abcdef");

    // A tap left by a crashed container of this pod: removed, not an obstacle.
    in_ns(
        &p.ns,
        &["ip", "tuntap", "add", "dev", "crtapstale", "mode", "tap"],
    );

    let net = setup_guest_net(&p.ns, "eth0", &tap, &[]).unwrap();
    assert_eq!(net.ip, Ipv4Addr::new(10, 213, octet, 2));
    assert_eq!(net.prefix, 24);
    assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 213, octet, 1)));
    let eth0 = in_ns(&p.ns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    let eth0_mac = eth0
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default();
    assert_eq!(net.mac.to_string(), eth0_mac);
    assert_eq!(net.tap, tap);
    let l = links(&p.ns);
    assert!(l.contains(&tap), "{l}");
    assert!(!l.contains("crtapstale"), "{l}");
    let filters = in_ns(&p.ns, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        filters.contains("mirred") && filters.contains(&tap),
        "{filters}"
    );
    let back = in_ns(&p.ns, &["tc", "filter", "show", "dev", &tap, "ingress"]);
    assert!(back.contains("mirred") && back.contains("eth0"), "{back}");
    // The sidecar path: frames for the sidecar address go up first, the pod IP is routed
    // into the tap for the namespace's own traffic, to the guest's MAC.
    assert!(
        back.contains("pref 1 u32") && back.contains("a9fe4d02/ffffffff at 16"),
        "{back}"
    );
    let rules = in_ns(&p.ns, &["ip", "rule", "show"]);
    assert!(rules.contains("100:\tfrom all lookup local"), "{rules}");
    assert!(!rules.lines().any(|l| l.starts_with("0:")), "{rules}");
    assert!(
        rules.contains(&format!("77:\tfrom all to {} iif lo lookup 77", net.ip)),
        "{rules}"
    );
    let route = in_ns(&p.ns, &["ip", "route", "show", "table", "77"]);
    assert!(
        route.contains(&format!("{} dev {tap} scope link src 169.254.77.2", net.ip)),
        "{route}"
    );
    let neigh = in_ns(&p.ns, &["ip", "neigh", "show", "dev", &tap]);
    assert!(
        neigh.contains(&format!("{} lladdr {eth0_mac} PERMANENT", net.ip)),
        "{neigh}"
    );
    let tap_link = in_ns(&p.ns, &["ip", "-d", "-o", "link", "show", "dev", &tap]);
    assert!(
        tap_link.contains("tun type tap") && tap_link.contains("persist"),
        "{tap_link}"
    );

    // Traffic to the pod IP (here the ARP requests for it) is redirected toward the guest.
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..3 {
        let _ = sock.send_to(b"hello", (net.ip, 9));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(redirected_packets(&p.ns) > 0);

    // Setting up again (a restart after a crash) replaces our own stale tap.
    let again = setup_guest_net(&p.ns, "eth0", &tap, &[]).unwrap();
    assert_eq!(again, net);

    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
    let l = links(&p.ns);
    assert!(!l.contains("crtap"), "{l}");
    let q = in_ns(&p.ns, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!q.contains("ingress"), "{q}");
    // Idempotent.
    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
}

/// The rules of `nft list table ip crid_guest`, by chain: `chain NAME` lines, then each rule.
fn nat_table(ns: &Path) -> Vec<String> {
    in_ns(ns, &["nft", "list", "table", "ip", "crid_guest"])
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("chain ")
                || l.contains(" dnat ")
                || l.contains(" snat ")
                || l.ends_with("masquerade")
                || l.starts_with("type ")
        })
        .map(str::to_owned)
        .collect()
}

/// Routed mode (declared ports): the tap carries the namespace's side of the guest's /30 and
/// the NAT table is made over netlink, as `nft` (the oracle here) lists it; a second set-up
/// (after a crash) replaces it, and teardown deletes it.
#[test]
fn routed_guest_gets_its_nat_table_over_netlink() {
    let octet = 20 + ((std::process::id() + 100) % 200) as u8;
    let Some(p) = pod(octet) else { return };
    if Command::new("nft").arg("--version").output().is_err() {
        common::skip_or_fail("nft (nftables, the test's oracle) is not installed");
        return;
    }
    let tap = tap_name("routed0123456789");
    let ports = [
        GuestPort {
            port: 8080,
            udp: false,
        },
        GuestPort {
            port: 53,
            udp: true,
        },
    ];
    let net = setup_guest_net(&p.ns, "eth0", &tap, &ports).unwrap();
    assert_eq!(net.ip, Ipv4Addr::new(169, 254, 77, 6));
    assert_eq!(net.gateway, Some(Ipv4Addr::new(169, 254, 77, 5)));
    let pod_ip = format!("10.213.{octet}.2");
    let want: Vec<String> = [
        "chain prerouting {".to_owned(),
        "type nat hook prerouting priority dstnat; policy accept;".into(),
        format!("iifname \"eth0\" ip daddr {pod_ip} tcp dport 8080 dnat to 169.254.77.6"),
        format!("iifname \"eth0\" ip daddr {pod_ip} udp dport 53 dnat to 169.254.77.6"),
        "chain output {".into(),
        "type nat hook output priority -100; policy accept;".into(),
        format!("ip daddr {pod_ip} tcp dport 8080 dnat to 169.254.77.6"),
        format!("ip daddr {pod_ip} udp dport 53 dnat to 169.254.77.6"),
        "ip daddr 127.0.0.1 tcp dport 8080 dnat to 169.254.77.6".into(),
        "ip daddr 127.0.0.1 udp dport 53 dnat to 169.254.77.6".into(),
        "chain postrouting {".into(),
        "type nat hook postrouting priority srcnat; policy accept;".into(),
        format!("oifname \"{tap}\" ip saddr 127.0.0.0/8 masquerade"),
        format!("oifname \"eth0\" ip saddr 169.254.77.6 snat to {pod_ip}"),
    ]
    .into();
    assert_eq!(nat_table(&p.ns), want);
    let addr = in_ns(&p.ns, &["ip", "-o", "-4", "addr", "show", "dev", &tap]);
    assert!(addr.contains("169.254.77.5/30"), "{addr}");

    // A crash left the tap and the table: set-up replaces both, with no rule twice.
    let again = setup_guest_net(&p.ns, "eth0", &tap, &ports).unwrap();
    assert_eq!(again, net);
    assert_eq!(nat_table(&p.ns), want);

    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
    let tables = in_ns(&p.ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("crid_guest"), "{tables}");
    assert!(!links(&p.ns).contains("crtap"));
    // Idempotent.
    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
}
