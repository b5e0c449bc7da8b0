//! Pod sandbox handlers: run, stop, remove, status, list and stats.

use proto::cri;
use tonic::Status;

use crate::daemon::State;

const NOT_YET: &str = "pod sandboxes are not implemented yet";

pub async fn run_pod_sandbox(
    _state: &State,
    _r: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn stop_pod_sandbox(
    _state: &State,
    _r: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn remove_pod_sandbox(
    _state: &State,
    _r: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn pod_sandbox_status(
    _state: &State,
    _r: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn list_pod_sandbox(
    _state: &State,
    _r: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn pod_sandbox_stats(
    _state: &State,
    _r: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn list_pod_sandbox_stats(
    _state: &State,
    _r: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}
