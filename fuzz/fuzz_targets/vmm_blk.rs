//! crid-vmm's virtio-blk over virtio-mmio as the guest drives it, on a small disk that is
//! writable or read-only. The driver's set-up is done first (features, one 16-entry queue with
//! its descriptor table at 0, available ring at 0x100, used ring at 0x200, DRIVER_OK), so the
//! fuzzer's guest memory is at once the descriptor table, the available ring (its index
//! included), the chains and the request headers; then any register accesses follow (more
//! notifications, which run the requests, resets, other queue addresses). Nothing panics, every
//! guest-memory access stays in bounds (vm-memory checks each one) and the disk never grows: no
//! request reaches past its end.
#![no_main]

use std::io::Write;

use arbitrary::Arbitrary;
use crid_vmm::devices::IrqLine;
use crid_vmm::devices::virtio::MmioTransport;
use crid_vmm::devices::virtio::blk::Block;
use crid_vmm::memory::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u16, value: u32 },
    Read { offset: u16, len: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    memory: Vec<u8>,
    ops: Vec<Op>,
}

const MEM: usize = 64 * 1024;
const DISK: usize = 8 * 512;

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let fill = &input.memory[..input.memory.len().min(MEM)];
    mem.write_slice(fill, GuestAddress(0)).unwrap();
    let mut disk = tempfile::tempfile().unwrap();
    disk.write_all(&[0u8; DISK]).unwrap();
    let probe = disk.try_clone().unwrap();
    let blk = Block::new(disk, input.read_only, mem.clone()).unwrap();
    let mut t = MmioTransport::new(blk, IrqLine(None));
    let mut w = |offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    w(0x070, 1 | 2);
    w(0x024, 1);
    w(0x020, 1); // VIRTIO_F_VERSION_1
    w(0x070, 1 | 2 | 8);
    w(0x030, 0);
    w(0x038, 16);
    w(0x080, 0);
    w(0x090, 0x100);
    w(0x0a0, 0x200);
    w(0x044, 1);
    w(0x070, 1 | 2 | 8 | 4);
    w(0x050, 0);
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Write { offset, value } => t.write(u64::from(offset % 0x200), &value.to_le_bytes()),
            Op::Read { offset, len } => {
                let mut d = vec![0u8; usize::from(len % 8) + 1];
                t.read(u64::from(offset % 0x200), &mut d);
            }
        }
    }
    assert_eq!(probe.metadata().unwrap().len(), DISK as u64);
});
