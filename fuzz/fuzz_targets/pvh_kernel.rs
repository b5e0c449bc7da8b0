//! crid's own reading of a guest's kernel: the ELF header, program headers and PVH entry note
//! (`sandbox::vm::elf`), then the checks of a kernel crid loads into a prepared QEMU's RAM and
//! the load itself (`sandbox::vm::bootblock`). Any bytes: reading may refuse but never panic,
//! an accepted kernel's entry lies in the guest's RAM above the firmware's 1 MiB, and loading
//! it writes nothing past the end of the RAM.
#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox::vm::bootblock::PvhKernel;
use sandbox::vm::elf::{Elf, pvh_entry};

/// The guest's RAM: 2 MiB, the kernel's being the second.
const RAM: u64 = 2 << 20;

/// The kernel and the RAM: unlinked files (nothing to clean up), the kernel opened again by
/// its `/proc/self/fd` name, as crid opens the image's file by path.
struct Scratch {
    kernel: File,
    kernel_path: PathBuf,
    ram: File,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let kernel = tempfile::tempfile().expect("kernel scratch file");
        let kernel_path = PathBuf::from(format!("/proc/self/fd/{}", kernel.as_raw_fd()));
        let ram = tempfile::tempfile().expect("RAM scratch file");
        Scratch {
            kernel,
            kernel_path,
            ram,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(elf) = Elf::parse(data) {
        elf.program_headers().for_each(drop);
        assert_eq!(elf.pvh_entry(), pvh_entry(data));
    }

    let s = scratch();
    s.kernel.set_len(0).unwrap();
    s.kernel.write_all_at(data, 0).unwrap();
    let Ok(kernel) = PvhKernel::read(&s.kernel_path, RAM) else {
        return;
    };
    assert!((1 << 20..RAM).contains(&u64::from(kernel.entry)));
    s.ram.set_len(RAM).unwrap();
    kernel.load(&s.ram, Path::new("ram"), "").unwrap();
    assert_eq!(s.ram.metadata().unwrap().len(), RAM, "written past the RAM");
});
