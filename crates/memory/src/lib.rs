//! Guest physical memory for x86_64 microVMs.
//!
//! [`layout`] fixes where RAM, the 32-bit MMIO gap and the boot structures live;
//! [`MemoryLayout`] turns a RAM size into guest-physical ranges and an e820 map;
//! [`create_guest_memory`] backs those ranges with anonymous private mappings and
//! [`register_with_kvm`] hands them to a KVM VM as memory slots.

mod kvm;
pub mod layout;
mod regions;

pub use kvm::register_with_kvm;
pub use regions::{create_guest_memory, E820Entry, E820Kind, MemoryLayout};

/// Guest memory as this crate creates it: anonymous mappings, no dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

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
    #[error("cannot map {size_mib} MiB of guest memory on this host: {source}")]
    Map {
        /// Requested size in MiB.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// More memory regions than KVM slots.
    #[error("guest memory has more regions than KVM memory slots ({0})")]
    TooManyRegions(usize),
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} at {guest_addr:#x}: {source}")]
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
