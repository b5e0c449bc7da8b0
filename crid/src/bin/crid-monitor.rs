//! `crid-monitor --spec FILE [--detached]`: the container monitor as a binary of its own;
//! `crid-monitor --pid-namespace DIR` starts a pod's PID namespace holder
//! (`sandbox::monitor::pidns`); `crid-monitor --user-namespace` makes a pod's user namespace
//! (`sandbox::monitor::userns`).
//!
//! `crid monitor` (the hidden subcommand) works everywhere; when this small binary is installed
//! next to `crid`, the long-lived detached monitor runs as it instead, because a process of
//! the big crid executable pays for its relocated data pages (megabytes per monitor), while
//! this one links only the monitor.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    const USAGE: &str = "usage: crid-monitor --spec FILE [--detached] | --pid-namespace DIR [--in-user-namespace PIN] | --user-namespace";
    let mut spec: Option<PathBuf> = None;
    let mut pid_namespace: Option<PathBuf> = None;
    let mut detached = false;
    let mut user_namespace = false;
    let mut in_user_namespace: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--spec") => spec = args.next().map(PathBuf::from),
            Some("--pid-namespace") => pid_namespace = args.next().map(PathBuf::from),
            Some("--detached") => detached = true,
            Some("--user-namespace") => user_namespace = true,
            Some("--in-user-namespace") => in_user_namespace = args.next().map(PathBuf::from),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let code = match (spec, pid_namespace) {
        (None, None) if user_namespace => sandbox::monitor::userns::main(),
        (Some(spec), None) if !user_namespace => sandbox::monitor::main(&spec, detached),
        (None, Some(root)) if !user_namespace => {
            sandbox::monitor::pidns::main(&root, in_user_namespace.as_deref())
        }
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
