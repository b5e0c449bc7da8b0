//! Idempotence of the calls kubelet retries: StopContainer and RemoveContainer twice, a
//! container removed with its pod, StopPodSandbox with its containers still running.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use proto::cri;

use super::pods::{pod_config, remove_pod, run_pod};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "idempotence/stop-remove-container-twice",
            run: |env| Box::pin(container_twice(env)),
        },
        Test {
            name: "idempotence/stop-pod-stops-containers",
            run: |env| Box::pin(pod_stops_containers(env)),
        },
    ]
}

async fn start_sleeper(
    env: &Env,
    pod: &str,
    config: &cri::PodSandboxConfig,
    image: &str,
) -> anyhow::Result<String> {
    let container = cri::ContainerConfig {
        command: vec!["sleep".into(), "3600".into()],
        labels: HashMap::from([("name".to_string(), "sleeper".to_string())]),
        ..super::container("sleeper", image)
    };
    super::create_start_in_pod(env, pod, config, container).await
}

async fn state(env: &Env, id: &str) -> anyhow::Result<i32> {
    Ok(super::container_status(env, id).await?.state)
}

async fn container_twice(env: Env) -> TestResult {
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let config = pod_config("idem-ctr");
    let pod = run_pod(&env, config.clone()).await?;
    let result = async {
        let id = start_sleeper(&env, &pod, &config, &image).await?;
        let mut rt = env.cri.runtime.clone();
        for i in 0..2 {
            rt.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .with_context(|| format!("StopContainer #{}", i + 1))?;
            let s = state(&env, &id).await?;
            ensure!(
                s == cri::ContainerState::ContainerExited as i32,
                "state after stop #{}: {s}",
                i + 1
            );
        }
        for i in 0..2 {
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("RemoveContainer #{}", i + 1))?;
        }
        ensure!(
            state(&env, &id).await.is_err(),
            "a removed container still has a status"
        );
        let left = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                }),
            })
            .await
            .context("ListContainers")?
            .into_inner()
            .containers;
        ensure!(left.is_empty(), "containers left in the pod: {left:?}");
        Ok(())
    }
    .await;
    remove_pod(&env, &pod).await;
    result.map(|()| Outcome::Passed)
}

async fn pod_stops_containers(env: Env) -> TestResult {
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let config = pod_config("idem-pod");
    let pod = run_pod(&env, config.clone()).await?;
    let result = async {
        let id = start_sleeper(&env, &pod, &config, &image).await?;
        let mut rt = env.cri.runtime.clone();
        for i in 0..2 {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .with_context(|| format!("StopPodSandbox #{}", i + 1))?;
        }
        let s = state(&env, &id).await?;
        ensure!(
            s == cri::ContainerState::ContainerExited as i32,
            "container state after StopPodSandbox: {s}"
        );
        // Stopping the already stopped container is fine too.
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer after StopPodSandbox")?;
        // RemovePodSandbox takes the container with it.
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .context("RemovePodSandbox")?;
        ensure!(
            state(&env, &id).await.is_err(),
            "the container outlived its removed pod"
        );
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("RemoveContainer of a container removed with its pod")?;
        Ok(())
    }
    .await;
    remove_pod(&env, &pod).await;
    result.map(|()| Outcome::Passed)
}
