//! Requests shaped like kubelet's: what `kuberuntime` (`kuberuntime_sandbox.go`,
//! `kuberuntime_container.go`) sends for an ordinary pod, field by field, so tests exercise what
//! a cluster sends rather than hand-made minimal requests.
//!
//! [`KubeletPod`] lays out a pod directory as kubelet does (`<root>/pods/<uid>`: `etc-hosts`,
//! `containers/<name>/<id>` termination-log files, `volumes/kubernetes.io~projected/...` for
//! the service-account token, `kubernetes.io~configmap/...` and `kubernetes.io~empty-dir/...`)
//! and builds the `PodSandboxConfig`; [`KubeletContainer`] builds the `ContainerConfig`:
//!
//! - labels `io.kubernetes.{pod.name,pod.namespace,pod.uid,container.name}`; annotations
//!   `io.kubernetes.container.{hash,restartCount,terminationMessagePath,
//!   terminationMessagePolicy,ports}` and `io.kubernetes.pod.terminationGracePeriod`;
//! - mounts in kubelet's order: the volumes, the service-account token directory (read-only),
//!   `/etc/hosts`, `/dev/termination-log`;
//! - the service environment variables of the `kubernetes` Service before the user's envs;
//! - resources (CPU period 100000, quota, shares, memory limit, OOM score adjustment), a
//!   security context with the pod's namespaces and kubelet's masked and read-only paths;
//! - `log_path` `<name>/<attempt>.log` under the pod's log directory
//!   `<root>/logs/<namespace>_<name>_<uid>`.
//!
//! ConfigMap and token volumes use kubelet's atomic-writer layout: a timestamped directory,
//! a `..data` link to it and one link per key.

use std::collections::HashMap;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proto::cri;

/// The cluster's DNS service address in these requests.
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// The `kubernetes` Service's cluster IP in these requests.
pub const API_SERVICE_IP: &str = "10.96.0.1";

/// kubelet's default masked paths (`securitycontext.ConvertToRuntimeMaskedPaths`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// kubelet's default read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A pod as kubelet lays it out on the node.
#[derive(Debug, Clone)]
pub struct KubeletPod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `<root>/pods/<uid>`.
    pub dir: PathBuf,
    /// `<root>/logs/<namespace>_<name>_<uid>`.
    pub log_directory: PathBuf,
    pub host_network: bool,
    pub cgroup_parent: String,
    /// The pod's `metadata.annotations`, which kubelet passes on in
    /// `PodSandboxConfig.annotations` next to its own.
    pub annotations: Vec<(String, String)>,
}

impl KubeletPod {
    /// A pod named `name` in `namespace` whose node files live under `root` (kubelet's
    /// `/var/lib/kubelet` and `/var/log/pods` in one test directory). Writes `etc-hosts`.
    pub fn new(root: &Path, name: &str, namespace: &str) -> std::io::Result<KubeletPod> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (nanos >> 32) as u32,
            (nanos >> 16) as u16,
            nanos as u16 & 0xfff,
            std::process::id() & 0xfff,
            nanos & 0xffff_ffff_ffff
        );
        let dir = root.join("pods").join(&uid);
        std::fs::create_dir_all(&dir)?;
        let log_directory = root.join("logs").join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)?;
        let pod = KubeletPod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            dir,
            log_directory,
            host_network: false,
            cgroup_parent: String::new(),
            annotations: vec![],
        };
        // kubelet's managed hosts file (kubelet_pods.go managedHostsFileContent).
        std::fs::write(
            pod.dir.join("etc-hosts"),
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost \
                 ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n\
                 fe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n10.244.0.99\t{name}\n"
            ),
        )?;
        Ok(pod)
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            ("io.kubernetes.pod.name".into(), self.name.clone()),
            ("io.kubernetes.pod.namespace".into(), self.namespace.clone()),
            ("io.kubernetes.pod.uid".into(), self.uid.clone()),
        ])
    }

    /// The `RunPodSandbox` config kubelet sends (`generatePodSandboxConfig`).
    pub fn sandbox_config(&self) -> cri::PodSandboxConfig {
        let ns = &self.namespace;
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: ns.clone(),
                attempt: 0,
            }),
            hostname: if self.host_network {
                String::new()
            } else {
                self.name.clone()
            },
            log_directory: self.log_directory.display().to_string(),
            dns_config: (!self.host_network).then(|| cri::DnsConfig {
                servers: vec![CLUSTER_DNS.into()],
                searches: vec![
                    format!("{ns}.svc.cluster.local"),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            labels: self.labels(),
            annotations: HashMap::from([
                ("kubernetes.io/config.source".into(), "api".into()),
                (
                    "kubernetes.io/config.seen".into(),
                    "2026-01-01T00:00:00.000000000Z".into(),
                ),
            ])
            .into_iter()
            .chain(self.annotations.iter().cloned())
            .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(self.host_network)),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container of this pod running `image` (see [`KubeletContainer`]).
    pub fn container(&self, name: &str, image: &str) -> KubeletContainer {
        KubeletContainer {
            pod: self.clone(),
            name: name.into(),
            image: image.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            ports: vec![],
            volumes: vec![],
            memory_limit: 0,
            cpu_millis: 0,
            annotations: vec![],
        }
    }

    /// Writes a volume in kubelet's atomic-writer layout (`..data` → a timestamped directory,
    /// one link per key) and returns its directory.
    fn atomic_volume(
        &self,
        kind: &str,
        volume: &str,
        files: &[(&str, &str)],
    ) -> std::io::Result<PathBuf> {
        let dir = self.dir.join("volumes").join(kind).join(volume);
        let stamp = "..2026_01_01_00_00_00.000000001";
        std::fs::create_dir_all(dir.join(stamp))?;
        for (key, value) in files {
            std::fs::write(dir.join(stamp).join(key), value)?;
            let link = dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), link)?;
            }
        }
        if std::fs::symlink_metadata(dir.join("..data")).is_err() {
            std::os::unix::fs::symlink(stamp, dir.join("..data"))?;
        }
        Ok(dir)
    }
}

/// One volume mount of a container.
#[derive(Debug, Clone)]
enum Volume {
    ConfigMap {
        name: String,
        path: String,
        files: Vec<(String, String)>,
    },
    EmptyDir {
        name: String,
        path: String,
    },
}

/// A container as kubelet's `generateContainerConfig` builds it.
#[derive(Debug, Clone)]
pub struct KubeletContainer {
    pod: KubeletPod,
    name: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ports: Vec<(String, u16)>,
    volumes: Vec<Volume>,
    memory_limit: i64,
    cpu_millis: i64,
    annotations: Vec<(String, String)>,
}

impl KubeletContainer {
    pub fn command(mut self, argv: &[&str]) -> Self {
        self.command = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn args(mut self, argv: &[&str]) -> Self {
        self.args = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// An annotation of the container's own. kubelet sets only its `io.kubernetes.*` ones (a
    /// pod's `metadata.annotations` go to the sandbox); other CRI clients and NRI plugins may
    /// set more.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A declared container port (`ports[].containerPort`, TCP).
    pub fn port(mut self, name: &str, port: u16) -> Self {
        self.ports.push((name.into(), port));
        self
    }

    /// A ConfigMap volume with these keys mounted (read-only) at `path`.
    pub fn config_map(mut self, volume: &str, path: &str, files: &[(&str, &str)]) -> Self {
        self.volumes.push(Volume::ConfigMap {
            name: volume.into(),
            path: path.into(),
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        self
    }

    /// An emptyDir volume mounted (read-write) at `path`.
    pub fn empty_dir(mut self, volume: &str, path: &str) -> Self {
        self.volumes.push(Volume::EmptyDir {
            name: volume.into(),
            path: path.into(),
        });
        self
    }

    /// `resources.limits` (requests = limits: a Guaranteed pod).
    pub fn limits(mut self, cpu_millis: i64, memory_bytes: i64) -> Self {
        self.cpu_millis = cpu_millis;
        self.memory_limit = memory_bytes;
        self
    }

    /// The service environment variables kubelet adds for the `kubernetes` Service.
    fn service_env() -> Vec<(String, String)> {
        let ip = API_SERVICE_IP;
        [
            ("KUBERNETES_SERVICE_HOST", ip.to_owned()),
            ("KUBERNETES_SERVICE_PORT", "443".into()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443".into()),
            ("KUBERNETES_PORT", format!("tcp://{ip}:443")),
            ("KUBERNETES_PORT_443_TCP", format!("tcp://{ip}:443")),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT", "443".into()),
            ("KUBERNETES_PORT_443_TCP_ADDR", ip.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Writes the container's node files (volumes, token, termination log) and returns the
    /// `CreateContainer` config.
    pub fn build(&self) -> std::io::Result<cri::ContainerConfig> {
        let pod = &self.pod;
        let mut mounts = Vec::new();
        for v in &self.volumes {
            let (host, path, readonly) = match v {
                Volume::ConfigMap { name, path, files } => {
                    let files: Vec<(&str, &str)> = files
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    (
                        pod.atomic_volume("kubernetes.io~configmap", name, &files)?,
                        path,
                        true,
                    )
                }
                Volume::EmptyDir { name, path } => {
                    // kubelet makes an emptyDir 0777 whatever the umask (empty_dir.go).
                    let dir = pod.dir.join("volumes/kubernetes.io~empty-dir").join(name);
                    std::fs::create_dir_all(&dir)?;
                    std::fs::set_permissions(&dir, Permissions::from_mode(0o777))?;
                    (dir, path, false)
                }
            };
            mounts.push(mount(path, &host, readonly));
        }
        let token = pod.atomic_volume(
            "kubernetes.io~projected",
            "kube-api-access-x7k2p",
            &[
                ("token", "eyJhbGciOiJSUzI1NiJ9.test-token.signature"),
                (
                    "ca.crt",
                    "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n",
                ),
                ("namespace", &pod.namespace),
            ],
        )?;
        mounts.push(mount(
            "/var/run/secrets/kubernetes.io/serviceaccount",
            &token,
            true,
        ));
        mounts.push(mount("/etc/hosts", &pod.dir.join("etc-hosts"), false));
        // kubelet makes the container's log directory before CreateContainer.
        std::fs::create_dir_all(pod.log_directory.join(&self.name))?;
        let term_dir = pod.dir.join("containers").join(&self.name);
        std::fs::create_dir_all(&term_dir)?;
        let term = term_dir.join("5f3a9c1e");
        std::fs::write(&term, b"")?;
        // kubelet chmods the termination log 0666 whatever the umask (makeMounts).
        std::fs::set_permissions(&term, Permissions::from_mode(0o666))?;
        mounts.push(mount("/dev/termination-log", &term, false));

        let ports = serde_json::Value::Array(
            self.ports
                .iter()
                .map(|(name, port)| {
                    serde_json::json!({"name": name, "containerPort": port, "protocol": "TCP"})
                })
                .collect(),
        );
        let mut annotations = HashMap::from([
            ("io.kubernetes.container.hash".into(), "4d6c2f1b".into()),
            ("io.kubernetes.container.restartCount".into(), "0".into()),
            (
                "io.kubernetes.container.terminationMessagePath".into(),
                "/dev/termination-log".into(),
            ),
            (
                "io.kubernetes.container.terminationMessagePolicy".into(),
                "File".into(),
            ),
            (
                "io.kubernetes.pod.terminationGracePeriod".into(),
                "30".into(),
            ),
        ]);
        if !self.ports.is_empty() {
            annotations.insert("io.kubernetes.container.ports".into(), ports.to_string());
        }
        annotations.extend(self.annotations.iter().cloned());
        let mut labels = pod.labels();
        labels.insert("io.kubernetes.container.name".into(), self.name.clone());
        let (cpu_quota, cpu_shares) = if self.cpu_millis > 0 {
            (self.cpu_millis * 100, self.cpu_millis * 1024 / 1000)
        } else {
            (0, 2)
        };
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                user_specified_image: self.image.clone(),
                ..Default::default()
            }),
            command: self.command.clone(),
            args: self.args.clone(),
            working_dir: String::new(),
            envs: Self::service_env()
                .into_iter()
                .chain(self.env.iter().cloned())
                .map(|(key, value)| cri::KeyValue {
                    key,
                    value: value.into(),
                })
                .collect(),
            mounts,
            labels,
            annotations,
            log_path: format!("{}/0.log", self.name),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota,
                    cpu_shares,
                    memory_limit_in_bytes: self.memory_limit,
                    oom_score_adj: if self.memory_limit > 0 { -997 } else { 1000 },
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(namespace_options(pod.host_network)),
                    masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                    readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        })
    }
}

fn mount(container_path: &str, host: &Path, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        readonly,
        selinux_relabel: false,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

/// The namespaces kubelet gives a pod and repeats for each of its containers: the host's
/// network or the pod's, a PID namespace per container, the pod's IPC.
fn namespace_options(host_network: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_kubelets_layout_and_fields() {
        let root = tempfile::tempdir().unwrap();
        let pod = KubeletPod::new(root.path(), "web-6d4cf56db6-abcde", "default").unwrap();
        let c = pod
            .container("user-container", "example/app:1")
            .env("TARGET", "crid")
            .port("user-port", 8080)
            .config_map("config", "/etc/app", &[("greeting", "hello")])
            .empty_dir("cache", "/cache")
            .limits(500, 128 << 20)
            .build()
            .unwrap();
        let paths: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/app",
                "/cache",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                "/etc/hosts",
                "/dev/termination-log"
            ]
        );
        let cm = Path::new(&c.mounts[0].host_path);
        assert_eq!(
            std::fs::read_to_string(cm.join("greeting")).unwrap(),
            "hello"
        );
        assert!(
            std::fs::symlink_metadata(cm.join("greeting"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(c.envs[0].key, "KUBERNETES_SERVICE_HOST");
        assert_eq!(c.envs.last().unwrap().key, "TARGET");
        assert_eq!(
            c.annotations["io.kubernetes.container.ports"],
            r#"[{"containerPort":8080,"name":"user-port","protocol":"TCP"}]"#
        );
        assert_eq!(c.log_path, "user-container/0.log");
        let r = c.linux.unwrap().resources.unwrap();
        assert_eq!(
            (r.cpu_quota, r.cpu_shares, r.cpu_period),
            (50_000, 512, 100_000)
        );
        let s = pod.sandbox_config();
        assert_eq!(s.metadata.unwrap().uid, pod.uid);
        assert!(
            s.log_directory
                .ends_with(&format!("default_web-6d4cf56db6-abcde_{}", pod.uid))
        );
    }
}
