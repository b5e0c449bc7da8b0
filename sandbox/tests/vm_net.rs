//! The guest network in a real network namespace (root): a netns with a veth `eth0`, as CNI
//! would leave it, gets a tap and the tc redirects; frames arriving on `eth0` go to the tap; a
//! stale tap is replaced; teardown leaves neither tap nor qdisc.
//!
//! Needs root, iproute2 and nsenter; in CI (CI=true) their absence fails.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use sandbox::vm::net::{setup_guest_net, tap_name, teardown_guest_net};

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", ns.display());
    let mut v = vec!["nsenter", net.as_str(), "--"];
    v.extend_from_slice(args);
    sh(&v)
}

/// A network namespace bound to a file in a temp dir plus the host end of its veth.
struct Pod {
    _dir: tempfile::TempDir,
    ns: PathBuf,
    host_veth: String,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        let _ = Command::new("umount").arg(&self.ns).status();
    }
}

fn pod(octet: u8) -> Option<Pod> {
    if !nix_is_root() {
        skip_or_fail("not root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("netns");
    std::fs::write(&ns, "").unwrap();
    let host_veth = format!("cvh{}", std::process::id() % 100_000);
    let pod = Pod {
        _dir: dir,
        ns: ns.clone(),
        host_veth: host_veth.clone(),
    };
    sh(&["unshare", &format!("--net={}", ns.display()), "true"]);
    let pid = std::process::id().to_string();
    in_ns(
        &ns,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &host_veth, "netns", &pid,
        ],
    );
    let host_ip = format!("10.213.{octet}.1/24");
    let pod_ip = format!("10.213.{octet}.2/24");
    sh(&["ip", "addr", "add", &host_ip, "dev", &host_veth]);
    sh(&["ip", "link", "set", &host_veth, "up"]);
    in_ns(&ns, &["ip", "addr", "add", &pod_ip, "dev", "eth0"]);
    in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
    in_ns(&ns, &["ip", "link", "set", "eth0", "up"]);
    in_ns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.213.{octet}.1"),
        ],
    );
    Some(pod)
}

fn nix_is_root() -> bool {
    sh(&["id", "-u"]).trim() == "0"
}

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

    let net = setup_guest_net(&p.ns, "eth0", &tap).unwrap();
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

    // Traffic to the pod IP (here the ARP requests for it) is redirected toward the guest.
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..3 {
        let _ = sock.send_to(b"hello", (net.ip, 9));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(redirected_packets(&p.ns) > 0);

    // Setting up again (a restart after a crash) replaces our own stale tap.
    let again = setup_guest_net(&p.ns, "eth0", &tap).unwrap();
    assert_eq!(again, net);

    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
    let l = links(&p.ns);
    assert!(!l.contains("crtap"), "{l}");
    let q = in_ns(&p.ns, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!q.contains("ingress"), "{q}");
    // Idempotent.
    teardown_guest_net(&p.ns, "eth0", &tap).unwrap();
}
