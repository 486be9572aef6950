//! Loading a Linux kernel and initrd into guest memory for direct boot.
//!
//! - [`image`]: recognises ELF (with or without a PVH note) and bzImage files and
//!   checks them against the file and the guest memory before anything is copied.
//! - [`kernel`]: loads the image with linux-loader and says how to enter it.
//! - [`initrd`]: places an initrd at the top of low memory.
//! - [`cmdline`]: validates and writes the kernel command line.
//! - [`params`]: writes `boot_params` (Linux 64-bit boot protocol) or
//!   `hvm_start_info` (PVH) with the e820 map, command line and initrd, at the
//!   [`BootAddresses`] the caller's memory layout chooses.
//!
//! Guest memory is any vm-memory [`GuestMemoryBackend`](vm_memory::GuestMemoryBackend);
//! the crate does not touch KVM. Setting up the vCPU registers for the entry
//! the [`LoadedKernel`] describes is the VMM's job.
//!
//! # Example
//!
//! A tiny ELF kernel, an initrd and a command line in 64 MiB of plain memory:
//!
//! ```
//! use std::io::Cursor;
//!
//! use ember_boot::{configure_boot, load_initrd, load_kernel, BootAddresses, BootInfo};
//! use ember_memory::MemoryLayout;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! # /// An x86_64 ELF file with one PT_LOAD segment of `code` at `addr`.
//! # fn tiny_elf(code: &[u8], addr: u64) -> Vec<u8> {
//! #     let mut f = vec![0u8; 64 + 56];
//! #     f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
//! #     f[0x10] = 2; // ET_EXEC
//! #     f[0x12] = 62; // EM_X86_64
//! #     f[0x18..0x20].copy_from_slice(&addr.to_le_bytes()); // e_entry
//! #     f[0x20] = 64; // e_phoff
//! #     f[0x34] = 64; // e_ehsize
//! #     f[0x36] = 56; // e_phentsize
//! #     f[0x38] = 1; // e_phnum
//! #     let len = (code.len() as u64).to_le_bytes();
//! #     let ph = &mut f[64..];
//! #     ph[0] = 1; // PT_LOAD
//! #     ph[8] = 120; // p_offset
//! #     ph[16..24].copy_from_slice(&addr.to_le_bytes());
//! #     ph[24..32].copy_from_slice(&addr.to_le_bytes());
//! #     ph[32..40].copy_from_slice(&len);
//! #     ph[40..48].copy_from_slice(&len);
//! #     f.extend_from_slice(code);
//! #     f
//! # }
//! let layout = MemoryLayout::with_mib(64, 39)?;
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])?;
//!
//! let image = tiny_elf(&[0xf4; 64], 0x100_0000);
//! let kernel = load_kernel(&mem, &mut Cursor::new(image), GuestAddress(0x10_0000), layout.low_ram_end())?;
//! let initrd = load_initrd(&mem, &mut Cursor::new(vec![0u8; 4096]), kernel.end, layout.low_ram_end())?;
//! let e820 = layout.e820_entries();
//! let info = BootInfo { cmdline: "console=ttyS0 panic=1", e820: &e820, initrd: Some(initrd) };
//! let addresses = BootAddresses {
//!     cmdline: GuestAddress(0x2_0000),
//!     zero_page: GuestAddress(0x7000),
//!     pvh_start_info: GuestAddress(0x6000),
//!     pvh_modules: GuestAddress(0x6040),
//!     pvh_memmap: GuestAddress(0x6060),
//! };
//! configure_boot(&mem, &kernel, &info, &addresses)?;
//! println!("enter at {:#x} through {:?}", kernel.entry.0, kernel.protocol);
//! assert_eq!(kernel.entry, GuestAddress(0x100_0000));
//! assert_eq!(initrd.addr, GuestAddress((64 << 20) - 4096));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod addresses;
pub mod cmdline;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod params;

pub use addresses::BootAddresses;
pub use image::ImageFormat;
pub use initrd::{load_initrd, InitrdRegion};
pub use kernel::{load_kernel, BootProtocol, LoadedKernel};
pub use params::{configure_boot, BootInfo};

/// Errors from loading a kernel or initrd and writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the image file failed.
    #[error("cannot read the {what}")]
    Read {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither an ELF kernel nor a bzImage.
    #[error("not a kernel image: neither an ELF file nor a bzImage (no \"HdrS\" boot header)")]
    UnknownFormat,
    /// The file is an ELF file the loader cannot use.
    #[error("unsupported ELF kernel: {0}")]
    BadElf(String),
    /// The file is a bzImage the loader cannot use.
    #[error("unsupported bzImage: {0}")]
    BadBzImage(String),
    /// The image is shorter than its headers say.
    #[error("truncated {format} kernel: its headers need {needed} bytes, the file has {actual}")]
    Truncated {
        /// Image format.
        format: ImageFormat,
        /// Bytes the headers describe.
        needed: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The kernel does not fit in guest memory.
    #[error(
        "the kernel needs guest memory up to {needed:#x} but RAM below 3 GiB ends at {available:#x}; \
         give the VM more memory"
    )]
    KernelDoesNotFit {
        /// First address past what the kernel occupies.
        needed: u64,
        /// First address past low RAM.
        available: u64,
    },
    /// linux-loader refused the image.
    #[error("cannot load the kernel: {0}")]
    Load(#[from] linux_loader::loader::Error),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} \
         and {limit:#x}; give the VM more memory"
    )]
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// First address past the kernel.
        kernel_end: u64,
        /// Highest address the initrd may end at.
        limit: u64,
    },
    /// The command line is longer than the boot protocol allows.
    #[error("the kernel command line is {len} bytes; the boot protocol allows at most {max}")]
    CmdlineTooLong {
        /// Length in bytes.
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The e820 map has more entries than the zero page holds.
    #[error("the e820 map has {0} entries; the boot protocol holds at most 128")]
    TooManyE820Entries(usize),
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} at guest address {addr:#x}")]
    GuestMemory {
        /// The structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// linux-loader could not write the boot parameters.
    #[error("cannot write the boot parameters: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
