//! Metrics as JSON lines in Firecracker's format: one object per flush with
//! `utc_timestamp_ms` and every Firecracker group ([`schema`]), filled from
//! Ember's counters under Firecracker's names ([`translate`]): event counts
//! as their increase since the previous line, values as they are now;
//! per-device groups `block_<drive_id>` and `net_<iface_id>` with their sums
//! in `block` and `net`; and Ember's counters that Firecracker has no name
//! for in the `ember` group. `docs/metrics.md` lists what fills each counter.

pub mod api;
pub mod schema;
pub mod translate;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ember_vmm::MetricGroup;
use serde_json::{Map, Value};

use crate::destination::Destination;
use crate::logger;
use api::ApiCounters;
use translate::Deltas;

/// Writes metrics lines to a file or FIFO.
#[derive(Debug)]
pub struct MetricsWriter {
    destination: Destination,
    deltas: Deltas,
    /// Members put in every line beside the timestamp.
    labels: Map<String, Value>,
}

impl MetricsWriter {
    /// Opens the metrics destination.
    pub fn open(path: &Path) -> io::Result<MetricsWriter> {
        Ok(MetricsWriter {
            destination: Destination::open(path)?,
            deltas: Deltas::default(),
            labels: Map::new(),
        })
    }

    /// Puts `id` (Firecracker's `emit_id`) and `properties` in every line.
    pub fn with_labels(
        mut self,
        id: Option<String>,
        properties: Option<BTreeMap<String, String>>,
    ) -> MetricsWriter {
        if let Some(id) = id {
            self.labels.insert("id".into(), Value::from(id));
        }
        if let Some(properties) = properties {
            let object = properties
                .into_iter()
                .map(|(key, value)| (key, Value::from(value)))
                .collect();
            self.labels
                .insert("properties".into(), Value::Object(object));
        }
        self
    }

    /// The next JSON line for Ember's cumulative counters `groups`, with
    /// this writer's own counters added. Event counts restart from here.
    pub fn line(&mut self, groups: &[MetricGroup]) -> String {
        let missed = self.destination.missed_lines();
        let own = MetricGroup::new(
            "logger",
            vec![("missed_metrics_count", missed), ("metrics_fails", missed)],
        );
        let all: Vec<MetricGroup> = groups.iter().cloned().chain([own]).collect();
        let mut object = self.deltas.groups(&all);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        object.insert("utc_timestamp_ms".into(), Value::from(now_ms));
        object.extend(self.labels.clone());
        let mut line = Value::Object(object).to_string();
        line.push('\n');
        line
    }

    /// Writes one line of metrics.
    pub fn write(&mut self, groups: &[MetricGroup]) {
        let line = self.line(groups);
        self.destination.write_line(&line);
    }
}

/// Signals Ember handles, under their metric names (`sighup` is
/// Firecracker's; the others go to the `ember` group).
const SIGNALS: [(libc::c_int, &str); 7] = [
    (libc::SIGHUP, "sighup"),
    (libc::SIGTERM, "sigterm"),
    (libc::SIGINT, "sigint"),
    (libc::SIGQUIT, "sigquit"),
    (libc::SIGUSR1, "sigusr1"),
    (libc::SIGUSR2, "sigusr2"),
    (libc::SIGALRM, "sigalrm"),
];

/// Panics seen by the hook [`count_panics`] installs.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts panics (for `vmm.panic_count`), then reports them as before.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

/// The process's counters outside the VM: the API's, the logger's, signals
/// received and panics (cumulative, under Ember's names).
pub fn process_groups(api: &ApiCounters) -> Vec<MetricGroup> {
    let signals = SIGNALS
        .iter()
        .map(|&(num, name)| (name, u64::from(ember_vmm::signals::received(num))))
        .collect();
    let mut groups = api.groups();
    groups.extend([
        MetricGroup::new(
            "logger",
            vec![
                ("missed_log_count", logger::missed_lines()),
                ("rate_limited_log_count", logger::rate_limited_lines()),
            ],
        ),
        MetricGroup::new("signals", signals),
        MetricGroup::new(
            "vmm",
            vec![("panic_count", u64::from(PANICS.load(Ordering::Relaxed) > 0))],
        ),
    ]);
    groups
}

#[cfg(test)]
mod tests;
