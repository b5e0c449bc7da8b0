//! The CRI request validation layer: a protobuf-encoded `CreateContainerRequest` (with its
//! sandbox config) goes through crid's own conversion (`crid/src/cri/convert.rs`, compiled in
//! by path), the pod checks that need no host state, the container validation and the OCI
//! spec generation that `CreateContainer` does before anything runs; `UpdateContainerResources`
//! conversion too. Nothing may panic; an accepted request never mounts over `/proc`, never
//! logs outside the pod's log directory, and its spec serialises.
#![no_main]

#[allow(dead_code)]
#[path = "../../crid/src/cri/convert.rs"]
mod convert;

use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::cri;
use sandbox::container::spec::{self, ImageConfig, SpecContext};
use sandbox::container::{AppArmorProfile, NsSource, PodContext, apparmor, user};
use sandbox::pod::{CgroupDriver, NsMode, files, validate};

fn ns(mode: NsMode) -> NsSource {
    match mode {
        NsMode::Node => NsSource::Host,
        _ => NsSource::New,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = cri::CreateContainerRequest::decode(data) else {
        return;
    };
    let Ok(pod) = convert::pod_config(cri::RunPodSandboxRequest {
        config: req.sandbox_config.clone(),
        runtime_handler: String::new(),
    }) else {
        return;
    };
    for (k, v) in &pod.sysctls {
        let _ = validate::sysctl(k, v);
    }
    for d in [CgroupDriver::Systemd, CgroupDriver::Cgroupfs] {
        let _ = validate::cgroup_parent(d, &pod.cgroup_parent);
    }
    for (k, v) in &pod.annotations {
        let _ = validate::bandwidth(k, v);
    }
    let _ = files::resolv_conf(&pod.dns);
    let _ = files::hosts(&pod.hostname, &[]);
    let Some(c) = req.config else { return };
    if let Some(linux) = c.linux.as_ref().and_then(|l| l.resources.clone()) {
        let r = convert::resources(Some(linux));
        let _ = spec::linux_resources(&r, true);
        let _ = spec::linux_resources(&r, false);
    }
    let Ok(config) = convert::container_config(c) else {
        return;
    };
    let log_dir = PathBuf::from("/var/log/pods/fuzz");
    let cx = PodContext {
        id: "fuzzpod".into(),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        network: ns(pod.namespaces.network),
        ipc: ns(pod.namespaces.ipc),
        uts: NsSource::New,
        pid: ns(pod.namespaces.pid),
        hostname: pod.hostname.clone(),
        log_directory: (!pod.log_directory.is_empty()).then(|| log_dir.clone()),
        cgroup_parent: pod.cgroup_parent.clone(),
        sysctls: pod.sysctls.clone(),
        privileged: pod.privileged,
        ..PodContext::default()
    };
    let seccomp_root = Path::new("/nonexistent/crid-fuzz/seccomp");
    if sandbox::container::validate::request(&config, &cx, seccomp_root).is_err() {
        return;
    }
    if let Ok(Some(p)) = sandbox::container::validate::log_path(&cx, &config.log_path) {
        assert!(p.starts_with(&log_dir), "{}", p.display());
        assert!(
            !p.components().any(|c| c == Component::ParentDir),
            "{}",
            p.display()
        );
    }
    let s = &config.security;
    let Ok(u) = user::resolve(
        "",
        s.run_as_user,
        &s.run_as_username,
        s.run_as_group,
        &s.supplemental_groups,
        s.supplemental_groups_strict,
        &[],
    ) else {
        return;
    };
    let image = ImageConfig {
        cmd: Some(vec!["/bin/sh".into()]),
        ..ImageConfig::default()
    };
    // A valid Localhost name goes into the spec as it would on an AppArmor host (the default
    // profile is not loaded here: that runs apparmor_parser).
    let apparmor_profile = match &config.security.apparmor {
        AppArmorProfile::Localhost(name) if apparmor::validate(&config.security, true).is_ok() => {
            Some(name.clone())
        }
        _ => None,
    };
    let Ok(oci) = spec::build(
        &config,
        &SpecContext {
            id: "fuzzctr",
            pod: &cx,
            image: &image,
            user: &u,
            rootfs: Path::new("/nonexistent/crid-fuzz/rootfs"),
            cgroups_path: "/crid/fuzzctr".into(),
            seccomp_root,
            min_oom_score_adj: -1000,
            cgroup_v2: true,
            apparmor_profile,
        },
    ) else {
        return;
    };
    for m in oci.mounts().iter().flatten() {
        let d = m.destination();
        assert!(
            d == Path::new("/proc")
                || !d.starts_with("/proc")
                || m.typ().as_deref() != Some("bind"),
            "bind mount over {}",
            d.display()
        );
    }
    serde_json::to_vec(&oci).unwrap();
});
