//! The process logger: lines with a UTC timestamp, the instance id, the thread
//! and optionally the level and source location, written to standard error or
//! to a file or FIFO. It can be reconfigured while running (for the API's
//! `PUT /logger`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

use crate::destination::Destination;
use crate::{Error, Result};

/// Where and how to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggerConfig {
    /// Instance id shown on every line.
    pub instance_id: String,
    /// Log file or FIFO; standard error when `None`.
    pub path: Option<PathBuf>,
    /// Most verbose level written.
    pub level: LevelFilter,
    /// Show the level of each line.
    pub show_level: bool,
    /// Show the source file and line of each line.
    pub show_origin: bool,
    /// Only lines from modules whose path starts with this (`--module`, the
    /// `module` of `PUT /logger`, as Firecracker's filter); all when `None`.
    /// Ember's module paths start with its crates' names (`ember_vmm`,
    /// `ember_api`, `ember_devices`, ...).
    pub module: Option<String>,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        LoggerConfig {
            instance_id: "anonymous-instance".into(),
            path: None,
            level: LevelFilter::Info,
            show_level: false,
            show_origin: false,
            module: None,
        }
    }
}

/// Whether `config`'s module filter lets a line from `module_path` through:
/// a line must come from a module whose path starts with the filter, so a
/// line without a module path is dropped when a filter is set.
fn module_enabled(config: &LoggerConfig, module_path: Option<&str>) -> bool {
    match (&config.module, module_path) {
        (None, _) => true,
        (Some(filter), Some(path)) => path.starts_with(filter.as_str()),
        (Some(_), None) => false,
    }
}

/// Parses a Firecracker level name (`Error`, `Warning`, `Info`, `Debug`,
/// `Trace`, `Off`), case-insensitively.
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    Some(match name.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Where log lines go.
enum Output {
    Stderr,
    Destination(Destination),
}

struct Sink {
    config: LoggerConfig,
    out: Output,
}

/// Lines lost by destinations replaced since start (the current one counts its own).
static MISSED_BEFORE: AtomicU64 = AtomicU64::new(0);

struct Logger {
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// `YYYY-MM-DDTHH:MM:SS.uuuuuu` in UTC.
pub fn utc_timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_micros()
    )
}

fn format_line(config: &LoggerConfig, record: &Record<'_>) -> String {
    let thread = std::thread::current();
    let mut origin = format!("{}:{}", config.instance_id, thread.name().unwrap_or("-"));
    if config.show_level {
        origin.push(':');
        origin.push_str(record.level().as_str());
    }
    if config.show_origin {
        origin.push(':');
        origin.push_str(record.file().unwrap_or("?"));
        origin.push(':');
        origin.push_str(&record.line().unwrap_or(0).to_string());
    }
    format!(
        "{} [{origin}] {}\n",
        utc_timestamp(SystemTime::now()),
        record.args()
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if !module_enabled(&sink.config, record.module_path()) {
            return;
        }
        let line = format_line(&sink.config, record);
        match &mut sink.out {
            Output::Stderr => {
                // A logger has nowhere to report its own failure on stderr.
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Output::Destination(destination) => destination.write_line(&line),
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Lines dropped by a rate limit since the process started.
static RATE_LIMITED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A budget of log lines per second for lines a client can cause (each
/// failed API request logs one): past it lines are dropped and counted
/// ([`rate_limited_lines`], Firecracker's `logger.rate_limited_log_count`).
#[derive(Debug)]
pub struct LineBudget {
    per_second: u32,
    window_start: std::time::Instant,
    used: u32,
}

impl LineBudget {
    /// A budget of `per_second` lines.
    pub fn new(per_second: u32) -> LineBudget {
        LineBudget {
            per_second,
            window_start: std::time::Instant::now(),
            used: 0,
        }
    }

    /// Whether one more line may be logged at `now`; counts it if not.
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        if now.duration_since(self.window_start) >= std::time::Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            RATE_LIMITED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

/// Lines a [`LineBudget`] dropped.
pub fn rate_limited_lines() -> u64 {
    RATE_LIMITED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Log lines that could not be written (a full FIFO, a failing disk).
pub fn missed_lines() -> u64 {
    let current = LOGGER.get().map_or(0, |logger| {
        match &logger
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .out
        {
            Output::Destination(destination) => destination.missed_lines(),
            Output::Stderr => 0,
        }
    });
    MISSED_BEFORE.load(Ordering::Relaxed) + current
}

fn open_sink(config: &LoggerConfig) -> Result<Output> {
    match &config.path {
        None => Ok(Output::Stderr),
        Some(path) => Destination::open(path)
            .map(Output::Destination)
            .map_err(|source| Error::OpenLog {
                path: path.clone(),
                source,
            }),
    }
}

/// Installs the logger for this process, or reconfigures it if it is installed.
pub fn configure(config: LoggerConfig) -> Result<()> {
    let out = open_sink(&config)?;
    let level = config.level;
    let sink = Sink { config, out };
    if let Some(logger) = LOGGER.get() {
        let mut current = logger.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if let Output::Destination(old) = &current.out {
            MISSED_BEFORE.fetch_add(old.missed_lines(), Ordering::Relaxed);
        }
        *current = sink;
    } else {
        let logger = LOGGER.get_or_init(|| Logger {
            sink: Mutex::new(sink),
        });
        log::set_logger(logger).map_err(|_| Error::LoggerInstalled)?;
    }
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000");
        let t = UNIX_EPOCH + Duration::from_micros(951_782_400_123_456); // 2000-02-29
        assert_eq!(utc_timestamp(t), "2000-02-29T00:00:00.123456");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(utc_timestamp(t), "2026-11-18T11:06:40.000000");
    }

    #[test]
    fn the_module_filter_matches_path_prefixes() {
        let mut config = LoggerConfig::default();
        assert!(module_enabled(&config, None));
        config.module = Some("ember_vmm".into());
        assert!(module_enabled(&config, Some("ember_vmm::vm")));
        assert!(module_enabled(&config, Some("ember_vmm")));
        assert!(!module_enabled(&config, Some("ember_api::controller")));
        assert!(!module_enabled(&config, None));
    }

    #[test]
    fn levels_parse_like_firecracker() {
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("info"), Some(LevelFilter::Info));
        assert_eq!(parse_level("OFF"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn logs_to_a_file_with_level_and_origin_then_reconfigures() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.log");
        configure(LoggerConfig {
            instance_id: "vm7".into(),
            path: Some(first.clone()),
            level: LevelFilter::Debug,
            show_level: true,
            show_origin: true,
            module: Some("ember_api::logger".into()),
        })
        .unwrap();
        log::debug!("hello {}", 42);
        log::trace!("not written");
        let second = dir.path().join("second.log");
        configure(LoggerConfig {
            path: Some(second.clone()),
            level: LevelFilter::Warn,
            ..LoggerConfig::default()
        })
        .unwrap();
        log::info!("filtered out");
        log::warn!("plain");
        log::logger().flush();

        let text = std::fs::read_to_string(&first).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("[vm7:"), "{text}");
        assert!(text.contains(":DEBUG:"), "{text}");
        assert!(text.contains("logger.rs:"), "{text}");
        assert!(text.trim_end().ends_with("hello 42"), "{text}");
        let text = std::fs::read_to_string(&second).unwrap();
        assert!(text.contains("[anonymous-instance:"), "{text}");
        assert!(text.trim_end().ends_with("] plain"), "{text}");

        let err = configure(LoggerConfig {
            path: Some(dir.path().join("missing-dir/x.log")),
            ..LoggerConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("cannot open log file"), "{err}");
    }
}
