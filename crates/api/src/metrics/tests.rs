//! Tests of metrics lines against what Firecracker's CI requires of one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;
use crate::routes;

/// `group.key[.field]` paths a Firecracker metrics line must have.
const REQUIRED: &str = include_str!("firecracker_required_keys.txt");

/// The required paths, grouped: group name to the paths inside it.
fn required() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in REQUIRED
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (group, rest) = line.split_once('.').unwrap_or((line, ""));
        groups.entry(group).or_default().insert(rest);
    }
    groups
}

/// Every numeric leaf of `object` as a path (`key` or `key.field`).
fn leaves(object: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (key, value) in object.as_object().unwrap() {
        match value {
            Value::Object(inner) => paths.extend(inner.iter().map(|(field, v)| {
                assert!(v.is_u64(), "{key}.{field}: {v}");
                format!("{key}.{field}")
            })),
            other => {
                assert!(other.is_u64(), "{key}: {other}");
                paths.insert(key.clone());
            }
        }
    }
    paths
}

/// A block device's and a network device's counters, as `RunningVm::metrics`
/// names them, each with the value `n`, and the process's.
fn vm_groups(n: u64) -> Vec<MetricGroup> {
    let block = [
        "requests",
        "read_count",
        "write_count",
        "flush_count",
        "sync_count",
        "read_bytes",
        "write_bytes",
        "io_errors",
        "unsupported",
        "invalid_chains",
        "throttled",
        "event_errors",
    ];
    let net = ["rx_frames", "rx_bytes", "tx_frames", "tx_tap_errors"];
    let rng = [
        "requests",
        "bytes",
        "invalid_chains",
        "host_rng_fails",
        "throttled",
        "rate_limiter_events",
        "ignored_notifications",
        "event_errors",
    ];
    let mut groups = vec![
        MetricGroup::new("block_rootfs", block.iter().map(|k| (*k, n)).collect()),
        MetricGroup::new("net_eth0", net.iter().map(|k| (*k, n)).collect()),
        MetricGroup::new("vcpu", vec![("exit_io_out", n), ("unclaimed_io", n)]),
        MetricGroup::new("vsock", vec![("rx_bytes", n), ("connections", 1)]),
        MetricGroup::new("entropy", rng.iter().map(|k| (*k, n)).collect()),
    ];
    groups.extend(process_groups(&ApiCounters::default()));
    groups
}

fn writer() -> (tempfile::TempDir, MetricsWriter) {
    let dir = tempfile::tempdir().unwrap();
    let writer = MetricsWriter::open(&dir.path().join("metrics.json")).unwrap();
    (dir, writer)
}

fn parse(line: &str) -> Value {
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_line_has_exactly_the_groups_and_keys_firecracker_requires() {
    let (_dir, mut writer) = writer();
    let line = parse(&writer.line(&vm_groups(3)));
    let required = required();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let stamp = u128::from(line["utc_timestamp_ms"].as_u64().unwrap());
    assert!(now_ms.abs_diff(stamp) < 1000, "{stamp} vs {now_ms}");
    for (name, value) in line.as_object().unwrap() {
        let template = match name.as_str() {
            "utc_timestamp_ms" | translate::EMBER_GROUP => continue,
            n if n.starts_with("block_") => "block",
            n if n.starts_with("net_") => "net",
            n => n,
        };
        let expected: BTreeSet<String> = required
            .get(template)
            .unwrap_or_else(|| panic!("group {name} is not Firecracker's"))
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        assert_eq!(leaves(value), expected, "group {name}");
    }
    for group in required.keys() {
        assert!(line.get(group).is_some(), "group {group} missing");
    }
    assert!(line.get("block_rootfs").is_some() && line.get("net_eth0").is_some());
}

#[test]
fn ember_counters_fill_firecracker_names() {
    let (_dir, mut writer) = writer();
    let line = parse(&writer.line(&vm_groups(3)));
    assert_eq!(line["block_rootfs"]["read_count"], 3);
    assert_eq!(line["block_rootfs"]["invalid_reqs_count"], 6);
    assert_eq!(line["block_rootfs"]["rate_limiter_throttled_events"], 3);
    assert_eq!(line["net_eth0"]["rx_packets_count"], 3);
    assert_eq!(line["net_eth0"]["tx_fails"], 3);
    assert_eq!(line["vsock"]["rx_bytes_count"], 3);
    assert_eq!(line["vcpu"]["exit_io_out"], 3);
    assert_eq!(line["ember"]["vcpu"]["unclaimed_io"], 3);
    assert_eq!(line["ember"]["block_rootfs"]["sync_count"], 3);
    assert_eq!(line["ember"]["vsock"]["connections"], 1);
    assert_eq!(line["ember"]["signals"]["sigterm"], 0);
    assert_eq!(line["entropy"]["entropy_event_count"], 3);
    assert_eq!(line["entropy"]["entropy_bytes"], 3);
    assert_eq!(line["entropy"]["entropy_event_fails"], 6);
    assert_eq!(line["entropy"]["host_rng_fails"], 3);
    assert_eq!(line["entropy"]["entropy_rate_limiter_throttled"], 3);
    assert_eq!(line["entropy"]["rate_limiter_event_count"], 3);
    assert_eq!(line["entropy"]["activate_fails"], 0);
    assert_eq!(line["ember"]["entropy"]["ignored_notifications"], 3);
}

#[test]
fn aggregates_are_the_sum_of_their_devices() {
    let (_dir, mut writer) = writer();
    let mut groups = vm_groups(2);
    groups.push(MetricGroup::new("block_data", vec![("read_bytes", 40)]));
    let line = parse(&writer.line(&groups));
    for (aggregate, prefix) in [("block", "block_"), ("net", "net_")] {
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        let devices = line.as_object().unwrap().iter();
        for (_, device) in devices.filter(|(name, _)| name.starts_with(prefix)) {
            for (key, value) in device.as_object().unwrap() {
                if let Some(n) = value.as_u64() {
                    *sums.entry(key.clone()).or_default() += n;
                }
            }
        }
        for (key, sum) in sums {
            assert_eq!(line[aggregate][&key], sum, "{aggregate}.{key}");
        }
    }
    assert_eq!(line["block"]["read_bytes"], 42);
}

#[test]
fn event_counts_restart_at_every_flush_and_values_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.json");
    let mut writer = MetricsWriter::open(&path).unwrap();
    let api = ApiCounters::default();
    api.record_startup(Some(1234), Some(56));
    api.count_request(routes::Method::Put, "/drives/rootfs");
    let groups = |n| {
        let mut groups = vm_groups(n);
        groups.extend(process_groups(&api));
        groups
    };
    writer.write(&groups(5));
    writer.write(&groups(5));
    api.count_request(routes::Method::Put, "/drives/rootfs");
    writer.write(&groups(9));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reads: Vec<_> = lines
        .iter()
        .map(|l| &l["block_rootfs"]["read_count"])
        .collect();
    assert_eq!(reads, [5, 0, 4]);
    let drives: Vec<_> = lines
        .iter()
        .map(|l| &l["put_api_requests"]["drive_count"])
        .collect();
    assert_eq!(drives, [1, 0, 1]);
    let sums: Vec<_> = lines.iter().map(|l| &l["block"]["read_count"]).collect();
    assert_eq!(sums, [5, 0, 4]);
    for line in &lines {
        assert_eq!(line["api_server"]["process_startup_time_us"], 1234);
        assert_eq!(line["api_server"]["process_startup_time_cpu_us"], 56);
        assert_eq!(line["ember"]["vsock"]["connections"], 1);
        assert_eq!(line["logger"]["missed_metrics_count"], 0);
    }
}

#[test]
fn lines_can_carry_the_id_and_properties() {
    let (_dir, writer) = writer();
    let properties = BTreeMap::from([("pool".to_owned(), "a".to_owned())]);
    let mut writer = writer.with_labels(Some("vm-1".into()), Some(properties));
    let line = parse(&writer.line(&[]));
    assert_eq!(line["id"], "vm-1");
    assert_eq!(line["properties"]["pool"], "a");
    let (_dir, mut plain) = self::writer();
    let line = parse(&plain.line(&[]));
    assert!(line.get("id").is_none() && line.get("properties").is_none());
}
