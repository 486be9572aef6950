//! virtio-block end to end on KVM: the test guest's virtio-mmio driver reads,
//! writes, flushes and resets drives backed by host files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fnv1a, hex, Guest};
use ember_test_guests::{BZIMAGE_PATH, ELF64_PATH, PVH_PATH};
use ember_vmm::{BlockConfig, BucketConfig, CacheType, DriveConfig};

const SECTOR: usize = 512;

/// The test guest's write pattern: byte `i` of absolute sector `s`.
fn pattern(seed: u64, sector: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for s in sector..sector + count {
        for i in 0..SECTOR as u64 {
            out.push((seed.wrapping_mul(31) + s * 7 + i * 13) as u8);
        }
    }
    out
}

/// A disk image of `sectors` sectors filled by `fill(offset)`.
fn disk(dir: &Path, name: &str, sectors: usize, fill: impl Fn(usize) -> u8) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors * SECTOR).map(fill).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn drive(id: &str, path: &Path) -> DriveConfig {
    DriveConfig {
        block: BlockConfig {
            drive_id: id.into(),
            path: path.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn read_only(mut d: DriveConfig) -> DriveConfig {
    d.block.read_only = true;
    d
}

fn region(path: &Path, sector: usize, count: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[sector * SECTOR..(sector + count) * SECTOR].to_vec()
}

#[test]
fn guest_writes_reach_the_file_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 256, |_| 0);
    let run = Guest::new(ELF64_PATH, "blk-write")
        .args("blk.sector=0x10 blk.count=3 blk.seed=0x1234")
        .drive(drive("data", &path))
        .run();
    run.assert_clean_reset();
    assert_eq!(
        run.field("blk-write", "status").as_deref(),
        Some("0x0"),
        "{}",
        run.output
    );
    let file = std::fs::read(&path).unwrap();
    assert_eq!(
        &file[0x10 * SECTOR..0x13 * SECTOR],
        pattern(0x1234, 0x10, 3).as_slice()
    );
    assert!(
        file[..0x10 * SECTOR].iter().all(|b| *b == 0),
        "nothing before"
    );
    assert!(
        file[0x13 * SECTOR..].iter().all(|b| *b == 0),
        "nothing after"
    );
    assert_eq!(run.metric("block_data", "write_count"), 1);
    assert_eq!(run.metric("block_data", "write_bytes"), 3 * SECTOR as u64);
}

#[test]
fn the_guest_reads_what_the_host_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 64, |i| (i * 7 + i / 511) as u8);
    let run = Guest::new(PVH_PATH, "blk-read")
        .args("blk.sector=0x5 blk.count=4")
        .drive(drive("data", &path))
        .run();
    run.assert_clean_reset();
    let expected = region(&path, 5, 4);
    assert_eq!(run.field("blk-read", "status").as_deref(), Some("0x0"));
    assert_eq!(
        hex(&run.field("blk-read", "sum").unwrap()),
        u64::from(fnv1a(&expected))
    );
    let head: String = expected[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(run.field("blk-read", "head"), Some(head));
}

#[test]
fn flush_reaches_the_backing_file_with_writeback() {
    let dir = tempfile::tempdir().unwrap();
    for (cache, syncs) in [(CacheType::Writeback, 1), (CacheType::Unsafe, 0)] {
        let path = disk(dir.path(), "disk.img", 64, |_| 0);
        let mut d = drive("data", &path);
        d.block.cache_type = cache;
        let run = Guest::new(BZIMAGE_PATH, "blk-flush")
            .args("blk.sector=0x2 blk.count=2 blk.seed=0x9")
            .drive(d)
            .run();
        run.assert_clean_reset();
        assert_eq!(run.field("blk-flush", "status_w").as_deref(), Some("0x0"));
        assert_eq!(run.field("blk-flush", "status_f").as_deref(), Some("0x0"));
        assert_eq!(region(&path, 2, 2), pattern(9, 2, 2));
        assert_eq!(run.metric("block_data", "flush_count"), 1);
        assert_eq!(run.metric("block_data", "sync_count"), syncs, "{cache:?}");
    }
}

#[test]
fn read_only_drives_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 64, |i| i as u8);
    let before = std::fs::read(&path).unwrap();
    let info = Guest::new(ELF64_PATH, "blk-info")
        .drive(read_only(drive("ro", &path)))
        .run();
    info.assert_clean_reset();
    assert_eq!(info.field("blk dev", "ro").as_deref(), Some("0x1"));
    let run = Guest::new(ELF64_PATH, "blk-write")
        .args("blk.sector=0x1 blk.count=1")
        .drive(read_only(drive("ro", &path)))
        .run();
    run.assert_clean_reset();
    assert_eq!(run.field("blk-write", "status").as_deref(), Some("0x1"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is unchanged"
    );
    assert_eq!(run.metric("block_ro", "io_errors"), 1);
}

#[test]
fn io_past_the_end_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 32, |_| 7);
    let run = Guest::new(PVH_PATH, "blk-past-end")
        .drive(drive("data", &path))
        .run();
    run.assert_clean_reset();
    assert_eq!(run.field("blk-past-end", "status").as_deref(), Some("0x1"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 32 * SECTOR as u64);
}

#[test]
fn two_drives_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = disk(dir.path(), "a.img", 16, |i| (i % 251) as u8);
    let b = disk(dir.path(), "b.img", 8, |i| (i % 13) as u8 ^ 0x5a);
    let run = Guest::new(ELF64_PATH, "blk-multi")
        .drive(drive("first", &a))
        .drive(drive("second", &b))
        .run();
    run.assert_clean_reset();
    let lines = run.lines("blk-multi");
    assert_eq!(lines.len(), 2, "{}", run.output);
    for (line, path) in lines.iter().zip([&a, &b]) {
        assert_eq!(common::value_of(line, "status").as_deref(), Some("0x0"));
        let sum = hex(&common::value_of(line, "sum").unwrap());
        assert_eq!(sum, u64::from(fnv1a(&region(path, 0, 1))), "{line}");
    }
    let id = Guest::new(ELF64_PATH, "blk-id")
        .args("blk.dev=1")
        .drive(drive("first", &a))
        .drive(drive("second", &b))
        .run();
    assert_eq!(id.field("blk-id", "id").as_deref(), Some("second"));
}

#[test]
fn the_guest_resets_the_device_and_sets_it_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 16, |i| (i * 3) as u8);
    let run = Guest::new(ELF64_PATH, "blk-reset")
        .args("blk.sector=0x3 blk.count=4")
        .drive(drive("data", &path))
        .run();
    run.assert_clean_reset();
    assert_eq!(run.field("blk-reset", "status1").as_deref(), Some("0x0"));
    assert_eq!(run.field("blk-reset", "status2").as_deref(), Some("0x0"));
    assert_eq!(run.field("blk-reset", "match").as_deref(), Some("0x1"));
}

#[test]
fn the_root_drive_is_announced_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = disk(dir.path(), "data.img", 8, |_| 0);
    let root = disk(dir.path(), "root.img", 8, |_| 0);
    let mut root_drive = read_only(drive("rootfs", &root));
    root_drive.is_root_device = true;
    let run = Guest::new(ELF64_PATH, "bootinfo")
        .drive(drive("data", &data))
        .drive(root_drive)
        .run();
    run.assert_clean_reset();
    let cmdline = run.lines("cmdline=")[0];
    assert!(
        cmdline.ends_with(
            "root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
        ),
        "{cmdline}"
    );
}

#[test]
fn an_ops_limit_paces_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.img", 8, |_| 1);
    // 10 operations per second with a burst of 5: 25 reads need at least 2 s.
    let (requests, burst, per_second) = (25u64, 5u64, 10u64);
    let mut d = drive("slow", &path);
    d.block.ops = Some(BucketConfig {
        size: per_second,
        one_time_burst: burst,
        refill_time_ms: 1000,
    });
    let started = Instant::now();
    let run = Guest::new(ELF64_PATH, "blk-read")
        .args(&format!("blk.repeat={requests}"))
        .drive(d)
        .run();
    let elapsed = started.elapsed();
    run.assert_clean_reset();
    assert_eq!(run.field("blk-read", "status").as_deref(), Some("0x0"));
    // The bucket starts full (size) and the burst is spent first.
    let lower = Duration::from_millis((requests - burst - per_second) * 1000 / per_second);
    assert!(
        elapsed >= lower,
        "{requests} requests took {elapsed:?}, less than {lower:?}"
    );
    assert!(run.metric("block_slow", "throttled") > 0);
}

#[test]
fn a_missing_backing_file_is_a_clear_error() {
    let err = ember_vmm::build(
        Guest::new(ELF64_PATH, "blk-info")
            .drive(drive("gone", Path::new("/nonexistent/disk.img")))
            .config(&common::Capture::default()),
    )
    .unwrap_err();
    let err = ember_vmm::error_chain(&err);
    assert!(err.contains("drive `gone`"), "{err}");
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}
