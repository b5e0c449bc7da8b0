//! Pod sandboxes: lifecycle, list filters, idempotent stop/remove, refused handlers and
//! sysctls, and the namespaces containers of one pod share (PID when asked, IPC always). Every
//! pod is removed again, also when a check fails.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use proto::cri;
use tonic::Code;

use super::out;
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "pods/lifecycle",
            run: |env| Box::pin(lifecycle(env)),
        },
        Test {
            name: "pods/list-filters",
            run: |env| Box::pin(list_filters(env)),
        },
        Test {
            name: "pods/idempotent-stop-remove",
            run: |env| Box::pin(idempotent(env)),
        },
        Test {
            name: "pods/unknown-runtime-handler",
            run: |env| Box::pin(unknown_handler(env)),
        },
        Test {
            name: "pods/sysctl-injection-refused",
            run: |env| Box::pin(sysctl_injection(env)),
        },
        Test {
            name: "pods/shared-pid-namespace",
            run: |env| Box::pin(shared_pid(env)),
        },
        Test {
            name: "pods/shared-ipc-namespace",
            run: |env| Box::pin(shared_ipc(env)),
        },
    ]
}

/// A unique pod config; `tag` keeps names apart between tests and runs.
pub fn pod_config(tag: &str) -> cri::PodSandboxConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("conf-{tag}-{nanos}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            uid: format!("uid-{name}"),
            namespace: "conformance".into(),
            attempt: 0,
            name: name.clone(),
        }),
        hostname: format!("h{tag}"),
        labels: HashMap::from([
            ("suite".to_string(), "conformance".to_string()),
            ("test".to_string(), tag.to_string()),
        ]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn run_pod(env: &Env, config: cri::PodSandboxConfig) -> anyhow::Result<String> {
    Ok(env
        .cri
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id)
}

pub async fn remove_pod(env: &Env, id: &str) {
    env.cri.discard_pod(id).await;
}

async fn status(env: &Env, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
    env.cri
        .runtime
        .clone()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().status.unwrap_or_default())
}

async fn list(env: &Env, filter: cri::PodSandboxFilter) -> anyhow::Result<Vec<String>> {
    Ok(env
        .cri
        .runtime
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

async fn lifecycle(env: Env) -> TestResult {
    let config = pod_config("life");
    let id = run_pod(&env, config.clone()).await?;
    let result = lifecycle_checks(&env, &id, &config).await;
    remove_pod(&env, &id).await;
    result?;
    let e = status(&env, &id)
        .await
        .err()
        .context("status after remove")?;
    ensure!(e.code() == Code::NotFound, "status after remove: {e}");
    Ok(Outcome::Passed)
}

async fn lifecycle_checks(
    env: &Env,
    id: &str,
    config: &cri::PodSandboxConfig,
) -> anyhow::Result<()> {
    let s = status(env, id).await?;
    ensure!(s.id == id, "status id {}", s.id);
    ensure!(
        s.state == cri::PodSandboxState::SandboxReady as i32,
        "state {}",
        s.state
    );
    ensure!(s.metadata == config.metadata, "metadata {:?}", s.metadata);
    ensure!(s.created_at > 0, "created_at {}", s.created_at);
    ensure!(s.labels == config.labels, "labels {:?}", s.labels);
    let ip = s.network.map(|n| n.ip).unwrap_or_default();
    ensure!(
        ip.parse::<std::net::IpAddr>().is_ok(),
        "pod has no IP: {ip:?}"
    );
    let ns = s
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .context("no namespace options")?;
    ensure!(
        ns.network == cri::NamespaceMode::Pod as i32,
        "network mode {}",
        ns.network
    );
    env.cri
        .runtime
        .clone()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    let s = status(env, id).await?;
    ensure!(
        s.state == cri::PodSandboxState::SandboxNotready as i32,
        "state after stop {}",
        s.state
    );
    Ok(())
}

async fn list_filters(env: Env) -> TestResult {
    let a = run_pod(&env, pod_config("lista")).await?;
    let b = match run_pod(&env, pod_config("listb")).await {
        Ok(b) => b,
        Err(e) => {
            remove_pod(&env, &a).await;
            return Err(e);
        }
    };
    let result = list_checks(&env, &a, &b).await;
    remove_pod(&env, &a).await;
    remove_pod(&env, &b).await;
    result?;
    Ok(Outcome::Passed)
}

async fn list_checks(env: &Env, a: &str, b: &str) -> anyhow::Result<()> {
    let all = list(env, cri::PodSandboxFilter::default()).await?;
    ensure!(
        all.iter().any(|i| i == a) && all.iter().any(|i| i == b),
        "list misses a pod"
    );
    let by_id = list(
        env,
        cri::PodSandboxFilter {
            id: a.into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(by_id == [a.to_string()], "id filter gave {by_id:?}");
    let by_label = list(
        env,
        cri::PodSandboxFilter {
            label_selector: HashMap::from([("test".to_string(), "listb".to_string())]),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        by_label == [b.to_string()],
        "label filter gave {by_label:?}"
    );
    env.cri
        .runtime
        .clone()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: a.into(),
        })
        .await?;
    let not_ready = list(
        env,
        cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            label_selector: HashMap::from([("suite".to_string(), "conformance".to_string())]),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        not_ready.iter().any(|i| i == a),
        "NotReady filter misses the stopped pod"
    );
    ensure!(
        !not_ready.iter().any(|i| i == b),
        "NotReady filter has a ready pod"
    );
    let ready = list(
        env,
        cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        ready.iter().any(|i| i == b) && !ready.iter().any(|i| i == a),
        "Ready filter gave {ready:?}"
    );
    Ok(())
}

async fn idempotent(env: Env) -> TestResult {
    let id = run_pod(&env, pod_config("idem")).await?;
    let mut rt = env.cri.runtime.clone();
    for _ in 0..2 {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    }
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .context("RemovePodSandbox")?;
    }
    let unknown = "0".repeat(64);
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: unknown.clone(),
    })
    .await
    .context("StopPodSandbox of an unknown id")?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: unknown,
    })
    .await
    .context("RemovePodSandbox of an unknown id")?;
    Ok(Outcome::Passed)
}

async fn expect_invalid(
    env: &Env,
    config: cri::PodSandboxConfig,
    handler: &str,
    what: &str,
) -> anyhow::Result<()> {
    match env
        .cri
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        })
        .await
    {
        Ok(r) => {
            remove_pod(env, &r.into_inner().pod_sandbox_id).await;
            anyhow::bail!("{what} was accepted")
        }
        Err(e) => {
            ensure!(e.code() == Code::InvalidArgument, "{what}: {e}");
            Ok(())
        }
    }
}

async fn unknown_handler(env: Env) -> TestResult {
    expect_invalid(
        &env,
        pod_config("handler"),
        "no-such-runtime-handler",
        "an unknown handler",
    )
    .await?;
    Ok(Outcome::Passed)
}

async fn sysctl_injection(env: Env) -> TestResult {
    for (k, v) in [
        ("net.ipv4.ip_forward=1", "1"),
        ("net.ipv4.ip_forward", "1\nkernel.core_pattern=|/tmp/x"),
        ("net/../../kernel/core_pattern", "|/tmp/x"),
        ("kernel.core_pattern", "|/tmp/x"),
    ] {
        let mut config = pod_config("sysctl");
        if let Some(linux) = config.linux.as_mut() {
            linux.sysctls = HashMap::from([(k.to_string(), v.to_string())]);
        }
        expect_invalid(&env, config, "", &format!("sysctl {k:?}={v:?}")).await?;
    }
    Ok(Outcome::Passed)
}

/// The commands of the two containers of [`two_containers`]; distinct, so `ps` tells them apart.
const SLEEP_A: &str = "sleep 3601";
const SLEEP_B: &str = "sleep 3602";

/// A pod whose PID namespace mode is `pid` (for the pod and, as kubelet does, its containers)
/// with two running busybox containers, A (`sleep 3601`) and B (`sleep 3602`); `check` gets
/// their ids. The pod is removed afterwards, also when a check fails.
async fn two_containers<F, Fut>(
    env: &Env,
    tag: &str,
    pid: cri::NamespaceMode,
    check: F,
) -> TestResult
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(image) = super::pull_busybox(env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let mut config = pod_config(tag);
    if let Some(ns) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = pid as i32;
    }
    let pod = run_pod(env, config.clone()).await?;
    let result = async {
        let mut ids = Vec::new();
        for (name, command) in [("a", SLEEP_A), ("b", SLEEP_B)] {
            let command = command.split(' ').map(str::to_owned).collect();
            let id = super::start_in_pod(env, &pod, &config, &image, name, command, vec![]).await?;
            ids.push(id);
        }
        let b = ids.pop().context("no container b")?;
        let a = ids.pop().context("no container a")?;
        check(a, b).await
    }
    .await;
    remove_pod(env, &pod).await;
    result.map(|()| Outcome::Passed)
}

/// The test process's own namespace `kind` (`pid`, `ipc`): the host's, as the suite runs there.
fn own_ns(kind: &str) -> anyhow::Result<String> {
    let link = std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .with_context(|| format!("readlink /proc/self/ns/{kind}"))?;
    Ok(link.display().to_string())
}

/// Whether `ps` output lists a process whose command line is `command`.
fn lists(ps: &str, command: &str) -> bool {
    ps.lines().any(|l| l.trim_end().ends_with(command))
}

async fn shared_pid(env: Env) -> TestResult {
    let host = own_ns("pid")?;
    // pid=POD: one namespace for the pod; B sees A's process, and the reverse.
    let r = two_containers(&env, "pidpod", cri::NamespaceMode::Pod, |a, b| {
        let (env, host) = (&env, &host);
        async move {
            let ns_a = out(env, &a, "readlink /proc/self/ns/pid").await?;
            let ns_b = out(env, &b, "readlink /proc/self/ns/pid").await?;
            ensure!(ns_a == ns_b, "pid=POD: A is in {ns_a}, B in {ns_b}");
            ensure!(&ns_a != host, "pid=POD: the pod uses the host's {ns_a}");
            let ps = out(env, &b, "ps").await?;
            ensure!(
                lists(&ps, SLEEP_A) && lists(&ps, SLEEP_B),
                "pid=POD: B's ps does not show both {SLEEP_A:?} and {SLEEP_B:?}:\n{ps}"
            );
            let ps = out(env, &a, "ps").await?;
            ensure!(
                lists(&ps, SLEEP_B),
                "pid=POD: A's ps lacks {SLEEP_B:?}:\n{ps}"
            );
            Ok(())
        }
    })
    .await?;
    if !matches!(r, Outcome::Passed) {
        return Ok(r);
    }
    // pid=CONTAINER: each container its own namespace, its command PID 1, the other unseen.
    two_containers(&env, "pidctr", cri::NamespaceMode::Container, |a, b| {
        let (env, host) = (&env, &host);
        async move {
            let ns_a = out(env, &a, "readlink /proc/self/ns/pid").await?;
            let ns_b = out(env, &b, "readlink /proc/self/ns/pid").await?;
            ensure!(ns_a != ns_b, "pid=CONTAINER: A and B share {ns_a}");
            ensure!(
                &ns_a != host && &ns_b != host,
                "pid=CONTAINER: a container uses the host's {host}"
            );
            let ps = out(env, &b, "ps").await?;
            ensure!(
                lists(&ps, SLEEP_B),
                "pid=CONTAINER: B's ps lacks its own {SLEEP_B:?}:\n{ps}"
            );
            ensure!(
                !lists(&ps, SLEEP_A),
                "pid=CONTAINER: B sees A's {SLEEP_A:?}:\n{ps}"
            );
            let init = out(env, &b, "tr '\\0' ' ' < /proc/1/cmdline").await?;
            ensure!(
                init == SLEEP_B,
                "pid=CONTAINER: B's PID 1 is {init:?}, not its own {SLEEP_B:?}"
            );
            Ok(())
        }
    })
    .await
}

async fn shared_ipc(env: Env) -> TestResult {
    let host = own_ns("ipc")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let file = format!("crid-conformance-ipc-{}-{nanos}", std::process::id());
    // Containers of a pod share the IPC namespace and its /dev/shm (both kubelet's default,
    // whatever the PID mode); neither is the host's.
    two_containers(&env, "ipc", cri::NamespaceMode::Container, |a, b| {
        let (env, host, file) = (&env, &host, &file);
        async move {
            let ns_a = out(env, &a, "readlink /proc/self/ns/ipc").await?;
            let ns_b = out(env, &b, "readlink /proc/self/ns/ipc").await?;
            ensure!(ns_a == ns_b, "A is in {ns_a}, B in {ns_b}");
            ensure!(&ns_a != host, "the pod uses the host's {ns_a}");
            out(env, &a, &format!("echo {file} > /dev/shm/{file}")).await?;
            let seen = out(env, &b, &format!("cat /dev/shm/{file}")).await?;
            ensure!(seen == *file, "B reads {seen:?} from A's /dev/shm/{file}");
            ensure!(
                !std::path::Path::new("/dev/shm").join(file).exists(),
                "the pod's /dev/shm is the host's"
            );
            Ok(())
        }
    })
    .await
}
