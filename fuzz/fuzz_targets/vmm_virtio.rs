//! crid-vmm's virtio-net over virtio-mmio as the guest drives it: any register accesses on
//! the MMIO window (set-up, queue addresses, notifications) over guest memory filled with any
//! bytes (so every descriptor table, ring and chain is the fuzzer's), and any frames arriving
//! on the tap. Nothing panics, and every guest-memory access stays in bounds (vm-memory checks
//! each one).
#![no_main]

use std::fs::File;
use std::io::Write;

use arbitrary::Arbitrary;
use crid_vmm::devices::IrqLine;
use crid_vmm::devices::virtio::MmioTransport;
use crid_vmm::devices::virtio::net::Net;
use crid_vmm::memory::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u16, value: u32 },
    Read { offset: u16, len: u8 },
    Frame(Vec<u8>),
    Receive,
}

#[derive(Arbitrary, Debug)]
struct Input {
    memory: Vec<u8>,
    ops: Vec<Op>,
}

const MEM: usize = 64 * 1024;

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let fill = &input.memory[..input.memory.len().min(MEM)];
    mem.write_slice(fill, GuestAddress(0)).unwrap();
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let (tap, peer) = (
        File::from(std::os::fd::OwnedFd::from(a)),
        File::from(std::os::fd::OwnedFd::from(b)),
    );
    let net = Net::new(tap, [2, 0, 0, 0, 0, 1], mem.clone()).unwrap();
    let mut t = MmioTransport::new(net, IrqLine(None));
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Write { offset, value } => t.write(u64::from(offset % 0x200), &value.to_le_bytes()),
            Op::Read { offset, len } => {
                let mut d = vec![0u8; usize::from(len % 8) + 1];
                t.read(u64::from(offset % 0x200), &mut d);
            }
            Op::Frame(f) => {
                let _ = (&peer).write(&f[..f.len().min(4096)]);
            }
            Op::Receive => {
                if t.active() {
                    let tr = &mut t;
                    if let Some(q) = tr.queues.get_mut(0) {
                        if q.ready() {
                            let _ = tr.device.receive(q);
                        }
                    }
                }
            }
        }
    }
});
