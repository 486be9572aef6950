//! Command-line parsing: Firecracker's flags (`--config-file`, `--no-api`,
//! logging flags) and the friendlier `ember run` subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use ember_api::logger::{parse_level, LoggerConfig};
use ember_api::service::ProcessStartTimes;
use ember_vmm::{
    BlockConfig, BucketConfig, CacheType, DriveConfig, NetConfig, RngConfig, VsockConfig,
};
use lexopt::prelude::*;
use lexopt::Arg;

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
Usage:
  ember [--api-sock PATH] [--config-file FILE] [OPTIONS]
      Serve Ember's Firecracker-compatible REST API on a Unix socket (default
      /run/ember.socket) and boot the VM it configures; with a config file, boot
      that VM at once and keep serving the API.
  ember --no-api --config-file FILE [OPTIONS]
      Boot the VM a Firecracker JSON config file describes, without an API.
  ember run --kernel KERNEL [--initrd INITRD] [--cmdline CMDLINE] [--vcpus N]
            [--mem MIB] [--drive SPEC]... [OPTIONS] [-- GUEST ARGS...]
      Boot a kernel directly. Guest args go after \" -- \" on the kernel command line.
      SPEC is PATH[,ro][,root][,id=ID][,cache=unsafe|writeback][,partuuid=UUID]:
      a virtio block device backed by PATH (ids default to drive0, drive1, ...).
      --net tap=NAME[,mac=MAC][,id=ID] adds a virtio-net interface on TAP device NAME
      (ids default to net0, net1, ...; a random local MAC without mac=).
      --vsock cid=N,uds=PATH adds a vsock device: host clients connect to PATH and
      send \"CONNECT <port>\\n\"; guest connections to port P go to PATH_P.
      --serial-out PATH sends the console to a file (appended to) or FIFO instead of
      standard output, as PUT /serial; what a full FIFO cannot take is lost and counted.
      --entropy[=bytes=N][,ops=N] adds a virtio-rng device fed by the host's
      getrandom, optionally limited to N random bytes and N requests a second.
  ember run --restore STATE --mem-file MEM [--net-override ID=TAP]...
            [--vsock-override PATH] [--serial-out PATH] [OPTIONS]
      Restore a VM from a snapshot (PUT /snapshot/create wrote STATE and MEM) and
      run it: the interface ID on TAP instead of the saved TAP, the vsock socket
      at PATH instead of the saved path.
  ember snapshot describe STATE
      Describe a snapshot's state file: format, vCPUs, memory, devices, sizes.

Options:
  --id ID              Instance id shown in logs: 1 to 64 of A-Z a-z 0-9 -
                       (default anonymous-instance)
  --log-path PATH      Write logs to a file or FIFO instead of standard error
  --level LEVEL        Error, Warning, Info (default), Debug, Trace or Off
  --module PREFIX      Only log lines from modules whose path starts with PREFIX
                       (Ember's modules are ember_vmm::..., ember_api::..., ...)
  --show-level         Show each log line's level
  --show-log-origin    Show each log line's source file and line
  --metrics-path PATH  Write metrics to a file or FIFO from the start, as PUT /metrics
                       (API and config-file modes)
  --boot-timer         Accepted for Firecracker compatibility: the boot timer is always on
  --kvm-device PATH    KVM device to open (default /dev/kvm)
  --http-api-max-payload-size BYTES
                       Largest API request body accepted (default 51200)
  --mmds-size-limit BYTES
                       Largest MMDS document, as compact JSON (default: the API payload
                       limit)
  --metadata FILE      Put FILE's JSON in the MMDS at start (API and config-file modes)
  --start-time-us US, --start-time-cpu-us US, --parent-cpu-time-us US
                       Start times from a jailer (monotonic and CPU microseconds), for
                       the api_server process_startup_time_us/_cpu_us metrics
  --seccomp-filter FILE  Per-thread seccomp filters (threads vmm, vcpu, api) instead of
                       the built-in ones: seccompiler's JSON, or a file Firecracker's
                       seccompiler-bin compiled
  --no-seccomp         Run without seccomp filters (they are on by default)
  --snapshot-version   Print the snapshot format version this Ember writes (vN.0.0)
  --describe-snapshot STATE
                       Print the format version of a snapshot's state file
  --version            Print the version: `Firecracker vX.Y.Z+ember.E` (Ember E
                       following Firecracker X.Y.Z's API)
  --help               Print this help
Refused: --enable-pci (Ember has no PCI).

Exit status: 0 when the guest resets or powers off, 1 on an error, 2 on bad usage,
159 when a thread breaks its seccomp filter; after a clean stop on a termination
signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM) Ember dies
by that signal.";

/// API socket used when neither `--api-sock` nor `--no-api` is given.
pub const DEFAULT_API_SOCKET: &str = "/run/ember.socket";

/// Default kernel command line of `ember run`.
pub const DEFAULT_RUN_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// What `ember run` boots.
#[derive(Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line before the guest arguments.
    pub cmdline: String,
    /// Arguments for the guest's init, after `--`.
    pub guest_args: Vec<String>,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Block devices.
    pub drives: Vec<DriveConfig>,
    /// Network interfaces.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// A file or FIFO for the console instead of standard output.
    pub serial_out: Option<PathBuf>,
    /// The entropy device.
    pub entropy: Option<RngConfig>,
}

/// Parses the value of `--entropy=...`: `bytes=N` and `ops=N`, limits per
/// second (each a token bucket of N refilled over a second).
pub fn parse_entropy(spec: &str) -> Result<RngConfig, String> {
    let mut config = RngConfig::default();
    for option in spec.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("--entropy {spec}: unknown option `{option}`"))?;
        let size: u64 = value
            .parse()
            .map_err(|_| format!("--entropy {spec}: `{value}` is not a number"))?;
        let bucket = Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 1000,
        });
        match key {
            "bytes" => config.bandwidth = bucket,
            "ops" => config.ops = bucket,
            _ => return Err(format!("--entropy {spec}: unknown option `{option}`")),
        }
    }
    Ok(config)
}

/// Parses a `--vsock` value.
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for option in spec.split(',') {
        match option.split_once('=') {
            Some(("cid", n)) => {
                cid = Some(
                    n.parse::<u64>()
                        .map_err(|_| format!("--vsock {spec}: cid `{n}` is not a number"))?,
                )
            }
            Some(("uds", path)) if !path.is_empty() => uds = Some(PathBuf::from(path)),
            _ => return Err(format!("--vsock {spec}: unknown option `{option}`")),
        }
    }
    match (cid, uds) {
        (Some(guest_cid), Some(uds_path)) => Ok(VsockConfig {
            guest_cid,
            uds_path,
        }),
        _ => Err(format!("--vsock {spec}: give both cid=N and uds=PATH")),
    }
}

/// Parses a `--net` value; `index` names interfaces without an `id=`.
pub fn parse_net(spec: &str, index: usize) -> Result<NetConfig, String> {
    let mut net = NetConfig {
        iface_id: format!("net{index}"),
        ..Default::default()
    };
    for option in spec.split(',') {
        match option.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => net.host_dev_name = name.to_owned(),
            Some(("id", id)) if !id.is_empty() => net.iface_id = id.to_owned(),
            Some(("mac", mac)) => {
                net.guest_mac = Some(
                    ember_api::model::parse_mac(mac).map_err(|e| format!("--net {spec}: {e}"))?,
                )
            }
            _ => return Err(format!("--net {spec}: unknown option `{option}`")),
        }
    }
    if net.host_dev_name.is_empty() {
        return Err(format!("--net {spec}: give the TAP device with tap=NAME"));
    }
    Ok(net)
}

/// Parses a `--drive` value; `index` names drives without an `id=`.
pub fn parse_drive(spec: &str, index: usize) -> Result<DriveConfig, String> {
    let mut parts = spec.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("--drive {spec}: the backing file comes first"))?;
    let mut drive = DriveConfig {
        block: BlockConfig {
            drive_id: format!("drive{index}"),
            path: PathBuf::from(path),
            ..Default::default()
        },
        ..Default::default()
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => drive.block.read_only = true,
            None if option == "root" => drive.is_root_device = true,
            Some(("id", id)) if !id.is_empty() => drive.block.drive_id = id.to_owned(),
            Some(("cache", "unsafe")) => drive.block.cache_type = CacheType::Unsafe,
            Some(("cache", "writeback")) => drive.block.cache_type = CacheType::Writeback,
            Some(("partuuid", uuid)) if !uuid.is_empty() => drive.partuuid = Some(uuid.to_owned()),
            _ => return Err(format!("--drive {spec}: unknown option `{option}`")),
        }
    }
    Ok(drive)
}

impl RunArgs {
    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        if self.guest_args.is_empty() {
            self.cmdline.clone()
        } else {
            format!("{} -- {}", self.cmdline, self.guest_args.join(" "))
        }
    }
}

/// What `ember run --restore` restores.
#[derive(Debug, PartialEq, Eq)]
pub struct RestoreArgs {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub mem_file: PathBuf,
    /// Interfaces moved to other TAPs: (id, TAP).
    pub net_overrides: Vec<(String, String)>,
    /// The vsock socket at another path.
    pub vsock_override: Option<PathBuf>,
    /// A file or FIFO for the console instead of standard output.
    pub serial_out: Option<PathBuf>,
}

/// Parses a `--net-override ID=TAP` value.
pub fn parse_net_override(spec: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((id, tap)) if !id.is_empty() && !tap.is_empty() => Ok((id.to_owned(), tap.to_owned())),
        _ => Err(format!("--net-override {spec}: give ID=TAP")),
    }
}

/// Which seccomp filters to install.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    /// The built-in filters.
    #[default]
    BuiltIn,
    /// Filters from a file: JSON, or Firecracker's compiled format.
    File(PathBuf),
    /// None.
    Off,
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print usage.
    Help,
    /// Print the version.
    Version,
    /// Boot from a config file, without an API.
    ConfigFile(PathBuf),
    /// Serve the API (and boot from a config file if one is given).
    Api {
        /// The socket path.
        socket: PathBuf,
        /// A config file to boot at once.
        config_file: Option<PathBuf>,
    },
    /// Boot from `ember run` arguments.
    Run(Box<RunArgs>),
    /// Restore from `ember run --restore` arguments.
    Restore(Box<RestoreArgs>),
    /// Print the snapshot format version this Ember writes.
    SnapshotVersion,
    /// Describe a state file: only its format version (`--describe-snapshot`)
    /// or everything (`ember snapshot describe`).
    DescribeSnapshot {
        /// The state file.
        path: PathBuf,
        /// Only the format version.
        brief: bool,
    },
}

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// What to do.
    pub command: Command,
    /// Logging.
    pub logger: LoggerConfig,
    /// KVM device.
    pub kvm_device: Option<PathBuf>,
    /// Seccomp filters.
    pub seccomp: SeccompChoice,
    /// Largest API request body, in bytes.
    pub api_max_payload: usize,
    /// Metrics destination (`--metrics-path`), set up at start.
    pub metrics_path: Option<PathBuf>,
    /// MMDS store limit in bytes (`--mmds-size-limit`); Firecracker's
    /// default is the API payload limit.
    pub mmds_size_limit: Option<usize>,
    /// A JSON file to put in the MMDS at start (`--metadata`).
    pub metadata: Option<PathBuf>,
    /// The start times a jailer passed.
    pub process_start: ProcessStartTimes,
}

fn custom(message: String) -> lexopt::Error {
    lexopt::Error::Custom(message.into())
}

fn string(value: OsString, flag: &str) -> Result<String, lexopt::Error> {
    value
        .into_string()
        .map_err(|_| custom(format!("{flag}: not valid UTF-8")))
}

fn number<T: std::str::FromStr>(
    parser: &mut lexopt::Parser,
    flag: &str,
    what: &str,
) -> Result<T, lexopt::Error> {
    let text = string(parser.value()?, flag)?;
    text.parse()
        .map_err(|_| custom(format!("{flag} {text}: {what}")))
}

/// The command line as it is read, before it becomes [`Args`].
struct State {
    logger: LoggerConfig,
    kvm_device: Option<PathBuf>,
    seccomp: SeccompChoice,
    seccomp_flags: u32,
    api_max_payload: usize,
    metrics_path: Option<PathBuf>,
    mmds_size_limit: Option<usize>,
    metadata: Option<PathBuf>,
    process_start: ProcessStartTimes,
    config_file: Option<PathBuf>,
    api_socket: Option<PathBuf>,
    no_api: bool,
    run: bool,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    vcpus: u8,
    mem_mib: u64,
    drives: Vec<DriveConfig>,
    nets: Vec<NetConfig>,
    vsock: Option<VsockConfig>,
    serial_out: Option<PathBuf>,
    entropy: Option<RngConfig>,
    guest_args: Vec<String>,
    restore: Option<PathBuf>,
    mem_file: Option<PathBuf>,
    net_overrides: Vec<(String, String)>,
    vsock_override: Option<PathBuf>,
    /// `ember snapshot`: its words (`describe FILE`).
    snapshot: Option<Vec<String>>,
    snapshot_version: bool,
    describe_snapshot: Option<PathBuf>,
    help: bool,
    version: bool,
}

impl State {
    fn new() -> State {
        State {
            logger: LoggerConfig::default(),
            kvm_device: None,
            seccomp: SeccompChoice::BuiltIn,
            seccomp_flags: 0,
            api_max_payload: ember_api::http::DEFAULT_MAX_PAYLOAD_BYTES,
            metrics_path: None,
            mmds_size_limit: None,
            metadata: None,
            process_start: ProcessStartTimes::default(),
            config_file: None,
            api_socket: None,
            no_api: false,
            run: false,
            kernel: None,
            initrd: None,
            cmdline: None,
            vcpus: 1,
            mem_mib: 128,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            serial_out: None,
            entropy: None,
            guest_args: Vec::new(),
            restore: None,
            mem_file: None,
            net_overrides: Vec::new(),
            vsock_override: None,
            snapshot: None,
            snapshot_version: false,
            describe_snapshot: None,
            help: false,
            version: false,
        }
    }

    /// Takes an argument other than a long option; `run` is accepted as the
    /// first word that is not an option, so options a jailer puts first
    /// (`--id`, the start times) may come before it.
    fn take(&mut self, arg: Arg<'_>) -> Result<(), lexopt::Error> {
        match arg {
            Value(word) if self.snapshot.is_some() => {
                let word = string(word, "ember snapshot")?;
                self.snapshot.get_or_insert_with(Vec::new).push(word);
            }
            Value(word) if !self.run && word == "run" => self.run = true,
            Value(word) if !self.run && word == "snapshot" => self.snapshot = Some(Vec::new()),
            Value(word) if self.run => self.guest_args.push(string(word, "guest argument")?),
            Short('h') => self.help = true,
            Short('V') => self.version = true,
            other => return Err(other.unexpected()),
        }
        Ok(())
    }

    /// Takes the long option `--flag`.
    fn take_long(&mut self, flag: &str, parser: &mut lexopt::Parser) -> Result<(), lexopt::Error> {
        let known = self.logging(flag, parser)?
            || self.firecracker(flag, parser)?
            || self.run && self.run_option(flag, parser)?;
        if known {
            Ok(())
        } else {
            Err(Long(flag).unexpected())
        }
    }

    /// Logging options; `false` if `flag` is not one.
    fn logging(&mut self, flag: &str, parser: &mut lexopt::Parser) -> Result<bool, lexopt::Error> {
        match flag {
            "id" => {
                let id = string(parser.value()?, "--id")?;
                ember_jailer::args::validate_id(&id).map_err(|e| custom(e.to_string()))?;
                self.logger.instance_id = id;
            }
            "log-path" => self.logger.path = Some(PathBuf::from(parser.value()?)),
            "level" => {
                let text = string(parser.value()?, "--level")?;
                self.logger.level = parse_level(&text)
                    .ok_or_else(|| custom(format!("--level {text}: unknown level")))?;
            }
            "module" => self.logger.module = Some(string(parser.value()?, "--module")?),
            "show-level" => self.logger.show_level = true,
            "show-log-origin" => self.logger.show_origin = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Firecracker's other options and Ember's own; `false` if `flag` is not one.
    fn firecracker(
        &mut self,
        flag: &str,
        parser: &mut lexopt::Parser,
    ) -> Result<bool, lexopt::Error> {
        let us = "not a number of microseconds";
        match flag {
            "config-file" => self.config_file = Some(PathBuf::from(parser.value()?)),
            "no-api" => self.no_api = true,
            "api-sock" => self.api_socket = Some(PathBuf::from(parser.value()?)),
            "boot-timer" => {}
            "http-api-max-payload-size" => {
                self.api_max_payload =
                    number(parser, "--http-api-max-payload-size", "not a size in bytes")?
            }
            "mmds-size-limit" => {
                self.mmds_size_limit =
                    Some(number(parser, "--mmds-size-limit", "not a size in bytes")?)
            }
            "metadata" => self.metadata = Some(PathBuf::from(parser.value()?)),
            "enable-pci" => return Err(custom(PCI_MISSING.to_owned())),
            "metrics-path" => self.metrics_path = Some(PathBuf::from(parser.value()?)),
            "start-time-us" => {
                self.process_start.start_time_us = Some(number(parser, "--start-time-us", us)?)
            }
            "start-time-cpu-us" => {
                self.process_start.start_time_cpu_us =
                    Some(number(parser, "--start-time-cpu-us", us)?)
            }
            "parent-cpu-time-us" => {
                self.process_start.parent_cpu_time_us =
                    Some(number(parser, "--parent-cpu-time-us", us)?)
            }
            "kvm-device" => self.kvm_device = Some(PathBuf::from(parser.value()?)),
            "seccomp-filter" => {
                self.seccomp = SeccompChoice::File(PathBuf::from(parser.value()?));
                self.seccomp_flags += 1;
            }
            "no-seccomp" => {
                self.seccomp = SeccompChoice::Off;
                self.seccomp_flags += 1;
            }
            "snapshot-version" => self.snapshot_version = true,
            "describe-snapshot" => self.describe_snapshot = Some(PathBuf::from(parser.value()?)),
            "help" => self.help = true,
            "version" => self.version = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `ember run`'s options; `false` if `flag` is not one.
    fn run_option(
        &mut self,
        flag: &str,
        parser: &mut lexopt::Parser,
    ) -> Result<bool, lexopt::Error> {
        match flag {
            "kernel" => self.kernel = Some(PathBuf::from(parser.value()?)),
            "initrd" => self.initrd = Some(PathBuf::from(parser.value()?)),
            "cmdline" => self.cmdline = Some(string(parser.value()?, "--cmdline")?),
            "vcpus" => {
                let count: u32 = number(parser, "--vcpus", "not a number of vCPUs")?;
                self.vcpus = u8::try_from(count).map_err(|_| {
                    custom(format!(
                        "--vcpus {count}: at most {} vCPUs are supported",
                        ember_vmm::MAX_VCPU_COUNT
                    ))
                })?;
            }
            "mem" => self.mem_mib = number(parser, "--mem", "not a size in MiB")?,
            "net" => {
                let spec = string(parser.value()?, "--net")?;
                self.nets
                    .push(parse_net(&spec, self.nets.len()).map_err(custom)?);
            }
            "vsock" => {
                let spec = string(parser.value()?, "--vsock")?;
                self.vsock = Some(parse_vsock(&spec).map_err(custom)?);
            }
            "serial-out" => self.serial_out = Some(PathBuf::from(parser.value()?)),
            "entropy" => {
                let spec = match parser.optional_value() {
                    Some(value) => string(value, "--entropy")?,
                    None => String::new(),
                };
                self.entropy = Some(parse_entropy(&spec).map_err(custom)?);
            }
            "drive" => {
                let spec = string(parser.value()?, "--drive")?;
                self.drives
                    .push(parse_drive(&spec, self.drives.len()).map_err(custom)?);
            }
            "restore" => self.restore = Some(PathBuf::from(parser.value()?)),
            "mem-file" => self.mem_file = Some(PathBuf::from(parser.value()?)),
            "net-override" => {
                let spec = string(parser.value()?, "--net-override")?;
                self.net_overrides
                    .push(parse_net_override(&spec).map_err(custom)?);
            }
            "vsock-override" => self.vsock_override = Some(PathBuf::from(parser.value()?)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `ember run`'s VM.
    fn run_args(&mut self) -> Result<RunArgs, lexopt::Error> {
        let api_flag = [
            (self.config_file.is_some(), "--config-file"),
            (self.api_socket.is_some(), "--api-sock"),
            (self.no_api, "--no-api"),
            (self.metrics_path.is_some(), "--metrics-path"),
            (self.metadata.is_some(), "--metadata"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        if let Some(flag) = api_flag {
            return Err(custom(format!(
                "{flag} does not go with `ember run` (it is for the API and config-file modes)"
            )));
        }
        let kernel = self
            .kernel
            .take()
            .ok_or_else(|| lexopt::Error::MissingValue {
                option: Some("--kernel".into()),
            })?;
        Ok(RunArgs {
            kernel,
            initrd: self.initrd.take(),
            cmdline: self
                .cmdline
                .take()
                .unwrap_or_else(|| DEFAULT_RUN_CMDLINE.to_owned()),
            guest_args: std::mem::take(&mut self.guest_args),
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            drives: std::mem::take(&mut self.drives),
            nets: std::mem::take(&mut self.nets),
            vsock: self.vsock.take(),
            serial_out: self.serial_out.take(),
            entropy: self.entropy.take(),
        })
    }

    /// `ember run --restore`'s VM: no boot option goes with it.
    fn restore_args(&mut self, state: PathBuf) -> Result<RestoreArgs, lexopt::Error> {
        let boot_flag = [
            (self.kernel.is_some(), "--kernel"),
            (self.initrd.is_some(), "--initrd"),
            (self.cmdline.is_some(), "--cmdline"),
            (!self.drives.is_empty(), "--drive"),
            (!self.nets.is_empty(), "--net"),
            (self.vsock.is_some(), "--vsock"),
            (self.entropy.is_some(), "--entropy"),
            (!self.guest_args.is_empty(), "guest arguments"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        if let Some(flag) = boot_flag {
            return Err(custom(format!(
                "{flag} does not go with --restore (the snapshot holds the VM)"
            )));
        }
        let mem_file = self
            .mem_file
            .take()
            .ok_or_else(|| custom("--restore needs --mem-file MEM".to_owned()))?;
        Ok(RestoreArgs {
            state,
            mem_file,
            net_overrides: std::mem::take(&mut self.net_overrides),
            vsock_override: self.vsock_override.take(),
            serial_out: self.serial_out.take(),
        })
    }

    /// `ember snapshot ...`.
    fn snapshot_command(words: &[String]) -> Result<Command, lexopt::Error> {
        match words {
            [verb, path] if verb == "describe" => Ok(Command::DescribeSnapshot {
                path: PathBuf::from(path),
                brief: false,
            }),
            _ => Err(custom(
                "usage: ember snapshot describe STATE_FILE".to_owned(),
            )),
        }
    }

    /// The API or config-file mode.
    fn api_command(&mut self) -> Result<Command, lexopt::Error> {
        if !self.no_api {
            return Ok(Command::Api {
                socket: self
                    .api_socket
                    .take()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET)),
                config_file: self.config_file.take(),
            });
        }
        match (self.config_file.take(), &self.api_socket) {
            (Some(path), None) => Ok(Command::ConfigFile(path)),
            (_, Some(_)) => Err(custom(
                "--no-api and --api-sock contradict each other".to_owned(),
            )),
            (None, None) => Err(custom(
                "nothing to boot: --no-api needs --config-file FILE".to_owned(),
            )),
        }
    }

    fn finish(mut self) -> Result<Args, lexopt::Error> {
        if self.seccomp_flags > 1 {
            return Err(custom(
                "give at most one of --seccomp-filter and --no-seccomp".to_owned(),
            ));
        }
        let command = if self.help {
            Command::Help
        } else if self.version {
            Command::Version
        } else if self.snapshot_version {
            Command::SnapshotVersion
        } else if let Some(path) = self.describe_snapshot.take() {
            Command::DescribeSnapshot { path, brief: true }
        } else if let Some(words) = &self.snapshot {
            Self::snapshot_command(words)?
        } else if let Some(state) = self.restore.take().filter(|_| self.run) {
            Command::Restore(Box::new(self.restore_args(state)?))
        } else if self.run {
            Command::Run(Box::new(self.run_args()?))
        } else {
            self.api_command()?
        };
        Ok(Args {
            command,
            logger: self.logger,
            kvm_device: self.kvm_device,
            seccomp: self.seccomp,
            api_max_payload: self.api_max_payload,
            metrics_path: self.metrics_path,
            mmds_size_limit: self.mmds_size_limit,
            metadata: self.metadata,
            process_start: self.process_start,
        })
    }
}

/// Why `--enable-pci` is refused.
pub const PCI_MISSING: &str =
    "--enable-pci: Ember has no PCI support (its devices are virtio over MMIO)";

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut state = State::new();
    while let Some(arg) = parser.next()? {
        if let Long(flag) = arg {
            let flag = flag.to_owned();
            state.take_long(&flag, &mut parser)?;
        } else {
            state.take(arg)?;
        }
    }
    state.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, lexopt::Error> {
        parse(line.split_whitespace().map(OsString::from))
    }

    #[test]
    fn run_with_everything() {
        let parsed = args(
            "run --kernel k --initrd i --vcpus 4 --mem 512 --level Debug --serial-out c.fifo \
             -- echo hi",
        )
        .unwrap();
        let Command::Run(run) = parsed.command else {
            panic!("not run")
        };
        assert_eq!(run.kernel, PathBuf::from("k"));
        assert_eq!(run.initrd, Some(PathBuf::from("i")));
        assert_eq!((run.vcpus, run.mem_mib), (4, 512));
        assert_eq!(run.serial_out, Some(PathBuf::from("c.fifo")));
        assert_eq!(
            run.full_cmdline(),
            format!("{DEFAULT_RUN_CMDLINE} -- echo hi")
        );
        assert_eq!(parsed.logger.level, log::LevelFilter::Debug);
    }

    #[test]
    fn api_modes() {
        assert_eq!(
            args("--api-sock /tmp/a.sock").unwrap().command,
            Command::Api {
                socket: PathBuf::from("/tmp/a.sock"),
                config_file: None
            }
        );
        assert_eq!(
            args("--config-file vm.json").unwrap().command,
            Command::Api {
                socket: PathBuf::from(DEFAULT_API_SOCKET),
                config_file: Some(PathBuf::from("vm.json"))
            }
        );
        assert!(args("--no-api --api-sock x --config-file f").is_err());
    }

    #[test]
    fn seccomp_flags() {
        assert_eq!(
            args("run --kernel k").unwrap().seccomp,
            SeccompChoice::BuiltIn
        );
        assert_eq!(
            args("run --kernel k --no-seccomp").unwrap().seccomp,
            SeccompChoice::Off
        );
        assert_eq!(
            args("--seccomp-filter f.json --api-sock s")
                .unwrap()
                .seccomp,
            SeccompChoice::File(PathBuf::from("f.json"))
        );
        let err = args("run --kernel k --no-seccomp --seccomp-filter f").unwrap_err();
        assert!(err.to_string().contains("at most one"), "{err}");
    }

    #[test]
    fn firecracker_flags() {
        let parsed =
            args("--config-file vm.json --no-api --boot-timer --id vm1 --show-level").unwrap();
        assert_eq!(
            parsed.command,
            Command::ConfigFile(PathBuf::from("vm.json"))
        );
        assert_eq!(parsed.logger.instance_id, "vm1");
        assert!(parsed.logger.show_level);
    }

    #[test]
    fn options_a_jailer_puts_first_may_precede_run() {
        let parsed = args(
            "--id vm-1 --start-time-us 10 --start-time-cpu-us 20 --parent-cpu-time-us 30 \
             run --kernel k",
        )
        .unwrap();
        assert!(matches!(parsed.command, Command::Run(_)));
        assert_eq!(parsed.logger.instance_id, "vm-1");
        assert_eq!(
            parsed.process_start,
            ProcessStartTimes {
                start_time_us: Some(10),
                start_time_cpu_us: Some(20),
                parent_cpu_time_us: Some(30),
            }
        );
        // Only the first word is the subcommand.
        assert!(args("run --kernel k run").is_ok());
        assert!(args("--api-sock s run2").is_err());
    }

    #[test]
    fn firecrackers_other_options() {
        let parsed = args(
            "--api-sock s --metrics-path m.fifo --mmds-size-limit 4096 --module ember_vmm \
             --http-api-max-payload-size 1000 --metadata m.json",
        )
        .unwrap();
        assert_eq!(parsed.metadata, Some(PathBuf::from("m.json")));
        assert_eq!(parsed.metrics_path, Some(PathBuf::from("m.fifo")));
        assert_eq!(parsed.mmds_size_limit, Some(4096));
        assert_eq!(parsed.logger.module.as_deref(), Some("ember_vmm"));
        assert_eq!(parsed.api_max_payload, 1000);
        for (line, needle) in [
            (
                "run --kernel k --metadata m.json",
                "--metadata does not go with",
            ),
            ("--enable-pci --api-sock s", "no PCI"),
            ("--mmds-size-limit lots", "not a size"),
            ("--start-time-us -1", "not a number of microseconds"),
            ("--id a_b", "invalid --id"),
            (
                "run --kernel k --metrics-path m",
                "--metrics-path does not go with",
            ),
            (
                "--config-file f run --kernel k",
                "--config-file does not go with",
            ),
        ] {
            let err = args(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line:?}: {err}");
        }
    }

    #[test]
    fn entropy_specs() {
        assert_eq!(parse_entropy("").unwrap(), RngConfig::default());
        let limited = parse_entropy("bytes=4096,ops=10").unwrap();
        assert_eq!(
            limited.bandwidth.map(|b| (b.size, b.refill_time_ms)),
            Some((4096, 1000))
        );
        assert_eq!(limited.ops.map(|b| b.size), Some(10));
        assert!(parse_entropy("bytes=x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_entropy("rate=1")
            .unwrap_err()
            .contains("unknown option"));
        let Command::Run(run) = args("run --kernel k --entropy").unwrap().command else {
            panic!("run")
        };
        assert_eq!(run.entropy, Some(RngConfig::default()));
        let Command::Run(run) = args("run --kernel k --entropy=ops=5").unwrap().command else {
            panic!("run")
        };
        assert_eq!(run.entropy.unwrap().ops.map(|b| b.size), Some(5));
        let Command::Run(run) = args("run --kernel k").unwrap().command else {
            panic!("run")
        };
        assert!(run.entropy.is_none());
    }

    #[test]
    fn vsock_specs() {
        let vsock = parse_vsock("cid=7,uds=/tmp/v.sock").unwrap();
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path),
            (7, PathBuf::from("/tmp/v.sock"))
        );
        assert!(parse_vsock("cid=7").unwrap_err().contains("both"));
        assert!(parse_vsock("cid=x,uds=/a")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_vsock("port=1")
            .unwrap_err()
            .contains("unknown option"));
    }

    #[test]
    fn net_specs() {
        let net = parse_net("tap=tap0,mac=06:00:00:00:00:01", 0).unwrap();
        assert_eq!(
            (net.iface_id.as_str(), net.host_dev_name.as_str()),
            ("net0", "tap0")
        );
        assert_eq!(net.guest_mac, Some([6, 0, 0, 0, 0, 1]));
        assert_eq!(parse_net("id=eth1,tap=t1", 3).unwrap().iface_id, "eth1");
        assert!(parse_net("mac=06:00:00:00:00:01", 0)
            .unwrap_err()
            .contains("tap=NAME"));
        assert!(parse_net("tap=t,mac=zz", 0).unwrap_err().contains("MAC"));
        assert!(parse_net("tap=t,fast", 0)
            .unwrap_err()
            .contains("unknown option"));
    }

    #[test]
    fn drive_specs() {
        let drive = parse_drive("/img/root.ext4,ro,root,cache=writeback", 0).unwrap();
        assert_eq!(drive.block.drive_id, "drive0");
        assert!(drive.block.read_only && drive.is_root_device);
        assert_eq!(drive.block.cache_type, CacheType::Writeback);
        let drive = parse_drive("d.img,id=data,partuuid=ab-01", 3).unwrap();
        assert_eq!(
            (drive.block.drive_id.as_str(), drive.partuuid.as_deref()),
            ("data", Some("ab-01"))
        );
        assert!(parse_drive(",ro", 0).unwrap_err().contains("backing file"));
        assert!(parse_drive("x,rw", 0)
            .unwrap_err()
            .contains("unknown option `rw`"));
        assert!(parse_drive("x,cache=fast", 0).is_err());
        let parsed = args("run --kernel k --drive a.img,root --drive b.img").unwrap();
        let Command::Run(run) = parsed.command else {
            panic!("run")
        };
        assert_eq!(run.drives.len(), 2);
        assert_eq!(run.drives[1].block.drive_id, "drive1");
    }

    #[test]
    fn bad_usage_is_explained() {
        for (line, needle) in [
            ("--no-api", "nothing to boot"),
            ("run", "--kernel"),
            ("run --kernel k --vcpus 300", "at most 32"),
            ("run --kernel k --vcpus x", "not a number"),
            ("run --kernel k --mem -1", "not a size"),
            ("--level loud --config-file f", "unknown level"),
            ("--bogus", "bogus"),
            ("--kernel k", "kernel"),
        ] {
            let err = args(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line:?}: {err}");
        }
        assert_eq!(args("--help").unwrap().command, Command::Help);
        assert_eq!(args("run --version").unwrap().command, Command::Version);
    }
}
