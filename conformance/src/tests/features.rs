//! Pod and container settings seen from inside: hostname, DNS config, namespaced sysctls, bind
//! mounts (read-write and read-only, and their propagation), host ports, host namespaces,
//! UpdateContainerResources and ReopenContainerLog. Each
//! test runs a long-lived busybox container in a fresh pod, checks with ExecSync and removes
//! the pod (and any host directory it made) again, also when a check fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proto::cri;

use super::TempDir;
use super::pods::{pod_config, remove_pod, run_pod};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "features/hostname-dns-sysctls",
            run: |env| Box::pin(hostname_dns_sysctls(env)),
        },
        Test {
            name: "features/no-hostname-long-name",
            run: |env| Box::pin(no_hostname_long_name(env)),
        },
        Test {
            name: "features/bind-mounts",
            run: |env| Box::pin(bind_mounts(env)),
        },
        Test {
            name: "features/update-resources",
            run: |env| Box::pin(update_resources(env)),
        },
        Test {
            name: "features/reopen-log",
            run: |env| Box::pin(reopen_log(env)),
        },
        Test {
            name: "features/mount-propagation",
            run: |env| Box::pin(mount_propagation(env)),
        },
        Test {
            name: "features/recursive-readonly-mount",
            run: |env| Box::pin(recursive_readonly(env)),
        },
        Test {
            name: "features/image-volume",
            run: |env| Box::pin(image_volume(env)),
        },
        Test {
            name: "features/pod-metrics",
            run: |env| Box::pin(pod_metrics(env)),
        },
        Test {
            name: "features/port-mapping",
            run: |env| Box::pin(port_mapping(env)),
        },
        Test {
            name: "features/host-namespaces",
            run: |env| Box::pin(host_namespaces(env)),
        },
    ]
}

struct Ctx {
    env: Env,
    id: String,
    logs: PathBuf,
}

/// Runs `sleep 3600` in a fresh pod with `pod` and `ctr` applied to the configs, then `check`.
async fn with_container<F, Fut>(
    env: Env,
    tag: &str,
    pod: impl FnOnce(&mut cri::PodSandboxConfig),
    ctr: impl FnOnce(&mut cri::ContainerConfig),
    check: F,
) -> TestResult
where
    F: FnOnce(Ctx) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let logs = TempDir::new(&format!("{tag}-logs"))?;
    let mut config = pod_config(tag);
    config.log_directory = logs.0.display().to_string();
    pod(&mut config);
    let mut c = cri::ContainerConfig {
        command: vec!["sleep".into(), "3600".into()],
        log_path: "feat.log".into(),
        labels: HashMap::from([("name".to_string(), "feat".to_string())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: super::pod_namespace_options(&config),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..super::container("feat", &image)
    };
    ctr(&mut c);
    let pod_id = run_pod(&env, config.clone()).await?;
    let result = async {
        let id = super::create_start_in_pod(&env, &pod_id, &config, c).await?;
        check(Ctx {
            env: env.clone(),
            id,
            logs: logs.0.clone(),
        })
        .await
    }
    .await;
    remove_pod(&env, &pod_id).await;
    drop(logs);
    result.map(|()| Outcome::Passed)
}

/// stdout of `sh -c script`, which must succeed.
async fn out(ctx: &Ctx, script: &str) -> anyhow::Result<String> {
    super::out(&ctx.env, &ctx.id, script).await
}

async fn hostname_dns_sysctls(env: Env) -> TestResult {
    with_container(
        env,
        "feat-host",
        |p| {
            p.hostname = "crid-feature-host".into();
            p.dns_config = Some(cri::DnsConfig {
                servers: vec!["192.0.2.53".into()],
                searches: vec!["conformance.example".into()],
                options: vec!["ndots:3".into()],
            });
            if let Some(l) = p.linux.as_mut() {
                l.sysctls = HashMap::from([("kernel.shm_rmid_forced".into(), "1".into())]);
            }
        },
        |_| {},
        |ctx| async move {
            let h = out(&ctx, "hostname").await?;
            ensure!(h == "crid-feature-host", "hostname {h:?}");
            let r = out(&ctx, "cat /etc/resolv.conf").await?;
            for want in ["192.0.2.53", "conformance.example", "ndots:3"] {
                ensure!(r.contains(want), "resolv.conf lacks {want}: {r}");
            }
            let s = out(&ctx, "cat /proc/sys/kernel/shm_rmid_forced").await?;
            ensure!(s == "1", "kernel.shm_rmid_forced = {s}");
            Ok(())
        },
    )
    .await
}

/// A pod as critest makes them: no hostname and a 68-character name (longer than a hostname
/// may be). It must start; the hostname its containers see is a valid one, the same in the
/// kernel and in `/etc/hostname`, and when it comes from the name it is kubelet's: the name
/// cut to 63 characters.
async fn no_hostname_long_name(env: Env) -> TestResult {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let uuid = format!("{:036x}", nanos ^ u128::from(std::process::id()) << 64);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &uuid[4..12],
        &uuid[12..16],
        &uuid[16..20],
        &uuid[20..24],
        &uuid[24..36]
    );
    let name = format!("PodSandbox-for-create-container-{uuid}");
    let cut = name[..63].to_string();
    with_container(
        env,
        "feat-noname",
        |p| {
            p.hostname.clear();
            if let Some(m) = p.metadata.as_mut() {
                m.uid = format!("uid-{name}");
                m.name = name;
            }
        },
        |_| {},
        |ctx| async move {
            let h = out(&ctx, "cat /proc/sys/kernel/hostname").await?;
            ensure!(!h.is_empty() && h.len() <= 64, "hostname {h:?}");
            let file = out(&ctx, "cat /etc/hostname").await?;
            ensure!(file == h, "/etc/hostname {file:?}, kernel {h:?}");
            if h.starts_with("PodSandbox-for-") {
                ensure!(
                    h == cut,
                    "hostname {h:?} is not the name cut to 63: {cut:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

async fn bind_mounts(env: Env) -> TestResult {
    let rw = TempDir::new("feat-rw")?;
    let ro = TempDir::new("feat-ro")?;
    std::fs::write(ro.0.join("from-host"), "hello").context("write the ro fixture")?;
    let (rw_path, ro_path) = (rw.0.clone(), ro.0.clone());
    let (rw_check, ro_check) = (rw.0.clone(), ro.0.clone());
    // The directories outlive the pod: they are removed when this function returns.
    let result = with_container(
        env,
        "feat-mnt",
        |_| {},
        |c| {
            c.mounts = vec![
                cri::Mount {
                    container_path: "/data".into(),
                    host_path: rw_path.display().to_string(),
                    ..Default::default()
                },
                cri::Mount {
                    container_path: "/config".into(),
                    host_path: ro_path.display().to_string(),
                    readonly: true,
                    ..Default::default()
                },
            ];
        },
        |ctx| async move {
            out(&ctx, "echo written > /data/from-container").await?;
            let host = std::fs::read_to_string(rw_check.join("from-container"))
                .context("the container's write is not on the host")?;
            ensure!(host.trim() == "written", "host sees {host:?}");
            let seen = out(&ctx, "cat /config/from-host").await?;
            ensure!(seen == "hello", "container sees {seen:?}");
            let r = ctx
                .env
                .cri
                .runtime
                .clone()
                .exec_sync(cri::ExecSyncRequest {
                    container_id: ctx.id.clone(),
                    cmd: vec!["sh".into(), "-c".into(), "echo x > /config/new".into()],
                    timeout: 20,
                })
                .await?
                .into_inner();
            ensure!(r.exit_code != 0, "wrote into a read-only mount");
            ensure!(
                !ro_check.join("new").exists(),
                "a read-only mount let a file through"
            );
            Ok(())
        },
    )
    .await;
    drop((rw, ro));
    result
}

async fn update_resources(env: Env) -> TestResult {
    with_container(
        env,
        "feat-upd",
        |_| {},
        |c| {
            if let Some(l) = c.linux.as_mut() {
                l.resources = Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                });
            }
        },
        |ctx| async move {
            // cgroup v1 (memory.limit_in_bytes) or v2 (memory.max), as the container sees it.
            let read = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null \
                        || cat /sys/fs/cgroup/memory.max";
            let before = out(&ctx, read).await?;
            ensure!(before == (64u64 << 20).to_string(), "limit {before}");
            ctx.env
                .cri
                .runtime
                .clone()
                .update_container_resources(cri::UpdateContainerResourcesRequest {
                    container_id: ctx.id.clone(),
                    linux: Some(cri::LinuxContainerResources {
                        memory_limit_in_bytes: 96 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .context("UpdateContainerResources")?;
            let after = out(&ctx, read).await?;
            ensure!(
                after == (96u64 << 20).to_string(),
                "limit after update {after}"
            );
            let s = super::container_status(&ctx.env, &ctx.id).await?;
            ensure!(
                s.state == cri::ContainerState::ContainerRunning as i32,
                "state after update {}",
                s.state
            );
            Ok(())
        },
    )
    .await
}

async fn reopen_log(env: Env) -> TestResult {
    with_container(
        env,
        "feat-log",
        |_| {},
        |c| {
            c.command = vec![
                "sh".into(),
                "-c".into(),
                "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done".into(),
            ];
        },
        |ctx| async move {
            let log = ctx.logs.join("feat.log");
            wait_for(|| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("line")))
                .await
                .context("no output in the log")?;
            // Rotate as kubelet does: rename, then ask for a new file.
            let rotated = ctx.logs.join("feat.log.1");
            std::fs::rename(&log, &rotated).context("rename the log")?;
            ctx.env
                .cri
                .runtime
                .clone()
                .reopen_container_log(cri::ReopenContainerLogRequest {
                    container_id: ctx.id.clone(),
                })
                .await
                .context("ReopenContainerLog")?;
            wait_for(|| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("line")))
                .await
                .context("nothing written to the reopened log")?;
            let old = std::fs::read_to_string(&rotated)?.lines().count();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let later = std::fs::read_to_string(&rotated)?.lines().count();
            ensure!(
                later == old,
                "the rotated log still grows ({old} -> {later} lines)"
            );
            Ok(())
        },
    )
    .await
}

async fn wait_for(mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after 15 s")
}

/// Runs `mount ARGS` on the host.
fn host_mount(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .context("run mount")?;
    ensure!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether `path` is a mount point in the host's mount table.
fn host_mounted(path: &std::path::Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// A host directory made a shared mount point (as kubelet's volume directories are), with
/// every mount under it detached on drop.
struct SharedDir(TempDir);

impl SharedDir {
    fn new(tag: &str) -> anyhow::Result<SharedDir> {
        let dir = TempDir::new(tag)?;
        let p = dir.0.display().to_string();
        host_mount(&["--bind", &p, &p])?;
        let shared = SharedDir(dir);
        host_mount(&["--make-rshared", &p])?;
        Ok(shared)
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        // Innermost first, bounded.
        for _ in 0..8 {
            let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                .filter(|m| std::path::Path::new(m).starts_with(&self.0.0))
                .collect();
            if mounts.is_empty() {
                break;
            }
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&m)
                    .output();
            }
        }
    }
}

/// One container per propagation mode over the same shared host directory: a mount made on
/// the host afterwards reaches the `rslave` and `rshared` containers but not the private one,
/// and a mount made inside the (privileged) `rshared` container reaches the host.
/// A recursive read-only mount (critest's "Container Mount Readonly"): the host directory has
/// a tmpfs mounted in it, and that submount is read-only in the container too. Skipped when
/// the default runtime handler does not report the feature in `Status`, as critest does.
async fn recursive_readonly(env: Env) -> TestResult {
    if !super::default_handler_has(&env, |f| f.recursive_read_only_mounts).await? {
        return Ok(Outcome::Skipped(
            "the default runtime handler does not report recursive read-only mounts".into(),
        ));
    }
    let dir = SharedDir::new("feat-rro")?;
    let sub = dir.0.0.join("tmpfs");
    std::fs::create_dir_all(&sub).context("create the submount point")?;
    host_mount(&["-t", "tmpfs", "tmpfs", &sub.display().to_string()])?;
    let source = dir.0.0.display().to_string();
    let r = with_container(
        env,
        "feat-rro",
        |_| {},
        |c| {
            c.mounts = vec![cri::Mount {
                container_path: "/mnt".into(),
                host_path: source,
                readonly: true,
                recursive_read_only: true,
                ..Default::default()
            }];
        },
        |ctx| async move {
            let (code, _, err) = super::sh(&ctx.env, &ctx.id, "touch /mnt/tmpfs/foo").await?;
            ensure!(code != 0, "the submount is writable");
            ensure!(err.contains("Read-only"), "touch failed otherwise: {err}");
            Ok(())
        },
    )
    .await;
    drop(dir);
    r
}

/// Image volumes (critest's "Image Volume"): the busybox image mounted read-only, whole and by
/// its `etc` sub path, executable, and reported in the status with its image id.
async fn image_volume(env: Env) -> TestResult {
    let Some(registry) = env.registry.clone() else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let image = format!("{registry}/busybox:latest");
    let volume = |path: &str, sub_path: &str| cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    };
    let mounts = vec![volume("/vol", ""), volume("/sub", "etc")];
    with_container(
        env,
        "feat-imgvol",
        |_| {},
        |c| c.mounts = mounts,
        |ctx| async move {
            let (code, _, err) = super::sh(&ctx.env, &ctx.id, "/vol/bin/busybox true").await?;
            ensure!(code == 0, "the image volume is not executable: {err}");
            let (code, _, _) = super::sh(&ctx.env, &ctx.id, "touch /vol/x").await?;
            ensure!(code != 0, "the image volume is writable");
            let (code, _, _) = super::sh(&ctx.env, &ctx.id, "test -f /sub/passwd").await?;
            ensure!(code == 0, "the sub path etc is not what /sub shows");
            let (code, _, _) = super::sh(&ctx.env, &ctx.id, "test -e /sub/etc").await?;
            ensure!(code != 0, "the sub path was ignored");
            let mut images = ctx.env.cri.images.clone();
            let id = images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .context("ImageStatus")?
                .into_inner()
                .image
                .context("the image is gone")?
                .id;
            let status = super::container_status(&ctx.env, &ctx.id).await?;
            let m = status
                .mounts
                .iter()
                .find(|m| m.container_path == "/sub")
                .context("no /sub mount in the status")?;
            let image_ref = m.image.as_ref().map(|i| i.image_ref.as_str());
            ensure!(
                image_ref == Some(id.as_str()),
                "mount image_ref {image_ref:?}, image {id}"
            );
            ensure!(m.image_sub_path == "etc", "sub path {:?}", m.image_sub_path);
            Ok(())
        },
    )
    .await
}

/// CRI metrics (critest's "metrics operations"): the descriptors have help and label keys,
/// and a running container's pod reports its cAdvisor-named metrics, each with one label value
/// per key of its descriptor. Skipped when the runtime answers UNIMPLEMENTED, as critest does.
async fn pod_metrics(env: Env) -> TestResult {
    let descriptors = match env
        .cri
        .runtime
        .clone()
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
    {
        Ok(r) => r.into_inner().descriptors,
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            return Ok(Outcome::Skipped("the runtime has no CRI metrics".into()));
        }
        Err(e) => bail!("ListMetricDescriptors: {e}"),
    };
    for d in &descriptors {
        ensure!(
            !d.help.is_empty() && !d.label_keys.is_empty(),
            "descriptor {d:?}"
        );
    }
    with_container(
        env,
        "feat-metrics",
        |_| {},
        |_| {},
        |ctx| async move {
            let pods = ctx
                .env
                .cri
                .runtime
                .clone()
                .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
                .await
                .context("ListPodSandboxMetrics")?
                .into_inner()
                .pod_metrics;
            let pod = pods
                .iter()
                .find(|p| p.container_metrics.iter().any(|c| c.container_id == ctx.id))
                .context("no metrics for the container's pod")?;
            let mut names = std::collections::HashSet::new();
            for m in pod
                .metrics
                .iter()
                .chain(pod.container_metrics.iter().flat_map(|c| &c.metrics))
            {
                let d = descriptors
                    .iter()
                    .find(|d| d.name == m.name)
                    .with_context(|| format!("{} has no descriptor", m.name))?;
                ensure!(
                    m.label_values.len() == d.label_keys.len(),
                    "{}: labels {:?} for keys {:?}",
                    m.name,
                    m.label_values,
                    d.label_keys
                );
                names.insert(m.name.clone());
            }
            for want in [
                "container_cpu_usage_seconds_total",
                "container_memory_working_set_bytes",
                "container_processes",
                "container_fs_usage_bytes",
                "container_network_receive_bytes_total",
            ] {
                ensure!(names.contains(want), "no {want} among {names:?}");
            }
            Ok(())
        },
    )
    .await
}

async fn mount_propagation(env: Env) -> TestResult {
    use cri::MountPropagation as P;
    let shared = SharedDir::new("feat-prop")?;
    let host_dir = shared.0.0.clone();
    let mut results = Vec::new();
    for (mode, tag) in [
        (P::PropagationPrivate, "feat-prop-private"),
        (P::PropagationHostToContainer, "feat-prop-slave"),
        (P::PropagationBidirectional, "feat-prop-shared"),
    ] {
        let bidirectional = mode == P::PropagationBidirectional;
        let source = host_dir.display().to_string();
        let host = host_dir.clone();
        let r = with_container(
            env.clone(),
            tag,
            |p| {
                if bidirectional {
                    // Bidirectional propagation needs a privileged container.
                    if let Some(sc) = p.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
                        sc.privileged = true;
                    }
                }
            },
            |c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/shared".into(),
                    host_path: source,
                    propagation: mode as i32,
                    ..Default::default()
                }];
                if bidirectional {
                    if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
                        sc.privileged = true;
                    }
                }
            },
            |ctx| async move {
                // A fresh mount on the host, under the shared directory.
                let sub = host.join(format!("from-host-{}", ctx.id.get(..8).unwrap_or("x")));
                std::fs::create_dir_all(&sub).context("create the host mount point")?;
                let sub_s = sub.display().to_string();
                host_mount(&["-t", "tmpfs", "tmpfs", &sub_s])?;
                std::fs::write(sub.join("marker"), "host").context("write the marker")?;
                let name = sub.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let script = format!("cat /shared/{name}/marker 2>/dev/null || echo absent");
                let seen = out(&ctx, &script).await?;
                match mode {
                    P::PropagationPrivate => ensure!(
                        seen == "absent",
                        "a private mount saw a later host mount: {seen:?}"
                    ),
                    _ => ensure!(
                        seen == "host",
                        "{mode:?} did not propagate a host mount: {seen:?}"
                    ),
                }
                if bidirectional {
                    let script = "mkdir -p /shared/from-ctr && \
                                  mount -t tmpfs tmpfs /shared/from-ctr && \
                                  echo ctr > /shared/from-ctr/marker";
                    out(&ctx, script).await?;
                    let back = host.join("from-ctr");
                    ensure!(
                        host_mounted(&back),
                        "a mount made in an rshared container is not on the host"
                    );
                    let text = std::fs::read_to_string(back.join("marker"))
                        .context("read the container's marker on the host")?;
                    ensure!(text.trim() == "ctr", "host reads {text:?}");
                }
                Ok(())
            },
        )
        .await;
        results.push(r);
    }
    drop(shared);
    for r in results {
        match r? {
            Outcome::Passed => {}
            other => return Ok(other),
        }
    }
    Ok(Outcome::Passed)
}

/// The host address the pod's traffic comes from (its route to the pod), where host ports
/// are reachable.
fn host_address_towards(pod_ip: &str) -> anyhow::Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("bind a UDP socket")?;
    socket
        .connect((pod_ip, 9))
        .with_context(|| format!("route to the pod at {pod_ip}"))?;
    Ok(socket.local_addr().context("local address")?.ip())
}

/// A TCP host port mapped to a container port: a client on the host connecting to it gets
/// what the container's listener sends.
async fn port_mapping(env: Env) -> TestResult {
    let host_port = 30_000 + (std::process::id() % 20_000) as i32;
    with_container(
        env,
        "feat-port",
        |p| {
            p.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 8080,
                host_port,
                host_ip: String::new(),
            }];
        },
        |c| {
            c.command = vec![
                "sh".into(),
                "-c".into(),
                "while true; do echo hello-from-pod | nc -l -p 8080; done".into(),
            ];
        },
        |ctx| async move {
            let pod_ip = pod_ip_of_container(&ctx).await?;
            let host = host_address_towards(&pod_ip)?;
            let target = std::net::SocketAddr::new(host, host_port as u16);
            let mut got = String::new();
            for _ in 0..50 {
                let connected = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(target),
                )
                .await;
                if let Ok(Ok(mut s)) = connected {
                    use tokio::io::AsyncReadExt;
                    let mut buf = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
                    got = String::from_utf8_lossy(&buf).into_owned();
                    if got.contains("hello-from-pod") {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("nothing from the pod through host port {target}: {got:?}")
        },
    )
    .await
}

/// The IP of the pod the context's container runs in.
async fn pod_ip_of_container(ctx: &Ctx) -> anyhow::Result<String> {
    let status = super::container_status(&ctx.env, &ctx.id).await?;
    let mut rt = ctx.env.cri.runtime.clone();
    let pod_id = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: status.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .into_iter()
        .next()
        .context("container not listed")?
        .pod_sandbox_id;
    let pod = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id,
            verbose: false,
        })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .context("no pod status")?;
    let ip = pod.network.map(|n| n.ip).unwrap_or_default();
    ensure!(!ip.is_empty(), "the pod has no IP");
    Ok(ip)
}

/// The host's namespace of a kind as its `/proc/self/ns/<kind>` link names it, e.g.
/// `net:[4026531840]` (the suite runs in the host's namespaces, next to the runtime).
fn host_ns(kind: &str) -> anyhow::Result<String> {
    let link = std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .with_context(|| format!("read /proc/self/ns/{kind}"))?;
    Ok(link.display().to_string())
}

/// Prints the network, PID and IPC namespaces of the process, a line each.
const READ_NAMESPACES: &str =
    "readlink /proc/self/ns/net; readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc";

/// A pod with the host's network, PID and IPC namespaces: its container is in the same
/// namespaces as the host and sees the host's hostname; a pod with its own namespaces shares
/// none of them.
async fn host_namespaces(env: Env) -> TestResult {
    let host = (host_ns("net")?, host_ns("pid")?, host_ns("ipc")?);
    let node = |p: &mut cri::PodSandboxConfig| {
        if let Some(ns) = p
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.network = cri::NamespaceMode::Node as i32;
            ns.pid = cri::NamespaceMode::Node as i32;
            ns.ipc = cri::NamespaceMode::Node as i32;
        }
        p.hostname = String::new();
    };
    let expected = host.clone();
    let r = with_container(
        env.clone(),
        "feat-hostns",
        node,
        |_| {},
        |ctx| async move {
            let seen = out(&ctx, READ_NAMESPACES).await?;
            let seen: Vec<&str> = seen.lines().collect();
            ensure!(
                seen == [&*expected.0, &*expected.1, &*expected.2],
                "host-namespace container sees {seen:?}, host has {expected:?}"
            );
            // The host's hostname shows: the UTS namespace follows the network.
            let hostname = out(&ctx, "hostname").await?;
            let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            ensure!(
                hostname == want.trim(),
                "hostname {hostname:?}, host {want:?}"
            );
            Ok(())
        },
    )
    .await?;
    if !matches!(r, Outcome::Passed) {
        return Ok(r);
    }
    with_container(
        env,
        "feat-podns",
        |_| {},
        |_| {},
        |ctx| async move {
            let seen = out(&ctx, READ_NAMESPACES).await?;
            let seen: Vec<&str> = seen.lines().collect();
            ensure!(seen.len() == 3, "readlink gave {seen:?}");
            for (i, (got, host)) in seen.iter().zip([&host.0, &host.1, &host.2]).enumerate() {
                ensure!(got != host, "pod namespace #{i} is the host's: {got}");
            }
            Ok(())
        },
    )
    .await
}
