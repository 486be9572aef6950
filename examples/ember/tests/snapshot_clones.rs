//! Many VMs restored at once from one snapshot with `ember run --restore`:
//! every clone runs on from where the saved guest was, and the memory
//! file, mapped privately by each, has its clean pages shared between them
//! (their summed PSS stays far below the clones' count times one VM's RSS).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::Ember;
use ember_test_guests::ELF64_PATH;

/// VMs restored at once.
const CLONES: usize = 8;
/// A guest that prints `count=0x..` lines about every 50 ms, on after a restore.
const COUNTING: &str = "console=ttyS0 ember.test=snapcount count.delay=2000";

/// The last `count=` value in `text`.
fn last_count(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count=0x"))
        .next_back()
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
}

/// `Rss` and `Pss` of process `pid` in KiB, from `/proc/PID/smaps_rollup`.
fn rss_and_pss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| rest.trim().trim_end_matches("kB").trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (field("Rss:"), field("Pss:"))
}

/// `Rss` and `Pss` in KiB of the mappings of `file` in process `pid`, from
/// `/proc/PID/smaps` (a mapping's header line starts with its address range
/// and ends with its path; its `Key: N kB` lines follow).
fn file_rss_and_pss_kib(pid: u32, file: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.to_str().unwrap();
    let kib = |rest: &str| -> u64 { rest.trim().trim_end_matches("kB").trim().parse().unwrap() };
    let (mut rss, mut pss, mut inside) = (0, 0, false);
    for line in text.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if range.contains('-') && range.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            inside = line.ends_with(name);
        } else if let (true, Some(rest)) = (inside, line.strip_prefix("Rss:")) {
            rss += kib(rest);
        } else if let (true, Some(rest)) = (inside, line.strip_prefix("Pss:")) {
            pss += kib(rest);
        }
    }
    (rss, pss)
}

/// The sum of the PSS figures and the largest RSS of `(RSS, PSS)` pairs.
fn pss_sum_and_rss_max(memory: &[(u64, u64)]) -> (u64, u64) {
    (
        memory.iter().map(|&(_, pss)| pss).sum(),
        memory.iter().map(|&(rss, _)| rss).max().unwrap(),
    )
}

/// Waits until every clone's serial output shows a count above `above`;
/// a failure shows the clone's serial output and log.
fn wait_for_counts_above(clones: &[(impl Fn() -> String, impl Fn() -> String)], above: u64) {
    let deadline = Instant::now() + common::DEADLINE;
    for (output, log) in clones {
        while last_count(&output()).is_none_or(|c| c <= above) {
            assert!(
                Instant::now() < deadline,
                "no count above {above}:\n{}\nlog:\n{}",
                output(),
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn clones_of_one_snapshot_run_on_and_share_its_clean_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.state"), dir.path().join("vm.mem"));
    let saved = {
        let ember = Ember::start(&[]);
        ember.boot(ELF64_PATH, COUNTING, 1);
        ember.wait_for("count=0x2");
        ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        let saved = last_count(&ember.output()).unwrap();
        ember.ok(
            "PUT",
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                state.display(),
                mem.display()
            ),
        );
        saved
    };

    let mut clones: Vec<Child> = (0..CLONES)
        .map(|_| {
            Command::new(common::EMBER)
                .args(["run", "--restore"])
                .arg(&state)
                .arg("--mem-file")
                .arg(&mem)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = clones
        .iter_mut()
        .map(|c| {
            (
                common::collect_output(c.stdout.take().unwrap()),
                common::collect_output(c.stderr.take().unwrap()),
            )
        })
        .collect();
    // Each clone goes on from the saved count (never from 0) and keeps
    // printing: two lines after the first one it printed.
    wait_for_counts_above(&outputs, saved);
    for (output, _) in &outputs {
        let first = output()
            .lines()
            .find_map(|l| l.strip_prefix("count=0x"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert!(first >= saved, "clone restarted at {first}, saved {saved}");
    }
    let now: Vec<u64> = outputs
        .iter()
        .map(|(o, _)| last_count(&o()).unwrap())
        .collect();
    wait_for_counts_above(&outputs, now.into_iter().max().unwrap() + 1);

    let process: Vec<(u64, u64)> = clones.iter().map(|c| rss_and_pss_kib(c.id())).collect();
    let guest: Vec<(u64, u64)> = clones
        .iter()
        .map(|c| file_rss_and_pss_kib(c.id(), &mem))
        .collect();
    let (pss_sum, rss_max) = pss_sum_and_rss_max(&process);
    let (guest_pss_sum, guest_rss_max) = pss_sum_and_rss_max(&guest);
    println!("{CLONES} clones, (RSS KiB, PSS KiB) of each process: {process:?}");
    println!("of each one's guest memory (the memory file's mapping): {guest:?}");
    println!(
        "process: PSS sum {pss_sum} KiB, one VM's RSS (largest) {rss_max} KiB x {CLONES} = {} KiB",
        rss_max * CLONES as u64
    );
    println!(
        "guest memory: PSS sum {guest_pss_sum} KiB, one VM's RSS (largest) {guest_rss_max} KiB x {CLONES} = {} KiB",
        guest_rss_max * CLONES as u64
    );
    for clone in &clones {
        common::send_signal(i32::try_from(clone.id()).unwrap(), libc::SIGTERM);
    }
    for clone in &mut clones {
        clone.wait().unwrap();
    }
    for (what, pss_sum, rss_max) in [
        ("process", pss_sum, rss_max),
        ("guest memory", guest_pss_sum, guest_rss_max),
    ] {
        assert!(guest_rss_max > 0, "no guest memory resident");
        assert!(
            pss_sum < rss_max * CLONES as u64 / 2,
            "{what}: PSS sum {pss_sum} KiB is not well below {CLONES} x RSS {rss_max} KiB: pages are not shared"
        );
    }
}
