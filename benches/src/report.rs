//! Figures, the table they are printed as, the JSON file they are saved in,
//! and the comparison of two such files.
//!
//! A [`Figure`] is one measured number with its unit, optionally beside a
//! baseline (the same work done without Ember: plain system calls) and the
//! overhead over it, in percent of time per operation (see
//! [`crate::stats::overhead_pct`]). A [`Report`] is every figure of a run
//! plus where it ran (commit, kernel, CPU) and the groups that failed.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{overhead_pct, Better};
use crate::{Context, Error, Result};

/// Version of the JSON layout, bumped when fields change meaning.
pub const SCHEMA: u32 = 1;

/// One measured number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The benchmark group (`block`, `net`, `boot`, ...).
    pub group: String,
    /// What was measured, unique within the group.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`req/s`, `MB/s`, `ms`, ...).
    pub unit: String,
    /// Whether bigger is better.
    pub better: Better,
    /// What the baseline is (`pread`, `write(2)`, ...), if there is one.
    pub baseline_name: Option<String>,
    /// The baseline, in the same unit.
    pub baseline: Option<f64>,
    /// Extra time per operation over the baseline, in percent.
    pub overhead_pct: Option<f64>,
    /// A target or an explanation, shown beside the figure.
    pub note: Option<String>,
}

impl Figure {
    /// A figure without a baseline.
    pub fn new(group: &str, name: &str, value: f64, unit: &str, better: Better) -> Figure {
        Figure {
            group: group.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            better,
            baseline_name: None,
            baseline: None,
            overhead_pct: None,
            note: None,
        }
    }

    /// Adds the baseline `value`, measured as `what`, and the overhead.
    pub fn baseline(mut self, what: &str, value: f64) -> Figure {
        self.baseline_name = Some(what.to_owned());
        self.baseline = Some(value);
        self.overhead_pct = overhead_pct(self.value, value, self.better);
        self
    }

    /// Adds a note (a target, or how the figure was measured).
    pub fn note(mut self, text: &str) -> Figure {
        self.note = Some(text.to_owned());
        self
    }
}

/// A group that could not be measured, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupError {
    /// The group.
    pub group: String,
    /// The error.
    pub error: String,
}

/// Where the figures were measured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The first CPU's model name.
    pub cpu_model: String,
}

impl Host {
    /// This machine.
    pub fn detect() -> Host {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_default();
        Host {
            kernel,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
        }
    }
}

/// Every figure of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// `git rev-parse HEAD` of the workspace, if known.
    pub commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub dirty: Option<bool>,
    /// When the run ended, in seconds since the Unix epoch.
    pub unix_time: u64,
    /// The machine.
    pub host: Host,
    /// The groups run, in order.
    pub groups: Vec<String>,
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// Groups that failed.
    pub errors: Vec<GroupError>,
}

impl Report {
    /// An empty report for this machine and the workspace at `workspace`.
    pub fn new(workspace: &Path) -> Report {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        Report {
            schema: SCHEMA,
            commit: git(&["rev-parse", "HEAD"]),
            dirty: git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
            unix_time: 0,
            host: Host::detect(),
            groups: Vec::new(),
            figures: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Saves the report as pretty-printed JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Unexpected(format!("serialising the report: {e}")))?;
        std::fs::write(path, text + "\n").ctx(format!("writing {}", path.display()))
    }

    /// Reads a report [`Report::save`] wrote.
    pub fn load(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path).ctx(format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Unexpected(format!("{}: not a report: {e}", path.display())))
    }

    /// The figures as an aligned text table, then the errors.
    pub fn table(&self) -> String {
        let header = [
            "group",
            "benchmark",
            "ember",
            "baseline",
            "overhead",
            "unit",
            "note",
        ];
        let rows: Vec<[String; 7]> = self
            .figures
            .iter()
            .map(|f| {
                let baseline = match (&f.baseline_name, f.baseline) {
                    (Some(what), Some(v)) => format!("{} ({what})", number(v)),
                    _ => String::new(),
                };
                [
                    f.group.clone(),
                    f.name.clone(),
                    number(f.value),
                    baseline,
                    f.overhead_pct.map(percent).unwrap_or_default(),
                    f.unit.clone(),
                    f.note.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let right = [false, false, true, true, true, false, false];
        let mut out = render(&header, &right, &rows);
        for e in &self.errors {
            let _ = writeln!(out, "{}: not measured: {}", e.group, e.error);
        }
        out
    }
}

/// Compares two reports figure by figure (matched by group and name):
/// old value, new value, and the change in percent, marked `better` or
/// `worse` beyond `noise_pct`.
pub fn compare(old: &Report, new: &Report, noise_pct: f64) -> String {
    let header = ["group", "benchmark", "old", "new", "change", "unit", ""];
    let mut rows = Vec::new();
    for f in &new.figures {
        let Some(before) = old
            .figures
            .iter()
            .find(|o| o.group == f.group && o.name == f.name)
        else {
            continue;
        };
        let change = (before.value != 0.0).then(|| (f.value / before.value - 1.0) * 100.0);
        let verdict = match change {
            Some(c) if c.abs() > noise_pct => {
                let improved = (c > 0.0) == (f.better == Better::Higher);
                if improved {
                    "better"
                } else {
                    "worse"
                }
            }
            _ => "",
        };
        rows.push([
            f.group.clone(),
            f.name.clone(),
            number(before.value),
            number(f.value),
            change.map(percent).unwrap_or_default(),
            f.unit.clone(),
            verdict.to_owned(),
        ]);
    }
    let mut out = format!(
        "old: {} ({})\nnew: {} ({})\n",
        old.commit.as_deref().unwrap_or("?"),
        old.host.cpu_model,
        new.commit.as_deref().unwrap_or("?"),
        new.host.cpu_model
    );
    let right = [false, false, true, true, true, false, false];
    out.push_str(&render(&header, &right, &rows));
    out
}

/// Text columns, left-aligned except where `right` says.
fn render<const N: usize>(header: &[&str; N], right: &[bool; N], rows: &[[String; N]]) -> String {
    let mut widths: [usize; N] = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if right[i] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    let total: usize = widths.iter().sum::<usize>() + 2 * (N - 1);
    out.push_str(&"-".repeat(total.min(160)));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// A number with three significant digits, or whole when it is 100 or more
/// or a whole number.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs();
    let decimals = if magnitude >= 100.0 || magnitude == 0.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

/// A signed percentage with one decimal.
pub fn percent(v: f64) -> String {
    format!("{v:+.1}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            schema: SCHEMA,
            commit: Some("abc".to_owned()),
            dirty: Some(false),
            unix_time: 1,
            host: Host::default(),
            groups: vec!["block".to_owned()],
            figures: vec![
                Figure::new("block", "4k-randread", 90_000.0, "req/s", Better::Higher)
                    .baseline("pread", 100_000.0)
                    .note("goal: overhead < 10%"),
                Figure::new("boot", "boot-time median", 12.5, "ms", Better::Lower),
            ],
            errors: vec![GroupError {
                group: "net".to_owned(),
                error: "no root".to_owned(),
            }],
        }
    }

    #[test]
    fn json_round_trip() {
        let dir = std::env::temp_dir().join(format!("ember-benches-test-{}", std::process::id()));
        let path = dir.join("out").join("r.json");
        let report = sample();
        report.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schema"], 1);
        assert_eq!(value["figures"][0]["better"], "higher");
        assert_eq!(value["figures"][0]["baseline_name"], "pread");
        assert_eq!(value["figures"][1]["baseline"], serde_json::Value::Null);
        let overhead = value["figures"][0]["overhead_pct"].as_f64().unwrap();
        assert!((overhead - 11.11).abs() < 0.01);
        assert_eq!(Report::load(&path).unwrap(), report);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Report::load(&path).is_err());
    }

    #[test]
    fn table_lines_up_and_lists_errors() {
        let table = sample().table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("group  benchmark"), "{table}");
        assert!(lines[2].contains("90000  100000 (pread)"), "{table}");
        assert!(
            lines[2].contains("+11.1%  req/s  goal: overhead < 10%"),
            "{table}"
        );
        assert!(lines[3].contains("12.5"), "{table}");
        assert_eq!(lines[4], "net: not measured: no root");
        // The ember column is right-aligned: both figures end at one column.
        let end = |l: &str, v: &str| l.find(v).unwrap() + v.len();
        assert_eq!(end(lines[2], "90000"), end(lines[3], "12.5"));
    }

    #[test]
    fn comparison_marks_changes_beyond_noise() {
        let old = sample();
        let mut new = sample();
        new.figures[0].value = 80_000.0; // rate down: worse
        new.figures[1].value = 10.0; // time down: better
        let text = compare(&old, &new, 5.0);
        let rate = text.lines().find(|l| l.contains("4k-randread")).unwrap();
        assert!(rate.contains("-11.1%") && rate.ends_with("worse"), "{text}");
        let time = text.lines().find(|l| l.contains("boot-time")).unwrap();
        assert!(
            time.contains("-20.0%") && time.ends_with("better"),
            "{text}"
        );
        let same = compare(&old, &old, 5.0);
        assert!(
            !same.contains("better") && !same.contains("worse"),
            "{same}"
        );
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(123_456.7), "123457");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(0.01234), "0.012");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(39.0), "39");
        assert_eq!(percent(8.26), "+8.3%");
        assert_eq!(percent(-2.0), "-2.0%");
    }
}
