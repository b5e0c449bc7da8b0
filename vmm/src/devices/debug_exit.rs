//! QEMU's isa-debug-exit device at 0xf4 (`iobase=0xf4,iosize=4`): the guest ends the VM with
//! the byte it writes. QEMU turns it into the status `(N << 1) | 1`; crid-vmm exits with `N`
//! itself, so the launch plan maps the status directly.

const BASE: u16 = 0xf4;
const SIZE: u16 = 4;

/// Whether an `out` to `port` is a write to the exit device.
pub fn claims(port: u16) -> bool {
    (BASE..BASE + SIZE).contains(&port)
}
