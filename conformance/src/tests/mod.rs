//! The suite, one module per CRI area.

pub mod containers;
pub mod features;
pub mod idempotence;
pub mod images;
pub mod pods;
pub mod runtime;
pub mod security;
pub mod streaming;
pub mod userns;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use proto::cri;

use crate::runner::{Env, Test};

/// A temporary host directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> anyhow::Result<TempDir> {
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

/// Creates a log directory for the pod of `config` under the temp directory and names it in
/// `config`; the caller removes it.
pub(crate) fn pod_log_directory(config: &mut cri::PodSandboxConfig) -> anyhow::Result<PathBuf> {
    let logs = std::env::temp_dir().join(format!(
        "crid-conformance-logs-{}",
        config.metadata.as_ref().map_or("", |m| m.name.as_str())
    ));
    std::fs::create_dir_all(&logs).context("create the log directory")?;
    config.log_directory = logs.display().to_string();
    Ok(logs)
}

/// Pulls `busybox:latest` from the test registry and returns its reference, or `None` when
/// the run has no registry (each caller decides whether that skips or fails).
pub(crate) async fn pull_busybox(env: &Env) -> anyhow::Result<Option<String>> {
    let Some(registry) = env.registry.as_deref() else {
        return Ok(None);
    };
    let image = format!("{registry}/busybox:latest");
    env.cri
        .images
        .clone()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("PullImage")?;
    Ok(Some(image))
}

/// Container `name` of `image`, all else default: the start of a config its caller completes.
pub fn container(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The name in a container config's metadata, for error messages.
fn name_of(container: &cri::ContainerConfig) -> String {
    container
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// Creates `container` in pod `pod` (made from `config`); returns its id.
pub(crate) async fn create_in_pod(
    env: &Env,
    pod: &str,
    config: &cri::PodSandboxConfig,
    container: cri::ContainerConfig,
) -> anyhow::Result<String> {
    let name = name_of(&container);
    Ok(env
        .cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id)
}

/// Starts container `id` (named `name` in the error).
pub(crate) async fn start_container(env: &Env, id: &str, name: &str) -> anyhow::Result<()> {
    env.cri
        .runtime
        .clone()
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok(())
}

/// Creates `container` in pod `pod` (made from `config`) and starts it; returns its id.
pub(crate) async fn create_start_in_pod(
    env: &Env,
    pod: &str,
    config: &cri::PodSandboxConfig,
    container: cri::ContainerConfig,
) -> anyhow::Result<String> {
    let name = name_of(&container);
    let id = create_in_pod(env, pod, config, container).await?;
    start_container(env, &id, &name).await?;
    Ok(id)
}

/// The pod's namespace options, which kubelet repeats in each container's security context.
pub(crate) fn pod_namespace_options(
    config: &cri::PodSandboxConfig,
) -> Option<cri::NamespaceOption> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
}

/// Creates and starts container `name` of `image` in pod `pod` (made from `config`), running
/// `command` with `mounts`; as kubelet does, its security context repeats the pod's namespace
/// options. Returns its id.
pub(crate) async fn start_in_pod(
    env: &Env,
    pod: &str,
    config: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    command: Vec<String>,
    mounts: Vec<cri::Mount>,
) -> anyhow::Result<String> {
    let container = cri::ContainerConfig {
        command,
        mounts,
        labels: HashMap::from([("name".to_string(), name.to_string())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: pod_namespace_options(config),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container(name, image)
    };
    create_start_in_pod(env, pod, config, container).await
}

/// Container `id`'s status (not verbose).
pub(crate) async fn container_status(env: &Env, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    env.cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .context("ContainerStatus")?
        .into_inner()
        .status
        .context("no status")
}

/// The runtime's `Status` (not verbose).
pub(crate) async fn runtime_status(env: &Env) -> anyhow::Result<cri::StatusResponse> {
    Ok(env
        .cri
        .runtime
        .clone()
        .status(cri::StatusRequest { verbose: false })
        .await
        .context("Status")?
        .into_inner())
}

/// Whether `Status` reports `feature` for the default runtime handler (the empty name).
pub(crate) async fn default_handler_has(
    env: &Env,
    feature: fn(&cri::RuntimeHandlerFeatures) -> bool,
) -> anyhow::Result<bool> {
    Ok(runtime_status(env)
        .await?
        .runtime_handlers
        .iter()
        .any(|h| h.name.is_empty() && h.features.as_ref().is_some_and(feature)))
}

/// Runs `sh -c script` in container `id` (ExecSync, 20 s); returns (exit code, stdout, stderr),
/// trimmed.
pub(crate) async fn sh(env: &Env, id: &str, script: &str) -> anyhow::Result<(i32, String, String)> {
    let r = env
        .cri
        .runtime
        .clone()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 20,
        })
        .await
        .with_context(|| format!("ExecSync {script:?}"))?
        .into_inner();
    Ok((
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).trim().to_owned(),
        String::from_utf8_lossy(&r.stderr).trim().to_owned(),
    ))
}

/// stdout of `sh -c script` in container `id`, which must succeed.
pub(crate) async fn out(env: &Env, id: &str, script: &str) -> anyhow::Result<String> {
    let (code, stdout, stderr) = sh(env, id, script).await?;
    anyhow::ensure!(code == 0, "{script:?} exited {code}: {stderr}");
    Ok(stdout)
}

/// Every test, in the order they run.
pub fn all() -> Vec<Test> {
    let mut tests = Vec::new();
    tests.extend(runtime::tests());
    tests.extend(images::tests());
    tests.extend(pods::tests());
    tests.extend(containers::tests());
    tests.extend(streaming::tests());
    tests.extend(security::tests());
    tests.extend(userns::tests());
    tests.extend(features::tests());
    tests.extend(idempotence::tests());
    tests
}
