//! Firecracker: `firecracker --no-api --config-file <run_dir>/firecracker.json`. KVM only; the
//! serial console (ttyS0) is on the VMM's stdout. The guest's `reboot` ends the VMM (the kernel
//! gets `reboot=k`).

use std::path::Path;

use imagestore::HypervisorKind;
use serde_json::json;

use super::{
    Hypervisor, LaunchPlan, PlanFile, VmSpec, cmdline::guest_cmdline, path_arg, qemu::check_ifname,
    require_kvm,
};
use crate::error::{SandboxError, invalid};

pub const BINARY: &str = "firecracker";
pub const CONFIG_FILE: &str = "firecracker.json";

/// The Firecracker backend.
pub struct Firecracker;

impl Hypervisor for Firecracker {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Firecracker
    }

    fn binary_name(&self) -> &'static str {
        BINARY
    }

    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
        require_kvm(spec)?;
        let cmdline = guest_cmdline(spec, &["reboot=k", "pci=off"])?;
        let mut boot = json!({
            "kernel_image_path": path_arg(&spec.kernel)?,
            "boot_args": cmdline,
        });
        if let Some(initrd) = &spec.initrd {
            boot["initrd_path"] = json!(path_arg(initrd)?);
        }
        let mut config = json!({
            "boot-source": boot,
            "machine-config": {
                "vcpu_count": spec.vcpus,
                "mem_size_mib": spec.memory_mib,
                "smt": false,
            },
            "drives": [],
            "network-interfaces": [],
        });
        if let Some(block) = &spec.block {
            config["drives"] = json!([{
                "drive_id": "rootfs",
                "path_on_host": path_arg(block)?,
                "is_root_device": spec.initrd.is_none(),
                "is_read_only": false,
            }]);
        }
        if let Some(net) = &spec.net {
            check_ifname(&net.tap)?;
            config["network-interfaces"] = json!([{
                "iface_id": "eth0",
                "guest_mac": net.mac.to_string(),
                "host_dev_name": net.tap,
            }]);
        }
        let path = spec.run_dir.join(CONFIG_FILE);
        let contents = serde_json::to_string_pretty(&config)
            .map_err(|e| invalid(format!("firecracker config: {e}")))?;
        let args = vec![
            "--no-api".into(),
            "--config-file".into(),
            path_arg(&path)?,
            "--level".into(),
            "Warning".into(),
        ];
        Ok(LaunchPlan {
            files: vec![PlanFile { path, contents }],
            ..LaunchPlan::direct(
                HypervisorKind::Firecracker,
                binary,
                args,
                spec.accelerator,
                cmdline,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{net, spec};
    use super::super::{Accelerator, GuestNet};
    use super::*;
    use imagestore::UnikernelType as T;
    use std::path::PathBuf;

    #[test]
    fn config_file_for_linux_with_net_block_initrd() {
        let mut s = spec(T::Linux, HypervisorKind::Firecracker);
        s.net = Some(net());
        s.initrd = Some(PathBuf::from("/l/initrd"));
        s.block = Some(PathBuf::from("/b/disk.img"));
        let p = Firecracker
            .plan(&s, Path::new("/usr/bin/firecracker"))
            .unwrap();
        assert_eq!(
            p.args,
            [
                "--no-api",
                "--config-file",
                "/run/crid/vm/c1/firecracker.json",
                "--level",
                "Warning"
            ]
        );
        assert_eq!(p.files.len(), 1);
        assert_eq!(
            p.files[0].path,
            PathBuf::from("/run/crid/vm/c1/firecracker.json")
        );
        let v: serde_json::Value = serde_json::from_str(&p.files[0].contents).unwrap();
        assert_eq!(
            v["boot-source"]["kernel_image_path"],
            "/layers/top/unikernel/kernel"
        );
        assert_eq!(v["boot-source"]["initrd_path"], "/l/initrd");
        assert_eq!(
            v["boot-source"]["boot_args"],
            "console=ttyS0 panic=-1 reboot=k pci=off \
             ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off -- app --flag"
        );
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["machine-config"]["mem_size_mib"], 128);
        assert_eq!(v["drives"][0]["path_on_host"], "/b/disk.img");
        assert_eq!(v["drives"][0]["is_root_device"], false);
        assert_eq!(v["network-interfaces"][0]["host_dev_name"], "crtap0");
        assert_eq!(v["network-interfaces"][0]["guest_mac"], "0a:58:0a:58:00:05");
    }

    #[test]
    fn unikraft_without_net_and_tcg_refused() {
        let s = spec(T::Unikraft, HypervisorKind::Firecracker);
        let p = Firecracker.plan(&s, Path::new("/fc")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.files[0].contents).unwrap();
        assert_eq!(v["boot-source"]["boot_args"], "kernel -- app --flag");
        assert_eq!(v["network-interfaces"], serde_json::json!([]));
        let mut t = s.clone();
        t.accelerator = Accelerator::Tcg;
        let err = Firecracker.plan(&t, Path::new("/fc")).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        let _ = GuestNet::netmask;
    }
}
