//! The virtio-mmio register file (virtio 1.2, section 4.2.2), version 2 only.

use virtio_queue::{Queue, QueueT};

use super::VirtioDevice;
use crate::devices::IrqLine;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4449_5243; // "CRID"

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// InterruptStatus bit: a used buffer was added.
pub const INT_USED_RING: u32 = 1;

/// One virtio device behind its MMIO window.
pub struct MmioTransport<D: VirtioDevice> {
    pub device: D,
    pub queues: Vec<Queue>,
    irq: IrqLine,
    features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, irq: IrqLine) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            queues,
            irq,
            features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    /// Whether the driver has finished setting the device up.
    pub fn active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }

    /// Raises the used-buffer interrupt.
    pub fn signal_used(&mut self) {
        self.interrupt_status |= INT_USED_RING;
        let _ = vm_superio::Trigger::trigger(&self.irq);
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.interrupt_status = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        let v: u32 = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self.queue().map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x044 => self.queue().map(|q| u32::from(q.ready())).unwrap_or(0),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => 0,
            _ => 0,
        };
        put(data, v);
    }

    /// A guest write at `offset`. A queue notification runs the device, which raises the
    /// interrupt when it used buffers.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = get(data) else { return };
        let setting_up = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x014 => self.features_sel = v,
            0x020 if setting_up => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if setting_up => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x044 if setting_up => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x050 if self.active() && self.device.notify(v as usize, &mut self.queues) => {
                self.signal_used();
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => self.set_status(v),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if setting_up => {
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.queue() {
                    match offset & !4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // FEATURES_OK only with the features we offer, VERSION_1 among them.
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & super::F_VERSION_1 == 0
            {
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
    }
}

fn put(data: &mut [u8], v: u32) {
    let bytes = v.to_le_bytes();
    let n = data.len().min(4);
    data[..n].copy_from_slice(&bytes[..n]);
}

/// Registers are 32 bits wide; other access sizes are ignored.
fn get(data: &[u8]) -> Option<u32> {
    let b: [u8; 4] = data.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy(u32);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            1
        }
        fn features(&self) -> u64 {
            super::super::F_VERSION_1 | 0x20
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn notify(&mut self, queue: usize, _: &mut [Queue]) -> bool {
            self.0 = queue as u32 + 1;
            true
        }
    }

    fn r(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identification_features_and_setup() {
        let mut t = MmioTransport::new(Dummy(0), IrqLine(None));
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 1);
        assert_eq!(r(&mut t, 0x10), 0x20);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        // Features the device does not offer: FEATURES_OK is refused.
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 0x40);
        w(&mut t, 0x70, 1 | 2 | STATUS_FEATURES_OK);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 0x20);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 1 | 2 | STATUS_FEATURES_OK);
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 256);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0x1000);
        w(&mut t, 0x84, 0);
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 1);
        assert_eq!(t.queues[1].size(), 16);
        assert_eq!(t.queues[1].desc_table(), 0x1000);
        // Notifications count only once the driver is ready.
        w(&mut t, 0x50, 1);
        assert_eq!(t.device.0, 0);
        w(&mut t, 0x70, 1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        w(&mut t, 0x50, 1);
        assert_eq!(t.device.0, 2);
        assert_eq!(r(&mut t, 0x60), INT_USED_RING);
        w(&mut t, 0x64, INT_USED_RING);
        assert_eq!(r(&mut t, 0x60), 0);
        let mut cfg = [0u8; 2];
        t.read(0x104, &mut cfg);
        assert_eq!(cfg, [4, 4]);
        // Reset clears everything.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert!(!t.queues[1].ready());
        // Odd-sized or out-of-range accesses are harmless.
        t.write(0x50, &[1]);
        t.read(0x2000, &mut [0u8; 3]);
        w(&mut t, 0x30, 99);
        assert_eq!(r(&mut t, 0x34), 0);
    }
}
