//! A configured vCPU and its run loop.
//!
//! Port and MMIO exits are handed synchronously to an [`ExitHandler`]; the loop
//! returns only when the guest stops the CPU (reset, power-off, triple fault),
//! on an error it cannot continue from, or when another thread *kicks* it with
//! the [`KickSignal`]. A kick sets `immediate_exit` in the vCPU's `kvm_run` from
//! the signal handler, so it is never lost even if it lands just before
//! `KVM_RUN` is entered.

use std::cell::Cell;
use std::ptr::null_mut;

use kvm_bindings::{
    kvm_run, CpuId, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_SIMUL_EX, KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMAX, SIGRTMIN};

use crate::cpuid::{host_brand_string, normalize, Topology};
use crate::lapic::setup_lints;
use crate::msr::setup_msrs;
use crate::regs::{boot_fpu, setup_boot_registers, EntryPoint};
use crate::state::StateSupport;
use crate::{kvm_err, Error, Result};

/// Receives the exits a vCPU cannot finish in the kernel. Shared by all vCPU
/// threads, so it takes `&self`; implementations lock what they mutate.
pub trait ExitHandler {
    /// The guest read `data.len()` bytes from I/O `port`; fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// The guest wrote `data` to I/O `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// The guest read `data.len()` bytes at guest-physical `addr`; fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest wrote `data` at guest-physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why [`Vcpu::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// Another thread kicked the vCPU out of `KVM_RUN`; guest state is intact and
    /// `run` may be called again.
    Kicked,
    /// The guest asked for a reset (`KVM_SYSTEM_EVENT_RESET`).
    Reset,
    /// The guest powered off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    Crash,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`), which a PC treats as a reset.
    TripleFault,
}

/// The signal that kicks vCPU threads out of `KVM_RUN`: `SIGRTMIN` by
/// default, or one the VMM picks when it uses `SIGRTMIN` for something else.
/// Its handler (installed by [`KickSignal::install_handler`]) is process-wide
/// and only marks the kicked thread's running vCPU, if any, for an immediate
/// exit.
///
/// # Example
///
/// ```
/// use ember_cpu::vcpu::KickSignal;
///
/// let default = KickSignal::default();
/// assert_eq!(default.number(), libc::SIGRTMIN());
/// let other = KickSignal::realtime(2)?;
/// assert_eq!(other.number(), libc::SIGRTMIN() + 2);
/// assert!(KickSignal::realtime(libc::SIGRTMAX()).is_err());
/// # Ok::<(), ember_cpu::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KickSignal(c_int);

impl Default for KickSignal {
    fn default() -> KickSignal {
        KickSignal(SIGRTMIN())
    }
}

impl KickSignal {
    /// `SIGRTMIN + offset`, which must not pass `SIGRTMAX`.
    pub fn realtime(offset: c_int) -> Result<KickSignal> {
        let number = SIGRTMIN().saturating_add(offset);
        if offset < 0 || number > SIGRTMAX() {
            return Err(Error::KickSignal(number));
        }
        Ok(KickSignal(number))
    }

    /// The signal number, to send to a vCPU thread (`pthread_kill`).
    pub fn number(self) -> c_int {
        self.0
    }

    /// Installs the kick handler for this signal, process-wide. Call it
    /// before starting vCPU threads; installing it again is harmless.
    pub fn install_handler(self) -> Result<()> {
        register_signal_handler(self.0, handle_kick).map_err(Error::KickHandler)
    }
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, for the kick handler.
    static RUNNING_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn handle_kick(_num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    let run = RUNNING_KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set only while `Vcpu::run` executes on this thread
        // and points into that vCPU's live `kvm_run` mapping; a volatile byte store
        // is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Publishes a vCPU's `kvm_run` to the kick handler for as long as it lives.
struct KickTarget;

impl KickTarget {
    fn arm(run: *mut kvm_run) -> KickTarget {
        RUNNING_KVM_RUN.with(|cell| cell.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        RUNNING_KVM_RUN.with(|cell| cell.set(null_mut()));
    }
}

/// What happened on one `KVM_RUN`, with the `kvm_run` borrow ended.
enum Outcome {
    Continue,
    Stop(VcpuStop),
    InternalError,
    FailEntry(u64),
    Unexpected(String),
}

fn internal_error_kind(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown",
    }
}

/// One virtual CPU of a VM.
///
/// # Example
///
/// Needs `/dev/kvm`, so it is compiled but not run here:
///
/// ```no_run
/// use ember_cpu::platform::setup_platform;
/// use ember_cpu::vcpu::{ExitHandler, KickSignal, Vcpu};
/// use ember_cpu::EntryPoint;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// /// Devices: none here; a VMM dispatches these to its buses.
/// struct NoDevices;
/// impl ExitHandler for NoDevices {
///     fn pio_read(&self, _port: u16, data: &mut [u8]) { data.fill(0xff) }
///     fn pio_write(&self, _port: u16, _data: &[u8]) {}
///     fn mmio_read(&self, _addr: u64, data: &mut [u8]) { data.fill(0xff) }
///     fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kvm = kvm_ioctls::Kvm::new()?;
/// let vm = kvm.create_vm()?;
/// setup_platform(&vm)?;
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])?;
/// // ... register `mem` with KVM and load a kernel whose entry is 0x100_0000 ...
/// KickSignal::default().install_handler()?;
/// let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
/// let mut vcpu = Vcpu::new(&vm, 0)?;
/// let entry = EntryPoint::Linux64 { entry: 0x100_0000 };
/// vcpu.configure(&kvm, &supported, 1, 1, &mem, Some(entry))?;
/// let stop = vcpu.run(&NoDevices)?;
/// println!("the guest stopped: {stop:?}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    support: StateSupport,
}

impl Vcpu {
    /// Creates vCPU `index` of `vm` (its APIC ID is `index`).
    pub fn new(vm: &VmFd, index: u8) -> Result<Vcpu> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            fd,
            index,
            support: StateSupport::of(vm),
        })
    }

    /// This vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM file descriptor, for state save and restore.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Which optional state KVM saves for this vCPU.
    pub(crate) fn state_support(&self) -> StateSupport {
        self.support
    }

    /// Sets CPUID (for a VM of `vcpu_count` vCPUs, `threads_per_core` to a
    /// core), MSRs, the local APIC's LINT pins and the FPU. The boot
    /// processor (`entry` is `Some`) also gets its entry registers, GDT and page
    /// tables; application processors wait for INIT/SIPI from it.
    pub fn configure<M: GuestMemoryBackend>(
        &self,
        kvm: &Kvm,
        supported_cpuid: &CpuId,
        vcpu_count: u8,
        threads_per_core: u8,
        mem: &M,
        entry: Option<EntryPoint>,
    ) -> Result<()> {
        let mut cpuid = supported_cpuid.clone();
        normalize(
            &mut cpuid,
            Topology {
                vcpu_index: self.index,
                vcpu_count,
                threads_per_core,
            },
            &host_brand_string(),
        )?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        setup_msrs(kvm, &self.fd)?;
        setup_lints(&self.fd)?;
        match entry {
            Some(entry) => setup_boot_registers(&self.fd, mem, entry),
            None => self.fd.set_fpu(&boot_fpu()).map_err(kvm_err("KVM_SET_FPU")),
        }
    }

    /// The guest's instruction pointer, or 0 if it cannot be read.
    pub fn rip(&self) -> u64 {
        self.fd.get_regs().map_or(0, |regs| regs.rip)
    }

    /// Runs the guest until it stops, fails, or this thread is kicked.
    pub fn run<H: ExitHandler + ?Sized>(&mut self, io: &H) -> Result<VcpuStop> {
        let _target = KickTarget::arm(self.fd.get_kvm_run());
        loop {
            let outcome = match self.fd.run() {
                Ok(exit) => Self::classify(exit, io),
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    Outcome::Stop(VcpuStop::Kicked)
                }
                Err(e) if e.errno() == libc::EAGAIN => Outcome::Continue,
                Err(source) => {
                    return Err(Error::Kvm {
                        what: "KVM_RUN",
                        source,
                    })
                }
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Stop(stop) => return Ok(stop),
                Outcome::InternalError => {
                    let suberror = self.internal_suberror();
                    return Err(Error::InternalError {
                        vcpu: self.index,
                        suberror,
                        kind: internal_error_kind(suberror),
                        rip: self.rip(),
                    });
                }
                Outcome::FailEntry(reason) => {
                    return Err(Error::FailEntry {
                        vcpu: self.index,
                        reason,
                    })
                }
                Outcome::Unexpected(exit) => {
                    return Err(Error::UnexpectedExit {
                        vcpu: self.index,
                        exit,
                        rip: self.rip(),
                    })
                }
            }
        }
    }

    fn classify<H: ExitHandler + ?Sized>(exit: VcpuExit<'_>, io: &H) -> Outcome {
        match exit {
            VcpuExit::IoIn(port, data) => io.pio_read(port, data),
            VcpuExit::IoOut(port, data) => io.pio_write(port, data),
            VcpuExit::MmioRead(addr, data) => io.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => io.mmio_write(addr, data),
            VcpuExit::Intr => {}
            VcpuExit::Shutdown => return Outcome::Stop(VcpuStop::TripleFault),
            VcpuExit::SystemEvent(kind, _) => {
                return match kind {
                    KVM_SYSTEM_EVENT_RESET => Outcome::Stop(VcpuStop::Reset),
                    KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Stop(VcpuStop::PowerOff),
                    KVM_SYSTEM_EVENT_CRASH => Outcome::Stop(VcpuStop::Crash),
                    other => Outcome::Unexpected(format!("system event {other}")),
                }
            }
            VcpuExit::InternalError => return Outcome::InternalError,
            VcpuExit::FailEntry(reason, _) => return Outcome::FailEntry(reason),
            other => return Outcome::Unexpected(format!("{other:?}")),
        }
        Outcome::Continue
    }

    /// The suberror KVM stored for the last internal-error exit.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: only called after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for
        // which the kernel fills the `internal` member of the exit union.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}
