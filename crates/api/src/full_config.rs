//! `GET /vm/config`: the VM's configuration in the shape Firecracker prints
//! it, every top-level key present (null or empty for what Ember lacks), the
//! drives and interfaces with their defaults filled in, rate limits as they
//! take effect and MAC addresses normalized.

use serde::Serialize;

use crate::model::{
    format_mac, parse_mac, BootSource, Drive, Entropy, IoEngine, MachineConfig, NetworkInterface,
    RateLimiter, VmResources, Vsock,
};

/// The body of `GET /vm/config` (keys in Firecracker's order).
#[derive(Debug, Serialize)]
pub struct FullVmConfig {
    balloon: Option<crate::balloon::Balloon>,
    drives: Vec<Drive>,
    #[serde(rename = "boot-source")]
    boot_source: BootSource,
    #[serde(rename = "cpu-config")]
    cpu_config: Option<()>,
    logger: Option<()>,
    #[serde(rename = "machine-config")]
    machine_config: MachineConfig,
    metrics: Option<()>,
    #[serde(rename = "mmds-config")]
    mmds_config: Option<ember_mmds::MmdsConfig>,
    #[serde(rename = "network-interfaces")]
    network_interfaces: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
    entropy: Option<Entropy>,
    pmem: [(); 0],
    #[serde(rename = "memory-hotplug")]
    memory_hotplug: Option<()>,
}

/// A drive as Firecracker reports a virtio-block drive.
fn reported_drive(drive: &Drive) -> Drive {
    Drive {
        is_read_only: Some(drive.read_only()),
        rate_limiter: RateLimiter::effective(drive.rate_limiter),
        io_engine: Some(drive.io_engine.unwrap_or(IoEngine::Sync)),
        socket: None,
        ..drive.clone()
    }
}

/// The drives in Firecracker's order: the root drive first.
fn root_first(drives: &[Drive]) -> Vec<&Drive> {
    let mut ordered: Vec<&Drive> = drives.iter().collect();
    ordered.sort_by_key(|drive| !drive.is_root_device);
    ordered
}

/// An interface as Firecracker reports it.
fn reported_interface(iface: &NetworkInterface) -> NetworkInterface {
    let guest_mac = iface
        .guest_mac
        .as_deref()
        .map(|text| match parse_mac(text) {
            Ok(mac) => format_mac(&mac),
            Err(_) => text.to_owned(),
        });
    NetworkInterface {
        guest_mac,
        rx_rate_limiter: RateLimiter::effective(iface.rx_rate_limiter),
        tx_rate_limiter: RateLimiter::effective(iface.tx_rate_limiter),
        ..iface.clone()
    }
}

impl FullVmConfig {
    /// The report of `resources`: logger and metrics are null, as
    /// Firecracker prints them; a missing boot source has an empty path.
    pub fn of(resources: &VmResources) -> FullVmConfig {
        FullVmConfig {
            balloon: resources.balloon,
            drives: root_first(&resources.drives)
                .into_iter()
                .map(reported_drive)
                .collect(),
            boot_source: resources.boot_source.clone().unwrap_or_default(),
            cpu_config: None,
            logger: None,
            machine_config: resources.machine(),
            metrics: None,
            mmds_config: resources
                .mmds_config
                .as_ref()
                .map(ember_mmds::MmdsConfig::reported),
            network_interfaces: resources
                .network_interfaces
                .iter()
                .map(reported_interface)
                .collect(),
            vsock: resources.vsock.clone().map(|vsock| Vsock {
                vsock_id: None,
                ..vsock
            }),
            entropy: resources.entropy.map(Entropy::reported),
            pmem: [],
            memory_hotplug: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_vm_prints_every_key() {
        let printed = serde_json::to_value(FullVmConfig::of(&VmResources::default())).unwrap();
        assert_eq!(
            printed,
            json!({
                "balloon": null,
                "drives": [],
                "boot-source": {"kernel_image_path": "", "initrd_path": null, "boot_args": null},
                "cpu-config": null,
                "logger": null,
                "machine-config": {
                    "vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                    "track_dirty_pages": false, "huge_pages": "None"
                },
                "metrics": null,
                "mmds-config": null,
                "network-interfaces": [],
                "vsock": null,
                "entropy": null,
                "pmem": [],
                "memory-hotplug": null,
            })
        );
    }

    #[test]
    fn defaults_are_filled_in_and_limits_normalized() {
        let resources: VmResources = serde_json::from_value(json!({
            "drives": [{"drive_id": "data", "path_on_host": "/d", "is_root_device": false},
                       {"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                        "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 100}}}],
            "network-interfaces": [{"iface_id": "1", "host_dev_name": "tap0",
                                    "guest_mac": "06:00:AC:10:00:0A",
                                    "tx_rate_limiter": {"ops": {"size": 5, "one_time_burst": 0,
                                                                "refill_time": 100}}}],
            "vsock": {"vsock_id": "v", "guest_cid": 3, "uds_path": "v.sock"},
            "balloon": {"amount_mib": 8, "deflate_on_oom": true},
            "logger": {"level": "Info"},
        }))
        .unwrap();
        let printed = serde_json::to_value(FullVmConfig::of(&resources)).unwrap();
        assert_eq!(
            printed["drives"][0],
            json!({"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                   "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r",
                   "rate_limiter": null, "io_engine": "Sync", "socket": null})
        );
        assert_eq!(
            printed["drives"][1]["drive_id"], "data",
            "the root drive comes first"
        );
        assert_eq!(
            printed["network-interfaces"],
            json!([{"iface_id": "1", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:0a",
                    "mtu": null, "rx_rate_limiter": null,
                    "tx_rate_limiter": {"bandwidth": null,
                                        "ops": {"size": 5, "one_time_burst": null, "refill_time": 100}}}])
        );
        assert_eq!(
            printed["vsock"],
            json!({"guest_cid": 3, "uds_path": "v.sock"})
        );
        assert_eq!(printed["logger"], json!(null));
        assert_eq!(
            printed["balloon"],
            json!({"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 0,
                   "free_page_hinting": false, "free_page_reporting": false})
        );
    }

    #[test]
    fn the_entropy_device_is_printed_with_its_effective_limits() {
        let resources: VmResources = serde_json::from_value(json!({
            "entropy": {"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 0,
                                                       "refill_time": 100},
                                         "ops": {"size": 0, "refill_time": 100}}},
        }))
        .unwrap();
        let printed = serde_json::to_value(FullVmConfig::of(&resources)).unwrap();
        assert_eq!(
            printed["entropy"],
            json!({"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": null,
                                                  "refill_time": 100},
                                    "ops": null}})
        );
        let plain: VmResources = serde_json::from_value(json!({"entropy": {}})).unwrap();
        let printed = serde_json::to_value(FullVmConfig::of(&plain)).unwrap();
        assert_eq!(printed["entropy"], json!({"rate_limiter": null}));
    }
}
