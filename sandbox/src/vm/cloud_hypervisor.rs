//! Cloud Hypervisor: everything on the command line (`--kernel --cmdline --cpus --memory
//! --serial tty --console off`, `--net`, `--disk`, `--seccomp true`). KVM only.

use std::path::Path;

use imagestore::HypervisorKind;

use super::{
    Hypervisor, LaunchPlan, VmSpec, cmdline::guest_cmdline, path_arg, qemu::check_ifname,
    require_kvm,
};
use crate::SandboxError;

pub const BINARY: &str = "cloud-hypervisor";

/// The Cloud Hypervisor backend.
pub struct CloudHypervisor;

impl Hypervisor for CloudHypervisor {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::CloudHypervisor
    }

    fn binary_name(&self) -> &'static str {
        BINARY
    }

    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
        require_kvm(spec)?;
        let cmdline = guest_cmdline(spec, &[])?;
        let mut a: Vec<String> = vec![
            "--kernel".into(),
            path_arg(&spec.kernel)?,
            "--cmdline".into(),
            cmdline.clone(),
            "--cpus".into(),
            format!("boot={}", spec.vcpus),
            "--memory".into(),
            format!("size={}M", spec.memory_mib),
            "--serial".into(),
            "tty".into(),
            "--console".into(),
            "off".into(),
            "--seccomp".into(),
            "true".into(),
        ];
        if let Some(initrd) = &spec.initrd {
            a.push("--initramfs".into());
            a.push(path_arg(initrd)?);
        }
        if let Some(block) = &spec.block {
            a.push("--disk".into());
            a.push(format!("path={}", path_arg(block)?));
        }
        if let Some(net) = &spec.net {
            check_ifname(&net.tap)?;
            a.push("--net".into());
            a.push(format!("tap={},mac={}", net.tap, net.mac));
        }
        Ok(LaunchPlan::direct(
            HypervisorKind::CloudHypervisor,
            binary,
            a,
            spec.accelerator,
            cmdline,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExitMapping;
    use super::super::testutil::{net, spec};
    use super::*;
    use imagestore::UnikernelType as T;
    use std::path::PathBuf;

    #[test]
    fn linux_argv() {
        let mut s = spec(T::Linux, HypervisorKind::CloudHypervisor);
        s.net = Some(net());
        s.block = Some(PathBuf::from("/b/root.img"));
        let p = CloudHypervisor
            .plan(&s, Path::new("/usr/bin/cloud-hypervisor"))
            .unwrap();
        assert_eq!(
            p.args,
            [
                "--kernel",
                "/layers/top/unikernel/kernel",
                "--cmdline",
                "console=ttyS0 panic=-1 root=/dev/vda rw \
                 ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off -- app --flag",
                "--cpus",
                "boot=2",
                "--memory",
                "size=128M",
                "--serial",
                "tty",
                "--console",
                "off",
                "--seccomp",
                "true",
                "--disk",
                "path=/b/root.img",
                "--net",
                "tap=crtap0,mac=0a:58:0a:58:00:05",
            ]
        );
        assert_eq!(p.exit_mapping, ExitMapping::Direct);
    }
}
