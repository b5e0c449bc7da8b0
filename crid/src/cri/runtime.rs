//! Runtime-wide handlers: Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::collections::HashMap;

use proto::cri;
use tonic::Status;

use crate::state::{State, find_in_path};

pub const RUNTIME_NAME: &str = "crid";

pub fn version(_state: &State, _r: cri::VersionRequest) -> Result<cri::VersionResponse, Status> {
    Ok(cri::VersionResponse {
        // The version of the kubelet-facing API, as every CRI runtime reports it.
        version: "0.1.0".into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: proto::CRI_API_VERSION.into(),
    })
}

pub async fn status(state: &State, r: cri::StatusRequest) -> Result<cri::StatusResponse, Status> {
    let network = state.network_status().await;
    let conditions = vec![
        cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: network.ready,
            reason: network.reason.clone(),
            message: network.message.clone(),
        },
    ];
    let mut info = HashMap::new();
    if r.verbose {
        info.insert("config".into(), json(&state.config));
        info.insert("cgroupDriver".into(), json(&state.cgroup_driver));
        info.insert("network".into(), json(&network));
        info.insert("startedAt".into(), json(&state.started_at_unix));
        // The VM accelerator policy and what the host's KVM offers (TCG is reported here).
        info.insert("vm".into(), state.containers.vm_host_report().to_string());
        info.insert("binaries".into(), binaries(state).await.to_string());
    }
    // runc (1.1 and later) and crun make recursive read-only mounts (`rro`, on kernels with
    // mount_setattr, 5.12+); unikernel guests get copies of their mounts instead. User
    // namespaces: crid makes the pod's and id-maps the rootfs itself (`sandbox::sys::userns`),
    // which any OCI runtime that joins a user namespace by path works with; not for guests.
    let userns = sandbox::sys::userns::supported()
        && [&state.config.root, &state.config.state]
            .iter()
            .all(|d| sandbox::sys::userns::searchable_by_others(d));
    let runtime_handlers = state
        .oci_runtimes
        .keys()
        .map(|name| (name, true))
        .chain(
            state
                .config
                .runtime
                .unikernel_handlers
                .iter()
                .map(|name| (name, false)),
        )
        .map(|(name, runc)| cri::RuntimeHandler {
            name: name.clone(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: runc,
                user_namespaces: runc && userns,
            }),
        })
        .collect();
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        runtime_handlers,
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    })
}

pub fn runtime_config(
    state: &State,
    _r: cri::RuntimeConfigRequest,
) -> Result<cri::RuntimeConfigResponse, Status> {
    let driver = match state.cgroup_driver {
        sandbox::pod::CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        sandbox::pod::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}

pub fn update_runtime_config(
    r: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, Status> {
    // kubelet sends the node's pod CIDR here; the CNI configuration owns addressing, so it is
    // only logged.
    if let Some(cidr) = r
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
    {
        tracing::info!(pod_cidr = %cidr, "runtime config updated");
    }
    Ok(cri::UpdateRuntimeConfigResponse {})
}

/// How long a `--version` of a runtime binary may take.
const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The OCI runtimes (by file name: `runc`, `crun`) and hypervisor binaries crid would run,
/// with their versions: `{name: {"path", "version"}}`, or `{name: {"error"}}` when one is
/// missing or does not answer `--version`.
async fn binaries(state: &State) -> serde_json::Value {
    let mut found: Vec<(String, Result<std::path::PathBuf, String>)> = state
        .oci_runtimes
        .values()
        .map(|binary| {
            let name = binary.file_name().map_or_else(
                || binary.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (name, find_in_path(binary))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    match crate::state::vm_settings(&state.config) {
        Ok(vm) => {
            for (name, _) in &vm.binaries {
                found.push((name.clone(), vm.binary(name).map_err(|e| e.to_string())));
            }
        }
        Err(e) => found.push(("vm".into(), Err(e.to_string()))),
    }
    let reports = found.into_iter().map(|(name, path)| async move {
        let report = match path {
            Ok(path) => match binary_version(&path).await {
                Ok(version) => serde_json::json!({"path": path, "version": version}),
                Err(e) => serde_json::json!({"path": path, "error": e}),
            },
            Err(e) => serde_json::json!({ "error": e }),
        };
        (name, report)
    });
    serde_json::Value::Object(
        futures::future::join_all(reports)
            .await
            .into_iter()
            .collect(),
    )
}

/// The first line `path --version` prints (bounded in time and size).
async fn binary_version(path: &std::path::Path) -> Result<String, String> {
    let out = tokio::process::Command::new(path)
        .env_clear()
        .envs(sandbox::monitor::child_env())
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(VERSION_TIMEOUT, out)
        .await
        .map_err(|_| format!("--version did not answer within {VERSION_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let text = match out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        true => out.stdout,
        false => out.stderr,
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect::<String>());
    match (out.status.success(), line) {
        (true, Some(l)) => Ok(l),
        (false, Some(l)) => Err(format!("--version failed ({}): {l}", out.status)),
        (_, None) => Err(format!("--version printed nothing ({})", out.status)),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
}
