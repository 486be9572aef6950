//! VM resources with Firecracker's JSON field names, so a Firecracker config
//! file or API client works unchanged: every field of Firecracker's schema is
//! accepted, features Ember lacks are refused by name when asked for, and
//! unknown fields are refused where Firecracker refuses them (everywhere but
//! the top level of a config file, `metrics` and token buckets).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ember_vmm::{
    BlockConfig, BucketConfig, DriveConfig, MacAddr, NetConfig, RateLimiterConfig, RngConfig,
    StartTime, VmConfig, VsockConfig,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Firecracker's default kernel command line, used when `boot_args` is absent.
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 \
                                     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Firecracker's words for a vCPU count it refuses.
pub const INVALID_VCPU_COUNT: &str = "The number of vCPUs must be greater than 0, less than 32 \
                                      and must be 1 or an even number if SMT is enabled.";

/// Firecracker's words for a memory size it refuses.
pub const INVALID_MEMORY_SIZE: &str =
    "The memory size (MiB) is either 0, or not a multiple of the configured page size.";

/// `boot-source`: the kernel, its command line and an optional initrd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path of the kernel image on the host.
    pub kernel_image_path: PathBuf,
    /// Path of the initrd on the host.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; Firecracker's default when absent.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// Huge pages backing guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's static CPU templates for x86 (a deprecated field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel Skylake/Cascade Lake as C3 instances.
    C3,
    /// Intel as T2 instances.
    T2,
    /// T2 with a stable feature set for snapshots.
    T2S,
    /// Intel Cascade Lake as T2.
    T2CL,
    /// AMD Milan as T2.
    T2A,
    /// No template.
    None,
}

/// `machine-config`: vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (two threads per core).
    #[serde(default)]
    pub smt: bool,
    /// A Firecracker CPU template; `None` (the template) is stored as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages for guest memory.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: any subset of the machine configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default)]
    pub smt: Option<bool>,
    /// New CPU template (deprecated in Firecracker).
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
    /// New dirty-page tracking setting.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// New huge-page setting.
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether the update changes nothing (Firecracker refuses such a PATCH).
    pub fn is_empty(&self) -> bool {
        self == &MachineConfigUpdate::default()
    }
}

impl From<MachineConfig> for MachineConfigUpdate {
    /// A PUT is an update of every field (an absent template means "None").
    fn from(config: MachineConfig) -> Self {
        MachineConfigUpdate {
            vcpu_count: Some(config.vcpu_count),
            mem_size_mib: Some(config.mem_size_mib),
            smt: Some(config.smt),
            cpu_template: Some(config.cpu_template.unwrap_or(CpuTemplate::None)),
            track_dirty_pages: Some(config.track_dirty_pages),
            huge_pages: Some(config.huge_pages),
        }
    }
}

/// One token bucket of a `rate_limiter` (unknown fields are ignored, as
/// Firecracker ignores them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Bucket size in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time: u64,
}

/// Firecracker's `rate_limiter` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill time.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill time.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

/// Firecracker's `entropy` object: the virtio-rng device and its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Limits on the random bytes (`bandwidth`) and requests (`ops`) served.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

impl Entropy {
    /// The device as the VMM takes it.
    pub fn to_rng_config(self) -> RngConfig {
        let limits = self.rate_limiter.unwrap_or_default().to_config();
        RngConfig {
            bandwidth: limits.bandwidth,
            ops: limits.ops,
        }
    }

    /// The device as Firecracker reports it: its limits as they take effect.
    pub fn reported(self) -> Entropy {
        Entropy {
            rate_limiter: RateLimiter::effective(self.rate_limiter),
        }
    }
}

/// How a drive treats flush requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are acknowledged without syncing the host file.
    #[default]
    Unsafe,
    /// Flushes reach the host disk (`fdatasync`).
    Writeback,
}

/// How a drive does its I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking system calls on the VMM thread.
    #[default]
    Sync,
    /// io_uring (not in Ember yet).
    Async,
}

/// One entry of `drives`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Unique drive name.
    pub drive_id: String,
    /// Partition UUID of the root partition, when the root is not the whole disk.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Whether this drive is the root file system.
    pub is_root_device: bool,
    /// Flush behaviour.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Whether the guest may only read (false when absent).
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// Backing file or block device on the host.
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    /// I/O rate limits.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (`Sync` when absent).
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// A vhost-user back-end's socket (not in Ember yet).
    #[serde(default)]
    pub socket: Option<String>,
}

/// One entry of `network-interfaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Unique interface name.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Limits on traffic to the guest.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on traffic from the guest.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// The `logger` object (`PUT /logger`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Log file or FIFO; standard error when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Show each line's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Show each line's source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only lines from modules whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// The `metrics` object (`PUT /metrics`); unknown fields are ignored, as
/// Firecracker ignores them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Metrics file or FIFO.
    pub metrics_path: PathBuf,
    /// Put the instance id in every line, as `id`.
    #[serde(default)]
    pub emit_id: bool,
    /// Pairs put in every line, as `properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// The body of `PUT /serial`: where the guest's console goes instead of
/// standard output. Firecracker keeps it out of config files and
/// `GET /vm/config`, and so does Ember.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A file (created or appended to) or FIFO for the console output.
    pub serial_out_path: Option<PathBuf>,
    /// A limit on the console's output bandwidth.
    pub rate_limiter: Option<TokenBucket>,
}

impl SerialConfig {
    /// The console's bandwidth limit as the VMM takes it (`None`: none, or
    /// a bucket that limits nothing).
    pub fn output_limit(&self) -> Option<BucketConfig> {
        self.rate_limiter
            .map(TokenBucket::to_bucket_config)
            .filter(|bucket| !bucket.is_unlimited())
    }

    /// Opens the output destination, if one is named (never blocking, see
    /// [`Destination::open`](crate::destination::Destination::open)).
    pub fn open_output(&self) -> Result<Option<crate::destination::Destination>> {
        let Some(path) = &self.serial_out_path else {
            return Ok(None);
        };
        crate::destination::Destination::open(path)
            .map(Some)
            .map_err(|source| Error::OpenSerial {
                path: path.clone(),
                source,
            })
    }
}

/// The `vsock` object: Firecracker's hybrid vsock over a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated in Firecracker; accepted and unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket host clients connect to; guest connections to port P go
    /// to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

impl Vsock {
    /// The device as the VMM takes it.
    pub fn to_vsock_config(&self) -> Result<VsockConfig> {
        if self.guest_cid < 3 {
            return Err(Error::InvalidValue {
                field: "vsock.guest_cid",
                reason: format!("{}: CIDs below 3 are reserved", self.guest_cid),
            });
        }
        Ok(VsockConfig {
            guest_cid: u64::from(self.guest_cid),
            uds_path: self.uds_path.clone(),
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Result<MacAddr> {
    let invalid = || Error::InvalidValue {
        field: "network-interfaces.guest_mac",
        reason: format!("`{text}` is not a MAC address like 06:00:ac:10:00:02"),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(invalid)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// Formats a MAC address as Firecracker prints it: lower case, colons.
pub fn format_mac(mac: &MacAddr) -> String {
    ember_vmm::DisplayMac(mac).to_string()
}

impl RateLimiter {
    /// The limits as the devices take them.
    pub fn to_config(self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.map(TokenBucket::to_bucket_config),
            ops: self.ops.map(TokenBucket::to_bucket_config),
        }
    }

    /// The limits in effect, as Firecracker reports them: a bucket of size
    /// or refill time 0 limits nothing and is absent, a burst of 0 is absent,
    /// and a limiter without buckets is `None`.
    pub fn effective(limiter: Option<RateLimiter>) -> Option<RateLimiter> {
        let effective = RateLimiter {
            bandwidth: limiter
                .and_then(|l| l.bandwidth)
                .and_then(TokenBucket::effective),
            ops: limiter.and_then(|l| l.ops).and_then(TokenBucket::effective),
        };
        (effective != RateLimiter::default()).then_some(effective)
    }
}

impl TokenBucket {
    /// The bucket as the rate limiter takes it.
    pub fn to_bucket_config(self) -> BucketConfig {
        BucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst.unwrap_or(0),
            refill_time_ms: self.refill_time,
        }
    }

    fn effective(self) -> Option<TokenBucket> {
        (self.size != 0 && self.refill_time != 0).then_some(TokenBucket {
            one_time_burst: self.one_time_burst.filter(|&burst| burst != 0),
            ..self
        })
    }
}

/// Whether `id` is a valid resource id in an API path, as Firecracker checks
/// it: not empty, only alphanumeric characters (Unicode) and `_`.
pub fn check_path_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        Err("The ID cannot be empty.")
    } else if id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        Ok(())
    } else {
        Err("API Resource IDs can only contain alphanumeric characters and underscores.")
    }
}

impl NetworkInterface {
    /// The interface as the VMM takes it.
    pub fn to_net_config(&self) -> Result<NetConfig> {
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > 15 {
            return Err(Error::InvalidValue {
                field: "network-interfaces.host_dev_name",
                reason: format!(
                    "Could not create the network device: `{}`: a TAP device name has 1 to 15 bytes",
                    self.host_dev_name
                ),
            });
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(Error::InvalidValue {
                    field: "network-interfaces.mtu",
                    reason: format!("{mtu}: the smallest MTU is 68"),
                });
            }
        }
        Ok(NetConfig {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.host_dev_name.clone(),
            guest_mac: self.guest_mac.as_deref().map(parse_mac).transpose()?,
            mtu: self.mtu,
            rx_rate_limiter: self.rx_rate_limiter.unwrap_or_default().to_config(),
            tx_rate_limiter: self.tx_rate_limiter.unwrap_or_default().to_config(),
        })
    }
}

/// The whole VM as a Firecracker config file describes it (and as the API
/// builds it up before `InstanceStart`). Unknown top-level keys are ignored,
/// as Firecracker ignores them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmResources {
    /// The kernel to boot.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// The entropy (virtio-rng) device.
    #[serde(default)]
    pub entropy: Option<Entropy>,
    /// The memory balloon.
    #[serde(default)]
    pub balloon: Option<crate::balloon::Balloon>,
    /// Where and how to log.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// Where to write metrics.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// The microVM metadata service (MMDS) configuration.
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<ember_mmds::MmdsConfig>,
    /// Firecracker features Ember does not provide yet: accepted when null (or
    /// empty), refused by name otherwise.
    #[serde(flatten)]
    pub missing: MissingFeatures,
}

/// The config-file keys of Firecracker features Ember does not have yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MissingFeatures {
    /// A custom CPU template.
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    /// virtio-pmem devices.
    #[serde(default)]
    pub pmem: Vec<serde_json::Value>,
    /// virtio-mem hot-pluggable memory.
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl MissingFeatures {
    /// Refuses the first feature asked for, by its key.
    pub fn validate(&self) -> Result<()> {
        let asked = [
            ("cpu-config", self.cpu_config.is_some()),
            ("pmem", !self.pmem.is_empty()),
            ("memory-hotplug", self.memory_hotplug.is_some()),
        ];
        match asked.iter().find(|(_, asked)| *asked) {
            Some((name, _)) => Err(Error::Unsupported(name)),
            None => Ok(()),
        }
    }
}

impl From<CacheType> for ember_vmm::CacheType {
    fn from(cache: CacheType) -> Self {
        match cache {
            CacheType::Unsafe => ember_vmm::CacheType::Unsafe,
            CacheType::Writeback => ember_vmm::CacheType::Writeback,
        }
    }
}

impl Drive {
    /// Refuses what Ember cannot make of a drive: a vhost-user one, one
    /// without a file, or the io_uring engine.
    pub fn validate(&self) -> Result<()> {
        if self.socket.is_some() {
            return Err(Error::Unsupported(
                "drives.socket (vhost-user block devices)",
            ));
        }
        if self.path_on_host.is_none() {
            return Err(Error::InvalidValue {
                field: "drives.path_on_host",
                reason: format!("drive `{}` needs a backing file", self.drive_id),
            });
        }
        if self.io_engine == Some(IoEngine::Async) {
            return Err(Error::Unsupported("drives.io_engine = Async (io_uring)"));
        }
        Ok(())
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }

    /// The backing file's path (empty when absent, which `validate` refuses).
    pub fn path(&self) -> PathBuf {
        self.path_on_host.clone().unwrap_or_default()
    }

    /// The drive as the VMM takes it.
    pub fn to_drive_config(&self) -> DriveConfig {
        let limiter = self.rate_limiter.unwrap_or_default();
        DriveConfig {
            block: BlockConfig {
                drive_id: self.drive_id.clone(),
                path: self.path(),
                read_only: self.read_only(),
                cache_type: self.cache_type.into(),
                bandwidth: limiter.bandwidth.map(TokenBucket::to_bucket_config),
                ops: limiter.ops.map(TokenBucket::to_bucket_config),
            },
            is_root_device: self.is_root_device,
            partuuid: self.partuuid.clone(),
        }
    }
}

impl BootSource {
    /// Refuses a command line the boot protocol cannot carry (the files are
    /// checked where they are opened).
    pub fn validate(&self) -> Result<()> {
        match &self.boot_args {
            Some(args) => ember_vmm::check_cmdline(args).map_err(|e| Error::InvalidValue {
                field: "boot-source.boot_args",
                reason: format!("The kernel command line is invalid: {e}"),
            }),
            None => Ok(()),
        }
    }
}

impl MachineConfig {
    /// The machine configuration of a VM restored from a snapshot (as
    /// Firecracker reports it then, without a CPU template).
    pub fn restored(machine: &ember_vmm::MachineInfo) -> MachineConfig {
        MachineConfig {
            vcpu_count: machine.vcpu_count,
            mem_size_mib: machine.mem_size_mib,
            smt: machine.smt,
            track_dirty_pages: machine.track_dirty_pages,
            ..MachineConfig::default()
        }
    }

    /// This configuration with `update` applied, as Firecracker applies it:
    /// a `None` template clears the template. Refused (Firecracker's words
    /// where it has them) when the result is invalid or asks for what Ember
    /// lacks.
    pub fn update(&self, update: &MachineConfigUpdate) -> Result<MachineConfig> {
        let cpu_template = match update.cpu_template {
            None => self.cpu_template,
            Some(CpuTemplate::None) => None,
            Some(template) => Some(template),
        };
        let config = MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template,
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings Ember cannot honour: no vCPU or more than
    /// [`ember_vmm::MAX_VCPU_COUNT`] (or an odd count above 1 with SMT), no
    /// memory or more than the host's guest-physical address space holds, a
    /// CPU template, huge pages or dirty-page tracking.
    pub fn validate(&self) -> Result<()> {
        let odd_with_smt = self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1;
        if ember_vmm::check_vcpu_count(self.vcpu_count).is_err() || odd_with_smt {
            return Err(Error::InvalidValue {
                field: "machine-config.vcpu_count",
                reason: format!("{}: {INVALID_VCPU_COUNT}", self.vcpu_count),
            });
        }
        if self.mem_size_mib == 0 {
            return Err(Error::InvalidValue {
                field: "machine-config.mem_size_mib",
                reason: INVALID_MEMORY_SIZE.into(),
            });
        }
        ember_vmm::memory_layout(self.mem_size_mib).map_err(|e| Error::InvalidValue {
            field: "machine-config.mem_size_mib",
            reason: e.to_string(),
        })?;
        if self.cpu_template.is_some() {
            return Err(Error::Unsupported(
                "machine-config.cpu_template (CPU templates)",
            ));
        }
        if self.huge_pages != HugePages::None {
            return Err(Error::Unsupported(
                "machine-config.huge_pages other than None",
            ));
        }
        Ok(())
    }
}

/// Firecracker's words for a second root drive.
pub const SECOND_ROOT_DRIVE: &str = "A root block device already exists!";

impl VmResources {
    /// The machine configuration (Firecracker's defaults when absent).
    pub fn machine(&self) -> MachineConfig {
        self.machine_config.clone().unwrap_or_default()
    }

    /// Refuses resources Ember cannot provide, or that contradict each other.
    pub fn validate(&self) -> Result<()> {
        self.missing.validate()?;
        if let Some(boot_source) = &self.boot_source {
            boot_source.validate()?;
        }
        for drive in &self.drives {
            drive.validate()?;
        }
        if let Some(vsock) = &self.vsock {
            vsock.to_vsock_config()?;
        }
        if let Some(balloon) = &self.balloon {
            balloon.validate(self.machine().mem_size_mib)?;
        }
        self.check_interfaces()?;
        self.check_mmds_config()?;
        self.check_drives()?;
        if let Some(config) = &self.machine_config {
            // As Firecracker, a file's `cpu_template: "None"` means no template.
            config.update(&MachineConfigUpdate::from(config.clone()))?;
        }
        Ok(())
    }

    fn check_interfaces(&self) -> Result<()> {
        for (i, iface) in self.network_interfaces.iter().enumerate() {
            let config = iface.to_net_config()?;
            let earlier = &self.network_interfaces[..i];
            if earlier.iter().any(|other| other.iface_id == iface.iface_id) {
                return Err(Error::InvalidValue {
                    field: "network-interfaces.iface_id",
                    reason: format!("`{}` is used by two interfaces", iface.iface_id),
                });
            }
            if earlier
                .iter()
                .any(|other| other.host_dev_name == iface.host_dev_name)
            {
                return Err(Error::InvalidValue {
                    field: "network-interfaces.host_dev_name",
                    reason: format!(
                        "Could not create the network device: the TAP device `{}` is used by two interfaces",
                        iface.host_dev_name
                    ),
                });
            }
            if let Some(mac) = config.guest_mac {
                let same = |other: &NetworkInterface| {
                    other.guest_mac.as_deref().and_then(|m| parse_mac(m).ok()) == Some(mac)
                };
                if earlier.iter().any(same) {
                    return Err(Error::InvalidValue {
                        field: "network-interfaces.guest_mac",
                        reason: format!("The MAC address is already in use: {}", format_mac(&mac)),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_drives(&self) -> Result<()> {
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(Error::InvalidValue {
                field: "drives.is_root_device",
                reason: SECOND_ROOT_DRIVE.into(),
            });
        }
        for (i, drive) in self.drives.iter().enumerate() {
            if self.drives[..i]
                .iter()
                .any(|d| d.drive_id == drive.drive_id)
            {
                return Err(Error::InvalidValue {
                    field: "drives.drive_id",
                    reason: format!("`{}` is used by two drives", drive.drive_id),
                });
            }
        }
        Ok(())
    }

    /// Checks `mmds-config` as `PUT /mmds/config` does: a link-local
    /// address and only interfaces the VM has.
    pub fn check_mmds_config(&self) -> Result<()> {
        let Some(config) = &self.mmds_config else {
            return Ok(());
        };
        self.mmds_config_fits(config)
            .map_err(|e| Error::InvalidValue {
                field: "mmds-config",
                reason: e.to_string(),
            })
    }

    fn mmds_config_fits(&self, config: &ember_mmds::MmdsConfig) -> ember_mmds::Result<()> {
        config.validate(|id| self.network_interfaces.iter().any(|i| i.iface_id == id))
    }

    /// `PUT /mmds/config`: checked as [`VmResources::check_mmds_config`]
    /// checks it, then kept.
    pub fn set_mmds_config(
        &mut self,
        config: ember_mmds::MmdsConfig,
    ) -> ember_mmds::Result<&ember_mmds::MmdsConfig> {
        self.mmds_config_fits(&config)?;
        Ok(self.mmds_config.insert(config))
    }

    /// Adds `iface`, or replaces the interface with the same id, as
    /// Firecracker does: a MAC address another interface has is refused and
    /// nothing changes; otherwise the old interface is removed first (its
    /// place taken by the last one) and the new one appended, so that an
    /// interface the new one cannot be (its TAP device is taken, say) leaves
    /// neither.
    pub fn put_network_interface(&mut self, iface: NetworkInterface) -> Result<()> {
        let config = iface.to_net_config();
        if let Some(mac) = config.as_ref().ok().and_then(|c| c.guest_mac) {
            let taken = self.network_interfaces.iter().any(|other| {
                other.iface_id != iface.iface_id
                    && other.guest_mac.as_deref().and_then(|m| parse_mac(m).ok()) == Some(mac)
            });
            if taken {
                return Err(Error::InvalidValue {
                    field: "network-interfaces.guest_mac",
                    reason: format!("The MAC address is already in use: {}", format_mac(&mac)),
                });
            }
        }
        if let Some(at) = self
            .network_interfaces
            .iter()
            .position(|i| i.iface_id == iface.iface_id)
        {
            self.network_interfaces.swap_remove(at);
        }
        config?;
        let mut candidate = self.network_interfaces.clone();
        candidate.push(iface);
        let checked = VmResources {
            network_interfaces: candidate,
            ..VmResources::default()
        };
        checked.check_interfaces()?;
        self.network_interfaces = checked.network_interfaces;
        Ok(())
    }

    /// Adds `drive`, or replaces the drive with the same id.
    pub fn put_drive(&mut self, drive: Drive) -> Result<()> {
        drive.validate()?;
        let mut candidate = self.drives.clone();
        match candidate.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(existing) => *existing = drive,
            None => candidate.push(drive),
        }
        let checked = VmResources {
            drives: candidate,
            ..VmResources::default()
        };
        checked.check_drives()?;
        self.drives = checked.drives;
        Ok(())
    }

    /// The VM configuration these resources describe, serial on stdio.
    pub fn to_vm_config(&self, start_time: StartTime) -> Result<VmConfig> {
        self.validate()?;
        let boot_source = self.boot_source.as_ref().ok_or(Error::InvalidValue {
            field: "boot-source",
            reason: "no kernel configured: the boot-source resource is missing".into(),
        })?;
        let boot_args = boot_source
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_owned());
        let mut config = VmConfig::new(&boot_source.kernel_image_path, boot_args);
        let machine = self.machine();
        config.initrd = boot_source.initrd_path.clone();
        config.vcpu_count = machine.vcpu_count;
        config.mem_size_mib = machine.mem_size_mib;
        config.smt = machine.smt;
        config.track_dirty_pages = machine.track_dirty_pages;
        config.drives = self.drives.iter().map(Drive::to_drive_config).collect();
        config.vsock = self
            .vsock
            .as_ref()
            .map(Vsock::to_vsock_config)
            .transpose()?;
        config.entropy = self.entropy.map(Entropy::to_rng_config);
        config.balloon = self
            .balloon
            .as_ref()
            .map(crate::balloon::Balloon::to_balloon_config);
        config.net_interfaces = self
            .network_interfaces
            .iter()
            .map(NetworkInterface::to_net_config)
            .collect::<Result<_>>()?;
        config.start_time = start_time;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> serde_json::Result<VmResources> {
        serde_json::from_str(json)
    }

    #[test]
    fn firecracker_example_config_parses() {
        let resources = parse(
            r#"{
              "boot-source": {
                "kernel_image_path": "vmlinux.bin",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
                "initrd_path": null
              },
              "drives": [],
              "machine-config": {
                "vcpu_count": 2,
                "mem_size_mib": 1024,
                "smt": false,
                "track_dirty_pages": false,
                "huge_pages": "None"
              }
            }"#,
        )
        .unwrap();
        assert_eq!(resources.machine().vcpu_count, 2);
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.mem_size_mib, 1024);
        assert_eq!(config.cmdline, "console=ttyS0 reboot=k panic=1 pci=off");
        assert_eq!(config.initrd, None);
    }

    #[test]
    fn defaults_follow_firecracker() {
        let resources = parse(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        assert_eq!(resources.machine(), MachineConfig::default());
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.cmdline, DEFAULT_BOOT_ARGS);
        assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));
    }

    #[test]
    fn unknown_fields_are_refused_where_firecracker_refuses_them() {
        // Ignored at the top level, in `metrics` and in token buckets.
        let resources = parse(
            r#"{"boot-source": {"kernel_image_path": "k"}, "bogus": 1,
                "metrics": {"metrics_path": "m", "extra": true},
                "drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": false,
                            "rate_limiter": {"ops": {"size": 1, "refill_time": 1, "x": 0}}}]}"#,
        )
        .unwrap();
        resources.validate().unwrap();
        // Refused, with a position, everywhere else.
        let err = parse(r#"{"boot-source": {"kernel_image_path": "k", "kernel": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `kernel`"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse(r#"{"vsock": {"guest_cid": 3, "uds_path": "v", "port": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
    }

    #[test]
    fn firecrackers_own_test_config_is_accepted() {
        let text = r#"{
          "boot-source": {"kernel_image_path": "vmlinux.bin",
                          "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": null},
          "drives": [{"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                      "cache_type": "Unsafe", "is_read_only": false,
                      "path_on_host": "bionic.rootfs.ext4", "io_engine": "Sync",
                      "rate_limiter": null, "socket": null}],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                             "track_dirty_pages": false, "huge_pages": "None"},
          "cpu-config": null, "balloon": null, "network-interfaces": [], "vsock": null,
          "logger": null, "metrics": null, "mmds-config": null, "entropy": null,
          "pmem": [], "memory-hotplug": null
        }"#;
        let resources = parse(text).unwrap();
        resources.validate().unwrap();
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.vcpu_count, 2);
        assert!(!config.drives[0].block.read_only);
    }

    #[test]
    fn mmds_config_names_existing_interfaces_and_a_link_local_address() {
        let with = |mmds: &str| {
            parse(&format!(
                r#"{{"network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0"}}],
                    "mmds-config": {mmds}}}"#
            ))
            .unwrap()
            .validate()
        };
        let good = with(r#"{"network_interfaces": ["eth0"], "version": "V2"}"#);
        assert!(good.is_ok(), "{good:?}");
        for (mmds, reason) in [
            (r#"{"network_interfaces": ["eth1"]}"#, "does not correspond"),
            (r#"{"network_interfaces": []}"#, "is empty"),
            (
                r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#,
                "not link local",
            ),
        ] {
            let err = with(mmds).unwrap_err().to_string();
            assert!(err.starts_with("invalid mmds-config: "), "{err}");
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn an_entropy_object_makes_an_rng_device() {
        let resources = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "entropy": {"rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 100}}}}"#,
        )
        .unwrap();
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        let rng = config.entropy.unwrap();
        assert_eq!(rng.bandwidth.map(|b| b.size), Some(4096));
        assert!(rng.ops.is_none());
        assert!(parse(r#"{"entropy": {"rate_limiter": {}, "x": 1}}"#).is_err());
        let none = parse(r#"{"boot-source": {"kernel_image_path": "k"}, "entropy": null}"#);
        assert!(none
            .unwrap()
            .to_vm_config(StartTime::now())
            .unwrap()
            .entropy
            .is_none());
    }

    #[test]
    fn missing_features_are_refused_by_name_when_asked_for() {
        for (json, name) in [
            (r#"{"cpu-config": {}}"#, "cpu-config"),
            (r#"{"pmem": [{"id": "p", "path_on_host": "/p"}]}"#, "pmem"),
            (
                r#"{"memory-hotplug": {"total_size_mib": 1024}}"#,
                "memory-hotplug",
            ),
        ] {
            let err = parse(json).unwrap().validate().unwrap_err().to_string();
            assert_eq!(
                err,
                format!("`{name}` is not supported by this version of Ember")
            );
        }
        let drive = |extra: &str| {
            parse(&format!(
                r#"{{"drives": [{{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, {extra}}}]}}"#
            ))
            .unwrap()
            .validate()
            .map_err(|e| e.to_string())
        };
        assert!(drive(r#""io_engine": "Sync""#).is_ok());
        assert!(drive(r#""io_engine": "Async""#)
            .unwrap_err()
            .contains("io_uring"));
        assert!(drive(r#""socket": "/vhost.sock""#)
            .unwrap_err()
            .contains("vhost-user"));
        let err = parse(r#"{"drives": [{"drive_id": "d", "is_root_device": false}]}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("needs a backing file"), "{err}");
    }

    #[test]
    fn machine_updates_follow_firecracker() {
        let config = MachineConfig::default();
        let smt = MachineConfigUpdate {
            smt: Some(true),
            vcpu_count: Some(2),
            ..Default::default()
        };
        let updated = config.update(&smt).unwrap();
        assert!(updated.smt);
        let odd = MachineConfigUpdate {
            vcpu_count: Some(3),
            ..Default::default()
        };
        let err = updated.update(&odd).unwrap_err().to_string();
        assert!(err.contains(INVALID_VCPU_COUNT), "{err}");
        let none = MachineConfigUpdate {
            cpu_template: Some(CpuTemplate::None),
            huge_pages: Some(HugePages::None),
            ..Default::default()
        };
        assert_eq!(updated.update(&none).unwrap().cpu_template, None);
        for (update, feature) in [
            (
                MachineConfigUpdate {
                    cpu_template: Some(CpuTemplate::C3),
                    ..Default::default()
                },
                "CPU templates",
            ),
            (
                MachineConfigUpdate {
                    huge_pages: Some(HugePages::Hugetlbfs2M),
                    ..Default::default()
                },
                "huge_pages",
            ),
        ] {
            let err = config.update(&update).unwrap_err().to_string();
            assert!(err.contains(feature), "{err}");
        }
        let tracking = MachineConfigUpdate {
            track_dirty_pages: Some(true),
            ..Default::default()
        };
        assert!(config.update(&tracking).unwrap().track_dirty_pages);
        let zero = MachineConfigUpdate {
            mem_size_mib: Some(0),
            ..Default::default()
        };
        let err = config.update(&zero).unwrap_err().to_string();
        assert!(err.contains(INVALID_MEMORY_SIZE), "{err}");
    }

    #[test]
    fn a_mac_address_is_used_once() {
        let iface = |id: &str, tap: &str, mac: &str| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: Some(mac.into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        let mut resources = VmResources::default();
        resources
            .put_network_interface(iface("1", "tap1", "06:00:00:00:00:01"))
            .unwrap();
        let err = resources
            .put_network_interface(iface("2", "tap2", "06:00:00:00:00:01"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("The MAC address is already in use: 06:00:00:00:00:01"),
            "{err}"
        );
        // Replacing the interface that has it is fine; it moves to the end.
        resources
            .put_network_interface(iface("2", "tap2", "06:00:00:00:00:02"))
            .unwrap();
        resources
            .put_network_interface(iface("1", "tap1", "06:00:00:00:00:01"))
            .unwrap();
        assert_eq!(resources.network_interfaces[1].iface_id, "1");
        // An update that cannot be leaves neither interface, as in Firecracker.
        assert!(resources
            .put_network_interface(iface("1", "tap2", "06:00:00:00:00:01"))
            .is_err());
        assert_eq!(resources.network_interfaces.len(), 1);
        resources
            .put_network_interface(iface("1", "tap1", "06:00:00:00:00:01"))
            .unwrap();
        let mut with_mtu = iface("2", "tap2", "06:00:00:00:00:02");
        with_mtu.mtu = Some(67);
        assert!(resources.put_network_interface(with_mtu.clone()).is_err());
        with_mtu.mtu = Some(1400);
        resources.put_network_interface(with_mtu).unwrap();
        let last = resources.network_interfaces.last().unwrap();
        assert_eq!(last.to_net_config().unwrap().mtu, Some(1400));
    }

    #[test]
    fn wrong_types_are_refused() {
        let err = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
               "machine-config": {"vcpu_count": "two", "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
               "machine-config": {"vcpu_count": 300, "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("300"), "{err}");
    }

    #[test]
    fn unsupported_settings_are_named() {
        let resources = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "vsock": {"guest_cid": 2, "uds_path": "/tmp/v.sock"}}"#,
        )
        .unwrap();
        assert!(resources
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let resources = VmResources {
            machine_config: Some(MachineConfig {
                vcpu_count: 0,
                ..MachineConfig::default()
            }),
            ..VmResources::default()
        };
        assert!(matches!(
            resources.validate(),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn firecracker_limits_are_checked_before_start() {
        let mut config = MachineConfig {
            vcpu_count: ember_vmm::MAX_VCPU_COUNT,
            ..MachineConfig::default()
        };
        config.validate().unwrap();
        config.vcpu_count = ember_vmm::MAX_VCPU_COUNT + 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("machine-config.vcpu_count"), "{err}");
        assert!(err.contains(INVALID_VCPU_COUNT), "{err}");

        config.vcpu_count = 1;
        let phys_bits = ember_vmm::host_phys_addr_bits();
        // Bytes beyond u64, an end beyond u64, an end just beyond the host.
        for mib in [u64::MAX, u64::MAX / (1 << 20), 1 << (phys_bits - 20)] {
            config.mem_size_mib = mib;
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("machine-config.mem_size_mib"), "{mib}: {err}");
            assert!(err.contains(&format!("{mib} MiB")), "{mib}: {err}");
        }

        let mut source = BootSource {
            kernel_image_path: "k".into(),
            boot_args: Some("x".repeat(2047)),
            initrd_path: None,
        };
        source.validate().unwrap();
        source.boot_args = Some("x".repeat(2048));
        let err = source.validate().unwrap_err().to_string();
        assert!(
            err.contains(
                "the kernel command line is 2048 bytes; the boot protocol allows at most 2047"
            ),
            "{err}"
        );
        let resources = VmResources {
            boot_source: Some(source),
            ..VmResources::default()
        };
        assert!(resources.validate().is_err(), "config files too");
    }

    #[test]
    fn a_missing_boot_source_is_named_at_start() {
        let resources =
            parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#).unwrap();
        let err = resources.to_vm_config(StartTime::now()).unwrap_err();
        assert!(err.to_string().contains("boot-source"), "{err}");
    }

    fn drive(id: &str, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: Some(format!("/img/{id}").into()),
            is_root_device: root,
            is_read_only: None,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    #[test]
    fn drives_become_vmm_drives() {
        let mut resources = parse(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        resources.put_drive(drive("rootfs", true)).unwrap();
        let mut limited = drive("data", false);
        limited.rate_limiter = Some(RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket {
                size: 100,
                one_time_burst: Some(10),
                refill_time: 1000,
            }),
        });
        limited.cache_type = CacheType::Writeback;
        resources.put_drive(limited).unwrap();
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.drives.len(), 2);
        assert!(config.drives[0].is_root_device);
        let data = &config.drives[1].block;
        assert_eq!(data.cache_type, ember_vmm::CacheType::Writeback);
        assert_eq!(data.ops.unwrap().one_time_burst, 10);
        assert!(data.bandwidth.is_none());
    }

    #[test]
    fn drive_rules() {
        let mut resources = VmResources::default();
        resources.put_drive(drive("a", true)).unwrap();
        assert!(resources.put_drive(drive("b", true)).is_err(), "two roots");
        resources.put_drive(drive("a", false)).unwrap();
        resources.put_drive(drive("b", true)).unwrap();
        assert_eq!(resources.drives.len(), 2, "replaced by id");
        let err = resources
            .put_drive(drive("c", true))
            .unwrap_err()
            .to_string();
        assert!(err.contains(SECOND_ROOT_DRIVE), "{err}");
        let mut async_io = drive("c", false);
        async_io.io_engine = Some(IoEngine::Async);
        assert!(resources.put_drive(async_io).is_err());
    }

    #[test]
    fn drive_objects_parse_with_firecracker_fields() {
        let drive: Drive = serde_json::from_str(
            r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
                "is_read_only": false, "partuuid": null, "cache_type": "Writeback",
                "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100},
                                 "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}},
                "io_engine": "Sync"}"#,
        )
        .unwrap();
        assert_eq!(drive.cache_type, CacheType::Writeback);
        let limiter = drive.rate_limiter.unwrap();
        assert_eq!(limiter.ops.unwrap().one_time_burst, Some(5));
        assert_eq!(limiter.bandwidth.unwrap().size, 1000);
    }

    #[test]
    fn serial_output_is_opened_only_when_named_and_limited_when_asked() {
        assert!(SerialConfig::default().open_output().unwrap().is_none());
        assert_eq!(SerialConfig::default().output_limit(), None);
        let dir = tempfile::tempdir().unwrap();
        let named = |path: PathBuf| SerialConfig {
            serial_out_path: Some(path),
            rate_limiter: None,
        };
        let console = dir.path().join("console");
        assert!(named(console.clone()).open_output().unwrap().is_some());
        assert!(console.exists(), "created");
        let error = named(dir.path().to_owned()).open_output().unwrap_err();
        assert!(matches!(error, Error::OpenSerial { .. }), "{error}");
        let limited: SerialConfig = serde_json::from_str(
            r#"{"serial_out_path": "c", "rate_limiter": {"size": 100, "one_time_burst": 5, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(
            limited.output_limit(),
            Some(BucketConfig {
                size: 100,
                one_time_burst: 5,
                refill_time_ms: 1000
            })
        );
        let unlimited = SerialConfig {
            rate_limiter: Some(TokenBucket {
                size: 0,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ..named(console)
        };
        assert_eq!(unlimited.output_limit(), None, "size 0 limits nothing");
    }
}
