//! CRI pod metrics (`ListMetricDescriptors`, `ListPodSandboxMetrics`): cAdvisor's
//! `container_*` metrics of each running container, read from its cgroup (v1 or v2), its
//! processes' `/proc` entries and the file system of its writable layer, and the pod's network
//! counters from `/proc/<pid>/net/dev` inside the pod's network namespace.
//!
//! CRI values are unsigned integers: times are whole seconds for `*_seconds*` metrics
//! (rounded down), sizes bytes. Every sample carries the values of its descriptor's label
//! keys, in order. Metrics cAdvisor has that crid does not collect yet (hugetlb, PSI, the CPU
//! quota and memory reservation of the spec, ulimits) are not described; block I/O per device
//! is described but not sampled (it needs per-device accounting this host may lack).

use std::path::Path;

use super::PodRecord;
use crate::container::ContainerRecord;
use crate::container::cgroups::{controller_dir, is_v2};

/// Whether a metric only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One metric's name, meaning and label keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub kind: MetricKind,
}

/// One value of a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: Vec<String>,
    pub value: u64,
}

/// A container's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSamples {
    pub container_id: String,
    pub samples: Vec<Sample>,
}

const CONTAINER: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
const FAILURES: &[&str] = &[
    "container",
    "id",
    "image",
    "name",
    "namespace",
    "pod",
    "failure_type",
    "scope",
];
const DEVICE: &[&str] = &[
    "container",
    "id",
    "image",
    "name",
    "namespace",
    "pod",
    "device",
    "major",
    "minor",
    "operation",
];
const NETWORK: &[&str] = &["namespace", "pod", "interface"];

macro_rules! descriptors {
    ($($name:literal, $kind:ident, $labels:ident, $help:literal;)*) => {
        /// Every metric crid describes.
        pub const DESCRIPTORS: &[Descriptor] = &[$(Descriptor {
            name: $name,
            help: $help,
            labels: $labels,
            kind: MetricKind::$kind,
        }),*];
    };
}

descriptors! {
    "container_cpu_usage_seconds_total", Counter, CONTAINER, "Cumulative CPU time consumed, in seconds";
    "container_cpu_user_seconds_total", Counter, CONTAINER, "Cumulative user CPU time consumed, in seconds";
    "container_cpu_system_seconds_total", Counter, CONTAINER, "Cumulative system CPU time consumed, in seconds";
    "container_cpu_cfs_periods_total", Counter, CONTAINER, "Number of elapsed enforcement period intervals";
    "container_cpu_cfs_throttled_periods_total", Counter, CONTAINER, "Number of throttled period intervals";
    "container_cpu_cfs_throttled_seconds_total", Counter, CONTAINER, "Total time the container has been throttled, in seconds";
    "container_memory_usage_bytes", Gauge, CONTAINER, "Current memory usage in bytes, including all memory regardless of when it was accessed";
    "container_memory_working_set_bytes", Gauge, CONTAINER, "Current working set in bytes (usage less inactive file pages)";
    "container_memory_max_usage_bytes", Gauge, CONTAINER, "Maximum memory usage recorded in bytes";
    "container_memory_cache", Gauge, CONTAINER, "Number of bytes of page cache memory";
    "container_memory_rss", Gauge, CONTAINER, "Size of RSS in bytes";
    "container_memory_mapped_file", Gauge, CONTAINER, "Size of memory mapped files in bytes";
    "container_memory_swap", Gauge, CONTAINER, "Container swap usage in bytes";
    "container_memory_kernel_usage", Gauge, CONTAINER, "Size of kernel memory allocated in bytes";
    "container_memory_failcnt", Counter, CONTAINER, "Number of memory usage hits limits";
    "container_memory_failures_total", Counter, FAILURES, "Cumulative count of memory allocation failures (page faults)";
    "container_oom_events_total", Counter, CONTAINER, "Count of out of memory events observed for the container";
    "container_processes", Gauge, CONTAINER, "Number of processes running inside the container";
    "container_threads", Gauge, CONTAINER, "Number of threads running inside the container";
    "container_threads_max", Gauge, CONTAINER, "Maximum number of threads allowed inside the container (0: no limit)";
    "container_file_descriptors", Gauge, CONTAINER, "Number of open file descriptors for the container";
    "container_sockets", Gauge, CONTAINER, "Number of open sockets for the container";
    "container_fs_usage_bytes", Gauge, CONTAINER, "Number of bytes consumed by the container's writable layer";
    "container_fs_limit_bytes", Gauge, CONTAINER, "Number of bytes the container's file system can hold";
    "container_fs_inodes_free", Gauge, CONTAINER, "Number of available inodes of the container's file system";
    "container_fs_inodes_total", Gauge, CONTAINER, "Number of inodes of the container's file system";
    "container_fs_reads_bytes_total", Counter, CONTAINER, "Cumulative count of bytes read";
    "container_fs_reads_total", Counter, CONTAINER, "Cumulative count of reads completed";
    "container_fs_writes_bytes_total", Counter, CONTAINER, "Cumulative count of bytes written";
    "container_fs_writes_total", Counter, CONTAINER, "Cumulative count of writes completed";
    "container_blkio_device_usage_total", Counter, DEVICE, "Block I/O device usage in bytes (not sampled by crid)";
    "container_spec_cpu_period", Gauge, CONTAINER, "CPU period of the container, in microseconds";
    "container_spec_cpu_shares", Gauge, CONTAINER, "CPU share of the container";
    "container_spec_memory_limit_bytes", Gauge, CONTAINER, "Memory limit for the container (0: none)";
    "container_spec_memory_swap_limit_bytes", Gauge, CONTAINER, "Memory swap limit for the container (0: none)";
    "container_start_time_seconds", Gauge, CONTAINER, "Start time of the container since the Unix epoch, in seconds";
    "container_last_seen", Gauge, CONTAINER, "Last time the container was seen, since the Unix epoch, in seconds";
    "container_network_receive_bytes_total", Counter, NETWORK, "Cumulative count of bytes received";
    "container_network_receive_packets_total", Counter, NETWORK, "Cumulative count of packets received";
    "container_network_receive_errors_total", Counter, NETWORK, "Cumulative count of errors encountered while receiving";
    "container_network_receive_packets_dropped_total", Counter, NETWORK, "Cumulative count of packets dropped while receiving";
    "container_network_transmit_bytes_total", Counter, NETWORK, "Cumulative count of bytes transmitted";
    "container_network_transmit_packets_total", Counter, NETWORK, "Cumulative count of packets transmitted";
    "container_network_transmit_errors_total", Counter, NETWORK, "Cumulative count of errors encountered while transmitting";
    "container_network_transmit_packets_dropped_total", Counter, NETWORK, "Cumulative count of packets dropped while transmitting";
}

fn kind_of(name: &str) -> MetricKind {
    DESCRIPTORS
        .iter()
        .find(|d| d.name == name)
        .map_or(MetricKind::Gauge, |d| d.kind)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn num(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `cpuacct.stat`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| num(v)).flatten()
    })
}

/// What the kernel says about one container's cgroup, in cAdvisor's units.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CgroupReadings {
    values: Vec<(&'static str, u64)>,
    failures: [(&'static str, &'static str, u64); 4],
    pids: Vec<u32>,
}

const NS_PER_S: u64 = 1_000_000_000;
const USER_HZ: u64 = 100;

fn cgroup_readings(cgroups_path: &str) -> CgroupReadings {
    let mut v = Vec::new();
    let (pgfault, pgmajfault);
    let procs;
    if is_v2() {
        let dir = controller_dir("", cgroups_path);
        let cpu = read(&dir.join("cpu.stat"));
        let mem = read(&dir.join("memory.stat"));
        let events = read(&dir.join("memory.events"));
        let usage = num(&read(&dir.join("memory.current"))).unwrap_or(0);
        let usec = |k| field(&cpu, k).unwrap_or(0) / 1_000_000;
        v.extend([
            ("container_cpu_usage_seconds_total", usec("usage_usec")),
            ("container_cpu_user_seconds_total", usec("user_usec")),
            ("container_cpu_system_seconds_total", usec("system_usec")),
            (
                "container_cpu_cfs_periods_total",
                field(&cpu, "nr_periods").unwrap_or(0),
            ),
            (
                "container_cpu_cfs_throttled_periods_total",
                field(&cpu, "nr_throttled").unwrap_or(0),
            ),
            (
                "container_cpu_cfs_throttled_seconds_total",
                usec("throttled_usec"),
            ),
            ("container_memory_usage_bytes", usage),
            (
                "container_memory_working_set_bytes",
                usage.saturating_sub(field(&mem, "inactive_file").unwrap_or(0)),
            ),
            (
                "container_memory_max_usage_bytes",
                num(&read(&dir.join("memory.peak"))).unwrap_or(usage),
            ),
            ("container_memory_cache", field(&mem, "file").unwrap_or(0)),
            ("container_memory_rss", field(&mem, "anon").unwrap_or(0)),
            (
                "container_memory_mapped_file",
                field(&mem, "file_mapped").unwrap_or(0),
            ),
            (
                "container_memory_swap",
                num(&read(&dir.join("memory.swap.current"))).unwrap_or(0),
            ),
            (
                "container_memory_kernel_usage",
                field(&mem, "kernel").unwrap_or(0),
            ),
            (
                "container_memory_failcnt",
                field(&events, "max").unwrap_or(0),
            ),
            (
                "container_oom_events_total",
                field(&events, "oom_kill").unwrap_or(0),
            ),
            (
                "container_threads_max",
                num(&read(&dir.join("pids.max"))).unwrap_or(0),
            ),
        ]);
        pgfault = field(&mem, "pgfault").unwrap_or(0);
        pgmajfault = field(&mem, "pgmajfault").unwrap_or(0);
        procs = read(&dir.join("cgroup.procs"));
    } else {
        let acct = controller_dir("cpuacct", cgroups_path);
        let cpu = read(&controller_dir("cpu", cgroups_path).join("cpu.stat"));
        let ticks = read(&acct.join("cpuacct.stat"));
        let mdir = controller_dir("memory", cgroups_path);
        let mem = read(&mdir.join("memory.stat"));
        let usage = num(&read(&mdir.join("memory.usage_in_bytes"))).unwrap_or(0);
        let oom = read(&mdir.join("memory.oom_control"));
        let pids = controller_dir("pids", cgroups_path);
        v.extend([
            (
                "container_cpu_usage_seconds_total",
                num(&read(&acct.join("cpuacct.usage"))).unwrap_or(0) / NS_PER_S,
            ),
            (
                "container_cpu_user_seconds_total",
                field(&ticks, "user").unwrap_or(0) / USER_HZ,
            ),
            (
                "container_cpu_system_seconds_total",
                field(&ticks, "system").unwrap_or(0) / USER_HZ,
            ),
            (
                "container_cpu_cfs_periods_total",
                field(&cpu, "nr_periods").unwrap_or(0),
            ),
            (
                "container_cpu_cfs_throttled_periods_total",
                field(&cpu, "nr_throttled").unwrap_or(0),
            ),
            (
                "container_cpu_cfs_throttled_seconds_total",
                field(&cpu, "throttled_time").unwrap_or(0) / NS_PER_S,
            ),
            ("container_memory_usage_bytes", usage),
            (
                "container_memory_working_set_bytes",
                usage.saturating_sub(field(&mem, "total_inactive_file").unwrap_or(0)),
            ),
            (
                "container_memory_max_usage_bytes",
                num(&read(&mdir.join("memory.max_usage_in_bytes"))).unwrap_or(0),
            ),
            (
                "container_memory_cache",
                field(&mem, "total_cache").unwrap_or(0),
            ),
            (
                "container_memory_rss",
                field(&mem, "total_rss").unwrap_or(0),
            ),
            (
                "container_memory_mapped_file",
                field(&mem, "total_mapped_file").unwrap_or(0),
            ),
            (
                "container_memory_swap",
                field(&mem, "total_swap").unwrap_or(0),
            ),
            (
                "container_memory_kernel_usage",
                num(&read(&mdir.join("memory.kmem.usage_in_bytes"))).unwrap_or(0),
            ),
            (
                "container_memory_failcnt",
                num(&read(&mdir.join("memory.failcnt"))).unwrap_or(0),
            ),
            (
                "container_oom_events_total",
                field(&oom, "oom_kill").unwrap_or(0),
            ),
            (
                "container_threads_max",
                num(&read(&pids.join("pids.max"))).unwrap_or(0),
            ),
        ]);
        pgfault = field(&mem, "total_pgfault").unwrap_or(0);
        pgmajfault = field(&mem, "total_pgmajfault").unwrap_or(0);
        procs = read(&mdir.join("cgroup.procs"));
    }
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // cAdvisor: minor faults are pgfault less the major ones.
    let minor = pgfault.saturating_sub(pgmajfault);
    CgroupReadings {
        values: v,
        failures: [
            ("pgfault", "container", minor),
            ("pgmajfault", "container", pgmajfault),
            ("pgfault", "hierarchy", minor),
            ("pgmajfault", "hierarchy", pgmajfault),
        ],
        pids,
    }
}

/// Threads, open descriptors and sockets of the given processes.
fn process_counts(pids: &[u32]) -> (u64, u64, u64) {
    let (mut threads, mut fds, mut sockets) = (0u64, 0u64, 0u64);
    for pid in pids {
        let proc = Path::new("/proc").join(pid.to_string());
        threads += field(&read(&proc.join("status")).replace(":\t", " "), "Threads").unwrap_or(0);
        let Ok(entries) = std::fs::read_dir(proc.join("fd")) else {
            continue;
        };
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    (threads, fds, sockets)
}

/// Reads and writes (bytes, operations) of block devices the cgroup used (v1 blkio throttle
/// counters, v2 `io.stat`), summed over devices.
fn block_io(cgroups_path: &str) -> [(&'static str, u64); 4] {
    let (mut rb, mut rios, mut wb, mut wios) = (0, 0, 0, 0);
    if is_v2() {
        for line in read(&controller_dir("", cgroups_path).join("io.stat")).lines() {
            for kv in line.split_whitespace().skip(1) {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = num(v).unwrap_or(0);
                match k {
                    "rbytes" => rb += v,
                    "wbytes" => wb += v,
                    "rios" => rios += v,
                    "wios" => wios += v,
                    _ => {}
                }
            }
        }
    } else {
        let dir = controller_dir("blkio", cgroups_path);
        let sum = |file: &str, op: &str| -> u64 {
            read(&dir.join(file))
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let (_dev, o, v) = (w.next()?, w.next()?, w.next()?);
                    (o == op).then(|| num(v)).flatten()
                })
                .sum()
        };
        rb = sum("blkio.throttle.io_service_bytes_recursive", "Read");
        wb = sum("blkio.throttle.io_service_bytes_recursive", "Write");
        rios = sum("blkio.throttle.io_serviced_recursive", "Read");
        wios = sum("blkio.throttle.io_serviced_recursive", "Write");
    }
    [
        ("container_fs_reads_bytes_total", rb),
        ("container_fs_reads_total", rios),
        ("container_fs_writes_bytes_total", wb),
        ("container_fs_writes_total", wios),
    ]
}

/// One running container's samples. `writable` is its writable layer directory and
/// `fs_usage` the bytes used there; `now_s` the time in seconds since the epoch.
pub fn container_samples(
    r: &ContainerRecord,
    pod: &PodRecord,
    writable: &Path,
    fs_usage: u64,
    now_s: u64,
) -> ContainerSamples {
    let m = &pod.config.metadata;
    let labels = vec![
        r.config.name.clone(),
        r.id.clone(),
        r.image.reference.clone(),
        format!("crid-{}", r.id.get(..12).unwrap_or(&r.id)),
        m.namespace.clone(),
        m.name.clone(),
    ];
    let res = &r.config.resources;
    let positive = |v: i64| u64::try_from(v).unwrap_or(0);
    let spec = [
        ("container_spec_cpu_period", positive(res.cpu_period)),
        ("container_spec_cpu_shares", positive(res.cpu_shares)),
        (
            "container_spec_memory_limit_bytes",
            positive(res.memory_limit_in_bytes),
        ),
        (
            "container_spec_memory_swap_limit_bytes",
            positive(res.memory_swap_limit_in_bytes),
        ),
        (
            "container_start_time_seconds",
            positive(r.started_at) / NS_PER_S,
        ),
    ];
    ContainerSamples {
        container_id: r.id.clone(),
        samples: samples_of(&labels, &r.cgroups_path, &spec, writable, fs_usage, now_s),
    }
}

/// The samples of a container with these label values (in [`CONTAINER`] order), cgroup,
/// values from its spec, writable layer and its usage.
fn samples_of(
    labels: &[String],
    cgroups_path: &str,
    spec: &[(&'static str, u64)],
    writable: &Path,
    fs_usage: u64,
    now_s: u64,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut push = |name: &'static str, labels: Vec<String>, value: u64| {
        samples.push(Sample {
            name,
            kind: kind_of(name),
            labels,
            value,
        });
    };
    let cg = cgroup_readings(cgroups_path);
    for (name, value) in &cg.values {
        push(name, labels.to_vec(), *value);
    }
    for (failure, scope, value) in cg.failures {
        let mut l = labels.to_vec();
        l.extend([failure.to_owned(), scope.to_owned()]);
        push("container_memory_failures_total", l, value);
    }
    let (threads, fds, sockets) = process_counts(&cg.pids);
    let (limit, inodes, inodes_free) = crate::sys::fs_capacity(writable);
    for (name, value) in [
        ("container_processes", cg.pids.len() as u64),
        ("container_threads", threads),
        ("container_file_descriptors", fds),
        ("container_sockets", sockets),
        ("container_fs_usage_bytes", fs_usage),
        ("container_fs_limit_bytes", limit),
        ("container_fs_inodes_total", inodes),
        ("container_fs_inodes_free", inodes_free),
        ("container_last_seen", now_s),
    ]
    .into_iter()
    .chain(spec.iter().copied())
    .chain(block_io(cgroups_path))
    {
        push(name, labels.to_vec(), value);
    }
    samples
}

/// The pod's network counters per interface (loopback left out), from `/proc/<pid>/net/dev`
/// of a process in the pod's network namespace.
pub fn network_samples(pod: &PodRecord, pid: i32) -> Vec<Sample> {
    let m = &pod.config.metadata;
    let text = read(&Path::new("/proc").join(pid.to_string()).join("net/dev"));
    parse_net_dev(&text, &m.namespace, &m.name)
}

fn parse_net_dev(text: &str, namespace: &str, pod: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().skip(2) {
        let Some((iface, counters)) = line.split_once(':') else {
            continue;
        };
        let iface = iface.trim();
        if iface == "lo" {
            continue;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .map(|v| num(v).unwrap_or(0))
            .collect();
        if c.len() < 12 {
            continue;
        }
        // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes
        // packets errs drop ...
        for (name, value) in [
            ("container_network_receive_bytes_total", c[0]),
            ("container_network_receive_packets_total", c[1]),
            ("container_network_receive_errors_total", c[2]),
            ("container_network_receive_packets_dropped_total", c[3]),
            ("container_network_transmit_bytes_total", c[8]),
            ("container_network_transmit_packets_total", c[9]),
            ("container_network_transmit_errors_total", c[10]),
            ("container_network_transmit_packets_dropped_total", c[11]),
        ] {
            samples.push(Sample {
                name,
                kind: kind_of(name),
                labels: vec![namespace.to_owned(), pod.to_owned(), iface.to_owned()],
                value,
            });
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_and_labelled() {
        let mut names: Vec<&str> = DESCRIPTORS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTORS.len());
        assert!(
            DESCRIPTORS
                .iter()
                .all(|d| !d.help.is_empty() && !d.labels.is_empty())
        );
    }

    #[test]
    fn samples_carry_one_value_per_label_key() {
        let labels: Vec<String> = CONTAINER.iter().map(|l| format!("v-{l}")).collect();
        let dir = tempfile::tempdir().unwrap();
        let spec = [("container_spec_cpu_shares", 2)];
        let mut all = samples_of(&labels, "/crid/none", &spec, dir.path(), 7, 42);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 100 2 3 4 0 0 0 0 200 5 6 7 0 0 0 0\n";
        let net = parse_net_dev(dev, "ns", "p");
        assert_eq!(net.len(), 8, "lo is left out");
        let rx = net
            .iter()
            .find(|s| s.name == "container_network_receive_bytes_total");
        assert_eq!(
            rx.map(|s| (s.value, s.labels.clone())),
            Some((100, vec!["ns".into(), "p".into(), "eth0".into()]))
        );
        let tx = net
            .iter()
            .find(|s| s.name == "container_network_transmit_packets_dropped_total");
        assert_eq!(tx.map(|s| s.value), Some(7));
        all.extend(net);
        for s in &all {
            let d = DESCRIPTORS.iter().find(|d| d.name == s.name).unwrap();
            assert_eq!(s.labels.len(), d.labels.len(), "{}", s.name);
            assert_eq!(s.kind, d.kind, "{}", s.name);
        }
        let value = |n: &str| all.iter().find(|s| s.name == n).unwrap().value;
        assert_eq!(value("container_fs_usage_bytes"), 7);
        assert_eq!(value("container_last_seen"), 42);
        assert_eq!(value("container_spec_cpu_shares"), 2);
        assert!(value("container_fs_inodes_total") > 0);
        // Every described metric is sampled but block I/O per device and the spec values the
        // caller gives.
        for d in DESCRIPTORS {
            let spec =
                d.name.starts_with("container_spec_") || d.name == "container_start_time_seconds";
            assert!(
                all.iter().any(|s| s.name == d.name)
                    || spec
                    || d.name == "container_blkio_device_usage_total",
                "{} never sampled",
                d.name
            );
        }
    }
}
