//! `crid-monitor --spec FILE [--detached]`: the container monitor as a binary of its own.
//!
//! `crid monitor` (the hidden subcommand) works everywhere; when this small binary is installed
//! next to `crid`, the long-lived detached monitor runs as it instead, because a process of
//! the big crid executable pays for its relocated data pages (megabytes per monitor), while
//! this one links only the monitor.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut spec: Option<PathBuf> = None;
    let mut detached = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--spec") => spec = args.next().map(PathBuf::from),
            Some("--detached") => detached = true,
            _ => {
                eprintln!("usage: crid-monitor --spec FILE [--detached]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(spec) = spec else {
        eprintln!("usage: crid-monitor --spec FILE [--detached]");
        return ExitCode::from(2);
    };
    match sandbox::monitor::main(&spec, detached) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
