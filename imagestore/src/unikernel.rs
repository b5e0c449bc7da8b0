//! Recognising unikernel artifacts: urunc's `com.urunc.unikernel.*` keys, read from manifest
//! annotations, image config labels, or `urunc.json` at the rootfs root.
//!
//! Types only for now; detection and validation are filled in with the image service.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The annotation/label key prefix urunc uses.
pub const KEY_PREFIX: &str = "com.urunc.unikernel.";

/// The kind of guest, which decides its kernel command line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnikernelType {
    Linux,
    Unikraft,
    Rumprun,
    Mirage,
    Mewz,
}

/// The monitor that boots the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    Qemu,
    Firecracker,
    CloudHypervisor,
    Hvt,
    Spt,
}

/// Where the unikernel keys were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnikernelSource {
    ManifestAnnotations,
    ConfigLabels,
    UruncJson,
}

/// A validated unikernel description. Paths are relative to the image rootfs and contain no
/// `..` component; `cmdline` contains no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnikernelInfo {
    pub unikernel_type: UnikernelType,
    pub hypervisor: HypervisorKind,
    /// Kernel image inside the rootfs.
    pub binary: PathBuf,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    /// Block device image inside the rootfs.
    pub block: Option<PathBuf>,
    /// Where the guest mounts the block device.
    pub block_mount_point: Option<PathBuf>,
    pub version: Option<String>,
    pub source: UnikernelSource,
}
