//! crid's PCI firmware, the PCI shim: a 64 KiB ROM (`sandbox/pcishim/shim.c`, freestanding C
//! built with `gcc -m32` by `build.rs` and embedded here) that QEMU's `pc` machine boots as its
//! `-bios` for guests with virtio-PCI drivers, instead of SeaBIOS or qboot (see [`super::qemu`]).
//!
//! QEMU gets `-bios SHIM -kernel KERNEL` (and the guest's `-initrd`, if any): QEMU's ELF loader
//! places the guest's PVH kernel in RAM and puts its entry, command line and initrd in fw_cfg.
//! From the reset vector the firmware sets up the chipset as qboot does, bus 0 as SeaBIOS does
//! (BARs, PIIX3 interrupt routing, interrupt lines, decoding and bus mastering on), runs QEMU's
//! ACPI table loader, builds the MP table and enters the kernel with a PVH start info. It does
//! nothing else: this host's PVM emulates firmware code instruction by instruction, so every
//! instruction and port I/O counts, and it never opens the BIOS shadow area (qboot's PAM
//! writes each cost a round of KVM memory-slot updates).
//!
//! crid writes the embedded image once at start-up ([`install`], into `<root>/vm/`), where
//! QEMU opens it before it chroots; `vm.pci_shim = false` turns it off (SeaBIOS again).

use std::path::Path;

use crate::SandboxError;

/// The firmware's ROM image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pcishim.rom"));

/// Its file name in crid's root directory (`<root>/vm/`).
pub const FILE_NAME: &str = "pci-shim.rom";

/// Writes the firmware to `path` unless the file already holds this build's image. The new
/// file replaces the old one by rename, so a QEMU starting meanwhile reads one whole image.
pub fn install(path: &Path) -> Result<(), SandboxError> {
    if std::fs::read(path).is_ok_and(|old| old == IMAGE) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    }
    let tmp = path.with_extension("rom.tmp");
    std::fs::write(&tmp, IMAGE).map_err(|e| SandboxError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SandboxError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_firmware_is_a_rom_with_a_reset_vector() {
        // QEMU maps a -bios of a multiple of 64 KiB; the CPU starts 16 bytes below its end,
        // where a far jump (0xea) to segment 0xf000 takes it into the ROM's alias under 1 MiB.
        assert_eq!(IMAGE.len(), 64 * 1024);
        let reset = &IMAGE[IMAGE.len() - 16..];
        assert_eq!(reset[0], 0xea, "{reset:02x?}");
        assert_eq!(&reset[3..5], &0xf000u16.to_le_bytes(), "{reset:02x?}");
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
        assert!(!path.with_extension("rom.tmp").exists());
    }
}
