//! virtio-net on a tap device. Frames cross unchanged with their 12-byte `virtio_net_hdr_v1`
//! (the tap is opened with `IFF_VNET_HDR` and that header size), so the device copies bytes
//! and parses nothing the guest wrote beyond the descriptor chain itself. No offloads are
//! offered. TX runs on the vCPU that notified the queue; RX on a thread of its own that waits
//! for the tap (edge-triggered) and for the driver's "RX buffers added" notification.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{F_VERSION_1, MmioTransport, VirtioDevice};
use crate::memory::GuestMemoryMmap;

/// `VIRTIO_NET_F_MAC`: the device has a MAC address in its configuration space.
const F_MAC: u64 = 1 << 5;
/// The virtio-net header of the modern interface, `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame with its header: a 64 KiB packet (the tap's largest), Ethernet header and
/// VLAN tag.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_536 + 18;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

pub struct Net {
    mac: [u8; 6],
    tap: File,
    mem: GuestMemoryMmap,
    /// Written when the driver adds RX buffers, which wakes the RX thread.
    rx_kick: EventFd,
    /// A frame read from the tap that found no RX buffer yet.
    pending: Option<Vec<u8>>,
}

impl Net {
    pub fn new(tap: File, mac: [u8; 6], mem: GuestMemoryMmap) -> std::io::Result<Self> {
        Ok(Net {
            mac,
            tap,
            mem,
            rx_kick: EventFd::new(libc::EFD_NONBLOCK)?,
            pending: None,
        })
    }

    /// Sends every frame the driver queued for transmission; true if any buffer was used.
    fn transmit(&mut self, q: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let mut frame = Vec::new();
            if let Ok(reader) = chain.reader(&self.mem) {
                let _ = reader.take(MAX_FRAME as u64).read_to_end(&mut frame);
            }
            // A full tap queue or a malformed header drops the frame, as a wire would.
            if frame.len() > VNET_HDR_LEN {
                let _ = (&self.tap).write(&frame);
            }
            let _ = q.add_used(&self.mem, head, 0);
            used = true;
        }
        used
    }

    /// Moves frames from the tap into the driver's RX buffers until one side runs out; true
    /// if any buffer was used.
    pub fn receive(&mut self, q: &mut Queue) -> bool {
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match (&self.tap).read(&mut buf) {
                        Ok(n) if n > VNET_HDR_LEN => {
                            buf.truncate(n);
                            buf
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return used, // EAGAIN: drained (or the tap is gone)
                    }
                }
            };
            let Some(chain) = q.pop_descriptor_chain(&self.mem) else {
                self.pending = Some(frame);
                return used;
            };
            let head = chain.head_index();
            let mut frame = frame;
            // num_buffers: one buffer per frame (no VIRTIO_NET_F_MRG_RXBUF).
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = match chain.writer(&self.mem) {
                Ok(mut w) if w.available_bytes() >= frame.len() => {
                    w.write_all(&frame).map(|()| frame.len()).unwrap_or(0)
                }
                // A buffer too small for the frame: the frame is dropped, the buffer returned.
                _ => 0,
            };
            let _ = q.add_used(&self.mem, head, written as u32);
            used = true;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        1
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], then status (u16, unused: no VIRTIO_NET_F_STATUS).
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        super::read_config_bytes(&config, offset, data);
    }

    fn notify(&mut self, queue: usize, queues: &mut [Queue]) -> bool {
        match queue {
            RX => {
                let _ = self.rx_kick.write(1);
                false
            }
            TX => match queues.get_mut(TX) {
                Some(q) if q.ready() => self.transmit(q),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The RX thread's wait set: the tap (edge-triggered) and the "RX buffers added" eventfd.
/// Built before the thread confines itself (its filter has no epoll_create or epoll_ctl).
pub fn rx_epoll(dev: &Mutex<MmioTransport<Net>>) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    let (tap_fd, kick_fd) = {
        let d = lock(dev);
        (d.device.tap.as_raw_fd(), d.device.rx_kick.as_raw_fd())
    };
    epoll.ctl(
        ControlOperation::Add,
        tap_fd,
        EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        kick_fd,
        EpollEvent::new(EventSet::IN, 1),
    )?;
    Ok(epoll)
}

/// The RX thread's loop: waits on `epoll` ([`rx_epoll`]) for tap data or new RX buffers and
/// moves frames to the guest. Returns only on an epoll error.
pub fn rx_loop(dev: &Mutex<MmioTransport<Net>>, epoll: &Epoll) -> std::io::Result<()> {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut d = lock(dev);
        if events[..n].iter().any(|e| e.data() == 1) {
            let _ = d.device.rx_kick.read();
        }
        if !d.active() {
            continue;
        }
        let t = &mut *d;
        let used = match t.queues.get_mut(RX) {
            Some(q) if q.ready() => t.device.receive(q),
            _ => false,
        };
        if used {
            t.signal_used();
        }
    }
}

/// Shared by the vCPU threads (MMIO) and the RX thread.
pub type SharedNet = Arc<Mutex<MmioTransport<Net>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A connected pair standing in for the tap: the device gets one end.
    fn tap_pair() -> (File, File) {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (
            File::from(std::os::fd::OwnedFd::from(a)),
            File::from(std::os::fd::OwnedFd::from(b)),
        )
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn config_space_holds_the_mac() {
        let (tap, _peer) = tap_pair();
        let net = Net::new(tap, [2, 0, 0, 0, 0, 9], mem()).unwrap();
        let mut b = [0u8; 8];
        net.read_config(0, &mut b);
        assert_eq!(b, [2, 0, 0, 0, 0, 9, 0, 0]);
        let mut b = [0xffu8; 4];
        net.read_config(6, &mut b);
        assert_eq!(b, [0; 4]);
        net.read_config(u64::MAX, &mut b);
        assert_eq!(parse_mac("02:00:00:00:00:09"), Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:09:01"), None);
        assert_eq!(parse_mac("2:00:00:00:00:09"), None);
    }

    #[test]
    fn tx_chain_reaches_the_tap_and_rx_frame_reaches_the_guest() {
        let m = mem();
        let (tap, peer) = tap_pair();
        let mut net = Net::new(tap, [2, 0, 0, 0, 0, 1], m.clone()).unwrap();

        // TX: a two-descriptor chain (header, then payload).
        let vq = MockSplitQueue::new(&m, 16);
        let hdr = [0u8; VNET_HDR_LEN];
        m.write_slice(&hdr, GuestAddress(0x8000)).unwrap();
        m.write_slice(b"ethernet-frame", GuestAddress(0x9000))
            .unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, VNET_HDR_LEN as u32, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 14, 0, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(net.transmit(&mut q));
        let mut got = [0u8; 64];
        let n = (&peer).read(&mut got).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..n], b"ethernet-frame");

        // RX: one writable buffer; a frame from the tap lands in it with num_buffers = 1.
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0xa000,
            2048,
            virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ))];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(b"reply");
        (&peer).write_all(&frame).unwrap();
        (&peer).write_all(&frame).unwrap();
        assert!(net.receive(&mut q));
        let mut back = [0u8; VNET_HDR_LEN + 5];
        m.read_slice(&mut back, GuestAddress(0xa000)).unwrap();
        assert_eq!(&back[VNET_HDR_LEN..], b"reply");
        assert_eq!(&back[10..12], &[1, 0]);
        // The second frame waits for a buffer.
        assert!(net.pending.is_some());
    }
}
