//! Choosing the accelerator for a guest: `vm.accelerator = "auto" | "kvm" | "tcg"`.
//!
//! KVM is the point of running unikernels, but hosts differ. A software KVM (the PVM
//! hypervisor, `/sys/module/kvm_pvm`) runs tiny guests that use no SSE, while a Linux kernel
//! never finishes booting under it. So `auto` picks KVM when `/dev/kvm` opens and answers
//! `KVM_GET_API_VERSION` with 12, except for `linux` guests on a PVM host (TCG). When KVM is
//! unusable `auto` falls back to TCG for QEMU and fails for the other hypervisors. Every TCG
//! decision is logged as a warning and its reason returned for Status/ContainerStatus verbose
//! info; Solo5-spt needs no accelerator.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use imagestore::{HypervisorKind, UnikernelType};
use serde::{Deserialize, Serialize};

use crate::error::{SandboxError, invalid};

/// The configured policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorMode {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AcceleratorMode {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err(invalid(format!(
                "vm.accelerator must be auto, kvm or tcg, not {s:?}"
            ))),
        }
    }
}

/// What runs a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    /// QEMU's software emulation: slow, reported loudly.
    Tcg,
    /// No accelerator (Solo5-spt runs the guest as a sandboxed process).
    None,
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
            Accelerator::None => "none",
        })
    }
}

/// The decision and why, for verbose status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelDecision {
    pub accelerator: Accelerator,
    pub reason: String,
}

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmProbe {
    /// `/dev/kvm` opened read-write and reported API version 12.
    pub usable: bool,
    /// The KVM is the software PVM hypervisor.
    pub pvm: bool,
    pub detail: String,
}

/// Probes `/dev/kvm` and `/sys/module/kvm_pvm`.
pub fn probe_host() -> KvmProbe {
    probe(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// Probes a KVM device node and a sysfs module directory (paths injectable for tests).
pub fn probe(dev: &Path, sys_module: &Path) -> KvmProbe {
    let pvm = sys_module.join("kvm_pvm").exists();
    let flavour = if pvm {
        " (software PVM hypervisor)"
    } else {
        ""
    };
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Err(e) => KvmProbe {
            usable: false,
            pvm,
            detail: format!("cannot open {}: {e}", dev.display()),
        },
        Ok(f) => match super::sys::kvm_api_version(&f) {
            Ok(12) => KvmProbe {
                usable: true,
                pvm,
                detail: format!("{} usable, API version 12{flavour}", dev.display()),
            },
            Ok(v) => KvmProbe {
                usable: false,
                pvm,
                detail: format!("{} reports API version {v}, not 12", dev.display()),
            },
            Err(e) => KvmProbe {
                usable: false,
                pvm,
                detail: format!("{} is not a KVM device: {e}", dev.display()),
            },
        },
    }
}

/// Decides the accelerator for one guest. Errors are `FailedPrecondition`.
pub fn decide(
    mode: AcceleratorMode,
    guest: UnikernelType,
    hypervisor: HypervisorKind,
    host: &KvmProbe,
) -> Result<AccelDecision, SandboxError> {
    if hypervisor == HypervisorKind::Spt {
        return Ok(AccelDecision {
            accelerator: Accelerator::None,
            reason: "solo5-spt runs the guest as a seccomp-sandboxed process".into(),
        });
    }
    let qemu = hypervisor == HypervisorKind::Qemu;
    let kvm = |reason: String| AccelDecision {
        accelerator: Accelerator::Kvm,
        reason,
    };
    let tcg = |reason: String| {
        tracing::warn!(reason = %reason, "guest runs under TCG software emulation, not KVM");
        AccelDecision {
            accelerator: Accelerator::Tcg,
            reason,
        }
    };
    let no_kvm = |reason: String| SandboxError::Accelerator {
        accelerator: "kvm".into(),
        reason,
    };
    match mode {
        AcceleratorMode::Kvm if host.usable => Ok(kvm(format!("configured: {}", host.detail))),
        AcceleratorMode::Kvm => Err(no_kvm(host.detail.clone())),
        AcceleratorMode::Tcg if qemu => Ok(tcg("configured vm.accelerator = \"tcg\"".into())),
        AcceleratorMode::Tcg => Err(SandboxError::Accelerator {
            accelerator: "tcg".into(),
            reason: format!("only qemu emulates; {} needs KVM", hypervisor.as_str()),
        }),
        AcceleratorMode::Auto => {
            if !host.usable {
                if qemu {
                    Ok(tcg(format!("no usable KVM: {}", host.detail)))
                } else {
                    Err(no_kvm(host.detail.clone()))
                }
            } else if host.pvm && guest == UnikernelType::Linux && qemu {
                Ok(tcg(
                    "KVM here is the software PVM hypervisor, which does not boot Linux guests"
                        .into(),
                ))
            } else {
                Ok(kvm(host.detail.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HypervisorKind as H;
    use UnikernelType as T;

    fn host(usable: bool, pvm: bool) -> KvmProbe {
        KvmProbe {
            usable,
            pvm,
            detail: "test".into(),
        }
    }

    #[test]
    fn auto_decisions() {
        let d = |t, h, p: &KvmProbe| decide(AcceleratorMode::Auto, t, h, p);
        assert_eq!(
            d(T::Unikraft, H::Qemu, &host(true, true))
                .unwrap()
                .accelerator,
            Accelerator::Kvm
        );
        assert_eq!(
            d(T::Linux, H::Qemu, &host(true, false))
                .unwrap()
                .accelerator,
            Accelerator::Kvm
        );
        let pvm_linux = d(T::Linux, H::Qemu, &host(true, true)).unwrap();
        assert_eq!(pvm_linux.accelerator, Accelerator::Tcg);
        assert!(pvm_linux.reason.contains("PVM"));
        assert_eq!(
            d(T::Unikraft, H::Qemu, &host(false, false))
                .unwrap()
                .accelerator,
            Accelerator::Tcg
        );
        let err = d(T::Linux, H::Firecracker, &host(false, false)).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert_eq!(
            d(T::Rumprun, H::Spt, &host(false, false))
                .unwrap()
                .accelerator,
            Accelerator::None
        );
    }

    #[test]
    fn forced_modes() {
        assert!(decide(AcceleratorMode::Kvm, T::Linux, H::Qemu, &host(false, false)).is_err());
        assert_eq!(
            decide(AcceleratorMode::Kvm, T::Linux, H::Qemu, &host(true, true))
                .unwrap()
                .accelerator,
            Accelerator::Kvm
        );
        assert_eq!(
            decide(AcceleratorMode::Tcg, T::Mirage, H::Qemu, &host(true, false))
                .unwrap()
                .accelerator,
            Accelerator::Tcg
        );
        assert!(decide(AcceleratorMode::Tcg, T::Mirage, H::Hvt, &host(true, false)).is_err());
        assert_eq!(
            "tcg".parse::<AcceleratorMode>().unwrap(),
            AcceleratorMode::Tcg
        );
        assert!("fast".parse::<AcceleratorMode>().is_err());
    }

    #[test]
    fn probe_of_missing_and_non_kvm_nodes() {
        let p = probe(Path::new("/nonexistent/kvm"), Path::new("/nonexistent"));
        assert!(!p.usable && !p.pvm);
        // /dev/null opens but is no KVM device: the ioctl fails.
        let p = probe(Path::new("/dev/null"), Path::new("/nonexistent"));
        assert!(!p.usable, "{p:?}");
    }

    #[test]
    fn probe_of_this_host() {
        // Real /dev/kvm where present: must then be usable (CI hosts have it).
        if Path::new("/dev/kvm").exists() {
            let p = probe_host();
            assert!(p.usable, "{p:?}");
        }
    }
}
