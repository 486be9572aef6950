//! Loading a Linux kernel and initrd into guest memory for direct boot.
//!
//! - [`image`]: recognises ELF (with or without a PVH note) and bzImage files and
//!   checks them against the file and the guest memory before anything is copied.
//! - [`kernel`]: loads the image with linux-loader and says how to enter it.
//! - [`initrd`]: places an initrd at the top of low memory.
//! - [`cmdline`]: validates and writes the kernel command line.
//! - [`params`]: writes `boot_params` (Linux 64-bit boot protocol) or
//!   `hvm_start_info` (PVH) with the e820 map, command line and initrd.

pub mod cmdline;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod params;

pub use image::ImageFormat;
pub use initrd::{load_initrd, InitrdRegion};
pub use kernel::{load_kernel, BootProtocol, LoadedKernel};
pub use params::{configure_boot, BootInfo};

/// Errors from loading a kernel or initrd and writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the image file failed.
    #[error("cannot read the {what}: {source}")]
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
    #[error("cannot write the {what} at guest address {addr:#x}: {source}")]
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
