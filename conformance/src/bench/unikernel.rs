//! Unikernel start-up, measured on crid only (the first runtime): pod + container start until
//! the first byte in the container's log — the guest's first serial output for a unikernel
//! image (its pod under the `urunc` handler), the first line of `sh -c 'echo ready; sleep
//! 3600'` for busybox under runc — in pairs started the same way in the same run: host-network
//! pods, and pods with their own CNI network (the guest then has a NIC, a tap and QEMU's pc
//! machine booted by qboot) — and the RSS of this runtime's VMM processes once the guest has
//! printed.
//! The label carries the accelerator crid reports: TCG figures say nothing about KVM speed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::cri;
use regex::Regex;

use super::Samples;
use super::memory;
use super::report::Report;
use super::workload::{self, Target};

/// Polls (bounded) until the container's log file is non-empty; returns when it was seen.
async fn first_log_byte(target: &Target, container_id: &str) -> anyhow::Result<Instant> {
    let mut rt = target.cri.runtime.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        })
        .await
        .context("ContainerStatus")?
        .into_inner()
        .status
        .context("no status")?;
    let log = std::path::PathBuf::from(status.log_path);
    loop {
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no output in {} after 120 s", log.display());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The accelerator, guest type and hypervisor crid reported for a container (verbose
/// status), or "?".
async fn accelerator(target: &Target, container_id: &str) -> (String, String, String) {
    let mut rt = target.cri.runtime.clone();
    let unknown = || ("?".to_owned(), "?".to_owned(), "?".to_owned());
    let Ok(r) = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: true,
        })
        .await
    else {
        return unknown();
    };
    let Some(v) = r
        .into_inner()
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
    else {
        return unknown();
    };
    let uk = &v["runtimeSpec"]["unikernel"];
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("?").to_owned();
    (
        s(&uk["accel"]["accelerator"]),
        s(&uk["request"]["info"]["unikernel_type"]),
        s(&uk["request"]["info"]["hypervisor"]),
    )
}

/// The runtime handler (RuntimeClass) crid runs unikernel images under by default.
const UNIKERNEL_HANDLER: &str = "urunc";

/// One pair's timings: pod start to first byte of the unikernel and of runc, and
/// CreateContainer + StartContainer to first byte (the pod already running) of both.
struct Pair {
    uk: Duration,
    rc: Duration,
    uk_container: Duration,
    rc_container: Duration,
}

/// One unikernel start and one runc start of the same kind of pod, each until its first log
/// byte; returns their timings, the VMM's RSS once the guest printed (when asked) and the
/// label (guest type, hypervisor, accelerator).
async fn pair(
    target: &Target,
    unikernel_image: &str,
    busybox_image: &str,
    host_network: bool,
    vmm: Option<&Regex>,
) -> anyhow::Result<(Pair, Option<u64>, String)> {
    let tag = if host_network { "" } else { "pod" };
    // The guest halts without `exit=`: it stays running while memory is sampled.
    let t0 = Instant::now();
    let s = workload::cold_start_with(
        target,
        unikernel_image,
        &[],
        &format!("uk{tag}"),
        host_network,
        UNIKERNEL_HANDLER,
    )
    .await?;
    let returned = Instant::now();
    let seen = first_log_byte(target, &s.container_id).await;
    let (accel, guest, hypervisor) = accelerator(target, &s.container_id).await;
    let rss = vmm.map(|re| memory::measure(re).rss_kib);
    workload::teardown(target, &s).await?;
    let seen = seen?;
    let (uk, uk_container) = (seen - t0, s.create + s.start + (seen - returned));

    let t0 = Instant::now();
    let s = workload::cold_start_in(
        target,
        busybox_image,
        &["sh", "-c", "echo ready; sleep 3600"],
        &format!("rc{tag}"),
        host_network,
    )
    .await?;
    let returned = Instant::now();
    let seen = first_log_byte(target, &s.container_id).await;
    workload::teardown(target, &s).await?;
    let seen = seen?;
    let timings = Pair {
        uk,
        rc: seen - t0,
        uk_container,
        rc_container: s.create + s.start + (seen - returned),
    };
    Ok((timings, rss, format!("{guest} on {hypervisor}, {accel}")))
}

/// Adds the unikernel rows to `report` (values in the first runtime's column only).
pub async fn run(
    target: &Target,
    runtimes: usize,
    unikernel_image: &str,
    busybox_image: &str,
    iterations: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    workload::ensure_image(target, unikernel_image).await?;
    let (mut uk, mut rc) = (Samples::default(), Samples::default());
    let (mut uk_pod, mut rc_pod) = (Samples::default(), Samples::default());
    let (mut ukc, mut rcc) = (Samples::default(), Samples::default());
    let (mut ukc_pod, mut rcc_pod) = (Samples::default(), Samples::default());
    let mut accel = String::from("?");
    // This runtime's VMMs only: their command lines name its directories (kernel, sockets).
    let vmm = Regex::new(&format!(
        "(qemu-system|firecracker|cloud-hypervisor|solo5-|crid-vmm).*({})",
        target.procs.as_str()
    ))?;
    let mut peak_rss_kib = 0u64;
    // Host-network pods: the guest has no NIC and boots on QEMU's microvm machine straight into
    // its PVH entry. Pod-network pods (CNI): the guest gets a virtio-net-pci NIC, a tap and the
    // pc machine booted by qboot; the runc pod of each pair gets the same kind of network.
    for _ in 0..iterations {
        let (p, rss, a) = pair(target, unikernel_image, busybox_image, true, Some(&vmm)).await?;
        accel = a;
        peak_rss_kib = peak_rss_kib.max(rss.unwrap_or(0));
        uk.push(p.uk);
        rc.push(p.rc);
        ukc.push(p.uk_container);
        rcc.push(p.rc_container);
        let (p, _, _) = pair(target, unikernel_image, busybox_image, false, None).await?;
        uk_pod.push(p.uk);
        rc_pod.push(p.rc);
        ukc_pod.push(p.uk_container);
        rcc_pod.push(p.rc_container);
    }
    let col = |v: Option<f64>| {
        let mut values = vec![None; runtimes.max(1)];
        values[0] = v;
        values
    };
    let ratio = match (uk_pod.median(), rc_pod.median()) {
        (Some(u), Some(r)) if r > 0.0 => Some(u / r),
        _ => None,
    };
    report.add(
        format!("unikernel pod start to first serial byte (host network, median; {accel})"),
        "ms",
        col(uk.median()),
    );
    report.add(
        "runc busybox pod start to first log byte (host network, median, same run)",
        "ms",
        col(rc.median()),
    );
    report.add(
        format!("unikernel pod start to first serial byte (pod network, median; {accel})"),
        "ms",
        col(uk_pod.median()),
    );
    report.add(
        "runc busybox pod start to first log byte (pod network, median, same run)",
        "ms",
        col(rc_pod.median()),
    );
    report.add(
        format!("unikernel / runc pod start, pod network (medians; {accel})"),
        "x",
        col(ratio),
    );
    for (network, u, r) in [
        ("host network", &ukc, &rcc),
        ("pod network", &ukc_pod, &rcc_pod),
    ] {
        report.add(
            format!(
                "unikernel CreateContainer+StartContainer to first serial byte ({network}, median; {accel})"
            ),
            "ms",
            col(u.median()),
        );
        report.add(
            format!("runc busybox CreateContainer+StartContainer to first log byte ({network}, median, same run)"),
            "ms",
            col(r.median()),
        );
    }
    report.add(
        format!("VMM peak RSS ({accel})"),
        "MiB",
        col(Some(peak_rss_kib as f64 / 1024.0)),
    );
    Ok(())
}
