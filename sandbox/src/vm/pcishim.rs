//! crid's PCI set-up shim: a freestanding 32-bit PVH kernel (`sandbox/pcishim/`, C built with
//! `gcc -m32` by `build.rs` and embedded here) that lets guests with virtio-PCI drivers boot on
//! QEMU's `pc` machine with qboot instead of SeaBIOS (see [`super::qemu`]).
//!
//! QEMU gets `-bios qboot.rom -kernel SHIM -initrd KERNEL`: qboot loads the shim, which QEMU
//! placed in RAM, and hands it the guest's kernel as its PVH module. The shim does SeaBIOS's
//! PCI set-up on bus 0 (BARs, PIIX3 interrupt routing, interrupt lines, decoding and bus
//! mastering on), checks the kernel (an untrusted ELF: every header bounded by the module and
//! guest RAM, no segment over the shim or the module; `pcishim/elf.c`, tested on the host by
//! `tests/pcishim_elf.rs`), loads its segments, reads the guest's own initrd from the fw_cfg
//! file [`INITRD_FW_CFG`] if QEMU has one (its single `-initrd` is the kernel) and enters the
//! kernel's PVH entry with the original command line and memory map (the shim's own pages
//! marked reserved) and that initrd as its module.
//!
//! crid writes the embedded image once at start-up ([`install`], into `<root>/vm/`), where
//! QEMU opens it before it chroots; `vm.pci_shim = false` turns it off (SeaBIOS again).

use std::path::Path;

use crate::SandboxError;

/// The shim's ELF image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pcishim.elf"));

/// Its file name in crid's root directory (`<root>/vm/`).
pub const FILE_NAME: &str = "pci-shim.elf";

/// The fw_cfg file (`-fw_cfg name=...,file=INITRD`) the shim reads the guest's initrd from
/// (`INITRD_FILE` in `pcishim/shim.c`).
pub const INITRD_FW_CFG: &str = "opt/io.crid/initrd";

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
