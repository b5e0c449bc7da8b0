//! Container cgroup paths for the cgroupfs and systemd drivers, on cgroup v1 (hybrid) and v2
//! hosts, and the statistics read from them.

use std::path::{Path, PathBuf};

use crate::pod::CgroupDriver;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the host runs the unified (v2-only) hierarchy.
pub fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The controllers a v1 (hybrid) host left on its v2 mount `unified`; empty on a unified host
/// and on a v1 host whose controllers are all on v1 hierarchies.
pub fn hybrid_v2_controllers() -> Vec<String> {
    hybrid_v2_controllers_at(Path::new(CGROUP_ROOT))
}

fn hybrid_v2_controllers_at(root: &Path) -> Vec<String> {
    if root.join("cgroup.controllers").exists() {
        return Vec::new();
    }
    std::fs::read_to_string(root.join("unified").join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// runc's `cgroupsPath` for a container of a pod with `parent` (validated by the pod manager).
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_end_matches('/');
            if parent.is_empty() {
                format!("/crid/{id}")
            } else if parent.starts_with('/') {
                format!("{parent}/{id}")
            } else {
                format!("/{parent}/{id}")
            }
        }
        CgroupDriver::Systemd => {
            let parent = if parent.is_empty() {
                "system.slice"
            } else {
                parent.rsplit('/').next().unwrap_or(parent)
            };
            format!("{parent}:crid:{id}")
        }
    }
}

/// Expands a systemd slice name into its path: `a-b.slice` → `a.slice/a-b.slice`.
fn expand_slice(slice: &str) -> String {
    let Some(name) = slice.strip_suffix(".slice") else {
        return slice.to_owned();
    };
    if name == "-" || name.is_empty() {
        return String::new();
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&prefix);
        path.push_str(".slice/");
    }
    path.trim_end_matches('/').to_owned()
}

/// The cgroup's directory relative to a hierarchy's root.
pub fn relative_dir(cgroups_path: &str) -> PathBuf {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() == 3 && !cgroups_path.starts_with('/') {
        let slice = expand_slice(parts[0]);
        PathBuf::from(slice).join(format!("{}-{}.scope", parts[1], parts[2]))
    } else {
        PathBuf::from(cgroups_path.trim_start_matches('/'))
    }
}

/// A mounted cgroup hierarchy: its root and whether it is the unified (v2) one.
#[derive(Debug, Clone, Copy)]
struct Hierarchy<'a> {
    root: &'a Path,
    v2: bool,
}

/// This host's hierarchy under `/sys/fs/cgroup`.
fn host() -> Hierarchy<'static> {
    Hierarchy {
        root: Path::new(CGROUP_ROOT),
        v2: is_v2(),
    }
}

impl Hierarchy<'_> {
    fn dir(&self, controller: &str, cgroups_path: &str) -> PathBuf {
        let rel = relative_dir(cgroups_path);
        if self.v2 {
            self.root.join(rel)
        } else {
            self.root.join(controller).join(rel)
        }
    }
}

/// The container's directory of one controller (`memory`, `cpuacct`, ...); on v2 the one
/// unified directory.
pub fn controller_dir(controller: &str, cgroups_path: &str) -> PathBuf {
    host().dir(controller, cgroups_path)
}

/// Usage numbers of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    pub memory_working_set: u64,
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads the stats of the cgroup at `cgroups_path`; `None` when it does not exist.
pub fn read_stats(cgroups_path: &str) -> Option<CgroupStats> {
    read_stats_in(host(), cgroups_path)
}

fn read_stats_in(h: Hierarchy<'_>, cgroups_path: &str) -> Option<CgroupStats> {
    if h.v2 {
        let dir = h.dir("", cgroups_path);
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let mem = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat_field(&mem, "inactive_file").unwrap_or(0);
        Some(CgroupStats {
            cpu_usage_ns: stat_field(&cpu, "usage_usec").unwrap_or(0) * 1000,
            memory_usage: usage,
            memory_working_set: usage.saturating_sub(inactive),
            memory_rss: stat_field(&mem, "anon").unwrap_or(0),
            page_faults: stat_field(&mem, "pgfault").unwrap_or(0),
            major_page_faults: stat_field(&mem, "pgmajfault").unwrap_or(0),
        })
    } else {
        let mdir = h.dir("memory", cgroups_path);
        let cdir = h.dir("cpuacct", cgroups_path);
        let cpu = read_u64(&cdir.join("cpuacct.usage"));
        let usage = read_u64(&mdir.join("memory.usage_in_bytes"));
        if cpu.is_none() && usage.is_none() {
            return None;
        }
        let usage = usage.unwrap_or(0);
        let mem = std::fs::read_to_string(mdir.join("memory.stat")).unwrap_or_default();
        let inactive = stat_field(&mem, "total_inactive_file").unwrap_or(0);
        Some(CgroupStats {
            cpu_usage_ns: cpu.unwrap_or(0),
            memory_usage: usage,
            memory_working_set: usage.saturating_sub(inactive),
            memory_rss: stat_field(&mem, "total_rss").unwrap_or(0),
            page_faults: stat_field(&mem, "total_pgfault").unwrap_or(0),
            major_page_faults: stat_field(&mem, "total_pgmajfault").unwrap_or(0),
        })
    }
}

/// Bytes and inodes used under `dir` (the container's writable layer), not crossing into
/// other file systems.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_left_on_the_v2_mount_of_a_hybrid_host() {
        let d = tempfile::tempdir().unwrap();
        assert!(hybrid_v2_controllers_at(d.path()).is_empty());
        std::fs::create_dir(d.path().join("unified")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), "").unwrap();
        assert!(hybrid_v2_controllers_at(d.path()).is_empty());
        std::fs::write(d.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(hybrid_v2_controllers_at(d.path()), ["hugetlb"]);
        // A unified host has no hybrid mount to look at.
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert!(hybrid_v2_controllers_at(d.path()).is_empty());
    }

    #[test]
    fn paths_for_both_drivers() {
        assert_eq!(cgroups_path(CgroupDriver::Cgroupfs, "", "c1"), "/crid/c1");
        assert_eq!(
            cgroups_path(CgroupDriver::Cgroupfs, "/kubepods/pod1/", "c1"),
            "/kubepods/pod1/c1"
        );
        assert_eq!(
            cgroups_path(
                CgroupDriver::Systemd,
                "kubepods-besteffort-pod1.slice",
                "c1"
            ),
            "kubepods-besteffort-pod1.slice:crid:c1"
        );
        assert_eq!(
            relative_dir("kubepods-besteffort-pod1.slice:crid:c1"),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crid-c1.scope"
            )
        );
        assert_eq!(relative_dir("/crid/c1"), PathBuf::from("crid/c1"));
    }

    /// Writes `files` (name, content) into the cgroup directory `dir`.
    fn cgroup_files(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }

    /// The files the kernel shows in a container's cgroup, on this (v1) host and on a unified
    /// (v2) one, for both drivers' cgroup paths: each reads to the same statistics.
    #[test]
    fn stats_are_read_from_v1_and_v2_layouts_for_both_drivers() {
        let want = CgroupStats {
            cpu_usage_ns: 5_000_000,
            memory_usage: 10 << 20,
            memory_working_set: 8 << 20,
            memory_rss: 6 << 20,
            page_faults: 300,
            major_page_faults: 2,
        };
        for path in ["/crid/c1", "kubepods-besteffort-pod1.slice:crid:c1"] {
            let v2 = tempfile::tempdir().unwrap();
            let h = Hierarchy {
                root: v2.path(),
                v2: true,
            };
            assert_eq!(read_stats_in(h, path), None, "{path}: no cgroup yet");
            cgroup_files(
                &h.dir("", path),
                &[
                    (
                        "cpu.stat",
                        "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n",
                    ),
                    ("memory.current", "10485760\n"),
                    (
                        "memory.stat",
                        "anon 6291456\nfile 4194304\ninactive_file 2097152\npgfault 300\npgmajfault 2\n",
                    ),
                ],
            );
            assert_eq!(read_stats_in(h, path), Some(want), "v2 {path}");

            let v1 = tempfile::tempdir().unwrap();
            let h = Hierarchy {
                root: v1.path(),
                v2: false,
            };
            assert_eq!(read_stats_in(h, path), None, "{path}: no cgroup yet");
            cgroup_files(&h.dir("cpuacct", path), &[("cpuacct.usage", "5000000\n")]);
            cgroup_files(
                &h.dir("memory", path),
                &[
                    ("memory.usage_in_bytes", "10485760\n"),
                    (
                        "memory.stat",
                        "rss 1\ntotal_rss 6291456\ntotal_inactive_file 2097152\ntotal_pgfault 300\ntotal_pgmajfault 2\n",
                    ),
                ],
            );
            assert_eq!(read_stats_in(h, path), Some(want), "v1 {path}");
        }
    }

    #[test]
    fn disk_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![1u8; 10_000]).unwrap();
        let (bytes, inodes) = disk_usage(d.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10_000);
    }
}
