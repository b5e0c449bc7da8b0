//! COM1 (0x3f8, IRQ 4), a 16550A from `vm-superio`, whose transmitted bytes go to the VMM's
//! stdout — crid's container monitor turns that pipe into the CRI log.

use std::io::Write;

use super::IrqLine;

const BASE: u16 = 0x3f8;
const PORTS: u16 = 8;
/// The legacy interrupt line of COM1.
pub const IRQ: u32 = 4;

/// The register offset of `port`, if it is one of COM1's.
pub fn offset(port: u16) -> Option<u8> {
    (BASE..BASE + PORTS)
        .contains(&port)
        .then(|| (port - BASE) as u8)
}

pub struct Serial<W: Write> {
    device: vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, W>,
}

impl<W: Write> Serial<W> {
    pub fn new(out: W, irq: IrqLine) -> Self {
        Serial {
            device: vm_superio::Serial::new(irq, out),
        }
    }

    /// A register write. Output errors (the log pipe closed) are dropped: the guest cannot act
    /// on them, and the VMM keeps running until the guest or crid ends it.
    pub fn write(&mut self, offset: u8, value: u8) {
        let _ = self.device.write(offset, value);
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }

    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.device.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_an_empty_receiver() {
        let mut s = Serial::new(Vec::new(), IrqLine(None));
        // LSR bit 0 (data ready) stays clear: the guest gets no console input.
        assert_eq!(s.read(5) & 1, 0);
        assert_eq!(offset(0x3f8), Some(0));
        assert_eq!(offset(0x3ff), Some(7));
        assert_eq!(offset(0x400), None);
    }
}
