//! The i8042 keyboard controller, only for its CPU-reset command (`outb 0xfe, 0x64`), the way
//! Linux guests (`reboot=k`) and Firecracker guests shut down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const DATA_PORT: u16 = 0x60;
const COMMAND_PORT: u16 = 0x64;

/// The register offset of `port`, if it is one of the controller's.
pub fn offset(port: u16) -> Option<u8> {
    match port {
        DATA_PORT => Some(0),
        COMMAND_PORT => Some((COMMAND_PORT - DATA_PORT) as u8),
        _ => None,
    }
}

#[derive(Clone, Default)]
struct ResetFlag(Arc<AtomicBool>);

impl vm_superio::Trigger for ResetFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

pub struct I8042 {
    device: vm_superio::I8042Device<ResetFlag>,
    reset: ResetFlag,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    pub fn new() -> Self {
        let reset = ResetFlag::default();
        I8042 {
            device: vm_superio::I8042Device::new(reset.clone()),
            reset,
        }
    }

    /// Writes a register; true when the guest asked for a CPU reset.
    pub fn write(&mut self, offset: u8, value: u8) -> bool {
        let Ok(()) = self.device.write(offset, value);
        self.reset.0.swap(false, Ordering::Relaxed)
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }
}
