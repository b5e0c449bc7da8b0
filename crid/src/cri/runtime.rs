//! Runtime-wide handlers: Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::collections::HashMap;

use proto::cri;
use tonic::Status;

use crate::daemon::{CgroupDriver, State};

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
        info.insert(
            "cgroupDriver".into(),
            json(&state.cgroup_driver.to_string()),
        );
        info.insert("network".into(), json(&network));
        info.insert("startedAt".into(), json(&state.started_at_unix));
        // The VM accelerator policy and what the host's KVM offers (TCG is reported here).
        info.insert(
            "vm".into(),
            sandbox::container::vm::host_report().to_string(),
        );
    }
    let runtime_handlers = state
        .config
        .runtime
        .runc_handlers
        .iter()
        .chain(&state.config.runtime.unikernel_handlers)
        .map(|name| cri::RuntimeHandler {
            name: name.clone(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        })
        .collect();
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        runtime_handlers,
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: false,
        }),
    })
}

pub fn runtime_config(
    state: &State,
    _r: cri::RuntimeConfigRequest,
) -> Result<cri::RuntimeConfigResponse, Status> {
    let driver = match state.cgroup_driver {
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}

pub fn update_runtime_config(
    state: &State,
    r: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, Status> {
    // kubelet sends the node's pod CIDR here; the CNI configuration owns addressing, so it is
    // recorded for diagnostics only.
    if let Some(cidr) = r
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
    {
        tracing::info!(pod_cidr = %cidr, "runtime config updated");
        state.set_pod_cidr(cidr);
    }
    Ok(cri::UpdateRuntimeConfigResponse {})
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
}
