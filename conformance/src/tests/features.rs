//! Pod and container settings seen from inside: hostname, DNS config, namespaced sysctls, bind
//! mounts (read-write and read-only), UpdateContainerResources and ReopenContainerLog. Each
//! test runs a long-lived busybox container in a fresh pod, checks with ExecSync and removes
//! the pod (and any host directory it made) again, also when a check fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proto::cri;

use super::pods::{pod_config, remove_pod, run_pod};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "features/hostname-dns-sysctls",
            run: |env| Box::pin(hostname_dns_sysctls(env)),
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
    ]
}

/// A temporary host directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "crid-conformance-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let namespaces = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let mut c = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "feat".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image,
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "feat.log".into(),
        labels: HashMap::from([("name".to_string(), "feat".to_string())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: namespaces,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    ctr(&mut c);
    let pod_id = run_pod(&env, config.clone()).await?;
    let result = async {
        let mut rt = env.cri.runtime.clone();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(c),
                sandbox_config: Some(config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
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
    let r = ctx
        .env
        .cri
        .runtime
        .clone()
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctx.id.clone(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 20,
        })
        .await
        .with_context(|| format!("ExecSync {script:?}"))?
        .into_inner();
    ensure!(
        r.exit_code == 0,
        "{script:?} exited {}: {}",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&r.stdout).trim().to_owned())
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
            let s = ctx
                .env
                .cri
                .runtime
                .clone()
                .container_status(cri::ContainerStatusRequest {
                    container_id: ctx.id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no status")?;
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
