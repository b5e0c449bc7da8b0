//! `crid-monitor --spec FILE [--detached]`: the container monitor as a binary of its own;
//! `crid-monitor --pid-namespace DIR` starts a pod's PID namespace holder
//! (`sandbox::monitor::pidns`).
//!
//! `crid monitor` (the hidden subcommand) works everywhere; when this small binary is installed
//! next to `crid`, the long-lived detached monitor runs as it instead, because a process of
//! the big crid executable pays for its relocated data pages (megabytes per monitor), while
//! this one links only the monitor.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    const USAGE: &str = "usage: crid-monitor --spec FILE [--detached] | --pid-namespace DIR";
    let mut spec: Option<PathBuf> = None;
    let mut pid_namespace: Option<PathBuf> = None;
    let mut detached = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--spec") => spec = args.next().map(PathBuf::from),
            Some("--pid-namespace") => pid_namespace = args.next().map(PathBuf::from),
            Some("--detached") => detached = true,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let code = match (spec, pid_namespace) {
        (Some(spec), None) => sandbox::monitor::main(&spec, detached),
        (None, Some(root)) => sandbox::monitor::pidns::main(&root),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match code {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
