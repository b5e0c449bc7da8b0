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

/// The bytes the guest wrote to the serial data port that KVM queued instead of leaving
/// `KVM_RUN` for each (coalesced I/O, see the VMM's `vm` module), oldest first.
pub trait QueuedWrites: Send {
    /// The oldest queued byte.
    fn pop(&mut self) -> Option<u8>;
    /// Has KVM stop queueing: every later write leaves `KVM_RUN` again.
    fn stop(&mut self) -> std::io::Result<()>;
}

/// The devices on the port-I/O bus.
///
/// With `queued`, the serial data port's writes reach the bus late, at the next exit to the
/// VMM: every access (and [`PioBus::catch_up`]) first hands the UART the bytes queued before
/// it, so the device sees the guest's accesses in their order. A guest that reads the line
/// status before each byte (Linux's console, Unikraft, the test guest) exits once per byte
/// instead of twice. One that enables the transmitter-empty interrupt waits for that interrupt
/// instead, which the UART raises only once it has the byte, so the queue stops then.
pub struct PioBus<W: Write> {
    pub serial: Serial<W>,
    pub i8042: i8042::I8042,
    pub queued: Option<Box<dyn QueuedWrites>>,
}

impl<W: Write> PioBus<W> {
    /// An `out` of `data` to `port`; returns how the guest ended if this write ended it.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<GuestExit> {
        self.catch_up();
        let first = data.first().copied()?;
        if let Some(offset) = serial::offset(port) {
            self.serial.write(offset, first);
            if offset == 1 && self.serial.thr_interrupt_enabled() {
                self.stop_queueing();
            }
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
        self.catch_up();
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

    /// Hands the UART the bytes queued so far.
    pub fn catch_up(&mut self) {
        if let Some(queued) = &mut self.queued {
            while let Some(b) = queued.pop() {
                self.serial.write(0, b);
            }
        }
    }

    /// Ends the queue, after the bytes already in it. Should KVM refuse, the queue stays and
    /// the guest's bytes still arrive at its next exit.
    fn stop_queueing(&mut self) {
        if let Some(mut queued) = self.queued.take() {
            if queued.stop().is_err() {
                self.queued = Some(queued);
                return;
            }
            while let Some(b) = queued.pop() {
                self.serial.write(0, b);
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
            queued: None,
        }
    }

    /// A queue the test fills by hand; `stopped` tells whether the bus stopped it.
    struct Queue {
        bytes: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>,
        stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl QueuedWrites for Queue {
        fn pop(&mut self) -> Option<u8> {
            self.bytes.lock().unwrap().pop_front()
        }
        fn stop(&mut self) -> std::io::Result<()> {
            self.stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn queued_bytes_reach_the_uart_before_the_next_access_and_stop_with_the_thr_interrupt() {
        let bytes = std::sync::Arc::default();
        let stopped = std::sync::Arc::default();
        let mut b = bus();
        b.queued = Some(Box::new(Queue {
            bytes: std::sync::Arc::clone(&bytes),
            stopped: std::sync::Arc::clone(&stopped),
        }));
        let queue = |s: &[u8]| bytes.lock().unwrap().extend(s.iter().copied());
        queue(b"h");
        let mut lsr = [0u8];
        b.read(0x3fd, &mut lsr);
        assert_eq!(b.serial.output(), b"h", "read after the queued write");
        queue(b"i");
        assert_eq!(b.write(0x3f8, b"!"), None);
        assert_eq!(b.serial.output(), b"hi!", "in the guest's order");
        queue(b"\n");
        b.catch_up();
        assert_eq!(b.serial.output(), b"hi!\n");
        // Enabling the receive interrupt keeps the queue; the transmitter's stops it, after
        // what it holds.
        queue(b"a");
        assert_eq!(b.write(0x3f9, &[0x01]), None);
        assert!(b.queued.is_some());
        queue(b"b");
        assert_eq!(b.write(0x3f9, &[0x03]), None);
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(b.queued.is_none());
        assert_eq!(b.serial.output(), b"hi!\nab");
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
