//! virtio devices over the virtio-mmio transport (version 2, as Firecracker and QEMU microvm
//! expose them), announced to the guest on its command line
//! (`virtio_mmio.device=4K@0xd0000000:5`, one 4 KiB window and interrupt line each, in the
//! order the VMM adds them). Queues and descriptor chains are `virtio-queue`'s.

pub mod blk;
pub mod mmio;
pub mod net;

pub use mmio::MmioTransport;

/// `VIRTIO_F_VERSION_1`: the modern interface, which the version-2 MMIO transport requires.
pub const F_VERSION_1: u64 = 1 << 32;

/// Copies `data.len()` bytes of a device's configuration space `config` from `offset` (both
/// chosen by the guest); bytes beyond its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o.checked_add(i)?))
            .copied()
            .unwrap_or(0);
    }
}

/// What a device behind the MMIO transport provides.
pub trait VirtioDevice: Send {
    /// The virtio device id (1: network, 2: block).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A queue was notified by the driver (its index), with the queues now in use.
    fn notify(&mut self, queue: usize, queues: &mut [virtio_queue::Queue]) -> bool;
}

/// A device's MMIO window as the vCPUs reach it, whatever the device behind it.
pub trait MmioWindow: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl<D: VirtioDevice> MmioWindow for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}
