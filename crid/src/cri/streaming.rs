//! Exec, Attach and PortForward: each checks the request against the runtime and returns a
//! single-use URL of crid's streaming server.

use proto::cri;
use tonic::Status;

use super::error::to_status;
use crate::state::State;
use crate::streaming::{AttachSpec, ExecSpec, Request, Server, StreamError};

fn server(state: &State) -> Result<&Server, Status> {
    state
        .streaming
        .get()
        .map(|s| s.as_ref())
        .ok_or_else(|| Status::unavailable("the streaming server is not running"))
}

fn fail(e: StreamError) -> Status {
    to_status(e.kind(), &e)
}

fn invalid(reason: &str) -> Status {
    fail(StreamError::InvalidArgument(reason.to_owned()))
}

pub async fn exec(state: &State, r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    if r.container_id.is_empty() {
        return Err(invalid("container_id is required"));
    }
    if r.cmd.is_empty() {
        return Err(invalid("cmd is required"));
    }
    if !(r.stdin || r.stdout || r.stderr) {
        return Err(invalid("one of stdin, stdout or stderr must be set"));
    }
    let server = server(state)?;
    let spec = ExecSpec {
        container_id: r.container_id,
        cmd: r.cmd,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        // A terminal merges stderr into stdout.
        stderr: r.stderr && !r.tty,
    };
    server.backend().check_exec(&spec).await.map_err(fail)?;
    let url = server.url_for(Request::Exec(spec)).map_err(fail)?;
    Ok(cri::ExecResponse { url })
}

pub async fn attach(state: &State, r: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    if r.container_id.is_empty() {
        return Err(invalid("container_id is required"));
    }
    if !(r.stdin || r.stdout || r.stderr) {
        return Err(invalid("one of stdin, stdout or stderr must be set"));
    }
    let server = server(state)?;
    let spec = AttachSpec {
        container_id: r.container_id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr && !r.tty,
    };
    server.backend().check_attach(&spec).await.map_err(fail)?;
    let url = server.url_for(Request::Attach(spec)).map_err(fail)?;
    Ok(cri::AttachResponse { url })
}

pub async fn port_forward(
    state: &State,
    r: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    if r.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id is required"));
    }
    let ports = r
        .port
        .iter()
        .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0))
        .collect::<Option<Vec<u16>>>()
        .ok_or_else(|| invalid("ports must be between 1 and 65535"))?;
    let server = server(state)?;
    server
        .backend()
        .pod_netns(&r.pod_sandbox_id)
        .await
        .map_err(fail)?;
    let url = server
        .url_for(Request::PortForward {
            pod_id: r.pod_sandbox_id,
            ports,
        })
        .map_err(fail)?;
    Ok(cri::PortForwardResponse { url })
}
