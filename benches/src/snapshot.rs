//! Snapshots of a running test guest through `ember`'s API: the time and
//! the disk bytes of full and diff snapshots, the latency of a restore, and
//! the memory of VMs restored from one memory file.
//!
//! The guest is the test guest's `snapcount` scenario: it fills
//! [`GUEST_PAGES`] pages with a pattern, then prints `count=0x..` lines
//! every few milliseconds (`count.delay=20` in the instruction emulator) and
//! goes on counting after a restore. An initrd of [`INITRD_MIB`] MiB of
//! pseudo-random bytes, which the VMM writes into guest memory at boot,
//! brings the touched memory to about 20 MiB (filling that much from inside
//! the emulated guest would take minutes).
//!
//! - **Create**: `PUT /snapshot/create` round trips on a paused VM of 128
//!   MiB and of 1 GiB (repeated on the same VM, replacing the files), with
//!   `latencies_us.vmm_full_create_snapshot` from the metrics, and the
//!   memory file's allocated bytes (`st_blocks * 512`) and apparent size.
//! - **Diff**: a VM booted with `track_dirty_pages`, saved in full once,
//!   resumed until it printed a few lines (dirtying its counter, its stack,
//!   the serial state), paused and saved as a diff into a new file.
//! - **Restore**: a new `ember --api-sock`, then `PUT /snapshot/load` with
//!   `resume_vm: true` (the round trip, and to the next `count=` line the
//!   guest prints); and `ember run --restore` from spawn to that line.
//! - **Memory**: PSS and RSS (`/proc/PID/smaps_rollup`) of one restored VM,
//!   then of [`Options::clones`] VMs restored at once from the same files
//!   (the memory file is mapped privately, so its clean pages are shared).
//!
//! Firecracker's figures on the development machine are given as baselines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::api::ApiVm;
use crate::boot::GUEST;
use crate::http::Client;
use crate::paths::Binaries;
use crate::process::Running;
use crate::procfs::{smaps_rollup, Rollup};
use crate::report::{Figure, Report};
use crate::stats::{millis, Better, Summary};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "snapshot";
/// Pages the guest fills before counting.
pub const GUEST_PAGES: u32 = 64;
/// Size of the initrd the VMM loads into guest memory, in MiB.
pub const INITRD_MIB: usize = 20;
/// How long a boot, a save or a restore may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// What the guest prints while it runs.
const RUNNING: &str = "count=";
/// The small and the large guest, in MiB.
const SMALL_MIB: u32 = 128;
const LARGE_MIB: u32 = 1024;
/// Firecracker on the development machine.
const FC: &str = "Firecracker, this machine";
const FC_CREATE_128_MS: f64 = 230.0;
const FC_LOAD_MS: f64 = 8.5;
const FC_SPAWN_TO_RUNNING_MS: f64 = 11.5;
const FC_CLONE_PSS_MIB: f64 = 0.9;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Snapshots created per figure, and restores per latency figure.
    pub rounds: usize,
    /// VMs restored at once from one snapshot.
    pub clones: usize,
}

/// The guest's kernel command line.
pub fn guest_cmdline() -> String {
    format!("console=ttyS0 ember.test=snapcount snap.pages={GUEST_PAGES} count.delay=20")
}

/// `len` bytes of a xorshift sequence from `seed`: no all-zero page, so
/// none of them becomes a hole in a memory file.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A file's allocated bytes (`st_blocks * 512`) and apparent size.
pub fn file_bytes(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ctx(format!("reading {}", path.display()))?;
    Ok((meta.blocks() * 512, meta.len()))
}

/// `latencies_us.<key>` of the last line of a metrics file's text.
pub fn last_latency_us(metrics: &str, key: &str) -> Option<u64> {
    let line: serde_json::Value = serde_json::from_str(metrics.lines().last()?).ok()?;
    line["latencies_us"][key].as_u64()
}

/// The body of `PUT /snapshot/create`.
pub fn create_body(kind: &str, files: &Files) -> String {
    format!(
        r#"{{"snapshot_type": "{kind}", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        files.state.display(),
        files.mem.display()
    )
}

/// The body of `PUT /snapshot/load` that resumes the VM.
pub fn load_body(files: &Files) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        files.state.display(),
        files.mem.display()
    )
}

/// A snapshot's state file and memory file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub mem: PathBuf,
}

impl Files {
    /// `<dir>/<name>.state` and `<dir>/<name>.mem`.
    pub fn new(dir: &Path, name: &str) -> Files {
        Files {
            state: dir.join(format!("{name}.state")),
            mem: dir.join(format!("{name}.mem")),
        }
    }

    /// Removes both files.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.mem);
    }
}

/// A booted guest, paused, with its API connection and metrics file.
struct PausedVm {
    vm: ApiVm,
    client: Client,
    metrics: PathBuf,
}

impl PausedVm {
    /// Boots the guest in a VM of `mem_mib` MiB over the API, waits until
    /// it counts, and pauses it.
    fn boot(bins: &Binaries, dir: &Path, mem_mib: u32, track_dirty: bool) -> Result<PausedVm> {
        let (mut vm, _) = ApiVm::start(bins, &dir.join(format!("snap-{mem_mib}.sock")))?;
        let mut client = Client::connect(&vm.socket)?;
        let metrics = dir.join(format!("snap-{mem_mib}.metrics"));
        std::fs::write(&metrics, "").ctx(format!("creating {}", metrics.display()))?;
        let initrd = dir.join("snap-initrd.bin");
        std::fs::write(&initrd, noise(INITRD_MIB << 20, 0x9E37_79B9_7F4A_7C15))
            .ctx(format!("writing {}", initrd.display()))?;
        let requests = [
            (
                "/metrics",
                format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
            ),
            (
                "/boot-source",
                format!(
                    r#"{{"kernel_image_path": "{GUEST}", "initrd_path": "{}", "boot_args": "{}"}}"#,
                    initrd.display(),
                    guest_cmdline()
                ),
            ),
            (
                "/machine-config",
                format!(
                    r#"{{"vcpu_count": 1, "mem_size_mib": {mem_mib}, "track_dirty_pages": {track_dirty}}}"#
                ),
            ),
            ("/actions", r#"{"action_type": "InstanceStart"}"#.to_owned()),
        ];
        for (path, body) in &requests {
            client.expect("PUT", path, Some(body), 204)?;
        }
        vm.process.wait_line("count=0x1", TIMEOUT)?;
        let mut paused = PausedVm {
            vm,
            client,
            metrics,
        };
        paused.set_state("Paused")?;
        Ok(paused)
    }

    fn set_state(&mut self, state: &str) -> Result<()> {
        let body = format!(r#"{{"state": "{state}"}}"#);
        self.client.expect("PATCH", "/vm", Some(&body), 204)?;
        Ok(())
    }

    /// One `PUT /snapshot/create`; returns its round trip.
    fn create(&mut self, kind: &str, files: &Files) -> Result<Duration> {
        let body = create_body(kind, files);
        let start = Instant::now();
        self.client
            .expect("PUT", "/snapshot/create", Some(&body), 204)?;
        Ok(start.elapsed())
    }

    /// `latencies_us.<key>` after a metrics flush.
    fn latency_us(&mut self, key: &str) -> Result<u64> {
        self.client.expect(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "FlushMetrics"}"#),
            204,
        )?;
        let text = std::fs::read_to_string(&self.metrics)
            .ctx(format!("reading {}", self.metrics.display()))?;
        last_latency_us(&text, key)
            .ok_or_else(|| Error::Unexpected(format!("no latencies_us.{key} in the metrics")))
    }

    fn stop(self) -> Result<()> {
        self.vm.stop()
    }
}

fn summary(values: &[f64]) -> Result<Summary> {
    Summary::of(values).ok_or_else(|| Error::Unexpected("no samples".to_owned()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Runs the group, adding figures to `report`.
pub fn run(bins: &Binaries, scratch: &Path, options: Options, report: &mut Report) -> Result<()> {
    let dir = scratch.join(format!("snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
    let result = run_in(bins, &dir, options, report);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(bins: &Binaries, dir: &Path, options: Options, report: &mut Report) -> Result<()> {
    let small = Files::new(dir, "small");
    full_creates(bins, dir, SMALL_MIB, &small, options, report)?;
    let large = Files::new(dir, "large");
    full_creates(bins, dir, LARGE_MIB, &large, options, report)?;
    large.remove();
    diff_creates(bins, dir, options, report)?;
    restores(bins, dir, &small, options, report)?;
    clones(bins, &small, options, report)
}

/// Full snapshots of a paused VM of `mem_mib` MiB into `files`.
fn full_creates(
    bins: &Binaries,
    dir: &Path,
    mem_mib: u32,
    files: &Files,
    options: Options,
    report: &mut Report,
) -> Result<()> {
    let mut vm = PausedVm::boot(bins, dir, mem_mib, false)?;
    let mut round_trips = Vec::new();
    let mut logged_ms = Vec::new();
    // One unmeasured snapshot allocates the files.
    vm.create("Full", files)?;
    for _ in 0..options.rounds {
        round_trips.push(vm.create("Full", files)?);
        logged_ms.push(vm.latency_us("vmm_full_create_snapshot")? as f64 / 1e3);
    }
    vm.stop()?;
    let (allocated, apparent) = file_bytes(&files.mem)?;
    let n = options.rounds;
    let rt = summary(&millis(&round_trips))?;
    let logged = summary(&logged_ms)?;
    let name = |what: &str| format!("full create, {mem_mib} MiB guest: {what}");
    let mut create = Figure::new(
        GROUP,
        &name("round trip median"),
        rt.median,
        "ms",
        Better::Lower,
    )
    .note(&format!(
        "PUT /snapshot/create, paused VM, ~20 MiB touched; n={n}"
    ));
    if mem_mib == SMALL_MIB {
        create = create.baseline(FC, FC_CREATE_128_MS);
    }
    report.figures.extend([
        create,
        Figure::new(GROUP, &name("round trip p90"), rt.p90, "ms", Better::Lower),
        Figure::new(
            GROUP,
            &name("vmm_full_create_snapshot median"),
            logged.median,
            "ms",
            Better::Lower,
        )
        .note("ember's latencies_us metric"),
        Figure::new(
            GROUP,
            &name("memory file on disk"),
            mib(allocated),
            "MiB",
            Better::Lower,
        )
        .note("st_blocks * 512: zero pages are holes (Firecracker writes every page)"),
        Figure::new(
            GROUP,
            &name("memory file size"),
            mib(apparent),
            "MiB",
            Better::Lower,
        )
        .note("apparent size: the guest's memory"),
    ]);
    Ok(())
}

/// Diff snapshots of a VM with dirty page tracking, after it ran a little.
fn diff_creates(bins: &Binaries, dir: &Path, options: Options, report: &mut Report) -> Result<()> {
    let mut vm = PausedVm::boot(bins, dir, SMALL_MIB, true)?;
    let full = Files::new(dir, "tracked");
    vm.create("Full", &full)?;
    let mut round_trips = Vec::new();
    let mut allocated = Vec::new();
    for round in 0..options.rounds {
        vm.set_state("Resumed")?;
        // Three more lines: the counter page, the stack, the serial device.
        for _ in 0..3 {
            vm.vm.process.wait_line(RUNNING, TIMEOUT)?;
        }
        vm.set_state("Paused")?;
        let diff = Files::new(dir, &format!("diff-{round}"));
        round_trips.push(vm.create("Diff", &diff)?);
        allocated.push(file_bytes(&diff.mem)?.0 as f64 / 1024.0);
        diff.remove();
    }
    vm.stop()?;
    full.remove();
    let n = options.rounds;
    let rt = summary(&millis(&round_trips))?;
    let kib = summary(&allocated)?;
    report.figures.extend([
        Figure::new(
            GROUP,
            "diff create, 128 MiB guest: round trip median",
            rt.median,
            "ms",
            Better::Lower,
        )
        .note(&format!(
            "track_dirty_pages, after 3 guest lines since the last snapshot; n={n}"
        )),
        Figure::new(
            GROUP,
            "diff create, 128 MiB guest: memory file on disk median",
            kib.median,
            "KiB",
            Better::Lower,
        )
        .note("st_blocks * 512 of a new file: the dirty pages"),
    ]);
    Ok(())
}

/// Restores of `files`: over the API in a new process, and `ember run
/// --restore`.
fn restores(
    bins: &Binaries,
    dir: &Path,
    files: &Files,
    options: Options,
    report: &mut Report,
) -> Result<()> {
    let socket = dir.join("restore.sock");
    let body = load_body(files);
    let (mut load, mut to_line, mut spawn_to_line) = (Vec::new(), Vec::new(), Vec::new());
    // One unmeasured restore each way warms the page cache.
    for round in 0..=options.rounds {
        let (mut vm, _) = ApiVm::start(bins, &socket)?;
        let mut client = Client::connect(&socket)?;
        let start = Instant::now();
        client.expect("PUT", "/snapshot/load", Some(&body), 204)?;
        let loaded = start.elapsed();
        let (at, _) = vm.process.wait_line(RUNNING, TIMEOUT)?;
        vm.stop()?;
        let mut restored = restore_cli(bins, files)?;
        let (running, _) = restored.wait_line(RUNNING, TIMEOUT)?;
        restored.terminate(TIMEOUT)?;
        if round > 0 {
            load.push(loaded);
            to_line.push(at - start);
            spawn_to_line.push(running - restored.started);
        }
    }
    let _ = std::fs::remove_file(&socket);
    let n = options.rounds;
    let load = summary(&millis(&load))?;
    let to_line = summary(&millis(&to_line))?;
    let spawn = summary(&millis(&spawn_to_line))?;
    let line = "the guest prints a line every 5-10 ms";
    report.figures.extend([
        Figure::new(
            GROUP,
            "load, resume_vm: round trip median",
            load.median,
            "ms",
            Better::Lower,
        )
        .baseline(FC, FC_LOAD_MS)
        .note(&format!("PUT /snapshot/load, 128 MiB guest; n={n}")),
        Figure::new(
            GROUP,
            "load, resume_vm: round trip p90",
            load.p90,
            "ms",
            Better::Lower,
        ),
        Figure::new(
            GROUP,
            "load request to next guest line median",
            to_line.median,
            "ms",
            Better::Lower,
        )
        .note(line),
        Figure::new(
            GROUP,
            "ember run --restore: spawn to guest line median",
            spawn.median,
            "ms",
            Better::Lower,
        )
        .baseline(FC, FC_SPAWN_TO_RUNNING_MS)
        .note(&format!("{line}; Firecracker: spawn, API, load, resume")),
        Figure::new(
            GROUP,
            "ember run --restore: spawn to guest line p90",
            spawn.p90,
            "ms",
            Better::Lower,
        ),
    ]);
    Ok(())
}

/// Spawns `ember run --restore` of `files`.
fn restore_cli(bins: &Binaries, files: &Files) -> Result<Running> {
    let mut command = Command::new(&bins.ember);
    command
        .args(["run", "--restore"])
        .arg(&files.state)
        .arg("--mem-file")
        .arg(&files.mem);
    Running::spawn(command, true)
}

/// Memory of one restored VM, then of `options.clones` restored at once.
fn clones(bins: &Binaries, files: &Files, options: Options, report: &mut Report) -> Result<()> {
    let one = running_memory(bins, files, 1)?;
    let many = running_memory(bins, files, options.clones)?;
    let single = one
        .first()
        .copied()
        .ok_or_else(|| Error::Unexpected("no restored VM".to_owned()))?;
    let n = many.len();
    let pss: Vec<f64> = many.iter().map(|r| r.pss_kib as f64 / 1024.0).collect();
    let per_clone = summary(&pss)?;
    let total: f64 = pss.iter().sum();
    let rss_total: f64 = many.iter().map(|r| r.rss_kib as f64 / 1024.0).sum();
    report.figures.extend([
        Figure::new(
            GROUP,
            "one restored VM: PSS",
            single.pss_kib as f64 / 1024.0,
            "MiB",
            Better::Lower,
        )
        .note(&format!(
            "smaps_rollup, 128 MiB guest running; RSS {:.1} MiB",
            single.rss_kib as f64 / 1024.0
        )),
        Figure::new(
            GROUP,
            &format!("{n} clones at once: PSS sum"),
            total,
            "MiB",
            Better::Lower,
        )
        .note(&format!(
            "same memory file, all running; RSS sum {rss_total:.1} MiB"
        )),
        Figure::new(
            GROUP,
            &format!("{n} clones at once: PSS per clone median"),
            per_clone.median,
            "MiB",
            Better::Lower,
        )
        .baseline(FC, FC_CLONE_PSS_MIB)
        .note(&format!(
            "min {:.2}, max {:.2} MiB",
            per_clone.min, per_clone.max
        )),
    ]);
    Ok(())
}

/// Restores `count` VMs from `files` at once, waits until each printed two
/// lines, and reads their memory.
fn running_memory(bins: &Binaries, files: &Files, count: usize) -> Result<Vec<Rollup>> {
    let mut vms = (0..count)
        .map(|_| restore_cli(bins, files))
        .collect::<Result<Vec<_>>>()?;
    for vm in &mut vms {
        vm.wait_line(RUNNING, TIMEOUT)?;
        vm.wait_line(RUNNING, TIMEOUT)?;
    }
    let memory = vms
        .iter()
        .map(|vm| smaps_rollup(vm.pid()))
        .collect::<Result<Vec<_>>>()?;
    for vm in &mut vms {
        vm.terminate(TIMEOUT)?;
    }
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_has_no_zero_page_and_the_asked_length() {
        let bytes = noise(3 * 4096 + 5, 1);
        assert_eq!(bytes.len(), 3 * 4096 + 5);
        assert!(bytes.chunks(4096).all(|page| page.iter().any(|&b| b != 0)));
        assert_ne!(noise(16, 1), noise(16, 2));
    }

    #[test]
    fn latency_from_the_last_metrics_line() {
        let text = "{\"latencies_us\": {\"vmm_full_create_snapshot\": 5}}\n\
                    {\"latencies_us\": {\"vmm_full_create_snapshot\": 1234}}\n";
        assert_eq!(
            last_latency_us(text, "vmm_full_create_snapshot"),
            Some(1234)
        );
        assert_eq!(last_latency_us(text, "vmm_load_snapshot"), None);
        assert_eq!(last_latency_us("", "x"), None);
    }

    #[test]
    fn request_bodies_are_json_naming_the_files() {
        let files = Files::new(Path::new("/d"), "vm");
        let create: serde_json::Value = serde_json::from_str(&create_body("Diff", &files)).unwrap();
        assert_eq!(create["snapshot_type"], "Diff");
        assert_eq!(create["mem_file_path"], "/d/vm.mem");
        let load: serde_json::Value = serde_json::from_str(&load_body(&files)).unwrap();
        assert_eq!(load["snapshot_path"], "/d/vm.state");
        assert_eq!(load["mem_backend"]["backend_path"], "/d/vm.mem");
        assert_eq!(load["resume_vm"], true);
        assert!(guest_cmdline().contains("ember.test=snapcount"));
    }

    #[test]
    fn sparse_and_apparent_file_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let (allocated, apparent) = file_bytes(&path).unwrap();
        assert_eq!(apparent, 1 << 20);
        assert!(allocated < apparent);
        assert!(file_bytes(&dir.path().join("missing")).is_err());
    }
}
