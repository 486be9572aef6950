//! Metrics as JSON lines: one object per flush with a UTC timestamp and one
//! member per group (`vcpu`, `uart`, `i8042`, `api_server`, `logger`,
//! `metrics`, and a group per device), each holding cumulative counters.

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
}

impl MetricsWriter {
    /// Opens the metrics destination.
    pub fn open(path: &Path) -> io::Result<MetricsWriter> {
        Ok(MetricsWriter {
            destination: Destination::open(path)?,
            lines: 0,
        })
    }

    /// The JSON line for `groups`, with this writer's own counters appended.
    pub fn line(&self, groups: &[MetricGroup]) -> String {
        let mut object = Map::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        object.insert("utc_timestamp_ms".into(), Value::from(now_ms));
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
    }
}
