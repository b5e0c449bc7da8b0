//! Unikernel start-up, measured on crid only (the first runtime): pod + container start until
//! the first byte in the container's log — the guest's first serial output for a unikernel
//! image, the first line of `sh -c 'echo ready; sleep 3600'` for busybox under runc, started
//! the same way (host-network pods) in the same run; one start in a pod network (the guest
//! then has a NIC and QEMU's pc machine, whose SeaBIOS prints first) — and the RSS of this
//! runtime's VMM processes once the guest has printed.
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

/// The accelerator crid reported for a container (verbose status), or "?".
async fn accelerator(target: &Target, container_id: &str) -> String {
    let mut rt = target.cri.runtime.clone();
    let Ok(r) = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: true,
        })
        .await
    else {
        return "?".into();
    };
    r.into_inner()
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| {
            v["runtimeSpec"]["unikernel"]["accel"]["accelerator"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
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
    let mut uk = Samples::default();
    let mut rc = Samples::default();
    let mut accel = String::from("?");
    // This runtime's VMMs only: their command lines name its directories (kernel, sockets).
    let vmm = Regex::new(&format!(
        "(qemu-system|firecracker|cloud-hypervisor|solo5-).*({})",
        target.procs.as_str()
    ))?;
    let mut peak_rss_kib = 0u64;
    // Host-network pods for both: the guest then has no NIC and boots on QEMU's microvm
    // machine straight into its PVH entry, the unikernel fast path. In a pod network it gets a
    // virtio-net-pci NIC and the pc machine, which boots through SeaBIOS: one sample of that.
    for i in 0..iterations {
        // The guest halts without `exit=`: it stays running while memory is sampled.
        let t0 = Instant::now();
        let s = workload::cold_start_in(target, unikernel_image, &[], "uk", true).await?;
        let seen = first_log_byte(target, &s.container_id).await;
        if i == 0 {
            accel = accelerator(target, &s.container_id).await;
        }
        peak_rss_kib = peak_rss_kib.max(memory::measure(&vmm).rss_kib);
        workload::teardown(target, &s).await?;
        uk.push(seen? - t0);

        let t0 = Instant::now();
        let s = workload::cold_start_in(
            target,
            busybox_image,
            &["sh", "-c", "echo ready; sleep 3600"],
            "rc",
            true,
        )
        .await?;
        let seen = first_log_byte(target, &s.container_id).await;
        workload::teardown(target, &s).await?;
        rc.push(seen? - t0);
    }
    let t0 = Instant::now();
    let s = workload::cold_start_in(target, unikernel_image, &[], "ukpod", false).await?;
    let seen = first_log_byte(target, &s.container_id).await;
    workload::teardown(target, &s).await?;
    let in_pod_network = (seen? - t0).as_secs_f64() * 1000.0;
    let col = |v: Option<f64>| {
        let mut values = vec![None; runtimes.max(1)];
        values[0] = v;
        values
    };
    report.add(
        format!(
            "unikernel pod start to first serial byte (host network, microvm, median, {accel})"
        ),
        "ms",
        col(uk.median()),
    );
    report.add(
        format!(
            "unikernel pod start to first serial byte (pod network, pc + SeaBIOS, 1 run, {accel})"
        ),
        "ms",
        col(Some(in_pod_network)),
    );
    report.add(
        "runc busybox pod start to first log byte (host network, median, same run)",
        "ms",
        col(rc.median()),
    );
    report.add(
        format!("VMM peak RSS ({accel})"),
        "MiB",
        col(Some(peak_rss_kib as f64 / 1024.0)),
    );
    Ok(())
}
