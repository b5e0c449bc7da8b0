//! crid-vmm's kernel loading: any bytes as the kernel (ELF header and program headers, PVH
//! note, bzImage setup header) and as the initrd, with any command line. Loading may fail but
//! never panic or write outside the guest's memory (vm-memory bounds every access).
#![no_main]

use std::io::Cursor;

use crid_vmm::boot::{self, BootFiles};
use crid_vmm::memory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Option<Vec<u8>>, String)| {
    let (kernel, initrd, cmdline) = input;
    // 4 MiB: kernels land at 1 MiB, so small images fit and large ones must be refused.
    let Ok(mem) = memory::create(4) else { return };
    let Ok(cmdline) = boot::cmdline(&cmdline) else {
        return;
    };
    let mut kernel = Cursor::new(kernel);
    let mut initrd = initrd.map(Cursor::new);
    let _ = boot::load(
        &mem,
        BootFiles {
            kernel: &mut kernel,
            initrd: initrd.as_mut(),
            cmdline: &cmdline,
        },
    );
});
