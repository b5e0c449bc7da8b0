//! `crid monitor --spec FILE`: the hidden subcommand that runs a container's monitor (see
//! `sandbox::monitor`), or with `--pid-namespace DIR` starts a pod's PID namespace holder, or
//! with `--user-namespace` makes a pod's user namespace (`sandbox::monitor::userns`). It
//! runs before any tokio runtime or tracing subscriber exists: plain std, one thread, so it
//! stays small.

use std::path::Path;
use std::process::ExitCode;

pub fn run(
    spec: Option<&Path>,
    pid_namespace: Option<&Path>,
    in_user_namespace: Option<&Path>,
    user_namespace: bool,
    detached: bool,
) -> ExitCode {
    let code = match (spec, pid_namespace) {
        _ if user_namespace => sandbox::monitor::userns::main(),
        (_, Some(root)) => sandbox::monitor::pidns::main(root, in_user_namespace),
        (Some(spec), None) => sandbox::monitor::main(spec, detached),
        (None, None) => 2,
    };
    match code {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
