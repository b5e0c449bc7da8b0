//! Containers: lifecycle and states, CRI log format, exit codes, env/args/user, ExecSync with
//! output, exit code and timeout, stats, OOM kills, list filters, idempotent stop/remove and
//! refused input. Busybox from the test registry in a fresh pod per test; everything created
//! is removed again, also when a check fails. Log files go to a temp directory on this host
//! (the runtime must run on the same host).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proto::cri;
use tonic::Code;

use super::pods::{pod_config, remove_pod, run_pod};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "containers/lifecycle-logs-exit-codes",
            run: |env| Box::pin(with_pod(env, "clife", lifecycle)),
        },
        Test {
            name: "containers/exec-sync",
            run: |env| Box::pin(with_pod(env, "cexec", exec_sync)),
        },
        Test {
            name: "containers/oom-killed",
            run: |env| Box::pin(with_pod(env, "coom", oom)),
        },
        Test {
            name: "containers/bad-input-refused",
            run: |env| Box::pin(with_pod(env, "cbad", bad_input)),
        },
        Test {
            name: "containers/run-as-group-without-user",
            run: |env| Box::pin(with_pod(env, "cgroup", group_without_user)),
        },
        Test {
            name: "containers/list-stats",
            run: |env| Box::pin(with_pod(env, "cstats", list_stats)),
        },
        Test {
            name: "containers/unknown-ids",
            run: |env| Box::pin(unknown_ids(env)),
        },
    ]
}

/// What a test body gets: the pod, its config, the image and the log directory.
struct Ctx {
    env: Env,
    pod: String,
    pod_config: cri::PodSandboxConfig,
    image: String,
    logs: std::path::PathBuf,
}

type Body =
    fn(&Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>>;

async fn with_pod(env: Env, tag: &'static str, body: Body) -> TestResult {
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let mut config = pod_config(tag);
    let logs = super::pod_log_directory(&mut config)?;
    let pod = run_pod(&env, config.clone()).await?;
    let ctx = Ctx {
        env: env.clone(),
        pod: pod.clone(),
        pod_config: config,
        image,
        logs,
    };
    let result = body(&ctx).await;
    remove_pod(&env, &pod).await;
    let _ = std::fs::remove_dir_all(&ctx.logs);
    result
}

fn config(ctx: &Ctx, name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: ctx.image.clone(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("name".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn create(ctx: &Ctx, c: cri::ContainerConfig) -> Result<String, tonic::Status> {
    ctx.env
        .cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: ctx.pod.clone(),
            config: Some(c),
            sandbox_config: Some(ctx.pod_config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn run(ctx: &Ctx, c: cri::ContainerConfig) -> anyhow::Result<String> {
    super::create_start_in_pod(&ctx.env, &ctx.pod, &ctx.pod_config, c).await
}

async fn status(ctx: &Ctx, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    super::container_status(&ctx.env, id).await
}

async fn wait_exited(ctx: &Ctx, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(ctx, id).await?;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("container {id} did not exit: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log's records as (stream, tag, text).
fn records(path: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap_or_default();
            ensure!(
                ts.len() >= 20 && ts.as_bytes()[10] == b'T',
                "bad timestamp in {l:?}"
            );
            let (s, t) = (p.next().unwrap_or_default(), p.next().unwrap_or_default());
            ensure!(
                matches!(s, "stdout" | "stderr") && matches!(t, "F" | "P"),
                "bad record {l:?}"
            );
            Ok((s.into(), t.into(), p.next().unwrap_or_default().into()))
        })
        .collect()
}

async fn remove(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    ctx.env
        .cri
        .runtime
        .clone()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .context("RemoveContainer")?;
    Ok(())
}

fn lifecycle(
    ctx: &Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let mut c = config(
            ctx,
            "echo",
            &[
                "sh",
                "-c",
                "echo \"$GREETING\"; echo err >&2; id -u; pwd; exit 42",
            ],
        );
        c.envs = vec![cri::KeyValue {
            key: "GREETING".into(),
            value: "hello world".into(),
        }];
        c.working_dir = "/etc".into();
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 65534 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let created = create(ctx, c).await.context("CreateContainer")?;
        let s = status(ctx, &created).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerCreated as i32,
            "state after create: {}",
            s.state
        );
        ctx.env
            .cri
            .runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: created.clone(),
            })
            .await
            .context("StartContainer")?;
        let s = wait_exited(ctx, &created).await?;
        ensure!(s.exit_code == 42, "exit code {}", s.exit_code);
        ensure!(s.reason == "Error", "reason {:?}", s.reason);
        ensure!(
            s.started_at > 0 && s.finished_at >= s.started_at,
            "times {s:?}"
        );
        let recs = records(&ctx.logs.join("echo.log"))?;
        let out: Vec<&str> = recs
            .iter()
            .filter(|r| r.0 == "stdout")
            .map(|r| r.2.as_str())
            .collect();
        ensure!(out == ["hello world", "65534", "/etc"], "stdout {out:?}");
        ensure!(
            recs.contains(&("stderr".into(), "F".into(), "err".into())),
            "stderr {recs:?}"
        );

        let ok = run(ctx, config(ctx, "true", &["true"])).await?;
        let s = wait_exited(ctx, &ok).await?;
        ensure!(
            s.exit_code == 0 && s.reason == "Completed",
            "true: {} {:?}",
            s.exit_code,
            s.reason
        );

        // Filters: by label and by state.
        let mut rt = ctx.env.cri.runtime.clone();
        let by_label = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: ctx.pod.clone(),
                    label_selector: HashMap::from([("name".to_string(), "true".to_string())]),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        ensure!(
            by_label.len() == 1 && by_label[0].id == ok,
            "label filter {by_label:?}"
        );
        let running = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: ctx.pod.clone(),
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        ensure!(running.is_empty(), "running filter {running:?}");

        // Stop and remove are idempotent.
        for id in [&created, &ok] {
            for _ in 0..2 {
                rt.stop_container(cri::StopContainerRequest {
                    container_id: id.to_string(),
                    timeout: 0,
                })
                .await
                .context("StopContainer")?;
            }
            remove(ctx, id).await?;
            remove(ctx, id).await?;
        }
        let e = status(ctx, &ok)
            .await
            .err()
            .context("status after remove")?;
        let code = e
            .downcast_ref::<tonic::Status>()
            .map(|s| s.code())
            .context("not a status")?;
        ensure!(code == Code::NotFound, "status after remove: {e}");
        Ok(Outcome::Passed)
    })
}

fn exec_sync(
    ctx: &Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let id = run(ctx, config(ctx, "sleeper", &["sleep", "3600"])).await?;
        let mut rt = ctx.env.cri.runtime.clone();
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 3".into(),
                ],
                timeout: 10,
            })
            .await
            .context("ExecSync")?
            .into_inner();
        ensure!(
            r.stdout == b"out\n" && r.stderr == b"err\n" && r.exit_code == 3,
            "exec: {r:?}"
        );
        // The container is in the pod's network namespace (the CNI plugin gave it eth0).
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["cat".into(), "/proc/net/dev".into()],
                timeout: 10,
            })
            .await
            .context("ExecSync cat")?
            .into_inner();
        ensure!(
            String::from_utf8_lossy(&r.stdout).contains("eth0:"),
            "no eth0 in the container: {}",
            String::from_utf8_lossy(&r.stdout)
        );
        let e = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sleep".into(), "60".into()],
                timeout: 1,
            })
            .await
            .err()
            .context("exec past its timeout succeeded")?;
        ensure!(e.code() == Code::DeadlineExceeded, "timeout: {e}");
        // The timed-out process is gone when ExecSync returns: killed and reaped, not left a
        // zombie in the container (critest's "execSync with timeout" runs `pgrep sleep` next).
        // The container's own `sleep 3600` is the one `sleep` left.
        let sleeps = super::out(
            &ctx.env,
            &id,
            "grep -lsx sleep /proc/[0-9]*/comm; grep -hs sleep /proc/[0-9]*/stat; true",
        )
        .await?;
        ensure!(
            sleeps.lines().filter(|l| l.ends_with("/comm")).count() == 1,
            "the timed-out exec is still there:\n{sleeps}"
        );

        let stats = rt
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .context("ContainerStats")?
            .into_inner()
            .stats
            .context("no stats")?;
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let mem = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        ensure!(cpu > 0 && mem > 0, "stats cpu {cpu} memory {mem}");

        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .context("StopContainer")?;
        let s = status(ctx, &id).await?;
        ensure!(
            s.state == cri::ContainerState::ContainerExited as i32,
            "after stop: {s:?}"
        );
        let e = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await;
        ensure!(e.is_err(), "exec in a stopped container succeeded");
        remove(ctx, &id).await?;
        Ok(Outcome::Passed)
    })
}

fn oom(ctx: &Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let mut c = config(
            ctx,
            "hog",
            &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"],
        );
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = run(ctx, c).await?;
        let s = wait_exited(ctx, &id).await?;
        remove(ctx, &id).await?;
        ensure!(
            s.reason == "OOMKilled" && s.exit_code == 137,
            "reason {:?} exit code {}",
            s.reason,
            s.exit_code
        );
        Ok(Outcome::Passed)
    })
}

fn bad_input(
    ctx: &Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let base = config(ctx, "bad", &["true"]);
        let mut cases = Vec::new();
        let mut c = base.clone();
        c.mounts.push(cri::Mount {
            container_path: "/x".into(),
            host_path: "relative/path".into(),
            ..Default::default()
        });
        cases.push(("relative host path", c));
        let mut c = base.clone();
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["CAP_NOT_A_CAPABILITY".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cases.push(("unknown capability", c));
        let mut c = base.clone();
        c.metadata = None;
        cases.push(("no metadata", c));
        let mut c = base.clone();
        c.mounts.push(cri::Mount {
            container_path: "/x".into(),
            host_path: "/tmp".into(),
            recursive_read_only: true,
            ..Default::default()
        });
        cases.push(("recursive read-only without readonly", c));
        for (what, c) in cases {
            match create(ctx, c).await {
                Ok(id) => {
                    let _ = remove(ctx, &id).await;
                    bail!("{what}: created {id}");
                }
                Err(e) => ensure!(
                    matches!(e.code(), Code::InvalidArgument | Code::Unknown),
                    "{what}: {e}"
                ),
            }
        }
        let left = ctx
            .env
            .cri
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: ctx.pod.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        ensure!(left.is_empty(), "containers left: {left:?}");
        Ok(Outcome::Passed)
    })
}

/// A group without a user (by id or name) is the caller's mistake, as critest checks: it
/// would pair with whatever user the image names.
fn group_without_user(
    ctx: &Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let mut c = config(ctx, "group", &["true"]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 1000 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        match create(ctx, c).await {
            Ok(id) => {
                let _ = remove(ctx, &id).await;
                bail!("created {id}");
            }
            Err(e) => ensure!(e.code() == Code::InvalidArgument, "{e}"),
        }
        Ok(Outcome::Passed)
    })
}

async fn unknown_ids(env: Env) -> TestResult {
    let mut rt = env.cri.runtime.clone();
    let id = "0123456789abcdef-no-such-container".to_string();
    let e = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .err()
        .context("start of an unknown container succeeded")?;
    ensure!(e.code() == Code::NotFound, "start: {e}");
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .err()
        .context("status of an unknown container succeeded")?;
    ensure!(e.code() == Code::NotFound, "status: {e}");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .context("remove of an unknown container must succeed")?;
    Ok(Outcome::Passed)
}

fn list_stats(
    ctx: &Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + '_>> {
    Box::pin(async move {
        let a = run(ctx, config(ctx, "stats-a", &["sleep", "3600"])).await?;
        let b = run(ctx, config(ctx, "stats-b", &["sleep", "3600"])).await?;
        let rt = ctx.env.cri.runtime.clone();
        let list = |filter: cri::ContainerStatsFilter| {
            let mut rt = rt.clone();
            async move {
                anyhow::Ok(
                    rt.list_container_stats(cri::ListContainerStatsRequest {
                        filter: Some(filter),
                    })
                    .await
                    .context("ListContainerStats")?
                    .into_inner()
                    .stats,
                )
            }
        };
        let ids = |stats: &[cri::ContainerStats]| {
            let mut v: Vec<String> = stats
                .iter()
                .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
                .collect();
            v.sort();
            v
        };
        let mut both = vec![a.clone(), b.clone()];
        both.sort();
        // Everything (other pods' containers may be listed too).
        let all = list(cri::ContainerStatsFilter::default()).await?;
        let all_ids = ids(&all);
        ensure!(
            both.iter().all(|id| all_ids.contains(id)),
            "unfiltered list {all_ids:?} lacks {both:?}"
        );
        // By pod, by id, by label.
        let by_pod = list(cri::ContainerStatsFilter {
            pod_sandbox_id: ctx.pod.clone(),
            ..Default::default()
        })
        .await?;
        ensure!(ids(&by_pod) == both, "by pod: {:?}", ids(&by_pod));
        let by_id = list(cri::ContainerStatsFilter {
            id: a.clone(),
            ..Default::default()
        })
        .await?;
        ensure!(ids(&by_id) == [a.clone()], "by id: {:?}", ids(&by_id));
        let by_label = list(cri::ContainerStatsFilter {
            pod_sandbox_id: ctx.pod.clone(),
            label_selector: HashMap::from([("name".to_string(), "stats-b".to_string())]),
            ..Default::default()
        })
        .await?;
        ensure!(
            ids(&by_label) == [b.clone()],
            "by label: {:?}",
            ids(&by_label)
        );
        let attrs = by_label[0].attributes.clone().context("no attributes")?;
        ensure!(
            attrs.metadata.as_ref().map(|m| m.name.as_str()) == Some("stats-b"),
            "attributes {attrs:?}"
        );
        ensure!(
            attrs.labels.get("name").map(String::as_str) == Some("stats-b"),
            "labels {:?}",
            attrs.labels
        );
        // Usage shows up (runtimes that sample periodically get a few seconds).
        let mut last = String::new();
        for _ in 0..20 {
            let stats = list(cri::ContainerStatsFilter {
                pod_sandbox_id: ctx.pod.clone(),
                ..Default::default()
            })
            .await?;
            let usage: Vec<(u64, u64)> = stats
                .iter()
                .map(|s| {
                    let cpu = s
                        .cpu
                        .as_ref()
                        .and_then(|c| c.usage_core_nano_seconds.as_ref())
                        .map_or(0, |v| v.value);
                    let mem = s
                        .memory
                        .as_ref()
                        .and_then(|m| m.working_set_bytes.as_ref())
                        .map_or(0, |v| v.value);
                    (cpu, mem)
                })
                .collect();
            if usage.len() == 2 && usage.iter().all(|&(c, m)| c > 0 && m > 0) {
                return Ok(Outcome::Passed);
            }
            last = format!("{usage:?}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        anyhow::bail!("no CPU and memory usage listed for both containers: {last}")
    })
}
