//! Guest physical memory for x86_64 microVMs.
//!
//! [`layout`] fixes where RAM, the 32-bit MMIO gap and the boot structures live;
//! [`MemoryLayout`] turns a RAM size into guest-physical ranges and an e820 map;
//! [`create_guest_memory`] backs those ranges with anonymous private mappings,
//! [`create_guest_memory_from_file`] with private views of a memory file (a
//! snapshot's), and [`map_guest_memory`] either, with a bitmap of the pages
//! the VMM writes ([`take_written_pages`] reads it).
//!
//! With the `kvm` feature (on by default), `register_with_kvm` hands the
//! mappings to a KVM VM as memory slots (`register_with_kvm_logging_dirty_pages`
//! with KVM's dirty log on), and `dirty_pages` collects what the guest and the
//! VMM wrote since. Without it the crate does not depend on kvm-ioctls: a boot
//! loader or a snapshot tool that only needs layouts and mappings turns it off
//! (`default-features = false`).
//!
//! # Example
//!
//! ```
//! use ember_memory::layout::{MIB, MMIO_GAP_END};
//! use ember_memory::{create_guest_memory, E820Kind, MemoryLayout};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
//!
//! // 4 GiB of RAM on a host with a 39-bit guest-physical address space:
//! // 3 GiB below the MMIO gap, 1 GiB from 4 GiB up.
//! let layout = MemoryLayout::with_mib(4096, 39)?;
//! assert_eq!(layout.ranges().len(), 2);
//! assert_eq!(layout.end(), MMIO_GAP_END + 1024 * MIB);
//! for entry in layout.e820_entries() {
//!     assert_eq!(entry.kind, E820Kind::Ram);
//! }
//!
//! // Pages are only allocated when touched.
//! let mem = create_guest_memory(&layout)?;
//! assert_eq!(mem.num_regions(), 2);
//! mem.write_obj(0x1234_u32, GuestAddress(MMIO_GAP_END))?;
//! assert_eq!(mem.read_obj::<u32>(GuestAddress(MMIO_GAP_END))?, 0x1234);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dirty;
#[cfg(feature = "kvm")]
mod kvm;
pub mod layout;
mod mapping;
mod regions;

pub use dirty::take_written_pages;
#[cfg(feature = "kvm")]
pub use kvm::{dirty_pages, register_with_kvm, register_with_kvm_logging_dirty_pages};
pub use mapping::{
    create_guest_memory, create_guest_memory_from_file, map_guest_memory, Backing,
    DirtyPageTracking,
};
pub use regions::{E820Entry, E820Kind, MemoryLayout};

/// Guest memory as this crate creates it: private mappings, each with a dirty
/// bitmap when created with [`DirtyPageTracking::On`].
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<Option<vm_memory::bitmap::AtomicBitmap>>;

/// Errors from laying out, mapping or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested RAM size is zero.
    #[error("guest memory size must be greater than zero")]
    ZeroSize,
    /// The requested RAM size is not a multiple of the page size.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The RAM's size in bytes, or its end address, does not fit in 64 bits.
    #[error(
        "guest memory of {size_mib} MiB is too large: it would end beyond any 64-bit \
         guest-physical address space"
    )]
    TooLarge {
        /// Requested size in MiB (rounded down).
        size_mib: u64,
    },
    /// The RAM would end beyond what the guest can address.
    #[error(
        "guest memory of {size_mib} MiB would end at {end:#x}, beyond the {phys_bits}-bit \
         guest-physical address space of this host"
    )]
    BeyondAddressSpace {
        /// Requested size in MiB.
        size_mib: u64,
        /// First guest-physical address past the end of RAM.
        end: u64,
        /// Guest-physical address width the host supports.
        phys_bits: u8,
    },
    /// The host refused to map the memory.
    #[error("cannot map {size_mib} MiB of guest memory on this host")]
    Map {
        /// Requested size in MiB.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// More memory regions than KVM slots.
    #[cfg(feature = "kvm")]
    #[error("guest memory has more regions than KVM memory slots ({0})")]
    TooManyRegions(usize),
    /// The memory file could not be inspected or shared with the mappings.
    #[error("cannot use the guest memory file: {0}")]
    MemoryFile(std::io::Error),
    /// The memory file is shorter than the memory mapped from it.
    #[error(
        "guest memory file of {file_len} bytes is shorter than the {needed} bytes of guest memory"
    )]
    MemoryFileTooShort {
        /// The file's length.
        file_len: u64,
        /// The memory's size.
        needed: u64,
    },
    /// KVM refused to hand over a slot's dirty log.
    #[cfg(feature = "kvm")]
    #[error("cannot read the dirty log of KVM memory slot {slot}")]
    DirtyLog {
        /// The slot number.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused a memory slot.
    #[cfg(feature = "kvm")]
    #[error("KVM refused memory slot {slot} at {guest_addr:#x}")]
    RegisterSlot {
        /// The slot number.
        slot: u32,
        /// Guest-physical start of the slot.
        guest_addr: u64,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
