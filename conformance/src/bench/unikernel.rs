//! Unikernel start-up, measured on the runtimes chosen (crid builds: containerd has no
//! unikernels): pod + container start until
//! the first byte in the container's log — the guest's first serial output for a unikernel
//! image (its pod under the `urunc` handler), the first line of `sh -c 'echo ready; sleep
//! 3600'` for busybox under runc — in pairs started the same way in the same run: host-network
//! pods, and pods with their own CNI network (the guest then has a NIC, a tap and QEMU's pc
//! machine booted by SeaBIOS, or microvm when its image declares virtio-mmio drivers) — and the RSS of the guest's VMM (the container's process) once the guest has
//! printed. The unikernel's CreateContainer and StartContainer calls and StartContainer's
//! return to the first byte are reported apart: the last is the VMM's and the guest's own
//! start (for runc, the container's, pod network), the rest is crid's. The host's
//! 1-minute load average during the runs goes with them, since on a shared machine absolute
//! figures scale with it. Then, in a phase of their own, the same pairs as kubelet sends them
//! for a Deployment's pod (`crate::kubelet`: mounts, service environment, a declared port,
//! limits of 500m CPU and 128 MiB, which size the guest), in pod networks: what a cluster's
//! pods get, where the pods above carry no limits and get the default guest size.
//! The label carries the accelerator crid reports: TCG figures say nothing about KVM speed.

use std::time::{Duration, Instant};

use proto::cri;

use super::Samples;
use super::memory;
use super::report::Report;
use super::workload::{self, Target};

/// How long a pod may take to its first log byte here, and how often its log is looked at
/// where it cannot be watched (see [`first_byte`](super::first_byte)).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
const FIRST_BYTE_POLL: Duration = Duration::from_millis(2);

/// The accelerator, guest type and hypervisor crid reported for a container (verbose
/// status), or "?", and the container's process (the VMM).
async fn accelerator(target: &Target, container_id: &str) -> (String, String, String, Option<i64>) {
    let mut rt = target.cri.runtime.clone();
    let unknown = || ("?".to_owned(), "?".to_owned(), "?".to_owned(), None);
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
    let mut hypervisor = s(&uk["request"]["info"]["hypervisor"]);
    // An image declaring virtio-mmio drivers boots differently (QEMU: microvm, not pc).
    if uk["request"]["info"]["virtio"] == "mmio" {
        hypervisor.push_str(" (virtio-mmio)");
    }
    (
        s(&uk["accel"]["accelerator"]),
        s(&uk["request"]["info"]["unikernel_type"]),
        hypervisor,
        v["pid"].as_i64(),
    )
}

/// The runtime handler (RuntimeClass) crid runs unikernel images under by default.
const UNIKERNEL_HANDLER: &str = "urunc";

/// One pair's timings: pod start to first byte of the unikernel and of runc,
/// CreateContainer + StartContainer to first byte (the pod already running) of both, and
/// StartContainer's return to first byte (the VMM and guest, or the OCI runtime's container,
/// after crid handed over); and the unikernel's CreateContainer and StartContainer calls.
struct Pair {
    uk: Duration,
    rc: Duration,
    uk_container: Duration,
    rc_container: Duration,
    uk_after_start: Duration,
    rc_after_start: Duration,
    uk_create: Duration,
    uk_start: Duration,
}

/// One unikernel start and one runc start of the same kind of pod, each until its first log
/// byte; returns their timings, the VMM's RSS once the guest printed (the container's process:
/// not a VMM crid prepared for a later guest) and the label (guest type, hypervisor,
/// accelerator).
async fn pair(
    target: &Target,
    unikernel_image: &str,
    busybox_image: &str,
    host_network: bool,
) -> anyhow::Result<(Pair, Option<u64>, String)> {
    let tag = if host_network { "" } else { "pod" };
    // The guest halts without `exit=`: it stays running while memory is sampled.
    let t0 = Instant::now();
    let (s, first) = workload::cold_start_watched(
        target,
        unikernel_image,
        &[],
        &format!("uk{tag}"),
        host_network,
        UNIKERNEL_HANDLER,
        FIRST_BYTE_TIMEOUT,
        FIRST_BYTE_POLL,
    )
    .await?;
    let seen = first.wait().await;
    let (accel, guest, hypervisor, pid) = accelerator(target, &s.container_id).await;
    let rss = pid.and_then(memory::rss_kib);
    workload::teardown(target, &s).await?;
    let seen = seen?;
    // The byte may land before StartContainer's answer does: then nothing is left after it.
    let uk_after_start = seen.saturating_duration_since(s.start_returned());
    let (uk, uk_container) = (seen - t0, seen - s.create_sent);
    let (uk_create, uk_start) = (s.create, s.start);

    let t0 = Instant::now();
    let (s, first) = workload::cold_start_watched(
        target,
        busybox_image,
        &["sh", "-c", "echo ready; sleep 3600"],
        &format!("rc{tag}"),
        host_network,
        "",
        FIRST_BYTE_TIMEOUT,
        FIRST_BYTE_POLL,
    )
    .await?;
    let seen = first.wait().await;
    workload::teardown(target, &s).await?;
    let seen = seen?;
    let timings = Pair {
        uk,
        rc: seen - t0,
        uk_container,
        rc_container: seen - s.create_sent,
        uk_after_start,
        rc_after_start: seen.saturating_duration_since(s.start_returned()),
        uk_create,
        uk_start,
    };
    Ok((timings, rss, format!("{guest} on {hypervisor}, {accel}")))
}

/// The memory limit of the kubelet-shaped pods: not the default guest size (256 MiB), as a pod
/// spec's `limits.memory` seldom is, so the guest is sized from it.
const KUBELET_MEMORY_LIMIT: i64 = 128 << 20;

/// One unikernel start and one runc start of kubelet-shaped pods with their own network and
/// limits ([`workload::kubelet_start_watched`]), each until its first log byte: pod start to
/// first byte and CreateContainer + StartContainer to first byte, unikernel then runc.
async fn kubelet_pair(
    target: &Target,
    unikernel_image: &str,
    busybox_image: &str,
) -> anyhow::Result<[Duration; 4]> {
    let mut timings = [Duration::ZERO; 4];
    for (i, (image, command, tag, handler)) in [
        (unikernel_image, &[][..], "ukkube", UNIKERNEL_HANDLER),
        (
            busybox_image,
            &["sh", "-c", "echo ready; sleep 3600"][..],
            "rckube",
            "",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let t0 = Instant::now();
        let (s, first) = workload::kubelet_start_watched(
            target,
            image,
            command,
            tag,
            KUBELET_MEMORY_LIMIT,
            handler,
            FIRST_BYTE_TIMEOUT,
            FIRST_BYTE_POLL,
        )
        .await?;
        let seen = first.wait().await;
        workload::teardown(target, &s).await?;
        let seen = seen?;
        timings[i] = seen - t0;
        timings[2 + i] = seen - s.create_sent;
    }
    Ok(timings)
}

/// The 1-minute load average from `/proc/loadavg`, if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One runtime's samples (medians go in its column).
#[derive(Default)]
struct Series {
    uk: Samples,
    rc: Samples,
    uk_pod: Samples,
    rc_pod: Samples,
    ukc: Samples,
    rcc: Samples,
    ukc_pod: Samples,
    rcc_pod: Samples,
    uka: Samples,
    uka_pod: Samples,
    rca_pod: Samples,
    /// Kubelet-shaped pods ([`kubelet_pair`]): pod start and CreateContainer + StartContainer
    /// to first byte, unikernel and runc.
    uk_kube: Samples,
    rc_kube: Samples,
    ukc_kube: Samples,
    rcc_kube: Samples,
    create: Samples,
    create_pod: Samples,
    start: Samples,
    start_pod: Samples,
    peak_rss_kib: u64,
    accel: String,
}

/// Adds the unikernel rows to `report`, measured on `targets[i]` for each `i` in `selected`
/// (the other columns stay empty): every iteration runs the pairs on each of them in turn, so
/// drift hits them alike (e.g. two builds of crid, before and after a change).
pub async fn run(
    all: &[Target],
    selected: &[usize],
    unikernel_image: &str,
    busybox_image: &str,
    iterations: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let targets: Vec<&Target> = selected.iter().filter_map(|i| all.get(*i)).collect();
    let mut series: Vec<Series> = Vec::new();
    for target in &targets {
        workload::ensure_image(target, unikernel_image).await?;
        series.push(Series {
            accel: "?".into(),
            ..Series::default()
        });
    }
    // The host's 1-minute load average, sampled once per iteration: on a shared machine the
    // absolute figures scale with it, so the report says what it was.
    let mut load = Vec::new();
    if let Some(l) = load_average() {
        load.push(l);
    }
    // Host-network pods: the guest has no NIC and boots on QEMU's microvm machine straight into
    // its PVH entry. Pod-network pods (CNI): the guest gets a virtio-net-pci NIC, a tap and the
    // pc machine booted by SeaBIOS, which configures the NIC (microvm and a virtio-mmio NIC for
    // an image that declares virtio-mmio drivers); the runc pod of each pair gets the same kind
    // of network.
    for _ in 0..iterations {
        for (target, s) in targets.iter().zip(series.iter_mut()) {
            let (p, rss, a) = pair(target, unikernel_image, busybox_image, true).await?;
            s.accel = a;
            s.peak_rss_kib = s.peak_rss_kib.max(rss.unwrap_or(0));
            s.uk.push(p.uk);
            s.rc.push(p.rc);
            s.ukc.push(p.uk_container);
            s.rcc.push(p.rc_container);
            s.uka.push(p.uk_after_start);
            s.create.push(p.uk_create);
            s.start.push(p.uk_start);
            let (p, _, _) = pair(target, unikernel_image, busybox_image, false).await?;
            s.create_pod.push(p.uk_create);
            s.start_pod.push(p.uk_start);
            s.uk_pod.push(p.uk);
            s.rc_pod.push(p.rc);
            s.ukc_pod.push(p.uk_container);
            s.rcc_pod.push(p.rc_container);
            s.uka_pod.push(p.uk_after_start);
            s.rca_pod.push(p.rc_after_start);
        }
        if let Some(l) = load_average() {
            load.push(l);
        }
    }
    // Kubelet-shaped pods, in a phase of their own: their guests' size (the memory limit) is
    // not the default one, and a pool of one entry keeps the size started last. A failure
    // here is reported and leaves the rows above.
    'kubelet: for _ in 0..iterations {
        for (target, s) in targets.iter().zip(series.iter_mut()) {
            match kubelet_pair(target, unikernel_image, busybox_image).await {
                Ok([uk, rc, ukc, rcc]) => {
                    s.uk_kube.push(uk);
                    s.rc_kube.push(rc);
                    s.ukc_kube.push(ukc);
                    s.rcc_kube.push(rcc);
                }
                Err(e) => {
                    report.errors.push(format!(
                        "{unikernel_image}: kubelet-shaped pods on {}: {e:#}",
                        target.name
                    ));
                    let _ = workload::sweep(target).await;
                    break 'kubelet;
                }
            }
        }
        if let Some(l) = load_average() {
            load.push(l);
        }
    }
    // The label names the first runtime's guest and accelerator (the image is the same).
    let accel = series.first().map(|s| s.accel.clone()).unwrap_or_default();
    let col = |f: &dyn Fn(&Series) -> Option<f64>| {
        let mut values = vec![None; all.len()];
        for (i, s) in selected.iter().zip(&series) {
            if let Some(v) = values.get_mut(*i) {
                *v = f(s);
            }
        }
        values
    };
    report.add(
        format!("unikernel pod start to first serial byte (host network, median; {accel})"),
        "ms",
        col(&|s| s.uk.median()),
    );
    report.add(
        "runc busybox pod start to first log byte (host network, median, same run)",
        "ms",
        col(&|s| s.rc.median()),
    );
    report.add(
        format!("unikernel pod start to first serial byte (pod network, median; {accel})"),
        "ms",
        col(&|s| s.uk_pod.median()),
    );
    report.add(
        "runc busybox pod start to first log byte (pod network, median, same run)",
        "ms",
        col(&|s| s.rc_pod.median()),
    );
    report.add(
        format!("unikernel / runc pod start, pod network (medians; {accel})"),
        "x",
        col(&|s| ratio(s.uk_pod.median(), s.rc_pod.median())),
    );
    for (network, pod) in [("host network", false), ("pod network", true)] {
        report.add(
            format!(
                "unikernel CreateContainer+StartContainer to first serial byte ({network}, median; {accel})"
            ),
            "ms",
            col(&|s| if pod { s.ukc_pod.median() } else { s.ukc.median() }),
        );
        report.add(
            format!(
                "unikernel CreateContainer+StartContainer to first serial byte ({network}, p90; {accel})"
            ),
            "ms",
            col(&|s| if pod { s.ukc_pod.p90() } else { s.ukc.p90() }),
        );
        report.add(
            format!("runc busybox CreateContainer+StartContainer to first log byte ({network}, median, same run)"),
            "ms",
            col(&|s| if pod { s.rcc_pod.median() } else { s.rcc.median() }),
        );
        report.add(
            format!("unikernel CreateContainer ({network}, median; {accel})"),
            "ms",
            col(&|s| {
                if pod {
                    s.create_pod.median()
                } else {
                    s.create.median()
                }
            }),
        );
        report.add(
            format!("unikernel StartContainer ({network}, median; {accel})"),
            "ms",
            col(&|s| {
                if pod {
                    s.start_pod.median()
                } else {
                    s.start.median()
                }
            }),
        );
        report.add(
            format!(
                "unikernel StartContainer return to first serial byte ({network}, median; {accel})"
            ),
            "ms",
            col(&|s| {
                if pod {
                    s.uka_pod.median()
                } else {
                    s.uka.median()
                }
            }),
        );
    }
    report.add(
        "runc busybox StartContainer return to first log byte (pod network, median, same run)",
        "ms",
        col(&|s| s.rca_pod.median()),
    );
    let kube = format!(
        "kubelet-shaped (memory limit {} MiB, 500m CPU), pod network",
        KUBELET_MEMORY_LIMIT >> 20
    );
    report.add(
        format!("unikernel pod start to first serial byte, {kube} (median; {accel})"),
        "ms",
        col(&|s| s.uk_kube.median()),
    );
    report.add(
        format!("runc busybox pod start to first log byte, {kube} (median, same run)"),
        "ms",
        col(&|s| s.rc_kube.median()),
    );
    report.add(
        format!("unikernel / runc pod start, {kube} (medians; {accel})"),
        "x",
        col(&|s| ratio(s.uk_kube.median(), s.rc_kube.median())),
    );
    report.add(
        format!(
            "unikernel CreateContainer+StartContainer to first serial byte, {kube} (median; {accel})"
        ),
        "ms",
        col(&|s| s.ukc_kube.median()),
    );
    report.add(
        format!(
            "runc busybox CreateContainer+StartContainer to first log byte, {kube} (median, same run)"
        ),
        "ms",
        col(&|s| s.rcc_kube.median()),
    );
    let mean_load = (!load.is_empty()).then(|| load.iter().sum::<f64>() / load.len() as f64);
    report.add(
        format!("host load average, 1 min (mean during the runs; {accel})"),
        "load",
        col(&|_| mean_load),
    );
    report.add(
        format!("VMM peak RSS ({accel})"),
        "MiB",
        col(&|s| Some(s.peak_rss_kib as f64 / 1024.0)),
    );
    Ok(())
}

/// A guest's median over the runc pod's of the same run; none without both or a runc median
/// of zero.
fn ratio(guest: Option<f64>, runc: Option<f64>) -> Option<f64> {
    match (guest, runc) {
        (Some(u), Some(r)) if r > 0.0 => Some(u / r),
        _ => None,
    }
}
