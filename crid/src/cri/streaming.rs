//! Exec, Attach and PortForward: each returns the URL of crid's streaming server.

use proto::cri;
use tonic::Status;

use crate::daemon::State;

const NOT_YET: &str = "streaming (exec/attach/port-forward) is not implemented yet";

pub async fn exec(_state: &State, _r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn attach(_state: &State, _r: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn port_forward(
    _state: &State,
    _r: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}
