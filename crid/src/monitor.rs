//! `crid monitor --spec FILE`: the hidden subcommand that runs a container's monitor (see
//! `sandbox::monitor`), or with `--pid-namespace DIR` starts a pod's PID namespace holder. It
//! runs before any tokio runtime or tracing subscriber exists: plain std, one thread, so it
//! stays small.

use std::path::Path;
use std::process::ExitCode;

pub fn run(spec: Option<&Path>, pid_namespace: Option<&Path>, detached: bool) -> ExitCode {
    let code = match (spec, pid_namespace) {
        (_, Some(root)) => sandbox::monitor::pidns::main(root),
        (Some(spec), None) => sandbox::monitor::main(spec, detached),
        (None, None) => 2,
    };
    match code {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
