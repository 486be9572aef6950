//! Command-line parsing: Firecracker's flags (`--config-file`, `--no-api`,
//! logging flags) and the friendlier `ember run` subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use ember_api::logger::{parse_level, LoggerConfig};
use ember_vmm::{BlockConfig, CacheType, DriveConfig, NetConfig, VsockConfig};
use lexopt::prelude::*;

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

Options:
  --id ID              Instance id shown in logs (default anonymous-instance)
  --log-path PATH      Write logs to a file or FIFO instead of standard error
  --level LEVEL        Error, Warning, Info (default), Debug, Trace or Off
  --show-level         Show each log line's level
  --show-log-origin    Show each log line's source file and line
  --boot-timer         Accepted for Firecracker compatibility: the boot timer is always on
  --kvm-device PATH    KVM device to open (default /dev/kvm)
  --http-api-max-payload-size BYTES
                       Largest API request body accepted (default 51200)
  --seccomp-filter FILE  Per-thread seccomp filters from a JSON file (seccompiler's
                       format, thread names vmm, vcpu, api) instead of the built-in ones
  --no-seccomp         Run without seccomp filters (they are on by default)
  --version            Print the version
  --help               Print this help

Exit status: 0 when the guest resets or powers off, 1 on an error, 2 on bad usage,
128+N when stopped by signal N, 159 when a thread breaks its seccomp filter.";

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

/// Which seccomp filters to install.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    /// The built-in filters.
    #[default]
    BuiltIn,
    /// Filters from a JSON file.
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
    Run(RunArgs),
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
}

fn string(value: OsString, flag: &str) -> Result<String, lexopt::Error> {
    value
        .into_string()
        .map_err(|_| lexopt::Error::Custom(format!("{flag}: not valid UTF-8").into()))
}

fn number<T: std::str::FromStr>(
    parser: &mut lexopt::Parser,
    flag: &str,
    what: &str,
) -> Result<T, lexopt::Error> {
    let text = string(parser.value()?, flag)?;
    text.parse()
        .map_err(|_| lexopt::Error::Custom(format!("{flag} {text}: {what}").into()))
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut logger = LoggerConfig::default();
    let mut kvm_device = None;
    let mut seccomp = SeccompChoice::BuiltIn;
    let mut seccomp_flags = 0;
    let mut api_max_payload = ember_api::http::DEFAULT_MAX_PAYLOAD_BYTES;
    let mut config_file = None;
    let mut api_socket = None;
    let mut no_api = false;
    let mut run = false;
    let (mut kernel, mut initrd, mut cmdline) = (None, None, None);
    let (mut vcpus, mut mem_mib) = (1u8, 128u64);
    let mut drives = Vec::new();
    let mut nets = Vec::new();
    let mut vsock = None;
    let mut guest_args = Vec::new();
    let mut help = false;
    let mut version = false;
    let mut first = true;

    while let Some(arg) = parser.next()? {
        match arg {
            Value(word) if first && word == "run" => run = true,
            Long("config-file") if !run => config_file = Some(PathBuf::from(parser.value()?)),
            Long("no-api") if !run => no_api = true,
            Long("api-sock") if !run => api_socket = Some(PathBuf::from(parser.value()?)),
            Long("boot-timer") => {}
            Long("http-api-max-payload-size") if !run => {
                api_max_payload = number(
                    &mut parser,
                    "--http-api-max-payload-size",
                    "not a size in bytes",
                )?;
            }
            Long("id") => logger.instance_id = string(parser.value()?, "--id")?,
            Long("log-path") => logger.path = Some(PathBuf::from(parser.value()?)),
            Long("level") => {
                let text = string(parser.value()?, "--level")?;
                logger.level = parse_level(&text).ok_or_else(|| {
                    lexopt::Error::Custom(format!("--level {text}: unknown level").into())
                })?;
            }
            Long("show-level") => logger.show_level = true,
            Long("show-log-origin") => logger.show_origin = true,
            Long("kvm-device") => kvm_device = Some(PathBuf::from(parser.value()?)),
            Long("seccomp-filter") => {
                seccomp = SeccompChoice::File(PathBuf::from(parser.value()?));
                seccomp_flags += 1;
            }
            Long("no-seccomp") => {
                seccomp = SeccompChoice::Off;
                seccomp_flags += 1;
            }
            Long("kernel") if run => kernel = Some(PathBuf::from(parser.value()?)),
            Long("initrd") if run => initrd = Some(PathBuf::from(parser.value()?)),
            Long("cmdline") if run => cmdline = Some(string(parser.value()?, "--cmdline")?),
            Long("vcpus") if run => {
                let count: u32 = number(&mut parser, "--vcpus", "not a number of vCPUs")?;
                vcpus = u8::try_from(count).map_err(|_| {
                    lexopt::Error::Custom(
                        format!(
                            "--vcpus {count}: at most {} vCPUs are supported",
                            ember_vmm::MAX_VCPU_COUNT
                        )
                        .into(),
                    )
                })?;
            }
            Long("mem") if run => mem_mib = number(&mut parser, "--mem", "not a size in MiB")?,
            Long("net") if run => {
                let spec = string(parser.value()?, "--net")?;
                nets.push(
                    parse_net(&spec, nets.len()).map_err(|e| lexopt::Error::Custom(e.into()))?,
                );
            }
            Long("vsock") if run => {
                let spec = string(parser.value()?, "--vsock")?;
                vsock = Some(parse_vsock(&spec).map_err(|e| lexopt::Error::Custom(e.into()))?);
            }
            Long("drive") if run => {
                let spec = string(parser.value()?, "--drive")?;
                drives.push(
                    parse_drive(&spec, drives.len())
                        .map_err(|e| lexopt::Error::Custom(e.into()))?,
                );
            }
            Value(word) if run => guest_args.push(string(word, "guest argument")?),
            Long("help") | Short('h') => help = true,
            Long("version") | Short('V') => version = true,
            other => return Err(other.unexpected()),
        }
        first = false;
    }

    if seccomp_flags > 1 {
        return Err(lexopt::Error::Custom(
            "give at most one of --seccomp-filter and --no-seccomp".into(),
        ));
    }
    let command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else if run {
        let kernel = kernel.ok_or_else(|| lexopt::Error::MissingValue {
            option: Some("--kernel".into()),
        })?;
        Command::Run(RunArgs {
            kernel,
            initrd,
            cmdline: cmdline.unwrap_or_else(|| DEFAULT_RUN_CMDLINE.to_owned()),
            guest_args,
            vcpus,
            mem_mib,
            drives,
            nets,
            vsock,
        })
    } else if no_api {
        match (config_file, api_socket) {
            (Some(path), None) => Command::ConfigFile(path),
            (_, Some(_)) => {
                return Err(lexopt::Error::Custom(
                    "--no-api and --api-sock contradict each other".into(),
                ))
            }
            (None, None) => {
                return Err(lexopt::Error::Custom(
                    "nothing to boot: --no-api needs --config-file FILE".into(),
                ))
            }
        }
    } else {
        Command::Api {
            socket: api_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET)),
            config_file,
        }
    };
    Ok(Args {
        command,
        logger,
        kvm_device,
        seccomp,
        api_max_payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, lexopt::Error> {
        parse(line.split_whitespace().map(OsString::from))
    }

    #[test]
    fn run_with_everything() {
        let parsed =
            args("run --kernel k --initrd i --vcpus 4 --mem 512 --level Debug -- echo hi").unwrap();
        let Command::Run(run) = parsed.command else {
            panic!("not run")
        };
        assert_eq!(run.kernel, PathBuf::from("k"));
        assert_eq!(run.initrd, Some(PathBuf::from("i")));
        assert_eq!((run.vcpus, run.mem_mib), (4, 512));
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
