//! Solo5 tenders: `solo5-hvt` (KVM) and `solo5-spt` (a seccomp-sandboxed process, no
//! accelerator). `TENDER --mem=MIB [--net:NAME=TAP --net-mac:NAME=MAC] [--block:NAME=FILE]
//! KERNEL CMDLINE`. Device names are those the guest's Solo5 manifest declares: MirageOS
//! uses `service` (network) and `storage` (block), Rumprun `tap` and `rootfs`.

use std::path::Path;

use imagestore::{HypervisorKind, UnikernelType};

use super::{
    Accelerator, Hypervisor, LaunchPlan, VmSpec, cmdline::guest_cmdline, path_arg,
    qemu::check_ifname,
};
use crate::SandboxError;

/// Which Solo5 tender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tender {
    Hvt,
    Spt,
}

/// The Solo5 backend.
pub struct Solo5 {
    pub tender: Tender,
}

/// The Solo5 manifest names (network, block) a guest type uses.
pub fn device_names(t: UnikernelType) -> (&'static str, &'static str) {
    match t {
        UnikernelType::Rumprun => ("tap", "rootfs"),
        _ => ("service", "storage"),
    }
}

impl Hypervisor for Solo5 {
    fn kind(&self) -> HypervisorKind {
        match self.tender {
            Tender::Hvt => HypervisorKind::Hvt,
            Tender::Spt => HypervisorKind::Spt,
        }
    }

    fn binary_name(&self) -> &'static str {
        match self.tender {
            Tender::Hvt => "solo5-hvt",
            Tender::Spt => "solo5-spt",
        }
    }

    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
        let accelerator = match self.tender {
            Tender::Hvt => {
                super::require_kvm(spec)?;
                Accelerator::Kvm
            }
            Tender::Spt => Accelerator::None,
        };
        if spec.initrd.is_some() {
            return Err(SandboxError::UnsupportedGuest {
                reason: "solo5 guests take no initrd".into(),
            });
        }
        let cmdline = guest_cmdline(spec, &[])?;
        let (net_name, blk_name) = device_names(spec.info.unikernel_type);
        let mut a = vec![format!("--mem={}", spec.memory_mib)];
        if let Some(net) = &spec.net {
            check_ifname(&net.tap)?;
            a.push(format!("--net:{net_name}={}", net.tap));
            a.push(format!("--net-mac:{net_name}={}", net.mac));
        }
        if let Some(block) = &spec.block {
            a.push(format!("--block:{blk_name}={}", path_arg(block)?));
        }
        a.push("--".into());
        a.push(path_arg(&spec.kernel)?);
        if !cmdline.is_empty() {
            a.push(cmdline.clone());
        }
        Ok(LaunchPlan::direct(
            self.kind(),
            binary,
            a,
            accelerator,
            cmdline,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{net, spec};
    use super::*;
    use imagestore::UnikernelType as T;
    use std::path::PathBuf;

    #[test]
    fn hvt_mirage() {
        let mut s = spec(T::Mirage, HypervisorKind::Hvt);
        s.net = Some(net());
        s.block = Some(PathBuf::from("/b/data.img"));
        let p = Solo5 {
            tender: Tender::Hvt,
        }
        .plan(&s, Path::new("/usr/bin/solo5-hvt"))
        .unwrap();
        assert_eq!(
            p.args,
            [
                "--mem=128",
                "--net:service=crtap0",
                "--net-mac:service=0a:58:0a:58:00:05",
                "--block:storage=/b/data.img",
                "--",
                "/layers/top/unikernel/kernel",
                "--ipv4=10.88.0.5/16 --ipv4-gateway=10.88.0.1 app --flag",
            ]
        );
        assert_eq!(p.accelerator, Accelerator::Kvm);
    }

    #[test]
    fn spt_rumprun_without_kvm() {
        let mut s = spec(T::Rumprun, HypervisorKind::Spt);
        s.accelerator = Accelerator::None;
        s.net = Some(net());
        let p = Solo5 {
            tender: Tender::Spt,
        }
        .plan(&s, Path::new("/usr/bin/solo5-spt"))
        .unwrap();
        assert_eq!(p.args[1], "--net:tap=crtap0");
        assert_eq!(p.args[2], "--net-mac:tap=0a:58:0a:58:00:05");
        assert!(
            p.args
                .last()
                .unwrap()
                .starts_with("{\"cmdline\":\"app --flag\"")
        );
        assert_eq!(p.accelerator, Accelerator::None);
        // hvt needs KVM.
        let err = Solo5 {
            tender: Tender::Hvt,
        }
        .plan(&s, Path::new("/x"))
        .unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
    }
}
