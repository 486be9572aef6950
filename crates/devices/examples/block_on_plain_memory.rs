//! A virtio-block device driven on plain memory, without KVM: this program
//! plays the guest driver. It starts the device through its virtio-mmio
//! registers, then writes a sector of a temporary file, flushes it and reads
//! it back through a virtqueue in guest memory, running the device's event
//! loop itself.
//!
//! Run with `cargo run -p ember-devices --example block_on_plain_memory`.
//! The guest-driver helpers come from `ember_devices::virtio::test_utils`
//! (the `test-utils` feature, which the crate's dev-dependencies enable).

use std::error::Error;
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_devices::virtio::block::{Block, BlockConfig, CacheType, SECTOR_SIZE};
use ember_devices::virtio::test_utils::{
    guest_bytes, memory, read_reg, run_until_used, start, write_reg, GuestQueue, Manager, Mem,
    WRITE,
};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory: 1 MiB from address 0.
const MEM_SIZE: usize = 0x10_0000;
/// Where the driver puts its request queue.
const QUEUE_BASE: u64 = 0x1000;
/// Entries in the request queue.
const QUEUE_SIZE: u16 = 16;
/// Where the driver puts each request's header; data and status follow.
const REQUEST_BASE: u64 = 0x8000;
/// The sector the program writes and reads.
const SECTOR: u64 = 2;
/// Sectors in the temporary disk.
const DISK_SECTORS: u64 = 8;

/// The guest driver's side: memory, its queue and the device's registers,
/// and the event loop the device runs on.
struct Driver {
    mem: Mem,
    queue: GuestQueue,
    transport: MmioTransport<Mem>,
    event_loop: Manager,
    next_desc: u16,
}

impl Driver {
    /// Sends one request of `kind` for `SECTOR` with an optional one-sector
    /// data buffer (its address, and descriptor flags: `WRITE` when the
    /// device fills it), waits for its completion, acknowledges the
    /// interrupt and returns the status byte.
    fn request(&mut self, kind: u32, data: Option<(u64, u16)>) -> Result<u8, Box<dyn Error>> {
        let header = REQUEST_BASE + u64::from(self.next_desc) * 0x1000;
        let status = header + 0x800;
        self.mem.write_obj(kind.to_le(), GuestAddress(header))?;
        self.mem
            .write_obj(SECTOR.to_le(), GuestAddress(header + 8))?;
        self.mem.write_obj(0xffu8, GuestAddress(status))?;
        let mut chain = vec![(header, 16, 0)];
        if let Some((addr, flags)) = data {
            chain.push((addr, u32::try_from(SECTOR_SIZE)?, flags));
        }
        chain.push((status, 1, WRITE));
        let used = self.queue.used_idx();
        self.queue.add_chain(self.next_desc, &chain);
        self.next_desc += u16::try_from(chain.len())?;
        // QueueNotify: without KVM's ioeventfd, the transport signals the
        // device's queue eventfd itself.
        write_reg(&mut self.transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        run_until_used(
            &mut self.event_loop,
            &self.queue,
            used + 1,
            Duration::from_secs(5),
        );
        let interrupt = read_reg(&mut self.transport, VIRTIO_MMIO_INTERRUPT_STATUS);
        println!("  completed; interrupt status {interrupt:#x}");
        write_reg(&mut self.transport, VIRTIO_MMIO_INTERRUPT_ACK, interrupt);
        Ok(self.mem.read_obj(GuestAddress(status))?)
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let disk = tempfile::NamedTempFile::new()?;
    disk.as_file().set_len(DISK_SECTORS * SECTOR_SIZE)?;
    let config = BlockConfig {
        drive_id: "scratch".to_owned(),
        path: disk.path().to_path_buf(),
        cache_type: CacheType::Writeback,
        ..BlockConfig::default()
    };
    let block = Arc::new(Mutex::new(Block::new(config)?));
    let mut event_loop = Manager::new()?;
    event_loop.add_subscriber(block.clone());
    let mem = memory(&[(0, MEM_SIZE)]);
    let mut transport = MmioTransport::new(mem.clone(), block.clone())?;

    let queue = GuestQueue::new(&mem, QUEUE_BASE, QUEUE_SIZE);
    let features = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_BLK_F_FLUSH);
    let status = start(&mut transport, features, &[(0, &queue)]);
    println!("device started: status register {status:#x}");
    let mut driver = Driver {
        mem,
        queue,
        transport,
        event_loop,
        next_desc: 0,
    };

    let sector: Vec<u8> = (0..SECTOR_SIZE)
        .map(|i| (i % 251).to_le_bytes()[0])
        .collect();
    let (out_buf, in_buf) = (0x4_0000, 0x5_0000);
    driver.mem.write_slice(&sector, GuestAddress(out_buf))?;
    println!("writing sector {SECTOR}");
    let written = driver.request(VIRTIO_BLK_T_OUT, Some((out_buf, 0)))?;
    println!("flushing");
    let flushed = driver.request(VIRTIO_BLK_T_FLUSH, None)?;
    println!("reading sector {SECTOR} back");
    let read = driver.request(VIRTIO_BLK_T_IN, Some((in_buf, WRITE)))?;
    if [written, flushed, read] != [0; 3] {
        return Err(format!("request statuses {written}, {flushed}, {read}; 0 is OK").into());
    }

    let back = guest_bytes(&driver.mem, in_buf, sector.len());
    let file = fs::read(disk.path())?;
    let at = usize::try_from(SECTOR * SECTOR_SIZE)?;
    if back != sector || file[at..at + sector.len()] != sector[..] {
        return Err("the sector read back is not the one written".into());
    }
    println!(
        "sector {SECTOR} round-tripped through the virtqueue and the file; counters: {:?}",
        block
            .lock()
            .map_err(|_| "the device's lock is poisoned")?
            .counters()
    );
    Ok(())
}
