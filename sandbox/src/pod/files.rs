//! The files a pod's containers bind-mount: `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`.

use std::net::IpAddr;

use crate::pod::DnsConfig;

/// Longest hostname kubelet derives from a pod name (a DNS label).
const DERIVED_HOSTNAME_MAX: usize = 63;

/// The hostname of a pod that names none, by kubelet's rule: its name; a longer one is cut
/// to 63 characters and then loses trailing `-` and `.`. A character a hostname cannot hold
/// (the API server lets none through, but CRI clients may send anything) becomes `-` first.
pub fn hostname_from_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= DERIVED_HOSTNAME_MAX {
        return clean;
    }
    clean[..DERIVED_HOSTNAME_MAX]
        .trim_end_matches(['-', '.'])
        .to_owned()
}

pub fn hostname(name: &str) -> String {
    format!("{name}\n")
}

pub fn hosts(hostname: &str, ips: &[IpAddr]) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (written by crid).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in ips {
            s.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    s
}

/// `resolv.conf` from the pod's DNS config; `None` means "use the host's".
pub fn resolv_conf(dns: &DnsConfig) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

/// The host resolver configuration pods without DNS config get: `/etc/resolv.conf`, unless it
/// points at systemd-resolved's loopback stub (unreachable from a pod's network), in which case
/// the upstream list systemd-resolved keeps.
pub fn host_resolv_conf() -> std::path::PathBuf {
    let etc = std::path::Path::new("/etc/resolv.conf");
    let upstream = std::path::Path::new("/run/systemd/resolve/resolv.conf");
    let stub = std::fs::read_to_string(etc)
        .map(|t| t.lines().any(|l| l.trim() == "nameserver 127.0.0.53"))
        .unwrap_or(false);
    if stub && upstream.is_file() {
        upstream.to_owned()
    } else {
        etc.to_owned()
    }
}

/// DNS entries must be single words: no whitespace or control characters that would add lines
/// or directives to `resolv.conf`.
pub fn valid_dns_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_from_name_follows_kubelet() {
        let critest = "PodSandbox-for-create-container-2f4a8e1c-6b0d-4c1e-9a57-3d2b1c0e9f88";
        let table = [
            ("web-0".to_string(), "web-0".to_string()),
            ("a".repeat(63), "a".repeat(63)),
            (critest.to_string(), critest[..63].to_string()),
            // Cut to 63, then the trailing "-." goes.
            (format!("{}-.-x", "b".repeat(61)), "b".repeat(61)),
            // Only a cut name is trimmed (kubelet's truncatePodHostnameIfNeeded).
            ("a-".to_string(), "a-".to_string()),
            ("a\nb c".to_string(), "a-b-c".to_string()),
            ("-".repeat(70), String::new()),
        ];
        for (name, expected) in table {
            assert_eq!(hostname_from_name(&name), expected, "{name:?}");
        }
    }

    #[test]
    fn resolv_conf_from_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&DnsConfig::default()), None);
        assert!(!valid_dns_word("a\nnameserver 1.2.3.4"));
        assert!(valid_dns_word("ndots:5"));
    }

    #[test]
    fn hosts_names_the_pod() {
        let h = hosts("web", &["10.1.0.5".parse().unwrap()]);
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.1.0.5\tweb\n"));
    }
}
