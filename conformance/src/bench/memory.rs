//! Memory of a runtime: RSS and PSS summed over every process that belongs to it (daemon,
//! shims, monitors, VMMs), found by matching `/proc/PID/cmdline` against a pattern.

use regex::Regex;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// Sums RSS and PSS (from `smaps_rollup`) of processes whose NUL-joined command line, with
/// NULs turned into spaces, matches `pattern`. The bench's own process never counts.
pub fn measure(pattern: &Regex) -> Memory {
    let me = std::process::id();
    let mut total = Memory::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.is_empty() || !pattern.is_match(&cmdline) {
            continue;
        }
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            let (rss, pss) = parse_rollup(&rollup);
            total.processes += 1;
            total.rss_kib += rss;
            total.pss_kib += pss;
        }
    }
    total
}

/// The RSS of process `pid` (from `smaps_rollup`), when it runs.
pub fn rss_kib(pid: i64) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(parse_rollup(&rollup).0)
}

fn parse_rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_fields_are_read() {
        let text = "00400000-7ffc [rollup]\nRss:                3340 kB\nPss:                 812 kB\nPss_Anon: 100 kB\n";
        assert_eq!(parse_rollup(text), (3340, 812));
    }

    #[test]
    fn a_running_child_is_measured() {
        let mut child = std::process::Command::new("sleep")
            .arg("7.4321")
            .spawn()
            .expect("sleep runs");
        // Until the child has exec'd, its command line is still the test binary's.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        for _ in 0..200 {
            if std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep\0")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let m = measure(&Regex::new("^sleep 7\\.4321").unwrap());
        let rss = rss_kib(i64::from(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(m.processes, 1);
        assert!(m.rss_kib > 0 && m.pss_kib > 0, "{m:?}");
        assert!(rss.is_some_and(|r| r > 0), "{rss:?}");
    }
}
