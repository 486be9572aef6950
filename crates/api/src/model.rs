//! VM resources with Firecracker's JSON field names, so a Firecracker config
//! file or API client works unchanged. Unknown fields are refused.

use std::path::PathBuf;

use ember_vmm::{
    BlockConfig, BucketConfig, DriveConfig, MacAddr, NetConfig, RateLimiterConfig, StartTime,
    VmConfig, VsockConfig,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Firecracker's default kernel command line, used when `boot_args` is absent.
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 \
                                     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// `boot-source`: the kernel, its command line and an optional initrd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path of the kernel image on the host.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; Firecracker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Path of the initrd on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// Huge pages backing guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    #[default]
    None,
    /// 2 MiB huge pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
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
    /// Dirty page tracking for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages for guest memory.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// A Firecracker CPU template name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

/// One token bucket of a `rate_limiter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time: u64,
}

/// Firecracker's `rate_limiter` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
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

/// One entry of `drives`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Unique drive name.
    pub drive_id: String,
    /// Backing file or block device on the host.
    pub path_on_host: PathBuf,
    /// Whether this drive is the root file system.
    pub is_root_device: bool,
    /// Whether the guest may only read.
    pub is_read_only: bool,
    /// Partition UUID of the root partition, when the root is not the whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Flush behaviour.
    #[serde(default)]
    pub cache_type: CacheType,
    /// I/O rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (`Sync` is the only one Ember has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on traffic to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on traffic from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// The `metrics` object (`PUT /metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Metrics file or FIFO.
    pub metrics_path: PathBuf,
}

/// The `vsock` object: Firecracker's hybrid vsock over a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket host clients connect to; guest connections to port P go
    /// to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Accepted for compatibility with older Firecracker clients; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
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

/// Parses `aa:bb:cc:dd:ee:ff`.
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

impl RateLimiter {
    /// The limits as the devices take them.
    pub fn to_config(self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.map(TokenBucket::to_bucket_config),
            ops: self.ops.map(TokenBucket::to_bucket_config),
        }
    }
}

/// Checks a user-chosen id: 1 to 64 letters, digits, `_` or `-`.
fn check_id(id: &str, field: &'static str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field,
            reason: format!("`{id}`: use 1 to 64 letters, digits, `_` or `-`"),
        })
    }
}

impl NetworkInterface {
    /// The interface as the VMM takes it.
    pub fn to_net_config(&self) -> Result<NetConfig> {
        check_id(&self.iface_id, "network-interfaces.iface_id")?;
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > 15 {
            return Err(Error::InvalidValue {
                field: "network-interfaces.host_dev_name",
                reason: format!(
                    "`{}`: a TAP device name has 1 to 15 bytes",
                    self.host_dev_name
                ),
            });
        }
        Ok(NetConfig {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.host_dev_name.clone(),
            guest_mac: self.guest_mac.as_deref().map(parse_mac).transpose()?,
            rx_rate_limiter: self.rx_rate_limiter.unwrap_or_default().to_config(),
            tx_rate_limiter: self.tx_rate_limiter.unwrap_or_default().to_config(),
        })
    }
}

/// The whole VM as a Firecracker config file describes it (and as the API
/// builds it up before `InstanceStart`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    /// The kernel to boot.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Where and how to log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Where to write metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Firecracker resources Ember does not provide yet; refused when present.
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<serde_json::Value>,
    /// See `mmds_config`.
    #[serde(default, skip_serializing)]
    pub balloon: Option<serde_json::Value>,
    /// See `mmds_config`.
    #[serde(default, skip_serializing)]
    pub entropy: Option<serde_json::Value>,
    /// See `mmds_config`.
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<serde_json::Value>,
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
    /// Refuses what a drive cannot be.
    pub fn validate(&self) -> Result<()> {
        check_id(&self.drive_id, "drives.drive_id")?;
        if self
            .io_engine
            .as_deref()
            .is_some_and(|engine| engine != "Sync")
        {
            return Err(Error::Unsupported("drives.io_engine other than Sync"));
        }
        Ok(())
    }

    /// The drive as the VMM takes it.
    pub fn to_drive_config(&self) -> DriveConfig {
        let limiter = self.rate_limiter.unwrap_or_default();
        DriveConfig {
            block: BlockConfig {
                drive_id: self.drive_id.clone(),
                path: self.path_on_host.clone(),
                read_only: self.is_read_only,
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
                reason: e.to_string(),
            }),
            None => Ok(()),
        }
    }
}

impl MachineConfig {
    /// Refuses settings Ember cannot honour: no vCPU or more than
    /// [`ember_vmm::MAX_VCPU_COUNT`], no memory or more than the host's
    /// guest-physical address space holds.
    pub fn validate(&self) -> Result<()> {
        if self.vcpu_count == 0 {
            return Err(Error::InvalidValue {
                field: "machine-config.vcpu_count",
                reason: "at least one vCPU is needed".into(),
            });
        }
        ember_vmm::check_vcpu_count(self.vcpu_count).map_err(|e| Error::InvalidValue {
            field: "machine-config.vcpu_count",
            reason: e.to_string(),
        })?;
        if self.mem_size_mib == 0 {
            return Err(Error::InvalidValue {
                field: "machine-config.mem_size_mib",
                reason: "guest memory must be greater than zero".into(),
            });
        }
        ember_vmm::memory_layout(self.mem_size_mib).map_err(|e| Error::InvalidValue {
            field: "machine-config.mem_size_mib",
            reason: e.to_string(),
        })?;
        if self.smt {
            return Err(Error::Unsupported("machine-config.smt = true"));
        }
        if self.track_dirty_pages {
            return Err(Error::Unsupported(
                "machine-config.track_dirty_pages = true",
            ));
        }
        if self.huge_pages != HugePages::None {
            return Err(Error::Unsupported("machine-config.huge_pages"));
        }
        if self.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(Error::Unsupported("machine-config.cpu_template"));
        }
        Ok(())
    }
}

impl VmResources {
    /// Refuses resources Ember cannot provide yet.
    pub fn validate(&self) -> Result<()> {
        let unsupported = [
            ("mmds-config", &self.mmds_config),
            ("balloon", &self.balloon),
            ("entropy", &self.entropy),
            ("cpu-config", &self.cpu_config),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, value)| value.is_some()) {
            return Err(Error::Unsupported(name));
        }
        if let Some(boot_source) = &self.boot_source {
            boot_source.validate()?;
        }
        for drive in &self.drives {
            drive.validate()?;
        }
        if let Some(vsock) = &self.vsock {
            vsock.to_vsock_config()?;
        }
        for (i, iface) in self.network_interfaces.iter().enumerate() {
            iface.to_net_config()?;
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
                    reason: format!("`{}` is used by two interfaces", iface.host_dev_name),
                });
            }
        }
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(Error::InvalidValue {
                field: "drives.is_root_device",
                reason: "only one drive can be the root device".into(),
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
        self.machine_config.validate()
    }

    /// Adds `iface`, or replaces the interface with the same id.
    pub fn put_network_interface(&mut self, iface: NetworkInterface) -> Result<()> {
        let mut candidate = self.clone();
        match candidate
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == iface.iface_id)
        {
            Some(existing) => *existing = iface,
            None => candidate.network_interfaces.push(iface),
        }
        candidate.validate()?;
        self.network_interfaces = candidate.network_interfaces;
        Ok(())
    }

    /// Adds `drive`, or replaces the drive with the same id.
    pub fn put_drive(&mut self, drive: Drive) -> Result<()> {
        let mut drives = self.drives.clone();
        match drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(existing) => *existing = drive,
            None => drives.push(drive),
        }
        let candidate = VmResources {
            drives,
            ..self.clone()
        };
        candidate.validate()?;
        self.drives = candidate.drives;
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
        config.initrd = boot_source.initrd_path.clone();
        config.vcpu_count = self.machine_config.vcpu_count;
        config.mem_size_mib = self.machine_config.mem_size_mib;
        config.drives = self.drives.iter().map(Drive::to_drive_config).collect();
        config.vsock = self
            .vsock
            .as_ref()
            .map(Vsock::to_vsock_config)
            .transpose()?;
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
        assert_eq!(resources.machine_config.vcpu_count, 2);
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.mem_size_mib, 1024);
        assert_eq!(config.cmdline, "console=ttyS0 reboot=k panic=1 pci=off");
        assert_eq!(config.initrd, None);
    }

    #[test]
    fn defaults_follow_firecracker() {
        let resources = parse(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        assert_eq!(resources.machine_config, MachineConfig::default());
        let config = resources.to_vm_config(StartTime::now()).unwrap();
        assert_eq!(config.cmdline, DEFAULT_BOOT_ARGS);
        assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));
    }

    #[test]
    fn unknown_fields_are_refused_with_a_position() {
        let err = parse(r#"{"boot-source": {"kernel_image_path": "k"}, "bogus": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse(r#"{"boot-source": {"kernel_image_path": "k", "kernel": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `kernel`"), "{err}");
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
        let mut resources = parse(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        resources.machine_config.smt = true;
        assert!(matches!(resources.validate(), Err(Error::Unsupported(_))));
        resources.machine_config.smt = false;
        resources.machine_config.vcpu_count = 0;
        assert!(matches!(
            resources.validate(),
            Err(Error::InvalidValue { .. })
        ));
        resources.machine_config.vcpu_count = 1;
        resources.machine_config.mem_size_mib = 0;
        assert!(matches!(
            resources.validate(),
            Err(Error::InvalidValue { .. })
        ));

        let resources =
            parse(r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {}}"#).unwrap();
        let err = resources.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`balloon` is not supported by this version of Ember"
        );
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
        assert!(err.contains("between 1 and 32"), "{err}");

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
            path_on_host: format!("/img/{id}").into(),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            rate_limiter: None,
            io_engine: None,
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
        assert!(resources.put_drive(drive("bad/id", false)).is_err());
        assert!(resources.put_drive(drive("", false)).is_err());
        let mut async_io = drive("c", false);
        async_io.io_engine = Some("Async".into());
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
}
