//! ADD/CHECK/DEL/GC with the real plugins of /usr/lib/cni (bridge, host-local, loopback) in a
//! pinned namespace, for spec versions 0.4.0 and 1.0.0. Needs root; skipped with a reason
//! otherwise (and failing under CI=true).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cni::netns::{self, NsKind};
use cni::{Attachment, Capabilities, Cni, CniSettings, PodArgs};

const PLUGINS: &str = "/usr/lib/cni";

fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new(PLUGINS).join("bridge").exists();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CNI plugin tests need root and /usr/lib/cni in CI"
        );
        eprintln!("skipped: needs root and /usr/lib/cni");
    }
    ok
}

struct Setup {
    dir: tempfile::TempDir,
    bridge: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = netns::remove(&self.dir.path().join("ns"));
    }
}

/// `10.X.Y`: this test's (and this process's) /24, by `tag`.
fn prefix(tag: u8) -> String {
    format!("10.{}.{}", 180 + u32::from(tag), std::process::id() % 250)
}

impl Setup {
    /// How many veths are enslaved to the test's bridge.
    fn veths(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

fn setup(tag: u8, version: &str) -> (Setup, Cni) {
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("cnt{tag}x{}", std::process::id() % 100_000);
    let conflist = serde_json::json!({
        "cniVersion": version,
        "name": format!("cni-test-{tag}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.path().join("ipam"),
                    "ranges": [[{"subnet": format!("{}.0/24", prefix(tag))}]]
                }
            },
            {"type": "loopback"}
        ]
    });
    std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
    std::fs::write(
        dir.path().join("net.d/10-test.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let cni = Cni::new(CniSettings {
        conf_dir: dir.path().join("net.d"),
        bin_dirs: vec![PathBuf::from(PLUGINS)],
        cache_dir: dir.path().join("cache"),
        timeout: Duration::from_secs(20),
    });
    (Setup { dir, bridge }, cni)
}

fn reservations(dir: &Path, tag: u8) -> usize {
    std::fs::read_dir(dir.join("ipam").join(format!("cni-test-{tag}")))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

async fn add_check_del(tag: u8, version: &str) {
    let (s, cni) = setup(tag, version);
    let ns = s.dir.path().join("ns");
    netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
    cni.status().await.expect("network ready");
    let att = Attachment {
        container_id: format!("ctr{tag}"),
        netns: ns.clone(),
        ifname: "eth0".into(),
        pod: PodArgs {
            namespace: "ns".into(),
            name: "p".into(),
            infra_container_id: format!("ctr{tag}"),
            uid: "u".into(),
        },
        capabilities: Capabilities::default(),
    };
    let result = cni.add(&att).await.expect("ADD");
    assert_eq!(result.cni_version, version);
    let ips = result.pod_ips();
    assert_eq!(ips.len(), 1, "{result:?}");
    assert!(
        ips[0]
            .to_string()
            .starts_with(&format!("10.{}.", 180 + u32::from(tag)))
    );
    assert_eq!(reservations(s.dir.path(), tag), 1);
    // eth0 exists inside the namespace with that address.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ips[0].to_string()));
    cni.check(&att.container_id, &ns, "eth0")
        .await
        .expect("CHECK");

    // A "restart" with another configuration on disk: DEL still uses the cached one.
    std::fs::remove_file(s.dir.path().join("net.d/10-test.conflist")).unwrap();
    let again = Cni::new(cni.settings().clone());
    again
        .del(&att.container_id, Some(&ns), "eth0", &att.pod)
        .await
        .expect("DEL");
    assert_eq!(reservations(s.dir.path(), tag), 0);
    assert!(again.cached_attachments().is_empty());
    // DEL again, and DEL with the namespace gone, are fine.
    again
        .del(&att.container_id, Some(&ns), "eth0", &att.pod)
        .await
        .expect("second DEL");
    netns::remove(&ns).unwrap();
    again
        .del(&att.container_id, None, "eth0", &att.pod)
        .await
        .expect("DEL without netns");
}

#[tokio::test]
async fn add_check_del_1_0_0() {
    if can_run() {
        add_check_del(1, "1.0.0").await;
    }
}

#[tokio::test]
async fn add_check_del_0_4_0() {
    if can_run() {
        add_check_del(2, "0.4.0").await;
    }
}

#[tokio::test]
async fn gc_releases_attachments_nobody_owns() {
    if !can_run() {
        return;
    }
    let tag = 3;
    let (s, cni) = setup(tag, "1.0.0");
    let mut keep = Vec::new();
    for i in 0..2 {
        let ns = s.dir.path().join(format!("ns{i}"));
        netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
        let att = Attachment {
            container_id: format!("gc{i}"),
            netns: ns,
            ifname: "eth0".into(),
            pod: PodArgs::default(),
            capabilities: Capabilities::default(),
        };
        cni.add(&att).await.expect("ADD");
        if i == 0 {
            keep.push((att.container_id.clone(), "eth0".to_string()));
        }
    }
    assert_eq!(reservations(s.dir.path(), tag), 2);
    cni.gc(&keep).await.expect("GC");
    assert_eq!(reservations(s.dir.path(), tag), 1);
    assert_eq!(cni.cached_attachments(), keep);
    cni.del("gc0", None, "eth0", &PodArgs::default())
        .await
        .unwrap();
    assert_eq!(reservations(s.dir.path(), tag), 0);
    for i in 0..2 {
        netns::remove(&s.dir.path().join(format!("ns{i}"))).unwrap();
    }
}

#[tokio::test]
async fn an_empty_pool_is_resource_exhausted_and_undone() {
    if !can_run() {
        return;
    }
    let tag = 4u8;
    let (s, _) = setup(tag, "1.0.0");
    let subnet_prefix = prefix(tag);
    // One usable address only.
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("cni-test-{tag}"),
        "plugins": [{
            "type": "bridge",
            "bridge": s.bridge,
            "ipam": {
                "type": "host-local",
                "dataDir": s.dir.path().join("ipam"),
                "ranges": [[{
                    "subnet": format!("{subnet_prefix}.0/24"),
                    "rangeStart": format!("{subnet_prefix}.10"),
                    "rangeEnd": format!("{subnet_prefix}.10")
                }]]
            }
        }]
    });
    std::fs::write(
        s.dir.path().join("net.d/10-test.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let cni = Cni::new(CniSettings {
        conf_dir: s.dir.path().join("net.d"),
        bin_dirs: vec![PathBuf::from(PLUGINS)],
        cache_dir: s.dir.path().join("cache"),
        timeout: Duration::from_secs(20),
    });
    let mut atts = Vec::new();
    for i in 0..2 {
        let ns = s.dir.path().join(format!("pool{i}"));
        netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
        atts.push(Attachment {
            container_id: format!("pool{i}"),
            netns: ns,
            ifname: "eth0".into(),
            pod: PodArgs::default(),
            capabilities: Capabilities::default(),
        });
    }
    cni.add(&atts[0]).await.expect("first ADD");
    let e = cni.add(&atts[1]).await.unwrap_err();
    assert_eq!(e.kind(), imagestore::ErrorKind::ResourceExhausted, "{e}");
    assert_eq!(e.plugin(), Some("bridge"), "{e}");
    // The failed ADD was undone: no cache entry, only the first veth on the bridge.
    assert_eq!(cni.cached_attachments().len(), 1);
    assert_eq!(s.veths(), 1);
    cni.del("pool0", Some(&atts[0].netns), "eth0", &PodArgs::default())
        .await
        .unwrap();
    assert_eq!(reservations(s.dir.path(), tag), 0);
    for a in &atts {
        netns::remove(&a.netns).unwrap();
    }
}

/// `iptables -t nat -S` (portmap's DNAT rules).
fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_prepared_head_is_finished_for_its_pod() {
    if !can_run() {
        return;
    }
    let tag = 5u8;
    let (s, cni) = setup(tag, "1.0.0");
    let subnet = format!("{}.0/24", prefix(tag));
    let write_list = |mtu: u32| {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("cni-test-{tag}"),
            "plugins": [
                {
                    "type": "bridge", "bridge": s.bridge, "isGateway": true, "mtu": mtu,
                    "ipam": {"type": "host-local", "dataDir": s.dir.path().join("ipam"),
                             "ranges": [[{"subnet": subnet}]]}
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(
            s.dir.path().join("net.d/10-test.conflist"),
            conflist.to_string(),
        )
        .unwrap();
    };
    write_list(1500);
    let host_port = 31_000 + i32::from(tag) * 10 + (std::process::id() % 10) as i32;
    let attachment = |id: &str, ns: &Path| Attachment {
        container_id: id.into(),
        netns: ns.to_owned(),
        ifname: "eth0".into(),
        pod: PodArgs {
            namespace: "ns".into(),
            name: "web".into(),
            infra_container_id: id.into(),
            uid: "u".into(),
        },
        capabilities: Capabilities {
            port_mappings: vec![cni::PortMapping {
                host_port,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        },
    };
    let eth0 = |ns: &Path| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ip", "-o", "addr", "show", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The head (bridge + host-local) before the pod exists: an address, no port mapping.
    let ns = s.dir.path().join("warm1");
    netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
    let prepared = cni
        .prepare("warm1", &ns, "eth0")
        .await
        .expect("prepare")
        .expect("bridge is pod-independent");
    assert_eq!(reservations(s.dir.path(), tag), 1);
    assert_eq!(cni.cached_attachments(), [("warm1".into(), "eth0".into())]);
    let before = eth0(&ns);
    assert!(before.contains("inet 10."), "{before}");

    // The pod: the rest of the chain gets the head's result and the pod's capabilities.
    let att = attachment("warm1", &ns);
    let result = cni.add_prepared(&att, prepared).await.expect("finish");
    let ip = result.pod_ips()[0].to_string();
    assert!(before.contains(&format!("inet {ip}/")), "{before} vs {ip}");
    assert_eq!(reservations(s.dir.path(), tag), 1);
    let dnat = format!("--to-destination {ip}:80");
    assert!(nat_rules().contains(&dnat), "portmap ran for the pod");
    // DEL (as after a restart, from the cache) undoes the whole chain.
    Cni::new(cni.settings().clone())
        .del("warm1", Some(&ns), "eth0", &att.pod)
        .await
        .expect("DEL");
    assert_eq!(reservations(s.dir.path(), tag), 0);
    assert!(!nat_rules().contains(&dnat));
    netns::remove(&ns).unwrap();

    // Prepared with one configuration, finished after it changed: attached anew.
    let ns = s.dir.path().join("warm2");
    netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
    let prepared = cni.prepare("warm2", &ns, "eth0").await.unwrap().unwrap();
    write_list(1400);
    let att = attachment("warm2", &ns);
    cni.add_prepared(&att, prepared).await.expect("finish");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mtu 1400"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(reservations(s.dir.path(), tag), 1);
    cni.del("warm2", Some(&ns), "eth0", &att.pod).await.unwrap();
    assert_eq!(reservations(s.dir.path(), tag), 0);
    assert!(!nat_rules().contains(&format!(":{host_port}")));
    netns::remove(&ns).unwrap();
}

#[tokio::test]
async fn a_prepared_head_is_undone_when_the_rest_of_the_chain_fails() {
    if !can_run() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tag = 6u8;
    let (s, _) = setup(tag, "1.0.0");
    let bin = s.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tail = bin.join("failplug");
    let write_tail = || {
        std::fs::write(
            &tail,
            "#!/bin/sh\ncat >/dev/null\ncase \"$CNI_COMMAND\" in\n\
             ADD) echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"tail refuses\"}'; exit 1 ;;\n\
             VERSION) echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}' ;;\n\
             esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&tail, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_tail();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("cni-test-{tag}"),
        "plugins": [
            {
                "type": "bridge", "bridge": s.bridge,
                "ipam": {"type": "host-local", "dataDir": s.dir.path().join("ipam"),
                         "ranges": [[{"subnet": format!("{}.0/24", prefix(tag))}]]}
            },
            {"type": "failplug"}
        ]
    });
    std::fs::write(
        s.dir.path().join("net.d/10-test.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let cni = Cni::new(CniSettings {
        conf_dir: s.dir.path().join("net.d"),
        bin_dirs: vec![bin.clone(), PathBuf::from(PLUGINS)],
        cache_dir: s.dir.path().join("cache"),
        timeout: Duration::from_secs(20),
    });
    let att = |id: &str, ns: &Path| Attachment {
        container_id: id.into(),
        netns: ns.to_owned(),
        ifname: "eth0".into(),
        pod: PodArgs::default(),
        capabilities: Capabilities::default(),
    };
    // The tail plugin fails its ADD, and then its binary is gone: both undo the head.
    for (i, missing) in [(1, false), (2, true)] {
        let ns = s.dir.path().join(format!("p{i}"));
        netns::create(&Default::default(), &[(NsKind::Net, ns.clone())], || Ok(())).unwrap();
        let id = format!("p{i}");
        let prepared = cni.prepare(&id, &ns, "eth0").await.unwrap().unwrap();
        assert_eq!(reservations(s.dir.path(), tag), 1);
        assert_eq!(s.veths(), 1);
        if missing {
            std::fs::remove_file(&tail).unwrap();
        }
        let e = cni
            .add_prepared(&att(&id, &ns), prepared)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(if missing { "failplug" } else { "tail refuses" }),
            "{text}"
        );
        assert_eq!(reservations(s.dir.path(), tag), 0, "{text}");
        assert_eq!(s.veths(), 0, "{text}");
        assert!(cni.cached_attachments().is_empty(), "{text}");
        netns::remove(&ns).unwrap();
    }
    write_tail();
}
