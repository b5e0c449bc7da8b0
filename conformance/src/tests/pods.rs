//! Pod sandboxes: lifecycle, list filters, idempotent stop/remove, refused handlers and
//! sysctls. Every pod is removed again, also when a check fails.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use proto::cri;
use tonic::Code;

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
    let mut rt = env.cri.runtime.clone();
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
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
