//! `crid monitor --spec FILE`: the hidden subcommand that runs a container's monitor (see
//! `sandbox::monitor`). It runs before any tokio runtime or tracing subscriber exists: plain
//! std, one thread, so it stays small.

use std::path::Path;
use std::process::ExitCode;

pub fn run(spec: &Path, detached: bool) -> ExitCode {
    match sandbox::monitor::main(spec, detached) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
