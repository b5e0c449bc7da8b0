//! crid's PCI set-up shim: a freestanding 32-bit PVH kernel (`sandbox/pcishim/shim.c`, built
//! with `gcc -m32` by `build.rs` and embedded here) that lets guests with virtio-PCI drivers
//! boot on QEMU's `pc` machine with qboot instead of SeaBIOS (see [`super::qemu`]).
//!
//! QEMU gets `-bios qboot.rom -kernel SHIM -device loader,file=KERNEL -fw_cfg
//! name=opt/io.crid/pvh-entry,string=ENTRY` (and the guest's `-initrd`, if any): QEMU's ELF
//! loader places the guest's kernel in RAM as it does a `-kernel`, crid reads the kernel's PVH
//! entry from its note ([`super::qemu::kernel_pvh_entry`]), and qboot boots
//! the shim, which does SeaBIOS's PCI set-up on bus 0 (BARs, PIIX3 interrupt routing,
//! interrupt lines, decoding and bus mastering on) and enters the kernel with the original
//! command line, memory map (the shim's own pages marked reserved) and initrd. The shim copies
//! nothing: this host's PVM emulates paging-off code instruction by instruction, and a
//! guest-side copy of a 4 MiB kernel took 1.4–4.3 s.
//!
//! crid writes the embedded image once at start-up ([`install`], into `<root>/vm/`), where
//! QEMU opens it before it chroots; `vm.pci_shim = false` turns it off (SeaBIOS again).

use std::path::Path;

use crate::SandboxError;

/// The shim's ELF image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pcishim.elf"));

/// Its file name in crid's root directory (`<root>/vm/`).
pub const FILE_NAME: &str = "pci-shim.elf";

/// The fw_cfg file (`-fw_cfg name=...,string=ENTRY`, decimal) the shim reads the kernel's PVH
/// entry from (`ENTRY_FILE` in `pcishim/shim.c`).
pub const ENTRY_FW_CFG: &str = "opt/io.crid/pvh-entry";

/// Writes the shim to `path` unless the file already holds this build's image. The new file
/// replaces the old one by rename, so a QEMU starting meanwhile reads one whole image.
pub fn install(path: &Path) -> Result<(), SandboxError> {
    if std::fs::read(path).is_ok_and(|old| old == IMAGE) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    }
    let tmp = path.with_extension("elf.tmp");
    std::fs::write(&tmp, IMAGE).map_err(|e| SandboxError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SandboxError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_shim_is_a_pvh_kernel() {
        assert!(super::super::qemu::has_pvh_note(IMAGE));
    }

    #[test]
    fn install_writes_once_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm").join(FILE_NAME);
        install(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), IMAGE);
        std::fs::write(&path, b"stale").unwrap();
        install(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), IMAGE);
        assert!(!path.with_extension("elf.tmp").exists());
    }
}
