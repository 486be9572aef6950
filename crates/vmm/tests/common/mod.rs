//! Shared harness for whole-VM tests: boots a test guest in-process with its
//! serial output captured, stops it after a deadline so a stuck guest fails the
//! test instead of hanging it, and parses the guest's `key=value` lines.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_vmm::{
    build, BootTime, DriveConfig, EventLoop, ExitReason, MetricGroup, NetConfig, RngConfig,
    SerialInput, SerialOutput, SnapshotFiles, SnapshotKind, VmConfig, VsockConfig,
};

/// Longest a test guest may run (the emulator runs ~1M instructions/s).
pub const GUEST_DEADLINE: Duration = Duration::from_secs(120);

/// A writer whose bytes the test reads back.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What a guest run produced.
pub struct Run {
    pub result: ember_vmm::Result<ExitReason>,
    pub output: String,
    pub boot_time: Option<BootTime>,
    pub metrics: Vec<MetricGroup>,
}

impl Run {
    /// Counter `name` of metric group `group`.
    pub fn metric(&self, group: &str, name: &str) -> u64 {
        self.metrics
            .iter()
            .find(|g| g.name == group)
            .and_then(|g| g.counters.iter().find(|(n, _)| *n == name))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no metric {group}.{name} in {:?}", self.metrics))
    }

    /// The value of `key` on the first line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        self.output
            .lines()
            .filter(|l| l.starts_with(prefix))
            .find_map(|l| value_of(l, key))
    }

    /// All lines starting with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Asserts the guest ran to `guest: done` and reset the VM.
    pub fn assert_clean_reset(&self) {
        assert!(
            matches!(self.result, Ok(ExitReason::Reset)),
            "exit {:?}; output:\n{}",
            self.result,
            self.output
        );
        assert!(
            self.output.contains("guest: done"),
            "output:\n{}",
            self.output
        );
    }
}

/// `key`'s value in a line of space-separated `key=value` pairs.
pub fn value_of(line: &str, key: &str) -> Option<String> {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The lines of `text` up to its last newline: the guest writes a byte at a
/// time, so the last line of a capture may be cut short.
pub fn complete_lines(text: &str) -> std::str::Lines<'_> {
    text.rfind('\n').map_or("", |end| &text[..end]).lines()
}

/// Parses `0x...` as produced by the guest.
pub fn hex(value: &str) -> u64 {
    u64::from_str_radix(value.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{value:?} is not hex: {e}"))
}

/// The guest's initrd hash: 32-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// How to boot a test guest.
pub struct Guest {
    pub kernel: &'static str,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub initrd: Option<PathBuf>,
    pub input: SerialInput,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<RngConfig>,
}

impl Guest {
    pub fn new(kernel: &'static str, scenario: &str) -> Guest {
        Guest {
            kernel,
            cmdline: format!("console=ttyS0 ember.test={scenario}"),
            vcpus: 1,
            mem_mib: 128,
            initrd: None,
            input: SerialInput::None,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            entropy: None,
        }
    }

    pub fn vsock(mut self, vsock: VsockConfig) -> Guest {
        self.vsock = Some(vsock);
        self
    }

    pub fn entropy(mut self, entropy: RngConfig) -> Guest {
        self.entropy = Some(entropy);
        self
    }

    pub fn net(mut self, net: NetConfig) -> Guest {
        self.nets.push(net);
        self
    }

    /// Adds `args` to the command line.
    pub fn args(mut self, args: &str) -> Guest {
        self.cmdline.push(' ');
        self.cmdline.push_str(args);
        self
    }

    pub fn drive(mut self, drive: DriveConfig) -> Guest {
        self.drives.push(drive);
        self
    }

    pub fn vcpus(mut self, vcpus: u8) -> Guest {
        self.vcpus = vcpus;
        self
    }

    pub fn mem_mib(mut self, mem_mib: u64) -> Guest {
        self.mem_mib = mem_mib;
        self
    }

    pub fn initrd(mut self, path: PathBuf) -> Guest {
        self.initrd = Some(path);
        self
    }

    pub fn input(mut self, input: SerialInput) -> Guest {
        self.input = input;
        self
    }

    pub fn config(self, capture: &Capture) -> VmConfig {
        let mut config = VmConfig::new(self.kernel, self.cmdline);
        config.vcpu_count = self.vcpus;
        config.mem_size_mib = self.mem_mib;
        config.initrd = self.initrd;
        config.serial_input = self.input;
        config.drives = self.drives;
        config.net_interfaces = self.nets;
        config.vsock = self.vsock;
        config.entropy = self.entropy;
        config.serial_output = SerialOutput::Writer(Box::new(capture.clone()));
        config
    }

    /// Boots the guest and runs it to the end (or the deadline).
    pub fn run(self) -> Run {
        let capture = Capture::default();
        let vm = build(self.config(&capture)).expect("the VM builds");
        run_vm(vm, &capture, GUEST_DEADLINE)
    }
}

/// Runs a built VM, stopping it after `deadline`; the metrics are read just
/// before the VM is torn down.
pub fn run_vm(vm: ember_vmm::Vm, capture: &Capture, deadline: Duration) -> Run {
    run_vm_with(vm, capture, deadline, |_| {})
}

/// [`run_vm`], calling `hook` with the running VM at least every 50 ms (to
/// act on the host side while the guest runs).
pub fn run_vm_with(
    vm: ember_vmm::Vm,
    capture: &Capture,
    deadline: Duration,
    mut hook: impl FnMut(&ember_vmm::RunningVm),
) -> Run {
    let timer = vm.boot_timer();
    let stop = vm.stop_handle().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(deadline).is_err() {
            stop.stop().unwrap();
        }
    });
    let mut event_loop = EventLoop::new().unwrap();
    let running = vm.start(&mut event_loop, None).unwrap();
    let result = loop {
        if let Some(outcome) = running.take_outcome() {
            break outcome;
        }
        hook(&running);
        event_loop.run_with_timeout(50).unwrap();
    };
    let metrics = running.metrics();
    running.shutdown();
    drop(done_tx);
    watchdog.join().unwrap();
    let boot_time = timer.lock().unwrap().boot_time();
    Run {
        result,
        output: capture.text(),
        boot_time,
        metrics,
    }
}

/// A VM running in the test's hands: its event loop is turned while the test
/// waits, so it can pause, snapshot and stop it at chosen points.
pub struct Live {
    pub event_loop: EventLoop,
    pub vm: ember_vmm::RunningVm,
    pub capture: Capture,
}

impl Live {
    /// Starts `vm`, its serial output going to `capture`.
    pub fn start(vm: ember_vmm::Vm, capture: Capture) -> Live {
        let mut event_loop = EventLoop::new().unwrap();
        let vm = vm.start(&mut event_loop, None).unwrap();
        Live {
            event_loop,
            vm,
            capture,
        }
    }

    /// Boots `guest`.
    pub fn boot(guest: Guest) -> Live {
        let capture = Capture::default();
        let vm = build(guest.config(&capture)).expect("the VM builds");
        Live::start(vm, capture)
    }

    /// Turns the event loop until `done` holds for the serial output (which
    /// is returned), or panics after [`GUEST_DEADLINE`] or if the VM ends.
    pub fn wait_for(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + GUEST_DEADLINE;
        loop {
            let text = self.capture.text();
            if done(&text) {
                return text;
            }
            if let Some(outcome) = self.vm.take_outcome() {
                panic!("the VM ended ({outcome:?}) before {what}; output:\n{text}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} in time; output:\n{text}"
            );
            self.event_loop.run_with_timeout(20).unwrap();
        }
    }

    /// The last value of `key=` in the output's complete lines starting with
    /// `key=` (a pause may cut the last line short).
    pub fn last_value(&self, key: &str) -> Option<u64> {
        let prefix = format!("{key}=");
        let text = self.capture.text();
        complete_lines(&text)
            .rev()
            .filter_map(|line| line.strip_prefix(&prefix))
            .find_map(|value| value.split_whitespace().next())
            .map(hex)
    }
}

/// Snapshot files in a temporary directory of their own.
pub struct SavedFiles {
    _dir: tempfile::TempDir,
    pub state: PathBuf,
    pub mem: PathBuf,
}

impl SavedFiles {
    pub fn new() -> SavedFiles {
        let dir = tempfile::tempdir().unwrap();
        SavedFiles {
            state: dir.path().join("vm.state"),
            mem: dir.path().join("vm.mem"),
            _dir: dir,
        }
    }

    /// A full snapshot to these files.
    pub fn full(&self) -> SnapshotFiles {
        SnapshotFiles::new(SnapshotKind::Full, &self.state, &self.mem)
    }
}

impl Live {
    /// Pauses the VM, takes a full snapshot to new files and stops the VM.
    pub fn save_and_stop(mut self) -> SavedFiles {
        let files = SavedFiles::new();
        self.vm.pause().unwrap();
        self.vm.snapshot(&files.full()).unwrap();
        self.vm.shutdown();
        files
    }
}
