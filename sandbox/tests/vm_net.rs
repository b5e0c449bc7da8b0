//! The guest network in a real network namespace (root): a netns with a veth `eth0`, as CNI
//! would leave it, gets a tap and the tc redirects; frames arriving on `eth0` go to the tap; a
//! stale tap is replaced; teardown leaves neither tap nor qdisc.
//!
//! Needs root, iproute2 and nsenter; in CI (CI=true) their absence fails.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;

mod common;
use common::{in_ns, pod};

use sandbox::vm::net::{setup_guest_net, tap_name, teardown_guest_net};

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
