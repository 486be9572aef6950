//! Firecracker's metric groups and counter names, with how each is reported:
//! the shape every metrics line has, whatever Ember measures.

/// How a counter is reported on a metrics line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An event count, reported as the increase since the previous line.
    Inc,
    /// A value, reported as it is now.
    Store,
    /// A latency aggregate: an object of `min_us` and `max_us` (values) and
    /// `sum_us` (an increase).
    Latency,
}

/// One Firecracker group: its name and its counters.
#[derive(Debug)]
pub struct Group {
    /// The group's name (for per-device groups, the aggregate's, e.g. `block`).
    pub name: &'static str,
    /// Counter names and kinds.
    pub keys: &'static [(&'static str, Kind)],
}

impl Group {
    /// The kind of counter `key`, if the group has it.
    pub fn kind(&self, key: &str) -> Option<Kind> {
        self.keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, kind)| *kind)
    }
}

use Kind::{Inc, Latency, Store};

/// Block devices: `block_<drive_id>` per drive and `block`, their sum.
pub const BLOCK: Group = Group {
    name: "block",
    keys: &[
        ("activate_fails", Inc),
        ("cfg_fails", Inc),
        ("no_avail_buffer", Inc),
        ("event_fails", Inc),
        ("execute_fails", Inc),
        ("invalid_reqs_count", Inc),
        ("flush_count", Inc),
        ("queue_event_count", Inc),
        ("rate_limiter_event_count", Inc),
        ("update_count", Inc),
        ("update_fails", Inc),
        ("read_bytes", Inc),
        ("write_bytes", Inc),
        ("read_count", Inc),
        ("write_count", Inc),
        ("read_agg", Latency),
        ("write_agg", Latency),
        ("rate_limiter_throttled_events", Inc),
        ("io_engine_throttled_events", Inc),
        ("remaining_reqs_count", Inc),
    ],
};

/// Network devices: `net_<iface_id>` per interface and `net`, their sum.
pub const NET: Group = Group {
    name: "net",
    keys: &[
        ("activate_fails", Inc),
        ("cfg_fails", Inc),
        ("no_rx_avail_buffer", Inc),
        ("no_tx_avail_buffer", Inc),
        ("event_fails", Inc),
        ("rx_queue_event_count", Inc),
        ("rx_event_rate_limiter_count", Inc),
        ("rx_rate_limiter_throttled", Inc),
        ("rx_tap_event_count", Inc),
        ("rx_bytes_count", Inc),
        ("rx_packets_count", Inc),
        ("rx_fails", Inc),
        ("rx_count", Inc),
        ("tap_read_fails", Inc),
        ("tap_write_fails", Inc),
        ("tap_write_agg", Latency),
        ("tx_bytes_count", Inc),
        ("tx_malformed_frames", Inc),
        ("tx_fails", Inc),
        ("tx_count", Inc),
        ("tx_packets_count", Inc),
        ("tx_queue_event_count", Inc),
        ("tx_rate_limiter_event_count", Inc),
        ("tx_rate_limiter_throttled", Inc),
        ("tx_spoofed_mac_count", Inc),
        ("tx_remaining_reqs_count", Inc),
    ],
};

/// Groups with a per-device member for each device, and their aggregate.
pub const PER_DEVICE: [&Group; 2] = [&BLOCK, &NET];

/// The groups every line has once (the aggregates of [`PER_DEVICE`] too).
pub const GROUPS: &[Group] = &[
    Group {
        name: "api_server",
        keys: &[
            ("process_startup_time_us", Store),
            ("process_startup_time_cpu_us", Store),
        ],
    },
    Group {
        name: "balloon",
        keys: &[
            ("activate_fails", Inc),
            ("inflate_count", Inc),
            ("stats_updates_count", Inc),
            ("stats_update_fails", Inc),
            ("deflate_count", Inc),
            ("event_fails", Inc),
            ("free_page_report_count", Inc),
            ("free_page_report_freed", Inc),
            ("free_page_report_fails", Inc),
            ("free_page_hint_count", Inc),
            ("free_page_hint_freed", Inc),
            ("free_page_hint_fails", Inc),
        ],
    },
    BLOCK,
    Group {
        name: "deprecated_api",
        keys: &[("deprecated_http_api_calls", Inc)],
    },
    Group {
        name: "get_api_requests",
        keys: &[
            ("instance_info_count", Inc),
            ("machine_cfg_count", Inc),
            ("mmds_count", Inc),
            ("vmm_version_count", Inc),
            ("hotplug_memory_count", Inc),
        ],
    },
    Group {
        name: "i8042",
        keys: &[
            ("error_count", Inc),
            ("missed_read_count", Inc),
            ("missed_write_count", Inc),
            ("read_count", Inc),
            ("reset_count", Inc),
            ("write_count", Inc),
        ],
    },
    Group {
        name: "latencies_us",
        keys: &[
            ("full_create_snapshot", Store),
            ("diff_create_snapshot", Store),
            ("load_snapshot", Store),
            ("pause_vm", Store),
            ("resume_vm", Store),
            ("vmm_full_create_snapshot", Store),
            ("vmm_diff_create_snapshot", Store),
            ("vmm_load_snapshot", Store),
            ("vmm_pause_vm", Store),
            ("vmm_resume_vm", Store),
        ],
    },
    Group {
        name: "logger",
        keys: &[
            ("missed_metrics_count", Inc),
            ("metrics_fails", Inc),
            ("missed_log_count", Inc),
            ("rate_limited_log_count", Inc),
        ],
    },
    Group {
        name: "mmds",
        keys: &[
            ("rx_accepted", Inc),
            ("rx_accepted_err", Inc),
            ("rx_accepted_unusual", Inc),
            ("rx_bad_eth", Inc),
            ("rx_invalid_token", Inc),
            ("rx_no_token", Inc),
            ("rx_count", Inc),
            ("tx_bytes", Inc),
            ("tx_count", Inc),
            ("tx_errors", Inc),
            ("tx_frames", Inc),
            ("connections_created", Inc),
            ("connections_destroyed", Inc),
        ],
    },
    NET,
    Group {
        name: "patch_api_requests",
        keys: &[
            ("drive_count", Inc),
            ("drive_fails", Inc),
            ("network_count", Inc),
            ("network_fails", Inc),
            ("machine_cfg_count", Inc),
            ("machine_cfg_fails", Inc),
            ("mmds_count", Inc),
            ("mmds_fails", Inc),
            ("hotplug_memory_count", Inc),
            ("hotplug_memory_fails", Inc),
            ("pmem_count", Inc),
            ("pmem_fails", Inc),
        ],
    },
    Group {
        name: "put_api_requests",
        keys: &[
            ("actions_count", Inc),
            ("actions_fails", Inc),
            ("boot_source_count", Inc),
            ("boot_source_fails", Inc),
            ("drive_count", Inc),
            ("drive_fails", Inc),
            ("logger_count", Inc),
            ("logger_fails", Inc),
            ("machine_cfg_count", Inc),
            ("machine_cfg_fails", Inc),
            ("cpu_cfg_count", Inc),
            ("cpu_cfg_fails", Inc),
            ("metrics_count", Inc),
            ("metrics_fails", Inc),
            ("network_count", Inc),
            ("network_fails", Inc),
            ("mmds_count", Inc),
            ("mmds_fails", Inc),
            ("vsock_count", Inc),
            ("vsock_fails", Inc),
            ("pmem_count", Inc),
            ("pmem_fails", Inc),
            ("serial_count", Inc),
            ("serial_fails", Inc),
            ("hotplug_memory_count", Inc),
            ("hotplug_memory_fails", Inc),
        ],
    },
    Group {
        name: "seccomp",
        keys: &[("num_faults", Store)],
    },
    Group {
        name: "vcpu",
        keys: &[
            ("exit_io_in", Inc),
            ("exit_io_out", Inc),
            ("exit_mmio_read", Inc),
            ("exit_mmio_write", Inc),
            ("failures", Inc),
            ("kvmclock_ctrl_fails", Inc),
            ("exit_io_in_agg", Latency),
            ("exit_io_out_agg", Latency),
            ("exit_mmio_read_agg", Latency),
            ("exit_mmio_write_agg", Latency),
        ],
    },
    Group {
        name: "vmm",
        keys: &[("panic_count", Store)],
    },
    Group {
        name: "uart",
        keys: &[
            ("error_count", Inc),
            ("flush_count", Inc),
            ("missed_read_count", Inc),
            ("missed_write_count", Inc),
            ("read_count", Inc),
            ("write_count", Inc),
            ("rate_limiter_dropped_bytes", Inc),
        ],
    },
    Group {
        name: "signals",
        keys: &[
            ("sigbus", Store),
            ("sigsegv", Store),
            ("sigxfsz", Store),
            ("sigxcpu", Store),
            ("sigpipe", Inc),
            ("sighup", Store),
            ("sigill", Store),
        ],
    },
    Group {
        name: "vsock",
        keys: &[
            ("activate_fails", Inc),
            ("cfg_fails", Inc),
            ("rx_queue_event_fails", Inc),
            ("tx_queue_event_fails", Inc),
            ("ev_queue_event_fails", Inc),
            ("muxer_event_fails", Inc),
            ("conn_event_fails", Inc),
            ("rx_queue_event_count", Inc),
            ("tx_queue_event_count", Inc),
            ("rx_bytes_count", Inc),
            ("tx_bytes_count", Inc),
            ("rx_packets_count", Inc),
            ("tx_packets_count", Inc),
            ("conns_added", Inc),
            ("conns_killed", Inc),
            ("conns_removed", Inc),
            ("killq_resync", Inc),
            ("tx_flush_fails", Inc),
            ("tx_write_fails", Inc),
            ("rx_read_fails", Inc),
        ],
    },
    Group {
        name: "entropy",
        keys: &[
            ("activate_fails", Inc),
            ("entropy_event_fails", Inc),
            ("entropy_event_count", Inc),
            ("entropy_bytes", Inc),
            ("host_rng_fails", Inc),
            ("entropy_rate_limiter_throttled", Inc),
            ("rate_limiter_event_count", Inc),
        ],
    },
    Group {
        name: "interrupts",
        keys: &[("triggers", Inc), ("config_updates", Inc)],
    },
    Group {
        name: "pmem",
        keys: &[
            ("activate_fails", Inc),
            ("cfg_fails", Inc),
            ("event_fails", Inc),
            ("queue_event_count", Inc),
            ("rate_limiter_throttled_events", Inc),
            ("rate_limiter_event_count", Inc),
        ],
    },
    Group {
        name: "memory_hotplug",
        keys: &[
            ("activate_fails", Inc),
            ("queue_event_fails", Inc),
            ("queue_event_count", Inc),
            ("plug_count", Inc),
            ("plug_bytes", Inc),
            ("plug_fails", Inc),
            ("plug_agg", Latency),
            ("unplug_count", Inc),
            ("unplug_bytes", Inc),
            ("unplug_fails", Inc),
            ("unplug_discard_fails", Inc),
            ("unplug_agg", Latency),
            ("state_count", Inc),
            ("state_fails", Inc),
            ("state_agg", Latency),
            ("unplug_all_count", Inc),
            ("unplug_all_fails", Inc),
            ("unplug_all_agg", Latency),
        ],
    },
];

/// The Firecracker group a group named `name` reports into: a fixed group of
/// that name, or the per-device template whose `<name>_` prefixes it.
pub fn group_of(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name).or_else(|| {
        PER_DEVICE.into_iter().find(|g| {
            name.strip_prefix(g.name)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|id| !id.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_keys_are_unique() {
        let mut names: Vec<_> = GROUPS.iter().map(|g| g.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), GROUPS.len());
        for group in GROUPS {
            let mut keys: Vec<_> = group.keys.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), group.keys.len(), "{}", group.name);
        }
    }

    #[test]
    fn device_groups_find_their_template() {
        assert_eq!(group_of("block_rootfs").map(|g| g.name), Some("block"));
        assert_eq!(group_of("net_eth0").map(|g| g.name), Some("net"));
        assert_eq!(group_of("vcpu").map(|g| g.name), Some("vcpu"));
        assert!(group_of("block_").is_none());
        assert!(group_of("blocky").is_none());
        assert!(group_of("ember").is_none());
    }
}
