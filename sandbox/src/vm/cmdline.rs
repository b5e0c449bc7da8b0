//! Guest kernel command lines, one format per unikernel type.
//!
//! The application's argv is the CRI `command` + `args` when given, else the image's
//! `cmdline` split on whitespace. How it and the environment reach each guest:
//!
//! | type | network | environment | argv | initrd / block |
//! |---|---|---|---|---|
//! | `linux` | `ip=IP::GW:MASK::eth0:off` (read by the guest init) | `K="V"` tokens, which the kernel hands to init's environment | after `--`, init's arguments (in `/etc/crid/args` with a shared or block root) | `root=/dev/vda rw` for a block rootfs without initrd; `crid.root=block:vda` for crid's block root (with initrd) |
//! | `unikraft` ≥ 0.16.1 (or no version) | `netdev.ip=IP/PREFIX:GW` | `env.vars=[ "K=V" ... ]` | after `--` | `vfs.fstab=[ "initrd0:/:extract:::" ]` |
//! | `unikraft` < 0.16.1 | `netdev.ipv4_addr=` `netdev.ipv4_gw_addr=` `netdev.ipv4_subnet_mask=` | not supported by the guest: dropped with a warning | after `--` | `vfs.rootfs=initrd` |
//! | `rumprun` | `"net":{...}` in the JSON config | one `"env"` member per variable | `"cmdline"` | `"blk":{...}` (etfs `/dev/ld0a`) |
//! | `mirage` | `--ipv4=IP/PREFIX --ipv4-gateway=GW` | none (dropped with a warning) | appended | — |
//! | `mewz` | `ip=IP/PREFIX gateway=GW` | none (dropped with a warning) | appended | — |

use imagestore::{HypervisorKind, UnikernelType};

use super::VmSpec;
use crate::error::{SandboxError, invalid};

/// The first Unikraft release that takes `netdev.ip=` and `env.vars`.
const UNIKRAFT_CURRENT: (u64, u64, u64) = (0, 16, 1);

/// The longest kernel command line x86 Linux keeps (`COMMAND_LINE_SIZE`, 2048 with its NUL);
/// the rest would be cut off silently.
pub const LINUX_MAX: usize = 2047;

/// Builds the guest command line. `extra` are hypervisor-specific kernel parameters (Linux
/// only, e.g. Firecracker's `reboot=k`).
pub fn guest_cmdline(spec: &VmSpec, extra: &[&str]) -> Result<String, SandboxError> {
    // A guest with a shared or block root reads its argv from there (`/etc/crid/args`).
    let argv = if spec.shared_dir.is_some() || spec.block_root {
        vec![]
    } else {
        app_args(spec)
    };
    for a in &argv {
        check_token(a, "argument")?;
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace) {
            return Err(invalid(format!("invalid environment variable name {k:?}")));
        }
        check_token(k, "environment variable name")?;
        check_token(v, "environment variable value")?;
    }
    match spec.info.unikernel_type {
        UnikernelType::Linux => linux_fitting(spec, &argv, extra),
        UnikernelType::Unikraft => Ok(unikraft(spec, &argv)),
        UnikernelType::Rumprun => Ok(rumprun(spec, &argv)),
        UnikernelType::Mirage => simple(spec, &argv, mirage_net),
        UnikernelType::Mewz => simple(spec, &argv, mewz_net),
    }
}

/// The application's argv: CRI command + args, else the image's `cmdline` split on whitespace.
pub fn app_args(spec: &VmSpec) -> Vec<String> {
    workload_argv(&spec.args, &spec.info.cmdline)
}

/// `args` (CRI command + args, or the image's entrypoint + cmd), else the image's unikernel
/// command line split on whitespace.
pub fn workload_argv(args: &[String], image_cmdline: &str) -> Vec<String> {
    if args.is_empty() {
        image_cmdline
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        args.to_vec()
    }
}

fn check_token(s: &str, what: &str) -> Result<(), SandboxError> {
    if s.chars().any(|c| c.is_control() || c == '"') {
        return Err(invalid(format!(
            "{what} {s:?} contains a control character or '\"', which a guest command line cannot carry"
        )));
    }
    Ok(())
}

/// Quotes a token for command lines that understand double quotes (Linux, Unikraft).
fn quote(s: &str) -> String {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// The `linux` command line, without the argv when it would not fit and the guest reads its
/// argv from its initrd; a command line that cannot fit is refused, not cut off.
fn linux_fitting(spec: &VmSpec, argv: &[String], extra: &[&str]) -> Result<String, SandboxError> {
    let line = linux(spec, argv, extra);
    if line.len() <= LINUX_MAX {
        return Ok(line);
    }
    if spec.argv_in_initrd {
        let without = linux(spec, &[], extra);
        if without.len() <= LINUX_MAX {
            tracing::info!(
                bytes = line.len(),
                "the guest's argv is left off its kernel command line: it reads it from /etc/crid/args"
            );
            return Ok(without);
        }
    }
    Err(invalid(format!(
        "the guest's kernel command line would be {} bytes; Linux keeps {LINUX_MAX}",
        line.len()
    )))
}

fn linux(spec: &VmSpec, argv: &[String], extra: &[&str]) -> String {
    let mut parts: Vec<String> = vec!["console=ttyS0".into(), "panic=-1".into()];
    parts.extend(extra.iter().map(|s| s.to_string()));
    if spec.block.is_some() && spec.initrd.is_none() {
        parts.push("root=/dev/vda".into());
        parts.push("rw".into());
    }
    if let Some(net) = &spec.net {
        let gw = net.gateway.map(|g| g.to_string()).unwrap_or_default();
        parts.push(format!("ip={}::{}:{}::eth0:off", net.ip, gw, net.netmask()));
    }
    if let Some(shared) = &spec.shared_dir {
        parts.push(super::virtiofs::root_param(&shared.tag));
    }
    if spec.block_root {
        parts.push(super::blockroot::ROOT_PARAM.into());
    }
    for (k, v) in &spec.env {
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            parts.push(format!("{k}=\"{v}\""));
        } else {
            parts.push(format!("{k}={v}"));
        }
    }
    if !argv.is_empty() {
        parts.push("--".into());
        parts.extend(argv.iter().map(|a| quote(a)));
    }
    parts.join(" ")
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |s| s.parse().ok())?;
    let patch = it.next().map_or(Some(0), |s| s.parse().ok())?;
    Some((major, minor, patch))
}

/// Whether a Unikraft guest takes the current `netdev.ip=`/`env.vars` forms. A missing or
/// unparsable version means a current guest.
pub fn unikraft_is_current(version: Option<&str>) -> bool {
    match version.and_then(parse_version) {
        Some(v) => v >= UNIKRAFT_CURRENT,
        None => true,
    }
}

fn unikraft(spec: &VmSpec, argv: &[String]) -> String {
    let current = unikraft_is_current(spec.info.version.as_deref());
    let name = spec
        .info
        .binary
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.chars().any(char::is_whitespace))
        .unwrap_or("unikraft");
    let mut parts: Vec<String> = vec![name.to_string()];
    if current {
        if !spec.env.is_empty() {
            let vars: Vec<String> = spec
                .env
                .iter()
                .map(|(k, v)| format!("\"{k}={v}\""))
                .collect();
            parts.push(format!("env.vars=[ {} ]", vars.join(" ")));
        }
        if let Some(net) = &spec.net {
            // `netdev.ip=CIDR:GATEWAY:DNS0:DNS1`: the pod's resolvers, else Unikraft's default.
            let mut ip = format!("netdev.ip={}/{}", net.ip, net.prefix);
            if let Some(gw) = net.gateway {
                ip.push_str(&format!(":{gw}"));
                for dns in spec.dns.iter().take(2) {
                    ip.push_str(&format!(":{dns}"));
                }
            }
            parts.push(ip);
        }
        if spec.initrd.is_some() {
            parts.push("vfs.fstab=[ \"initrd0:/:extract:::\" ]".into());
        } else if spec.ninep_root.is_some() {
            parts.extend(super::ninep::root_params(true));
        }
    } else {
        if !spec.env.is_empty() {
            tracing::warn!(
                version = spec.info.version.as_deref().unwrap_or(""),
                "unikraft before 0.16.1 takes no environment; dropping it"
            );
        }
        if let Some(net) = &spec.net {
            parts.push(format!("netdev.ipv4_addr={}", net.ip));
            if let Some(gw) = net.gateway {
                parts.push(format!("netdev.ipv4_gw_addr={gw}"));
            }
            parts.push(format!("netdev.ipv4_subnet_mask={}", net.netmask()));
        }
        if spec.initrd.is_some() {
            parts.push("vfs.rootfs=initrd".into());
        } else if spec.ninep_root.is_some() {
            parts.extend(super::ninep::root_params(false));
        }
    }
    parts.push("--".into());
    parts.extend(argv.iter().map(|a| quote(a)));
    parts.join(" ").trim_end().to_string()
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn rumprun(spec: &VmSpec, argv: &[String]) -> String {
    // Rumprun's configuration is JSON-like but allows repeated "env" members, so it is
    // assembled by hand with every value escaped as a JSON string.
    let mut members = vec![format!("\"cmdline\":{}", json_str(&argv.join(" ")))];
    for (k, v) in &spec.env {
        members.push(format!("\"env\":{}", json_str(&format!("{k}={v}"))));
    }
    if let Some(net) = &spec.net {
        let iface = match spec.info.hypervisor {
            HypervisorKind::Hvt | HypervisorKind::Spt => "ukvmif0",
            _ => "vioif0",
        };
        let mut n = vec![
            format!("\"if\":{}", json_str(iface)),
            "\"cloner\":\"True\"".into(),
            "\"type\":\"inet\"".into(),
            "\"method\":\"static\"".into(),
            format!("\"addr\":{}", json_str(&net.ip.to_string())),
            format!("\"mask\":{}", json_str(&net.prefix.to_string())),
        ];
        if let Some(gw) = net.gateway {
            n.push(format!("\"gw\":{}", json_str(&gw.to_string())));
        }
        members.push(format!("\"net\":{{{}}}", n.join(",")));
    }
    if spec.block.is_some() {
        let mp = spec
            .info
            .block_mount_point
            .as_ref()
            .and_then(|p| p.to_str())
            .unwrap_or("/data");
        members.push(format!(
            "\"blk\":{{\"source\":\"etfs\",\"path\":\"/dev/ld0a\",\"fstype\":\"blk\",\"mountpoint\":{}}}",
            json_str(mp)
        ));
    }
    format!("{{{}}}", members.join(","))
}

fn mirage_net(net: &super::GuestNet) -> Vec<String> {
    let mut v = vec![format!("--ipv4={}/{}", net.ip, net.prefix)];
    if let Some(gw) = net.gateway {
        v.push(format!("--ipv4-gateway={gw}"));
    }
    v
}

fn mewz_net(net: &super::GuestNet) -> Vec<String> {
    let mut v = vec![format!("ip={}/{}", net.ip, net.prefix)];
    if let Some(gw) = net.gateway {
        v.push(format!("gateway={gw}"));
    }
    v
}

fn simple(
    spec: &VmSpec,
    argv: &[String],
    net_args: fn(&super::GuestNet) -> Vec<String>,
) -> Result<String, SandboxError> {
    if !spec.env.is_empty() {
        tracing::warn!(
            guest = spec.info.unikernel_type.as_str(),
            "this guest type takes no environment; dropping it"
        );
    }
    let mut parts = spec.net.as_ref().map(net_args).unwrap_or_default();
    for a in argv {
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "{} guests cannot take an argument with whitespace: {a:?}",
                spec.info.unikernel_type.as_str()
            )));
        }
        parts.push(a.clone());
    }
    Ok(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{net, spec};
    use super::*;
    use imagestore::HypervisorKind as H;
    use imagestore::UnikernelType as T;
    use std::path::PathBuf;

    #[test]
    fn linux_has_ip_env_and_args_for_init() {
        let mut s = spec(T::Linux, H::Qemu);
        s.net = Some(net());
        s.env = vec![
            ("GREETING".into(), "hello world".into()),
            ("A".into(), "1".into()),
        ];
        s.args = vec!["/bin/server".into(), "--port".into(), "8080".into()];
        let c = guest_cmdline(&s, &[]).unwrap();
        assert_eq!(
            c,
            "console=ttyS0 panic=-1 ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off \
             GREETING=\"hello world\" A=1 -- /bin/server --port 8080"
        );
    }

    #[test]
    fn linux_argv_too_long_for_the_command_line_stays_in_the_initrd() {
        let mut s = spec(T::Linux, H::Qemu);
        s.args = vec!["/bin/server".into(), "x".repeat(LINUX_MAX)];
        // Without an initrd copy to read it from, a command line Linux would cut is refused.
        let err = guest_cmdline(&s, &[]).unwrap_err();
        assert!(matches!(err, SandboxError::InvalidArgument { .. }), "{err}");
        s.argv_in_initrd = true;
        assert_eq!(guest_cmdline(&s, &[]).unwrap(), "console=ttyS0 panic=-1");
        // A short argv stays on the command line too, for inits that read it there.
        s.args.truncate(1);
        assert_eq!(
            guest_cmdline(&s, &[]).unwrap(),
            "console=ttyS0 panic=-1 -- /bin/server"
        );
    }

    #[test]
    fn linux_shared_root_is_named_for_init() {
        let mut s = spec(T::Linux, H::Qemu);
        s.initrd = Some(PathBuf::from("/l/initrd.gz"));
        s.shared_dir = Some(crate::vm::virtiofs::SharedDir {
            socket: "/run/c1/virtiofs.sock".into(),
            tag: "rootfs".into(),
        });
        s.args = vec!["/app/serve".into(), "--port".into(), "8080".into()];
        let c = guest_cmdline(&s, &[]).unwrap();
        // The argv is in the shared root, not on the command line (nor checked for it).
        assert_eq!(c, "console=ttyS0 panic=-1 crid.root=virtiofs:rootfs");
        s.args.push("quote\"and\nnewline".into());
        assert!(guest_cmdline(&s, &[]).is_ok());
    }

    #[test]
    fn unikraft_9p_root_in_both_forms() {
        let mut s = spec(T::Unikraft, H::Qemu);
        s.ninep_root = Some(PathBuf::from("/c/1/rootfs"));
        s.env = vec![("A".into(), "1".into())];
        s.args = vec!["/app".into(), "-v".into()];
        assert_eq!(
            guest_cmdline(&s, &[]).unwrap(),
            "kernel env.vars=[ \"A=1\" ] vfs.fstab=[ \"fs0:/:9pfs:::\" ] -- /app -v"
        );
        s.info.version = Some("0.15.0".into());
        assert_eq!(
            guest_cmdline(&s, &[]).unwrap(),
            "kernel vfs.rootdev=fs0 vfs.rootfs=9pfs -- /app -v"
        );
        // Without the share: no root parameters.
        s.ninep_root = None;
        assert_eq!(guest_cmdline(&s, &[]).unwrap(), "kernel -- /app -v");
    }

    #[test]
    fn linux_block_root_and_image_cmdline_default() {
        let mut s = spec(T::Linux, H::Firecracker);
        s.block = Some(PathBuf::from("/b/rootfs.ext4"));
        let c = guest_cmdline(&s, &["reboot=k"]).unwrap();
        assert_eq!(
            c,
            "console=ttyS0 panic=-1 reboot=k root=/dev/vda rw -- app --flag"
        );
    }

    /// crid's block root (an initrd guest whose first disk is its container's root): the init
    /// is told where its root is, and the argv and environment stay off the command line.
    #[test]
    fn linux_crid_block_root_is_named_and_the_argv_stays_in_the_image() {
        let mut s = spec(T::Linux, H::Firecracker);
        s.initrd = Some(PathBuf::from("/run/c1/initrd"));
        s.block = Some(PathBuf::from("/run/c1/rootfs.ext4"));
        s.block_root = true;
        s.net = Some(net());
        let c = guest_cmdline(&s, &["reboot=k"]).unwrap();
        assert_eq!(
            c,
            "console=ttyS0 panic=-1 reboot=k ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off \
             crid.root=block:vda"
        );
    }

    #[test]
    fn unikraft_current_form() {
        let mut s = spec(T::Unikraft, H::Qemu);
        s.net = Some(net());
        s.initrd = Some(PathBuf::from("/l/initrd"));
        s.env = vec![("K".into(), "V".into()), ("X".into(), "y z".into())];
        s.info.version = Some("0.17.0".into());
        let c = guest_cmdline(&s, &[]).unwrap();
        assert_eq!(
            c,
            "kernel env.vars=[ \"K=V\" \"X=y z\" ] netdev.ip=10.88.0.5/16:10.88.0.1 \
             vfs.fstab=[ \"initrd0:/:extract:::\" ] -- app --flag"
        );
    }

    #[test]
    fn unikraft_gets_the_pods_dns_servers() {
        let mut s = spec(T::Unikraft, H::Qemu);
        s.net = Some(net());
        s.dns = vec![
            std::net::Ipv4Addr::new(10, 96, 0, 10),
            std::net::Ipv4Addr::new(10, 96, 0, 11),
        ];
        let c = guest_cmdline(&s, &[]).unwrap();
        assert!(
            c.contains("netdev.ip=10.88.0.5/16:10.88.0.1:10.96.0.10:10.96.0.11 "),
            "{c}"
        );
    }

    #[test]
    fn unikraft_old_form_drops_env() {
        let mut s = spec(T::Unikraft, H::Firecracker);
        s.net = Some(net());
        s.initrd = Some(PathBuf::from("/l/initrd"));
        s.env = vec![("K".into(), "V".into())];
        s.info.version = Some("0.15.0".into());
        s.args = vec!["a b".into()];
        let c = guest_cmdline(&s, &[]).unwrap();
        assert_eq!(
            c,
            "kernel netdev.ipv4_addr=10.88.0.5 netdev.ipv4_gw_addr=10.88.0.1 \
             netdev.ipv4_subnet_mask=255.255.0.0 vfs.rootfs=initrd -- \"a b\""
        );
    }

    #[test]
    fn unikraft_versions() {
        assert!(unikraft_is_current(None));
        assert!(unikraft_is_current(Some("garbage")));
        assert!(unikraft_is_current(Some("0.16.1")));
        assert!(unikraft_is_current(Some("v0.18")));
        assert!(!unikraft_is_current(Some("0.16.0")));
        assert!(!unikraft_is_current(Some("0.9.1-rc1")));
    }

    #[test]
    fn rumprun_json() {
        let mut s = spec(T::Rumprun, H::Hvt);
        s.net = Some(net());
        s.block = Some(PathBuf::from("/b/data.img"));
        s.info.block_mount_point = Some(PathBuf::from("/data"));
        s.env = vec![("A".into(), "1\\x".into()), ("B".into(), "<2>".into())];
        let c = guest_cmdline(&s, &[]).unwrap();
        assert_eq!(
            c,
            r#"{"cmdline":"app --flag","env":"A=1\\x","env":"B=<2>","net":{"if":"ukvmif0","cloner":"True","type":"inet","method":"static","addr":"10.88.0.5","mask":"16","gw":"10.88.0.1"},"blk":{"source":"etfs","path":"/dev/ld0a","fstype":"blk","mountpoint":"/data"}}"#
        );
    }

    #[test]
    fn mirage_and_mewz() {
        let mut s = spec(T::Mirage, H::Spt);
        s.net = Some(net());
        s.args = vec!["--hello=world".into()];
        assert_eq!(
            guest_cmdline(&s, &[]).unwrap(),
            "--ipv4=10.88.0.5/16 --ipv4-gateway=10.88.0.1 --hello=world"
        );
        s.args = vec!["two words".into()];
        assert!(guest_cmdline(&s, &[]).is_err());

        let mut m = spec(T::Mewz, H::Qemu);
        m.net = Some(net());
        m.args = vec![];
        m.info.cmdline = String::new();
        assert_eq!(
            guest_cmdline(&m, &[]).unwrap(),
            "ip=10.88.0.5/16 gateway=10.88.0.1"
        );
    }

    #[test]
    fn rejects_quotes_and_control_characters() {
        for bad in ["a\"b", "a\nb", "a\u{7}"] {
            let mut s = spec(T::Linux, H::Qemu);
            s.args = vec![bad.into()];
            let err = guest_cmdline(&s, &[]).unwrap_err();
            assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
            let mut s = spec(T::Unikraft, H::Qemu);
            s.env = vec![("K".into(), bad.into())];
            assert!(guest_cmdline(&s, &[]).is_err());
        }
        let mut s = spec(T::Linux, H::Qemu);
        s.env = vec![("A=B".into(), "v".into())];
        assert!(guest_cmdline(&s, &[]).is_err());
    }
}
