//! virtio-blk on a raw disk file (virtio 1.2, section 5.2): one request queue, requests IN,
//! OUT, FLUSH and GET_ID, the capacity in the configuration space, `VIRTIO_BLK_F_RO` for a
//! read-only disk. Requests run on the vCPU that notified the queue (`pread`/`pwrite` through a
//! bounce buffer of [`CHUNK`] bytes, `fdatasync` for a flush).
//!
//! Every request comes from the guest, so nothing in it is trusted: the header must be whole,
//! device-readable descriptors must come before device-writable ones, data lengths must be whole
//! sectors, the sector range must lie inside the disk (checked without overflow), and the last
//! device-writable byte takes the status. A request that breaks a rule gets
//! `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for an unknown type) and touches nothing; one
//! without a writable byte for its status is returned unanswered (used length 0).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

use super::{F_VERSION_1, VirtioDevice};
use crate::memory::GuestMemoryMmap;

/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`: the device takes flush requests (so the driver sends them).
pub const F_FLUSH: u64 = 1 << 9;

pub const SECTOR: u64 = 512;
/// `virtio_blk_outhdr`: type (le32), reserved (le32), sector (le64).
pub const HEADER_LEN: usize = 16;
/// The length of the identification string GET_ID returns.
pub const ID_LEN: usize = 20;
/// The bounce buffer between guest memory and the file.
const CHUNK: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// A request the checks let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at byte `offset` of the disk into the guest.
    In {
        offset: u64,
        len: u64,
    },
    /// Write `len` bytes of the guest's at byte `offset` of the disk.
    Out {
        offset: u64,
        len: u64,
    },
    Flush,
    GetId,
}

/// Checks a request's header against the disk: `data_len` is the length of its data (the
/// device-readable bytes after the header for OUT, the device-writable bytes before the status
/// byte for IN). Returns the status to answer with when the request cannot run.
pub fn check(
    header: &[u8; HEADER_LEN],
    data_len: usize,
    sectors: u64,
    read_only: bool,
) -> Result<Request, u8> {
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector);
    let range = || -> Result<(u64, u64), u8> {
        let len = u64::try_from(data_len).map_err(|_| S_IOERR)?;
        if len % SECTOR != 0 {
            return Err(S_IOERR);
        }
        sector
            .checked_add(len / SECTOR)
            .filter(|end| *end <= sectors)
            .ok_or(S_IOERR)?;
        // No overflow: sector <= sectors, the file's size / SECTOR.
        Ok((sector * SECTOR, len))
    };
    match kind {
        T_IN => range().map(|(offset, len)| Request::In { offset, len }),
        T_OUT if read_only => Err(S_IOERR),
        T_OUT => range().map(|(offset, len)| Request::Out { offset, len }),
        T_FLUSH => Ok(Request::Flush),
        T_GET_ID => Ok(Request::GetId),
        _ => Err(S_UNSUPP),
    }
}

pub struct Block {
    disk: File,
    read_only: bool,
    /// The disk's size in 512-byte sectors (a partial last sector is not part of it).
    sectors: u64,
    mem: GuestMemoryMmap,
    buf: Vec<u8>,
}

impl Block {
    /// A device on `disk` (opened read-write unless `read_only`).
    pub fn new(mut disk: File, read_only: bool, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        // The end of the file, not its metadata: a block device's length is 0 there.
        let size = disk.seek(SeekFrom::End(0))?;
        Ok(Block {
            disk,
            read_only,
            sectors: size / SECTOR,
            mem,
            buf: vec![0; CHUNK],
        })
    }

    /// The disk's descriptor (for the seccomp filter's argument checks).
    pub fn disk(&self) -> &File {
        &self.disk
    }

    /// Runs every request the driver queued; true if any buffer was used.
    pub fn process(&mut self, q: &mut Queue) -> bool {
        let mem = self.mem.clone();
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let written = self.request(&mem, chain);
            let _ = q.add_used(&mem, head, written);
            used = true;
        }
        used
    }

    /// Runs one request; returns how many bytes it wrote into the chain (the used length).
    fn request(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let ordered = {
            let mut seen_writable = false;
            chain.clone().all(|d| {
                seen_writable |= d.is_write_only();
                d.is_write_only() || !seen_writable
            })
        };
        let Ok(mut writer) = chain.clone().writer(mem) else {
            return 0;
        };
        let Some(data_cap) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(data_cap) else {
            return 0;
        };
        let status = match chain.reader(mem) {
            Ok(reader) if ordered => self.run(reader, &mut writer),
            _ => S_IOERR,
        };
        if status_writer.write_all(&[status]).is_err() {
            return 0;
        }
        u32::try_from(writer.bytes_written() + 1).unwrap_or(u32::MAX)
    }

    /// Checks and runs a request whose device-readable bytes are `reader` and whose data
    /// buffers (without the status byte) are `writer`; returns its status.
    fn run(&mut self, mut reader: Reader<'_>, writer: &mut Writer<'_>) -> u8 {
        let mut header = [0u8; HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            return S_IOERR;
        }
        let data_len = match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
            T_OUT => reader.available_bytes(),
            _ => writer.available_bytes(),
        };
        match check(&header, data_len, self.sectors, self.read_only) {
            Ok(Request::In { offset, len }) => self.read_disk(offset, len, writer),
            Ok(Request::Out { offset, len }) => self.write_disk(offset, len, &mut reader),
            Ok(Request::Flush) => match self.disk.sync_data() {
                Ok(()) => S_OK,
                Err(_) => S_IOERR,
            },
            Ok(Request::GetId) => {
                let n = writer.available_bytes().min(ID_LEN);
                let mut id = [0u8; ID_LEN];
                id[..8].copy_from_slice(b"crid-vmm");
                match writer.write_all(&id[..n]) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            Err(status) => status,
        }
    }

    fn read_disk(&mut self, offset: u64, len: u64, writer: &mut Writer<'_>) -> u8 {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let buf = &mut self.buf[..n];
            if self.disk.read_exact_at(buf, offset + done).is_err()
                || writer.write_all(buf).is_err()
            {
                return S_IOERR;
            }
            done += n as u64;
        }
        S_OK
    }

    fn write_disk(&mut self, offset: u64, len: u64, reader: &mut Reader<'_>) -> u8 {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let buf = &mut self.buf[..n];
            if reader.read_exact(buf).is_err()
                || self.disk.write_all_at(buf, offset + done).is_err()
            {
                return S_IOERR;
            }
            done += n as u64;
        }
        S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        2
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { F_RO } else { 0 };
        F_VERSION_1 | F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (le64, in sectors); the optional fields after it are not offered.
        super::read_config_bytes(&self.sectors.to_le_bytes(), offset, data);
    }

    fn notify(&mut self, queue: usize, queues: &mut [Queue]) -> bool {
        match queues.get_mut(queue) {
            Some(q) if queue == 0 && q.ready() => self.process(q),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn header(kind: u32, sector: u64) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    }

    #[test]
    fn check_bounds_lengths_and_read_only() {
        let c = |kind, sector, len, ro| check(&header(kind, sector), len, 8, ro);
        assert_eq!(
            c(T_IN, 0, 4096, false),
            Ok(Request::In {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            c(T_OUT, 7, 512, false),
            Ok(Request::Out {
                offset: 3584,
                len: 512
            })
        );
        assert_eq!(c(T_IN, 7, 1024, false), Err(S_IOERR), "past the end");
        assert_eq!(
            c(T_IN, 8, 0, false),
            Ok(Request::In {
                offset: 4096,
                len: 0
            })
        );
        assert_eq!(c(T_IN, 9, 0, false), Err(S_IOERR));
        assert_eq!(c(T_IN, 0, 100, false), Err(S_IOERR), "not whole sectors");
        assert_eq!(c(T_IN, u64::MAX, 512, false), Err(S_IOERR), "overflow");
        assert_eq!(c(T_OUT, u64::MAX / 512, 512, false), Err(S_IOERR));
        assert_eq!(c(T_OUT, 0, 512, true), Err(S_IOERR), "read-only");
        assert!(c(T_IN, 0, 512, true).is_ok());
        assert_eq!(c(T_FLUSH, u64::MAX, 7, true), Ok(Request::Flush));
        assert_eq!(c(T_GET_ID, 0, 20, false), Ok(Request::GetId));
        assert_eq!(
            c(11, 0, 512, false),
            Err(S_UNSUPP),
            "discard is not offered"
        );
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// A disk of 8 sectors, sector n filled with byte n.
    fn disk() -> File {
        let mut f = tempfile::tempfile().unwrap();
        for n in 0..8u8 {
            f.write_all(&[n; 512]).unwrap();
        }
        f
    }

    /// Runs one chain through the device; returns the used length and the status byte at
    /// `status_at`.
    fn run(
        blk: &mut Block,
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        status_at: u64,
    ) -> (u32, u8) {
        let vq = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|(a, l, f)| RawDescriptor::from(SplitDescriptor::new(*a, *l, *f, 0)))
            .collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.write_obj(0xeeu8, GuestAddress(status_at)).unwrap();
        assert!(blk.process(&mut q));
        let used_len: u32 = m.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        (used_len, m.read_obj(GuestAddress(status_at)).unwrap())
    }

    #[test]
    fn read_write_flush_and_id() {
        let m = mem();
        let mut blk = Block::new(disk(), false, m.clone()).unwrap();
        assert_eq!(blk.features(), F_VERSION_1 | F_FLUSH);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);

        // IN: sectors 2 and 3 over two data descriptors.
        m.write_slice(&header(T_IN, 2), GuestAddress(0x8000))
            .unwrap();
        let (len, status) = run(
            &mut blk,
            &m,
            &[
                (0x8000, 16, 0),
                (0x9000, 512, W),
                (0xa000, 512, W),
                (0xb000, 1, W),
            ],
            0xb000,
        );
        assert_eq!((len, status), (1025, S_OK));
        let mut got = [0u8; 512];
        m.read_slice(&mut got, GuestAddress(0xa000)).unwrap();
        assert_eq!(got, [3; 512]);

        // OUT: the header and the data in one descriptor; the status byte alone.
        m.write_slice(&header(T_OUT, 5), GuestAddress(0x8000))
            .unwrap();
        m.write_slice(&[0xab; 512], GuestAddress(0x8010)).unwrap();
        let (len, status) = run(&mut blk, &m, &[(0x8000, 528, 0), (0xb000, 1, W)], 0xb000);
        assert_eq!((len, status), (1, S_OK));
        let mut back = [0u8; 512];
        blk.disk.read_exact_at(&mut back, 5 * 512).unwrap();
        assert_eq!(back, [0xab; 512]);

        m.write_slice(&header(T_FLUSH, 0), GuestAddress(0x8000))
            .unwrap();
        let r = run(&mut blk, &m, &[(0x8000, 16, 0), (0xb000, 1, W)], 0xb000);
        assert_eq!(r, (1, S_OK));

        m.write_slice(&header(T_GET_ID, 0), GuestAddress(0x8000))
            .unwrap();
        let r = run(
            &mut blk,
            &m,
            &[(0x8000, 16, 0), (0x9000, 20, W), (0xb000, 1, W)],
            0xb000,
        );
        assert_eq!(r, (21, S_OK));
        let mut id = [0u8; 8];
        m.read_slice(&mut id, GuestAddress(0x9000)).unwrap();
        assert_eq!(&id, b"crid-vmm");
    }

    #[test]
    fn bad_requests_get_an_error_status_and_touch_nothing() {
        let m = mem();
        let mut blk = Block::new(disk(), false, m.clone()).unwrap();
        let untouched = |blk: &Block| {
            let mut all = vec![0u8; 8 * 512];
            blk.disk.read_exact_at(&mut all, 0).unwrap();
            (0..8u8).all(|n| all[usize::from(n) * 512..][..512].iter().all(|b| *b == n))
        };
        // Past the end.
        m.write_slice(&header(T_OUT, 8), GuestAddress(0x8000))
            .unwrap();
        let r = run(
            &mut blk,
            &m,
            &[(0x8000, 16 + 512, 0), (0xb000, 1, W)],
            0xb000,
        );
        assert_eq!(r, (1, S_IOERR));
        // A short header.
        let r = run(&mut blk, &m, &[(0x8000, 8, 0), (0xb000, 1, W)], 0xb000);
        assert_eq!(r, (1, S_IOERR));
        // A readable descriptor after a writable one.
        m.write_slice(&header(T_OUT, 0), GuestAddress(0x8000))
            .unwrap();
        let r = run(
            &mut blk,
            &m,
            &[
                (0x8000, 16, 0),
                (0xb000, 1, W),
                (0x9000, 512, 0),
                (0xb001, 1, W),
            ],
            0xb001,
        );
        assert_eq!(r, (1, S_IOERR));
        // A data buffer outside guest memory.
        let r = run(
            &mut blk,
            &m,
            &[(0x8000, 16, 0), (0xffff_0000, 512, 0), (0xb000, 1, W)],
            0xb000,
        );
        assert_eq!(r, (1, S_IOERR));
        // An unknown type.
        m.write_slice(&header(99, 0), GuestAddress(0x8000)).unwrap();
        let r = run(&mut blk, &m, &[(0x8000, 16, 0), (0xb000, 1, W)], 0xb000);
        assert_eq!(r, (1, S_UNSUPP));
        // No writable byte for the status: returned unanswered.
        m.write_slice(&header(T_IN, 0), GuestAddress(0x8000))
            .unwrap();
        let r = run(&mut blk, &m, &[(0x8000, 16, 0)], 0xb000);
        assert_eq!(r, (0, 0xee));
        assert!(untouched(&blk));
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let m = mem();
        let mut blk = Block::new(disk(), true, m.clone()).unwrap();
        assert_ne!(blk.features() & F_RO, 0);
        m.write_slice(&header(T_OUT, 0), GuestAddress(0x8000))
            .unwrap();
        m.write_slice(&[0xcd; 512], GuestAddress(0x9000)).unwrap();
        let r = run(
            &mut blk,
            &m,
            &[(0x8000, 16, 0), (0x9000, 512, 0), (0xb000, 1, W)],
            0xb000,
        );
        assert_eq!(r, (1, S_IOERR));
        let mut first = [0u8; 512];
        blk.disk.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(first, [0; 512]);
        m.write_slice(&header(T_IN, 1), GuestAddress(0x8000))
            .unwrap();
        let r = run(
            &mut blk,
            &m,
            &[(0x8000, 16, 0), (0x9000, 512, W), (0xb000, 1, W)],
            0xb000,
        );
        assert_eq!(r, (513, S_OK));
    }
}
