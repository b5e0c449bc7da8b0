//! The guest's devices and the port-I/O bus that routes `in`/`out` exits to them.
//!
//! Port map (Firecracker's and QEMU microvm's conventions): COM1 at 0x3f8 (serial), the i8042
//! controller at 0x60/0x64 (its CPU-reset command ends the guest with 0), and QEMU's
//! isa-debug-exit port at 0xf4 (a byte written there ends the VMM with that exit status).
//! Reads of any other port return all ones and writes are ignored, like an empty ISA bus.
//! Memory-mapped: virtio-mmio devices ([`virtio`]) from 0xd0000000, one 4 KiB window each.

pub mod debug_exit;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::io::Write;

use vmm_sys_util::eventfd::EventFd;

pub use serial::Serial;

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest wrote this byte to the debug-exit port.
    Code(u8),
    /// The guest reset the machine (i8042 command 0xfe): a clean shutdown.
    Reset,
    /// KVM reported a shutdown (a triple fault, or the guest's own reset).
    Shutdown,
}

/// An interrupt line: an eventfd bound to a GSI of the in-kernel irqchip, or nothing when the
/// VM has no irqchip (then the guest polls).
#[derive(Debug)]
pub struct IrqLine(pub Option<EventFd>);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// The devices on the port-I/O bus.
pub struct PioBus<W: Write> {
    pub serial: Serial<W>,
    pub i8042: i8042::I8042,
}

impl<W: Write> PioBus<W> {
    /// An `out` of `data` to `port`; returns how the guest ended if this write ended it.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<GuestExit> {
        let first = data.first().copied()?;
        if let Some(offset) = serial::offset(port) {
            self.serial.write(offset, first);
        } else if let Some(offset) = i8042::offset(port) {
            if self.i8042.write(offset, first) {
                return Some(GuestExit::Reset);
            }
        } else if debug_exit::claims(port) {
            return Some(GuestExit::Code(first));
        }
        None
    }

    /// An `in` from `port` into `data`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(offset) = serial::offset(port) {
            if let Some(b) = data.first_mut() {
                *b = self.serial.read(offset);
            }
        } else if let Some(offset) = i8042::offset(port) {
            if let Some(b) = data.first_mut() {
                *b = self.i8042.read(offset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> PioBus<Vec<u8>> {
        PioBus {
            serial: Serial::new(Vec::new(), IrqLine(None)),
            i8042: i8042::I8042::new(),
        }
    }

    #[test]
    fn serial_bytes_reach_the_writer() {
        let mut b = bus();
        for c in b"hi\n" {
            assert_eq!(b.write(0x3f8, &[*c]), None);
        }
        assert_eq!(b.serial.output(), b"hi\n");
        // The line status register says the transmitter is empty, so polling guests go on.
        let mut lsr = [0u8];
        b.read(0x3fd, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn exit_ports() {
        let mut b = bus();
        assert_eq!(b.write(0xf4, &[3]), Some(GuestExit::Code(3)));
        assert_eq!(b.write(0xf4, &[3, 0, 0, 0]), Some(GuestExit::Code(3)));
        assert_eq!(b.write(0x64, &[0x01]), None);
        assert_eq!(b.write(0x64, &[0xfe]), Some(GuestExit::Reset));
        assert_eq!(b.write(0x80, &[0x12]), None);
        assert_eq!(b.write(0xf4, &[]), None);
    }

    #[test]
    fn unknown_ports_read_all_ones() {
        let mut b = bus();
        let mut d = [0u8; 4];
        b.read(0x1234, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut d = [0u8; 1];
        b.read(0x64, &mut d);
        assert_eq!(d, [0]);
    }
}
