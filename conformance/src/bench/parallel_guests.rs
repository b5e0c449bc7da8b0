//! N unikernel guests started at once, next to N runc pods on the same runtime in the same run
//! (issue 18): each guest image (e.g. the freestanding test guest packed for `crid`, i.e.
//! crid-vmm, and for `qemu`) and busybox under runc in turn, N host-network pods started
//! together, each waited for until its first log byte (the guest's first serial output, the
//! runc container's `echo`). Reported per kind: the wall time until the last first byte, and
//! once all run, the PSS and RSS of the runtime's processes (daemon, monitors, VMMs) and of its
//! VMMs alone. Then everything is removed.
//!
//! Host-network pods keep the guests idle: without a NIC the freestanding guest prints and
//! halts (a halted vCPU sleeps in KVM), where with one it would poll its queues and keep a
//! host core busy each. The pods' network set-up is then no part of the figures.

use std::time::{Duration, Instant};

use anyhow::Context;
use regex::Regex;

use super::memory::{self, Memory};
use super::report::Report;
use super::workload::{self, Started, Target};

/// The runtime handler crid runs unikernel images under.
const UNIKERNEL_HANDLER: &str = "urunc";

/// How long one pod may take to its first log byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often each pod's log is looked at where it cannot be watched (see
/// [`first_byte`](super::first_byte)): coarser than the single start's, since N pods poll at once.
const FIRST_BYTE_POLL: Duration = Duration::from_millis(10);

/// One kind of pod the burst starts.
struct Kind<'a> {
    image: &'a str,
    command: &'a [&'a str],
    handler: &'a str,
}

/// What one burst measured.
struct Burst {
    /// Until every pod's first log byte; `None` if any failed.
    wall: Option<Duration>,
    all: Memory,
    vmms: Memory,
    started: usize,
}

/// Starts `count` pods of `kind` at once, waits for each one's first log byte, measures
/// memory while all run, then removes them all.
async fn burst(
    target: &Target,
    kind: &Kind<'_>,
    count: usize,
    vmms: &Regex,
    errors: &mut Vec<String>,
) -> Burst {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let t = target.clone();
            let image = kind.image.to_owned();
            let command: Vec<String> = kind.command.iter().map(|s| s.to_string()).collect();
            let handler = kind.handler.to_owned();
            tokio::spawn(async move {
                let command: Vec<&str> = command.iter().map(String::as_str).collect();
                let (s, first) = workload::cold_start_watched(
                    &t,
                    &image,
                    &command,
                    "burst",
                    true,
                    &handler,
                    FIRST_BYTE_TIMEOUT,
                    FIRST_BYTE_POLL,
                )
                .await?;
                let seen = first.wait().await;
                anyhow::Ok((s, seen))
            })
        })
        .collect();
    let mut started: Vec<Started> = Vec::new();
    let mut last: Option<Instant> = None;
    let mut failed = false;
    for task in tasks {
        match task.await {
            Ok(Ok((s, seen))) => {
                started.push(s);
                match seen {
                    Ok(at) => last = last.max(Some(at)),
                    Err(e) => {
                        failed = true;
                        errors.push(format!("{} burst of {}: {e:#}", target.name, kind.image));
                    }
                }
            }
            Ok(Err(e)) => {
                failed = true;
                errors.push(format!("{} burst of {}: {e:#}", target.name, kind.image));
            }
            Err(e) => {
                failed = true;
                errors.push(format!("{} burst of {}: {e}", target.name, kind.image));
            }
        }
    }
    let wall = (!failed).then(|| last.map(|l| l - t0)).flatten();
    // Let start-up transients settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (all, vmm_mem) = tokio::task::spawn_blocking({
        let procs = target.procs.clone();
        let vmms = vmms.clone();
        move || (memory::measure(&procs), memory::measure(&vmms))
    })
    .await
    .unwrap_or_default();
    let n = started.len();
    let downs: Vec<_> = started
        .into_iter()
        .map(|s| {
            let t = target.clone();
            tokio::spawn(async move { workload::teardown(&t, &s).await })
        })
        .collect();
    for d in downs {
        if let Ok(Err(e)) = d.await {
            errors.push(format!("{} burst teardown: {e:#}", target.name));
        }
    }
    let _ = workload::sweep(target).await;
    Burst {
        wall,
        all,
        vmms: vmm_mem,
        started: n,
    }
}

/// Adds the rows for `count` guests of each of `guest_images` and `count` runc busybox pods,
/// measured on `targets[index]` (the other columns stay empty).
pub async fn run(
    targets: &[Target],
    index: usize,
    guest_images: &[String],
    busybox_image: &str,
    count: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let target = targets.get(index).context("no such runtime")?;
    let col = |v: Option<f64>| {
        let mut values = vec![None; targets.len()];
        values[index] = v;
        values
    };
    let mib = |kib: u64| Some(kib as f64 / 1024.0);
    // This runtime's VMMs only: their command lines name its directories.
    let vmms = Regex::new(&format!(
        "(qemu-system|firecracker|cloud-hypervisor|solo5-|crid-vmm).*({})",
        target.procs.as_str()
    ))?;
    let runc_command = ["sh", "-c", "echo ready; sleep 3600"];
    let mut kinds: Vec<(String, Kind)> = Vec::new();
    for image in guest_images {
        workload::ensure_image(target, image).await?;
        kinds.push((
            format!("guests of {}", image.rsplit('/').next().unwrap_or(image)),
            Kind {
                image,
                command: &[],
                handler: UNIKERNEL_HANDLER,
            },
        ));
    }
    kinds.push((
        "runc busybox pods".to_owned(),
        Kind {
            image: busybox_image,
            command: &runc_command,
            handler: "",
        },
    ));
    for (what, kind) in &kinds {
        let idle = memory::measure(&target.procs);
        let mut errors = Vec::new();
        let b = burst(target, kind, count, &vmms, &mut errors).await;
        report.errors.extend(errors);
        let label = format!("{count} {what} at once (host network)");
        report.add(
            format!("{label}: wall time to every first log byte"),
            "ms",
            col(b.wall.map(|d| d.as_secs_f64() * 1000.0)),
        );
        report.add(
            format!("{label}: PSS of daemon + monitors + VMMs, all running"),
            "MiB",
            col(mib(b.all.pss_kib)),
        );
        report.add(
            format!("{label}: RSS of daemon + monitors + VMMs, all running"),
            "MiB",
            col(mib(b.all.rss_kib)),
        );
        report.add(
            format!("{label}: PSS per pod beyond the idle daemon"),
            "MiB",
            col((b.started > 0).then(|| {
                b.all.pss_kib.saturating_sub(idle.pss_kib) as f64 / 1024.0 / b.started as f64
            })),
        );
        if b.vmms.processes > 0 {
            report.add(
                format!("{label}: PSS per VMM ({} VMMs)", b.vmms.processes),
                "MiB",
                col(Some(
                    b.vmms.pss_kib as f64 / 1024.0 / b.vmms.processes as f64,
                )),
            );
            report.add(
                format!("{label}: RSS per VMM"),
                "MiB",
                col(Some(
                    b.vmms.rss_kib as f64 / 1024.0 / b.vmms.processes as f64,
                )),
            );
        }
    }
    Ok(())
}
