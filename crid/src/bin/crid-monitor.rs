//! `crid-monitor --spec FILE [--detached]`: the container monitor as a binary of its own;
//! `crid-monitor --pid-namespace DIR` starts a pod's PID namespace holder
//! (`sandbox::monitor::pidns`); `crid-monitor --user-namespace` makes a pod's user namespace
//! (`sandbox::monitor::userns`); `--prepare-vmm` and `--prepare-launch` start a prepared
//! monitor (`sandbox::monitor::prepared`).
//!
//! `crid monitor` (the hidden subcommand) works everywhere; when this small binary is installed
//! next to `crid`, the long-lived detached monitor runs as it instead, because a process of
//! the big crid executable pays for its relocated data pages (megabytes per monitor), while
//! this one links only the monitor.

use std::path::PathBuf;
use std::process::ExitCode;

use sandbox::monitor::prepared::Prepare;

fn main() -> ExitCode {
    const USAGE: &str = "usage: crid-monitor --spec FILE [--detached] | --pid-namespace DIR [--in-user-namespace PIN] | --user-namespace | --prepare-vmm VMM --memory MIB --pool DIR | --prepare-launch FILE";
    let mut spec: Option<PathBuf> = None;
    let mut pid_namespace: Option<PathBuf> = None;
    let mut detached = false;
    let mut user_namespace = false;
    let mut in_user_namespace: Option<PathBuf> = None;
    let mut prepare_vmm: Option<PathBuf> = None;
    let mut memory: Option<u64> = None;
    let mut pool: Option<PathBuf> = None;
    let mut prepare_launch: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--spec") => spec = args.next().map(PathBuf::from),
            Some("--pid-namespace") => pid_namespace = args.next().map(PathBuf::from),
            Some("--detached") => detached = true,
            Some("--user-namespace") => user_namespace = true,
            Some("--in-user-namespace") => in_user_namespace = args.next().map(PathBuf::from),
            Some("--prepare-vmm") => prepare_vmm = args.next().map(PathBuf::from),
            Some("--memory") => memory = args.next().and_then(|m| m.to_str()?.parse().ok()),
            Some("--pool") => pool = args.next().map(PathBuf::from),
            Some("--prepare-launch") => prepare_launch = args.next().map(PathBuf::from),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let prepare = match (prepare_vmm, prepare_launch, memory, pool) {
        (Some(vmm), None, Some(memory_mib), Some(pool)) => Some(Prepare::Vmm {
            vmm,
            memory_mib,
            pool,
        }),
        (None, Some(file), None, None) => Some(Prepare::Launch(file)),
        (None, None, None, None) => None,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(prepare) = prepare {
        if spec.is_some() || pid_namespace.is_some() || user_namespace {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        return match sandbox::monitor::prepared::main(&prepare) {
            0 => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
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
