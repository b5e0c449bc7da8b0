//! crid-vmm's port-I/O bus as the guest drives it: any sequence of `in`/`out` of 1, 2 or 4
//! bytes on any port. Nothing panics; only the debug-exit port and the i8042 reset command end
//! the guest; serial output is exactly the data-register writes outside loopback and DLAB mode.
#![no_main]

use arbitrary::Arbitrary;
use crid_vmm::GuestExit;
use crid_vmm::devices::{IrqLine, PioBus, Serial, i8042};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Out { port: u16, data: Vec<u8> },
    In { port: u16, len: u8 },
}

fuzz_target!(|ops: Vec<Op>| {
    let mut bus = PioBus {
        serial: Serial::new(std::io::sink(), IrqLine(None)),
        i8042: i8042::I8042::new(),
    };
    for op in ops.into_iter().take(4096) {
        match op {
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
});
