//! Another process's CPU time and memory, from `/proc`.
//!
//! CPU time comes two ways: `utime + stime` from `/proc/<pid>/stat`, which
//! counts exited threads too but only in clock ticks (10 ms at the usual
//! `USER_HZ` of 100: too coarse for a start-up of a few milliseconds), and
//! the sum of the live threads' run time in nanoseconds from
//! `/proc/<pid>/task/*/schedstat`, precise but blind to threads that have
//! already exited.

use std::path::Path;
use std::time::Duration;

use crate::{Context, Error, Result};

/// `utime + stime` from the text of `/proc/<pid>/stat`, in clock ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields are counted after its closing parenthesis, which is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, so 11 and 12 after field 2.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The first field of a `schedstat` file: time on the CPU, in nanoseconds.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The clock tick (`sysconf(_SC_CLK_TCK)`).
pub fn clock_tick() -> Duration {
    // SAFETY: sysconf takes a constant by value and has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match u64::try_from(hz) {
        Ok(hz) if hz > 0 => Duration::from_nanos(1_000_000_000 / hz),
        _ => Duration::from_millis(10),
    }
}

/// CPU time of process `pid` so far, both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTime {
    /// `utime + stime` (every thread, tick resolution).
    pub ticks: Duration,
    /// Sum of the live threads' run time (nanosecond resolution).
    pub threads: Duration,
}

/// Reads [`CpuTime`] of `pid`.
pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ctx(format!("reading {dir}/stat"))?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| Error::Unexpected(format!("cannot parse {dir}/stat: {stat}")))?;
    let tick = clock_tick();
    let mut threads = 0u64;
    let tasks = std::fs::read_dir(format!("{dir}/task")).ctx(format!("listing {dir}/task"))?;
    for task in tasks {
        let task = task.ctx(format!("listing {dir}/task"))?;
        // A thread that exits meanwhile has nothing left to count.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            threads += parse_schedstat_ns(&text).unwrap_or(0);
        }
    }
    Ok(CpuTime {
        ticks: tick.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX)),
        threads: Duration::from_nanos(threads),
    })
}

/// Memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident memory.
    pub rss_kib: u64,
    /// `RssAnon`: resident anonymous memory (heap, stacks, touched guest RAM).
    pub anon_kib: u64,
    /// `RssFile`: resident file-backed memory (the binary, libraries).
    pub file_kib: u64,
    /// `VmHWM`: peak resident memory.
    pub peak_kib: u64,
}

/// The number of the first `key    N kB` line of a `/proc` file (0 if none).
fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Parses the text of `/proc/<pid>/status`.
pub fn parse_status_memory(status: &str) -> Memory {
    let field = |key| kib_field(status, key);
    Memory {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        peak_kib: field("VmHWM:"),
    }
}

/// Reads [`Memory`] of `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).ctx(format!("reading {path}"))?;
    Ok(parse_status_memory(&text))
}

/// Figures from `/proc/<pid>/smaps_rollup`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    /// `Rss`: resident memory.
    pub rss_kib: u64,
    /// `Pss`: resident memory, each page divided by the processes mapping it.
    pub pss_kib: u64,
}

/// Parses the text of `/proc/<pid>/smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Rollup {
    let field = |key| kib_field(text, key);
    Rollup {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    }
}

/// Reads [`Rollup`] of `pid`.
pub fn smaps_rollup(pid: u32) -> Result<Rollup> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).ctx(format!("reading {path}"))?;
    Ok(parse_smaps_rollup(&text))
}

/// Whether `path` is on a tmpfs (where a "disk" benchmark would measure RAM).
pub fn is_tmpfs(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    // The longest mount point that contains the path is its file system.
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then_some((point.len(), kind == "tmpfs"))
        })
        .max_by_key(|&(len, _)| len)
        .is_some_and(|(_, tmpfs)| tmpfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "42 (ember vcpu) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(10));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn schedstat_first_field() {
        assert_eq!(
            parse_schedstat_ns("340211228 10379959 81\n"),
            Some(340_211_228)
        );
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn status_memory_fields() {
        let status = "Name:\tember\nVmHWM:\t   9000 kB\nVmRSS:\t    8192 kB\n\
                      RssAnon:\t    3000 kB\nRssFile:\t    5000 kB\nRssShmem:\t0 kB\n";
        assert_eq!(
            parse_status_memory(status),
            Memory {
                rss_kib: 8192,
                anon_kib: 3000,
                file_kib: 5000,
                peak_kib: 9000
            }
        );
    }

    #[test]
    fn smaps_rollup_fields() {
        let text = "55d0c000-7ffd0000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:               10240 kB\nPss:                4100 kB\n\
                    Pss_Anon:           2000 kB\nPss_File:           2100 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Rollup {
                rss_kib: 10240,
                pss_kib: 4100
            }
        );
        let own = smaps_rollup(std::process::id()).unwrap();
        assert!(own.pss_kib > 0 && own.pss_kib <= own.rss_kib);
    }

    #[test]
    fn own_process_figures() {
        let cpu = cpu_time(std::process::id()).unwrap();
        assert!(cpu.threads > Duration::ZERO);
        assert!(memory(std::process::id()).unwrap().rss_kib > 0);
        assert!(clock_tick() > Duration::ZERO);
        assert!(!is_tmpfs(Path::new("/proc")));
    }
}
