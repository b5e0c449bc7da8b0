//! Shared helpers of the VM integration tests: a pod-like network namespace with a veth.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_ns(ns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", ns.display());
    let mut v = vec!["nsenter", net.as_str(), "--"];
    v.extend_from_slice(args);
    sh(&v)
}

/// A network namespace bound to a file in a temp dir plus the host end of its veth.
pub struct Pod {
    _dir: tempfile::TempDir,
    pub ns: PathBuf,
    pub host_veth: String,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        let _ = Command::new("umount").arg(&self.ns).status();
    }
}

pub fn pod(octet: u8) -> Option<Pod> {
    if !nix_is_root() {
        skip_or_fail("not root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("netns");
    std::fs::write(&ns, "").unwrap();
    let host_veth = format!("cvh{}x{octet}", std::process::id() % 100_000);
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

pub fn nix_is_root() -> bool {
    sh(&["id", "-u"]).trim() == "0"
}
