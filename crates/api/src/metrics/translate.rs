//! From Ember's counters (cumulative, under Ember's names) to a metrics line
//! under Firecracker's names: which Firecracker counter each Ember counter
//! fills, the increase since the previous line for event counts, and the
//! `ember` group for counters Firecracker has no name for.

use std::collections::{BTreeMap, HashMap};

use ember_vmm::MetricGroup;
use serde_json::{Map, Value};

use super::schema::{self, Group, Kind};

/// Ember counters reported under other Firecracker names: (Firecracker group
/// or per-device template, Ember counter, the Firecracker counters it adds to).
/// An Ember counter not listed here keeps its name if its group has a
/// counter of that name, and goes to the `ember` group otherwise.
const RENAMES: &[(&str, &str, &[&str])] = &[
    ("block", "io_errors", &["execute_fails"]),
    ("block", "unsupported", &["invalid_reqs_count"]),
    ("block", "invalid_chains", &["invalid_reqs_count"]),
    ("block", "throttled", &["rate_limiter_throttled_events"]),
    ("block", "event_errors", &["event_fails"]),
    ("net", "rx_frames", &["rx_packets_count", "rx_count"]),
    ("net", "rx_bytes", &["rx_bytes_count"]),
    ("net", "rx_no_buffer", &["no_rx_avail_buffer"]),
    ("net", "rx_too_big", &["rx_fails"]),
    ("net", "rx_dropped", &["rx_fails"]),
    ("net", "rx_tap_errors", &["tap_read_fails"]),
    ("net", "rx_throttled", &["rx_rate_limiter_throttled"]),
    ("net", "tx_frames", &["tx_packets_count", "tx_count"]),
    ("net", "tx_bytes", &["tx_bytes_count"]),
    ("net", "tx_too_big", &["tx_malformed_frames"]),
    ("net", "tx_malformed", &["tx_malformed_frames"]),
    ("net", "tx_tap_errors", &["tap_write_fails", "tx_fails"]),
    ("net", "tx_throttled", &["tx_rate_limiter_throttled"]),
    ("net", "rx_queue_events", &["rx_queue_event_count"]),
    ("net", "tx_queue_events", &["tx_queue_event_count"]),
    ("net", "tap_events", &["rx_tap_event_count"]),
    ("net", "event_errors", &["event_fails"]),
    ("vsock", "conns_opened", &["conns_added"]),
    ("vsock", "conns_closed", &["conns_removed"]),
    ("vsock", "rx_packets", &["rx_packets_count"]),
    ("vsock", "tx_packets", &["tx_packets_count"]),
    ("vsock", "rx_bytes", &["rx_bytes_count"]),
    ("vsock", "tx_bytes", &["tx_bytes_count"]),
    ("entropy", "requests", &["entropy_event_count"]),
    ("entropy", "bytes", &["entropy_bytes"]),
    ("entropy", "invalid_chains", &["entropy_event_fails"]),
    ("entropy", "event_errors", &["entropy_event_fails"]),
    ("entropy", "throttled", &["entropy_rate_limiter_throttled"]),
    (
        "entropy",
        "rate_limiter_events",
        &["rate_limiter_event_count"],
    ),
];

/// Whether Ember-only counter `key` of `group` is a value (a gauge, or a
/// signal's "received" flag), not an event count.
fn is_value(group: &str, key: &str) -> bool {
    matches!(
        (group, key),
        ("signals", _) | ("vsock", "connections") | ("vsock", "buffered_bytes")
    )
}

/// The group holding Ember's counters that Firecracker has no name for.
pub const EMBER_GROUP: &str = "ember";

/// Where one Ember counter goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// These counters of the Firecracker group the Ember group reports into.
    Firecracker(Vec<&'static str>),
    /// The `ember` group, under the Ember group's and counter's names.
    Ember,
}

/// Where counter `key` of the Ember group `group` goes.
pub fn target(group: &str, key: &str) -> Target {
    let Some(fc) = schema::group_of(group) else {
        return Target::Ember;
    };
    if let Some((_, _, to)) = RENAMES.iter().find(|(g, k, _)| *g == fc.name && *k == key) {
        return Target::Firecracker(to.to_vec());
    }
    match fc.keys.iter().find(|(k, _)| *k == key) {
        Some((name, _)) => Target::Firecracker(vec![name]),
        None => Target::Ember,
    }
}

/// Cumulative values under their place on the line (`group.key`).
type Totals = BTreeMap<String, BTreeMap<String, u64>>;

/// Sorts Ember's counters into Firecracker's groups and the `ember` group,
/// summing those that fill the same counter.
fn sort(groups: &[MetricGroup]) -> (Totals, Totals) {
    let mut fc = Totals::new();
    let mut ember = Totals::new();
    for group in groups {
        for (key, value) in &group.counters {
            match target(&group.name, key) {
                Target::Firecracker(keys) => {
                    let totals = fc.entry(group.name.clone()).or_default();
                    for key in keys {
                        let total = totals.entry(key.to_owned()).or_default();
                        *total = total.saturating_add(*value);
                    }
                }
                Target::Ember => {
                    let totals = ember.entry(group.name.clone()).or_default();
                    let total = totals.entry((*key).to_owned()).or_default();
                    *total = total.saturating_add(*value);
                }
            }
        }
    }
    (fc, ember)
}

/// Turns cumulative counts into increases since the previous line.
#[derive(Debug, Default)]
pub struct Deltas {
    previous: HashMap<String, u64>,
}

impl Deltas {
    /// The increase of the counter at `path` since the last call for it.
    fn since_last(&mut self, path: String, now: u64) -> u64 {
        let before = self.previous.insert(path, now).unwrap_or(0);
        now.saturating_sub(before)
    }

    /// The reported value of counter `key` of `group` (at `name` on the line).
    fn report(&mut self, name: &str, key: &str, kind: Kind, total: u64) -> Value {
        match kind {
            Kind::Inc => Value::from(self.since_last(format!("{name}.{key}"), total)),
            Kind::Store => Value::from(total),
            Kind::Latency => latency_zero(),
        }
    }

    /// The object for Firecracker group `group` named `name`, from `totals`.
    fn fc_group(
        &mut self,
        group: &Group,
        name: &str,
        totals: Option<&BTreeMap<String, u64>>,
    ) -> Map<String, Value> {
        group
            .keys
            .iter()
            .map(|(key, kind)| {
                let total = totals.and_then(|t| t.get(*key)).copied().unwrap_or(0);
                ((*key).to_owned(), self.report(name, key, *kind, total))
            })
            .collect()
    }

    /// The `ember` group: one object per Ember group.
    fn ember_group(&mut self, ember: &Totals) -> Map<String, Value> {
        ember
            .iter()
            .map(|(group, totals)| {
                let counters = totals
                    .iter()
                    .map(|(key, total)| {
                        let kind = if is_value(group, key) {
                            Kind::Store
                        } else {
                            Kind::Inc
                        };
                        let path = format!("{EMBER_GROUP}.{group}");
                        (key.clone(), self.report(&path, key, kind, *total))
                    })
                    .collect();
                (group.clone(), Value::Object(counters))
            })
            .collect()
    }

    /// The groups of a metrics line (all but `utc_timestamp_ms`) for Ember's
    /// cumulative counters `groups`.
    pub fn groups(&mut self, groups: &[MetricGroup]) -> Map<String, Value> {
        let (fc, ember) = sort(groups);
        let mut line = Map::new();
        for device_group in schema::PER_DEVICE {
            let mut aggregate = Map::new();
            let prefix = format!("{}_", device_group.name);
            for (name, totals) in fc.iter().filter(|(name, _)| name.starts_with(&prefix)) {
                let object = self.fc_group(device_group, name, Some(totals));
                add_into(&mut aggregate, &object);
                line.insert(name.clone(), Value::Object(object));
            }
            let empty = self.fc_group(device_group, device_group.name, None);
            add_into(&mut aggregate, &empty);
            line.insert(device_group.name.to_owned(), Value::Object(aggregate));
        }
        for group in schema::GROUPS {
            if !line.contains_key(group.name) {
                let object = self.fc_group(group, group.name, fc.get(group.name));
                line.insert(group.name.to_owned(), Value::Object(object));
            }
        }
        line.insert(
            EMBER_GROUP.to_owned(),
            Value::Object(self.ember_group(&ember)),
        );
        line
    }
}

/// A latency aggregate Ember does not measure.
fn latency_zero() -> Value {
    serde_json::json!({ "min_us": 0, "max_us": 0, "sum_us": 0 })
}

/// Adds each number of `object` into `sum` (recursively, for aggregates),
/// as Firecracker sums per-device groups into their aggregate.
fn add_into(sum: &mut Map<String, Value>, object: &Map<String, Value>) {
    for (key, value) in object {
        match (sum.get_mut(key), value) {
            (Some(Value::Object(inner)), Value::Object(other)) => add_into(inner, other),
            (Some(Value::Number(n)), Value::Number(m)) => {
                let total = n
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_add(m.as_u64().unwrap_or(0));
                *n = total.into();
            }
            (Some(_), _) => {}
            (None, value) => {
                sum.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, reads: u64) -> MetricGroup {
        MetricGroup::new(
            format!("block_{id}"),
            vec![
                ("read_count", reads),
                ("io_errors", 1),
                ("sync_count", reads),
            ],
        )
    }

    #[test]
    fn counters_go_to_their_firecracker_names() {
        assert_eq!(
            target("block_x", "read_count"),
            Target::Firecracker(vec!["read_count"])
        );
        assert_eq!(
            target("net_eth0", "tx_tap_errors"),
            Target::Firecracker(vec!["tap_write_fails", "tx_fails"])
        );
        assert_eq!(target("block_x", "sync_count"), Target::Ember);
        assert_eq!(
            target("balloon", "inflate_count"),
            Target::Firecracker(vec!["inflate_count"])
        );
        assert_eq!(target("balloon", "pages_released"), Target::Ember);
        assert_eq!(target("nothing", "read_count"), Target::Ember);
    }

    #[test]
    fn every_rename_names_existing_counters() {
        for (group, key, to) in RENAMES {
            let fc = schema::group_of(group).unwrap();
            assert!(fc.kind(key).is_none(), "{group}.{key} shadows a name");
            for name in *to {
                assert_eq!(fc.kind(name), Some(Kind::Inc), "{group}.{name}");
            }
        }
    }

    #[test]
    fn devices_are_summed_into_their_aggregate() {
        let mut deltas = Deltas::default();
        let line = deltas.groups(&[block("a", 3), block("b", 4)]);
        assert_eq!(line["block_a"]["read_count"], 3);
        assert_eq!(line["block_b"]["execute_fails"], 1);
        assert_eq!(line["block"]["read_count"], 7);
        assert_eq!(line["block"]["execute_fails"], 2);
        assert_eq!(line["block"]["read_agg"]["sum_us"], 0);
        assert_eq!(line["net"]["rx_count"], 0);
        assert_eq!(line["ember"]["block_a"]["sync_count"], 3);
    }

    #[test]
    fn event_counts_restart_at_each_line_and_values_do_not() {
        let mut deltas = Deltas::default();
        let groups = |reads, startup| {
            vec![
                block("a", reads),
                MetricGroup::new("api_server", vec![("process_startup_time_us", startup)]),
                MetricGroup::new("vsock", vec![("connections", 2), ("rsts_sent", reads)]),
            ]
        };
        let first = deltas.groups(&groups(5, 900));
        let second = deltas.groups(&groups(5, 900));
        let third = deltas.groups(&groups(8, 900));
        assert_eq!(first["block_a"]["read_count"], 5);
        assert_eq!(second["block_a"]["read_count"], 0);
        assert_eq!(third["block_a"]["read_count"], 3);
        assert_eq!(third["block"]["read_count"], 3);
        assert_eq!(second["api_server"]["process_startup_time_us"], 900);
        assert_eq!(third["ember"]["vsock"]["rsts_sent"], 3);
        assert_eq!(third["ember"]["vsock"]["connections"], 2);
        assert_eq!(third["ember"]["block_a"]["sync_count"], 3);
    }
}
