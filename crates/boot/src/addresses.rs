//! Where the boot structures go in guest memory. The VMM's memory layout
//! chooses the addresses and passes them in, as linux-loader takes them.

use vm_memory::GuestAddress;

/// Guest-physical addresses of what [`configure_boot`](crate::configure_boot)
/// writes: the command line and, by boot protocol, `boot_params` or PVH's
/// `hvm_start_info` with its module list and memory map. They must lie in
/// RAM, below the kernel, and not overlap one another.
///
/// # Example
///
/// Ember's own layout, as its VMM passes it:
///
/// ```
/// use ember_boot::BootAddresses;
/// use ember_memory::layout::{
///     CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
/// };
/// use vm_memory::GuestAddress;
///
/// let addresses = BootAddresses {
///     cmdline: GuestAddress(CMDLINE_START),
///     zero_page: GuestAddress(ZERO_PAGE_START),
///     pvh_start_info: GuestAddress(PVH_INFO_START),
///     pvh_modules: GuestAddress(PVH_MODLIST_START),
///     pvh_memmap: GuestAddress(PVH_MEMMAP_START),
/// };
/// assert!(addresses.cmdline > addresses.zero_page);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootAddresses {
    /// The kernel command line, NUL-terminated (at most 2048 bytes).
    pub cmdline: GuestAddress,
    /// Linux `boot_params` (the zero page, 4 KiB), for the 64-bit boot protocol.
    pub zero_page: GuestAddress,
    /// PVH `hvm_start_info` (56 bytes).
    pub pvh_start_info: GuestAddress,
    /// PVH module list: one 32-byte entry, the initrd.
    pub pvh_modules: GuestAddress,
    /// PVH memory map: 24 bytes per e820 entry.
    pub pvh_memmap: GuestAddress,
}
