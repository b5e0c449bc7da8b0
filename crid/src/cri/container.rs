//! Container handlers: lifecycle, status, list, resources, logs, exec_sync, stats and events.

use std::pin::Pin;

use futures::Stream;
use proto::cri;
use tonic::Status;

use crate::daemon::State;

const NOT_YET: &str = "containers are not implemented yet";

pub async fn create_container(
    _state: &State,
    _r: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn start_container(
    _state: &State,
    _r: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn stop_container(
    _state: &State,
    _r: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn remove_container(
    _state: &State,
    _r: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn list_containers(
    _state: &State,
    _r: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn container_status(
    _state: &State,
    _r: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn update_container_resources(
    _state: &State,
    _r: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn reopen_container_log(
    _state: &State,
    _r: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn exec_sync(
    _state: &State,
    _r: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn container_stats(
    _state: &State,
    _r: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn list_container_stats(
    _state: &State,
    _r: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

pub async fn get_container_events(
    _state: &State,
    _r: cri::GetEventsRequest,
) -> Result<EventStream, Status> {
    Err(Status::unimplemented(NOT_YET))
}
