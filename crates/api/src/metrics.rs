//! Metrics as JSON lines: one object per flush with a UTC timestamp (and,
//! when asked for, the instance `id` and operator `properties`) and one
//! member per group (`vcpu`, `uart`, `i8042`, `api_server`, `logger`,
//! `metrics`, and a group per device), each holding cumulative counters.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ember_vmm::MetricGroup;
use serde_json::{Map, Value};

use crate::destination::Destination;

/// Writes metrics lines to a file or FIFO.
#[derive(Debug)]
pub struct MetricsWriter {
    destination: Destination,
    lines: u64,
    /// Members put in every line after the timestamp.
    labels: Map<String, Value>,
}

impl MetricsWriter {
    /// Opens the metrics destination.
    pub fn open(path: &Path) -> io::Result<MetricsWriter> {
        Ok(MetricsWriter {
            destination: Destination::open(path)?,
            lines: 0,
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

    /// The JSON line for `groups`, with this writer's own counters appended.
    pub fn line(&self, groups: &[MetricGroup]) -> String {
        let mut object = Map::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        object.insert("utc_timestamp_ms".into(), Value::from(now_ms));
        object.extend(self.labels.clone());
        let own = MetricGroup::new(
            "metrics",
            vec![
                ("write_count", self.lines),
                ("missed_metrics_count", self.destination.missed_lines()),
            ],
        );
        for group in groups.iter().chain(std::iter::once(&own)) {
            let counters: Map<String, Value> = group
                .counters
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Value::from(*value)))
                .collect();
            object.insert(group.name.clone(), Value::Object(counters));
        }
        let mut line = Value::Object(object).to_string();
        line.push('\n');
        line
    }

    /// Writes one line of metrics.
    pub fn write(&mut self, groups: &[MetricGroup]) {
        let line = self.line(groups);
        self.lines += 1;
        self.destination.write_line(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_objects_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut writer = MetricsWriter::open(&path).unwrap();
        let groups = vec![MetricGroup::new("vcpu", vec![("exit_io_out", 7)])];
        writer.write(&groups);
        writer.write(&groups);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["vcpu"]["exit_io_out"], 7);
        assert_eq!(lines[1]["metrics"]["write_count"], 1);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert!(lines[0].get("id").is_none() && lines[0].get("properties").is_none());
    }

    #[test]
    fn lines_can_carry_the_id_and_properties() {
        let dir = tempfile::tempdir().unwrap();
        let properties = BTreeMap::from([("pool".to_owned(), "a".to_owned())]);
        let writer = MetricsWriter::open(&dir.path().join("m"))
            .unwrap()
            .with_labels(Some("vm-1".into()), Some(properties));
        let line: Value = serde_json::from_str(&writer.line(&[])).unwrap();
        assert_eq!(line["id"], "vm-1");
        assert_eq!(line["properties"]["pool"], "a");
    }
}
