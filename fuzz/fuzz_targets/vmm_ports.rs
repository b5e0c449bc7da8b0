//! crid-vmm's port-I/O bus as the guest drives it: any sequence of `in`/`out` of 1, 2 or 4
//! bytes on any port. Nothing panics; only the debug-exit port and the i8042 reset command end
//! the guest; serial output is exactly the data-register writes outside loopback and DLAB mode.
//! Writes to the serial data port may also come queued, as KVM's coalesced I/O delivers them,
//! between the other accesses.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use crid_vmm::GuestExit;
use crid_vmm::devices::{IrqLine, PioBus, QueuedWrites, Serial, i8042};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Out { port: u16, data: Vec<u8> },
    In { port: u16, len: u8 },
    /// A write to the data port that KVM queued instead of exiting.
    Queued(u8),
}

/// KVM's ring as the bus sees it; stopping it always succeeds.
struct Ring(Arc<Mutex<VecDeque<u8>>>);

impl QueuedWrites for Ring {
    fn pop(&mut self) -> Option<u8> {
        self.0.lock().ok()?.pop_front()
    }
    fn stop(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let ring = Arc::new(Mutex::new(VecDeque::new()));
    let mut bus = PioBus {
        serial: Serial::new(std::io::sink(), IrqLine(None)),
        i8042: i8042::I8042::new(),
        queued: Some(Box::new(Ring(Arc::clone(&ring)))),
    };
    for op in ops.into_iter().take(4096) {
        match op {
            // Once the bus stopped the queue, KVM delivers every write as an exit again.
            Op::Queued(byte) if bus.queued.is_some() => {
                ring.lock().expect("not poisoned").push_back(byte);
            }
            Op::Queued(byte) => {
                assert_eq!(bus.write(0x3f8, &[byte]), None);
            }
            Op::Out { port, data } => {
                let data = &data[..data.len().min(4)];
                match bus.write(port, data) {
                    None => {}
                    Some(GuestExit::Code(c)) => {
                        assert!((0xf4..0xf8).contains(&port));
                        assert_eq!(Some(&c), data.first());
                    }
                    Some(GuestExit::Reset) => assert_eq!((port, data[0]), (0x64, 0xfe)),
                    Some(GuestExit::Shutdown) => panic!("ports never report a triple fault"),
                }
            }
            Op::In { port, len } => {
                let mut data = vec![0u8; usize::from(len % 4) + 1];
                bus.read(port, &mut data);
            }
        }
    }
    bus.catch_up();
    assert!(ring.lock().expect("not poisoned").is_empty());
});
