//! Snapshots of test-guest VMs with busy devices: a block request in flight,
//! frames on a TAP, a vsock connection. The guests (`blk-serve`,
//! `net-serve`, `vsock-serve`) keep their device up and act on serial bytes,
//! so a test drives them across a save and a restore.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;
#[path = "../../devices/src/virtio/net/tests/host.rs"]
mod host;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fnv1a, hex, value_of, Capture, Guest, Live, SavedFiles};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{
    restore, BlockConfig, DriveConfig, NetConfig, RestoreConfig, SerialInput, SerialOutput,
    VsockConfig,
};
use host::{in_netns, HostPort};
use vm_memory::{Bytes, GuestAddress};

const SECTOR: usize = 512;
/// The sector the `blk-serve` guest works on.
const SERVE_SECTOR: usize = 0x20;
const MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

/// The host's end of a guest's serial port, and the guest's end.
fn serial_pair() -> (UnixStream, SerialInput) {
    let (host, guest) = UnixStream::pair().unwrap();
    (host, SerialInput::Reader(Box::new(guest)))
}

/// The complete lines (the guest writes a byte at a time) of `text` that
/// start with `prefix`.
fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    common::complete_lines(text)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// Waits for a complete line starting with `prefix` and returns the first.
fn wait_for_line(live: &mut Live, prefix: &str) -> String {
    let text = live.wait_for(prefix, |t| !lines_with(t, prefix).is_empty());
    lines_with(&text, prefix)[0].to_owned()
}

/// Sends `byte` to the guest and returns the next line starting with `prefix`.
fn ask(live: &mut Live, console: &mut UnixStream, byte: u8, prefix: &str) -> String {
    let before = lines_with(&live.capture.text(), prefix).len();
    console.write_all(&[byte]).unwrap();
    let text = live.wait_for(prefix, |text| lines_with(text, prefix).len() > before);
    lines_with(&text, prefix)[before].to_owned()
}

/// A restore of `files`, resumed, its serial output going to `capture`.
fn restore_config(files: &SavedFiles, capture: &Capture, input: SerialInput) -> RestoreConfig {
    let mut config = RestoreConfig::new(&files.state, &files.mem);
    config.resume = true;
    config.serial_output = SerialOutput::Writer(Box::new(capture.clone()));
    config.serial_input = input;
    config
}

/// Restores with `config` (made by [`restore_config`] with `capture`) and
/// runs the VM in the test's hands.
fn restored(config: RestoreConfig, capture: Capture) -> Live {
    Live::start(restore(config).expect("restores"), capture)
}

/// The restore's error, which must be one line.
fn restore_error(config: RestoreConfig) -> String {
    let message = restore(config).map(|_| ()).expect_err("refused");
    let message = ember_vmm::error_chain(&message);
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

/// Asserts a restored guest went on instead of booting again.
fn assert_not_rebooted(live: &Live) {
    let text = live.capture.text();
    assert!(
        !text.contains("guest: start"),
        "the guest booted again:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// Block

/// The test guest's write pattern of generation `gen` for one sector.
fn pattern(gen: u64, sector: usize) -> Vec<u8> {
    (0..SECTOR as u64)
        .map(|i| (gen.wrapping_mul(31) + sector as u64 * 7 + i * 13) as u8)
        .collect()
}

fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 64 * SECTOR]).unwrap();
    path
}

fn file_sector(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()[SERVE_SECTOR * SECTOR..(SERVE_SECTOR + 1) * SECTOR].to_vec()
}

fn blk_guest(disk: &Path, input: SerialInput) -> Guest {
    Guest::new(ELF64_PATH, "blk-serve")
        .args(&format!("blk.sector={SERVE_SECTOR:#x}"))
        .drive(DriveConfig {
            block: BlockConfig {
                drive_id: "data".into(),
                path: disk.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        })
        .input(input)
}

/// Boots `blk-serve` on `disk` up to its ready line.
fn serving_disk(disk: &Path) -> (Live, UnixStream) {
    let (console, input) = serial_pair();
    let mut live = Live::boot(blk_guest(disk, input));
    wait_for_line(&mut live, "blk-serve: ready");
    (live, console)
}

fn assert_field(line: &str, key: &str, expected: &str) {
    assert_eq!(value_of(line, key).as_deref(), Some(expected), "{line}");
}

fn read_sum(live: &mut Live, console: &mut UnixStream) -> u64 {
    let line = ask(live, console, b'r', "blk-serve read");
    assert_field(&line, "status", "0x0");
    hex(&value_of(&line, "sum").unwrap())
}

#[test]
fn block_data_written_before_a_snapshot_reads_back_after_restore_and_new_writes_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let (mut live, mut console) = serving_disk(&disk);
    let line = ask(&mut live, &mut console, b'w', "blk-serve write");
    assert_field(&line, "status", "0x0");
    assert_field(&line, "gen", "0x1");
    let first = pattern(1, SERVE_SECTOR);
    assert_eq!(read_sum(&mut live, &mut console), u64::from(fnv1a(&first)));
    let saved = live.save_and_stop();
    assert_eq!(file_sector(&disk), first);

    let capture = Capture::default();
    let (mut console, input) = serial_pair();
    let mut live = restored(restore_config(&saved, &capture, input), capture);
    assert_eq!(read_sum(&mut live, &mut console), u64::from(fnv1a(&first)));
    let line = ask(&mut live, &mut console, b'w', "blk-serve write");
    assert_field(&line, "status", "0x0");
    assert_field(&line, "gen", "0x2");
    assert_eq!(file_sector(&disk), pattern(2, SERVE_SECTOR));
    assert_not_rebooted(&live);
    live.vm.shutdown();
}

/// Has the guest queue a write with `byte` (`q`: notified, `a`: only made
/// available), snapshots at once, restores and checks the write completes
/// exactly once.
fn queued_write_completes_once_after_restore(byte: u8) {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let (mut live, mut console) = serving_disk(&disk);
    // The pause comes as soon as the guest says it queued the write, whether
    // or not the device took the request.
    ask(&mut live, &mut console, byte, "blk-serve queued");
    let saved = live.save_and_stop();

    let capture = Capture::default();
    let (mut console, input) = serial_pair();
    let mut live = restored(restore_config(&saved, &capture, input), capture);
    let line = ask(&mut live, &mut console, b'c', "blk-serve completed");
    assert_field(&line, "n", "0x1");
    assert_field(&line, "status", "0x0");
    assert_eq!(file_sector(&disk), pattern(1, SERVE_SECTOR));
    let metrics = live.vm.metrics();
    let writes = metrics
        .iter()
        .find(|g| g.name == "block_data")
        .and_then(|g| g.counters.iter().find(|(n, _)| *n == "write_count"))
        .map(|(_, v)| *v);
    assert_eq!(writes, Some(1), "the write ran once: {metrics:?}");
    assert_not_rebooted(&live);
    live.vm.shutdown();
}

#[test]
fn a_block_request_in_flight_at_pause_completes_exactly_once_after_restore() {
    queued_write_completes_once_after_restore(b'q');
}

#[test]
fn a_block_request_available_but_never_notified_is_taken_after_restore() {
    queued_write_completes_once_after_restore(b'a');
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_drive_file_gone_since_the_snapshot_fails_the_restore_naming_it_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let (console, input) = serial_pair();
    let guest = blk_guest(&disk, input).vsock(VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
    });
    let mut live = Live::boot(guest);
    wait_for_line(&mut live, "blk-serve: ready");
    let saved = live.save_and_stop();
    drop(console);
    std::fs::remove_file(&disk).unwrap();
    let before = dir_entries(dir.path());

    let capture = Capture::default();
    let mut config = restore_config(&saved, &capture, SerialInput::None);
    config.vsock_override = Some(dir.path().join("restored.sock"));
    let message = restore_error(config);
    assert!(message.contains("disk.img"), "{message}");
    assert_eq!(dir_entries(dir.path()), before, "the restore left files");
}

// ---------------------------------------------------------------------------
// Net

fn net_guest(tap: &str, input: SerialInput) -> Guest {
    Guest::new(PVH_PATH, "net-serve")
        .net(NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: tap.into(),
            guest_mac: Some(MAC),
            ..Default::default()
        })
        .input(input)
}

/// Boots `net-serve` on `tap` up to its ready line, which is returned.
fn serving_net(tap: &str) -> (Live, UnixStream, String) {
    let (console, input) = serial_pair();
    let mut live = Live::boot(net_guest(tap, input));
    let ready = wait_for_line(&mut live, "net-serve: ready");
    (live, console, ready)
}

/// A frame from the host to the guest's MAC.
fn host_frame(seed: u8) -> Vec<u8> {
    let mut frame = host::test_frame(90, seed);
    frame[..6].copy_from_slice(&MAC);
    frame
}

/// The frame the guest's `net-serve` sends on `s`.
fn guest_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"ember-net-test");
    frame.extend((28..64).map(|i| i as u8));
    frame
}

/// Waits for the guest to report `n` received frames; returns their sums.
fn received_sums(live: &mut Live, n: usize) -> Vec<u64> {
    let text = live.wait_for("frames in the guest", |t| {
        lines_with(t, "net-recv len=").len() >= n
    });
    lines_with(&text, "net-recv len=")
        .iter()
        .map(|l| hex(&value_of(l, "sum").unwrap()))
        .collect()
}

#[test]
fn a_vm_restored_onto_another_tap_sends_and_receives_there() {
    in_netns(|| {
        let (live, console, _) = serving_net("ember-sa0");
        let saved = live.save_and_stop();
        drop(console);

        let capture = Capture::default();
        let (mut console, input) = serial_pair();
        let mut config = restore_config(&saved, &capture, input);
        config.net_overrides = vec![("eth0".into(), "ember-sb0".into())];
        let vm = restore(config).expect("restores");
        let port = HostPort::new("ember-sb0");
        let mut live = Live::start(vm, capture);

        let line = ask(&mut live, &mut console, b's', "net-serve sent");
        assert_field(&line, "status", "0x0");
        let got = port.recv_within(common::GUEST_DEADLINE).unwrap();
        assert_eq!(got, Some(guest_frame()));

        let frame = host_frame(7);
        port.send(&frame);
        assert_eq!(received_sums(&mut live, 1), [u64::from(fnv1a(&frame))]);
        assert_not_rebooted(&live);
        live.vm.shutdown();
    });
}

#[test]
fn a_tap_override_that_cannot_be_opened_or_names_no_interface_fails_with_one_line() {
    in_netns(|| {
        let (live, console, _) = serving_net("ember-sc0");
        let saved = live.save_and_stop();
        drop(console);
        let capture = Capture::default();

        let mut config = restore_config(&saved, &capture, SerialInput::None);
        config.net_overrides = vec![("eth0".into(), "no-such-tap-name-fits".into())];
        let message = restore_error(config);
        assert!(message.contains("eth0"), "{message}");
        assert!(message.contains("no-such-tap-name-fits"), "{message}");

        let mut config = restore_config(&saved, &capture, SerialInput::None);
        config.net_overrides = vec![("eth9".into(), "ember-sd0".into())];
        let message = restore_error(config);
        assert!(message.contains("eth9"), "{message}");
    });
}

/// The guest's receive used ring (flags, index, entries) and buffers, at the
/// addresses its `*-serve: ready` line gives.
fn rx_memory(live: &Live, ready: &str) -> (Vec<u8>, Vec<u8>) {
    let memory = live.vm.memory().unwrap();
    let read = |key: &str, len: usize| {
        let mut bytes = vec![0u8; len];
        let addr = GuestAddress(hex(&value_of(ready, key).unwrap()));
        memory.read_slice(&mut bytes, addr).unwrap();
        bytes
    };
    let bufs_len = hex(&value_of(ready, "bufs_len").unwrap()) as usize;
    (read("used", 4 + 8 * 8), read("bufs", bufs_len))
}

/// Turns the event loop for half a second.
fn turn_for_a_while(live: &mut Live) {
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        live.event_loop.run_with_timeout(20).unwrap();
    }
}

#[test]
fn a_paused_vm_takes_no_frames_until_resumed() {
    in_netns(|| {
        let (mut live, _console, ready) = serving_net("ember-sp0");
        let port = HostPort::new("ember-sp0");
        live.vm.pause().unwrap();
        let before = rx_memory(&live, &ready);
        let frames: Vec<_> = (1..=3).map(host_frame).collect();
        for frame in &frames {
            port.send(frame);
        }
        turn_for_a_while(&mut live);
        let after = rx_memory(&live, &ready);
        assert!(before.0 == after.0, "the used ring changed while paused");
        assert!(before.1 == after.1, "a receive buffer changed while paused");
        assert!(!live.capture.text().contains("net-recv"));

        live.vm.resume().unwrap();
        let sums = received_sums(&mut live, 3);
        let expected: Vec<u64> = frames.iter().map(|f| u64::from(fnv1a(f))).collect();
        assert_eq!(sums, expected);
        assert_ne!(rx_memory(&live, &ready).0, before.0);
        live.vm.shutdown();
    });
}

// ---------------------------------------------------------------------------
// Vsock

const VSOCK_PORT: u32 = 1234;

/// Connects to the guest's port through the device socket at `uds` and
/// sends `data` (on another thread, the test turning the event loop
/// meanwhile); returns the `OK` line and the echo.
fn exchange(
    uds: PathBuf,
    data: &'static [u8],
) -> std::thread::JoinHandle<(UnixStream, String, Vec<u8>)> {
    std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&uds).unwrap();
        stream
            .set_read_timeout(Some(common::GUEST_DEADLINE))
            .unwrap();
        writeln!(stream, "CONNECT {VSOCK_PORT}").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        stream.write_all(data).unwrap();
        let mut echo = vec![0u8; data.len()];
        reader.read_exact(&mut echo).unwrap();
        (stream, ok, echo)
    })
}

/// Runs [`exchange`] and waits for the guest to report the data.
fn echoed(live: &mut Live, uds: &Path, data: &'static [u8], printed: &str) -> UnixStream {
    let client = exchange(uds.to_owned(), data);
    wait_for_line(live, &format!("vsock-serve received={printed}"));
    let (stream, ok, echo) = client.join().unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    assert_eq!(echo, data.to_ascii_uppercase());
    stream
}

/// Boots `vsock-serve` with its device socket at `uds`, up to its ready
/// line, which is returned.
fn serving_vsock(uds: &Path) -> (Live, String) {
    let guest = Guest::new(ELF64_PATH, "vsock-serve")
        .args(&format!("vsock.port={VSOCK_PORT}"))
        .vsock(VsockConfig {
            guest_cid: 42,
            uds_path: uds.to_owned(),
        });
    let mut live = Live::boot(guest);
    let ready = wait_for_line(&mut live, "vsock-serve: ready");
    (live, ready)
}

#[test]
fn a_paused_vm_takes_no_vsock_data_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (mut live, ready) = serving_vsock(&uds);
    let mut stream = echoed(&mut live, &uds, b"abc", "abc");
    live.vm.pause().unwrap();
    let before = rx_memory(&live, &ready);
    stream.write_all(b"xyz").unwrap();
    turn_for_a_while(&mut live);
    let after = rx_memory(&live, &ready);
    assert!(before.0 == after.0, "the used ring changed while paused");
    assert!(before.1 == after.1, "a receive buffer changed while paused");

    live.vm.resume().unwrap();
    wait_for_line(&mut live, "vsock-serve received=xyz");
    let mut echo = [0u8; 3];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"XYZ");
    live.vm.shutdown();
}

#[test]
fn a_vsock_connection_open_at_snapshot_is_reset_and_a_new_one_works_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (mut live, _) = serving_vsock(&uds);
    let mut open = echoed(&mut live, &uds, b"abc", "abc");
    // Two generations: each restored guest has a connection open when it is
    // saved again, and its event buffer back on the queue.
    for name in ["w.sock", "x.sock"] {
        let saved = live.save_and_stop();
        drop(open);
        let capture = Capture::default();
        let moved = dir.path().join(name);
        let mut config = restore_config(&saved, &capture, SerialInput::None);
        config.vsock_override = Some(moved.clone());
        live = restored(config, capture);
        wait_for_line(&mut live, "vsock-serve event=0x0");
        open = echoed(&mut live, &moved, b"ping\n", "ping?");
        assert_not_rebooted(&live);
    }
    live.vm.shutdown();
}
