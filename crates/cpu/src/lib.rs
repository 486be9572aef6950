//! x86_64 vCPU setup and execution for KVM microVMs.
//!
//! - [`platform`]: the VM-wide pieces a vCPU needs (in-kernel irqchip, PIT, TSS).
//! - [`cpuid`]: CPUID as a microVM should present it (topology, hypervisor leaves, brand).
//! - [`msr`], [`regs`], [`gdt`], [`paging`], [`lapic`]: the register state at kernel entry.
//! - [`mptable`]: the MP table that tells the guest how many vCPUs it has.
//! - [`vcpu`]: a configured vCPU, its run loop and the signal that kicks it out of `KVM_RUN`.
//! - [`state`]: a vCPU's state for snapshots ([`VcpuState`]), saved and restored
//!   through KVM; the VM-wide part ([`platform::VmState`]) sits in [`platform`].
//!
//! Nothing here knows about devices: exits are handed to an [`vcpu::ExitHandler`].
//!
//! # Example
//!
//! The CPUID one vCPU of a 4-vCPU VM sees, made from a (here hand-built)
//! list of what KVM supports; with KVM, the list is
//! `Kvm::get_supported_cpuid` and [`Vcpu::configure`] does this:
//!
//! ```
//! use ember_cpu::cpuid::{normalize, Topology};
//! use kvm_bindings::{kvm_cpuid_entry2, CpuId};
//!
//! let leaf = |function, eax| kvm_cpuid_entry2 { function, eax, ..Default::default() };
//! let mut cpuid = CpuId::from_entries(&[leaf(0, 0xb), leaf(1, 0), leaf(0xb, 0)]).unwrap();
//! let topology = Topology { vcpu_index: 2, vcpu_count: 4, threads_per_core: 1 };
//! normalize(&mut cpuid, topology, b"an example brand string, forty-eight bytes long.")?;
//! let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
//! assert_eq!(leaf1.ebx >> 24, 2, "the APIC ID is the vCPU index");
//! assert_ne!(leaf1.ecx & (1 << 31), 0, "the hypervisor bit is set");
//! # Ok::<(), ember_cpu::Error>(())
//! ```

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod platform;
pub mod regs;
pub mod state;
pub mod vcpu;

pub use platform::{restore_vm_state, save_vm_state, VmState};
pub use regs::EntryPoint;
pub use state::{saveable_msrs, FpuState, VcpuState};
pub use vcpu::{ExitHandler, Vcpu, VcpuStop};

/// Most vCPUs a VM can have: APIC IDs are 8 bits, 0xff is broadcast and the
/// IOAPIC takes the ID after the last vCPU.
pub const MAX_VCPUS: u8 = 254;

/// Errors from setting up or running vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The operation that failed.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the {what} at guest address {addr:#x}")]
    GuestMemory {
        /// The structure being written.
        what: &'static str,
        /// Where it was written.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// KVM accepted fewer boot MSRs than requested.
    #[error("KVM accepted only {set} of {requested} boot MSRs")]
    MsrsNotSet {
        /// Number accepted.
        set: usize,
        /// Number requested.
        requested: usize,
    },
    /// A CPUID or MSR list could not be built.
    #[error("cannot build the {0} list: too many entries")]
    FamList(&'static str),
    /// The vCPU count is outside what this VMM supports.
    #[error("{count} vCPUs requested: between 1 and {max} are supported on this host")]
    VcpuCount {
        /// Requested count.
        count: usize,
        /// Most allowed.
        max: usize,
    },
    /// The MP table does not fit in its area.
    #[error("the MP table for {0} vCPUs does not fit below 1 MiB")]
    MpTableTooLarge(usize),
    /// The guest hit an error KVM could not handle (often an instruction it cannot emulate).
    #[error("vCPU {vcpu}: KVM internal error (suberror {suberror}: {kind}) at guest RIP {rip:#x}")]
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// KVM_INTERNAL_ERROR_* code.
        suberror: u32,
        /// Human-readable name of the suberror.
        kind: &'static str,
        /// Guest instruction pointer.
        rip: u64,
    },
    /// KVM could not enter the guest.
    #[error("vCPU {vcpu}: KVM failed to enter the guest (hardware reason {reason:#x})")]
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit this VMM does not handle.
    #[error("vCPU {vcpu}: unexpected KVM exit {exit} at guest RIP {rip:#x}")]
    UnexpectedExit {
        /// vCPU index.
        vcpu: u8,
        /// Description of the exit.
        exit: String,
        /// Guest instruction pointer.
        rip: u64,
    },
    /// `KVM_SET_MSRS` stopped at an MSR it would not write.
    #[error("KVM_SET_MSRS refused MSR {0:#x}")]
    MsrNotWritten(u32),
    /// A saved XSAVE area is smaller than the one this vCPU's KVM copies in.
    #[error("KVM_SET_XSAVE needs an XSAVE area of {needed} bytes, the saved one has {saved}")]
    XsaveTooSmall {
        /// Bytes in the saved area.
        saved: usize,
        /// Bytes KVM reads.
        needed: usize,
    },
    /// The saved TSC frequency differs from this host's and KVM cannot scale the TSC.
    #[error(
        "the saved vCPU TSC runs at {saved} kHz, this host's at {host} kHz, and KVM cannot \
         scale it (no KVM_CAP_TSC_CONTROL for KVM_SET_TSC_KHZ)"
    )]
    TscScalingUnsupported {
        /// Saved frequency in kHz.
        saved: u32,
        /// This host's frequency in kHz.
        host: u32,
    },
    /// KVM refused to scale the TSC to the saved frequency.
    #[error("KVM_SET_TSC_KHZ to the saved {saved} kHz (this host: {host} kHz) failed")]
    TscScaling {
        /// Saved frequency in kHz.
        saved: u32,
        /// This host's frequency in kHz.
        host: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// A kick signal beyond `SIGRTMAX` (or below `SIGRTMIN`) was asked for.
    #[error("signal {0} cannot kick vCPUs: pick a real-time signal between SIGRTMIN and SIGRTMAX")]
    KickSignal(libc::c_int),
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Opens `/dev/kvm` for a unit test that needs KVM. These tests run wherever
/// `/dev/kvm` exists and fail (never skip) without it, naming what is missing.
#[cfg(test)]
pub(crate) fn kvm_for_test() -> kvm_ioctls::Kvm {
    kvm_ioctls::Kvm::new().unwrap_or_else(|e| {
        panic!(
            "this KVM unit test cannot open /dev/kvm ({e}): run ember-cpu's tests on an x86_64 \
             host with KVM, as a user that can open /dev/kvm read-write (e.g. root)"
        )
    })
}

/// Wraps a KVM ioctl error with what was being done.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
