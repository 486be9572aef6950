//! Snapshots against a hostile client, through the real binary with seccomp
//! on: paths that clash, name directories or FIFOs are refused with one
//! line and leave nothing behind, and a memory file truncated under a
//! restored VM ends the VMM with one clear line instead of a seccomp
//! violation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::{Ember, DEADLINE};
use ember_test_guests::ELF64_PATH;

const SPIN: &str = "console=ttyS0 ember.test=spin count.delay=2000";

fn create_body(state: &Path, mem: &Path, kind: &str) -> String {
    format!(
        r#"{{"snapshot_type": "{kind}", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    )
}

/// A spinning guest, `track_dirty_pages` as asked, started and paused.
fn paused_guest(track_dirty_pages: bool) -> Ember {
    let ember = Ember::start(&[]);
    ember.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "boot_args": "{SPIN}"}}"#),
    );
    ember.ok(
        "PUT",
        "/machine-config",
        &format!(
            r#"{{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": {track_dirty_pages}}}"#
        ),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.wait_for("tick=");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember
}

/// The names in `dir`, hidden ones included, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts a one-line 400 whose fault contains `needle`.
fn assert_refused(ember: &Ember, body: &str, needle: &str) {
    let reply = ember.call("PUT", "/snapshot/create", Some(body));
    assert_eq!(reply.status, 400, "{}", reply.body);
    let fault = reply.fault();
    assert!(fault.contains(needle), "{fault}");
    assert!(!fault.contains('\n'), "{fault}");
}

#[test]
fn a_create_refuses_clashing_and_directory_paths_and_leaves_nothing() {
    let ember = paused_guest(false);
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let same = dir.path().join("vm.snap");
    let same_again = sub.join("..").join("vm.snap");
    for mem in [&same, &same_again] {
        assert_refused(&ember, &create_body(&same, mem, "Full"), "the same file");
    }
    // The memory file's rename would fail: the state file must not be left.
    assert_refused(
        &ember,
        &create_body(&dir.path().join("vm.state"), &sub, "Full"),
        "Is a directory",
    );
    assert_refused(
        &ember,
        &create_body(&sub, &dir.path().join("vm.mem"), "Full"),
        "Is a directory",
    );
    assert_eq!(entries(dir.path()), vec!["sub"]);
    ember.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&same, &dir.path().join("vm.mem"), "Full"),
    );
    assert_eq!(entries(dir.path()), vec!["sub", "vm.mem", "vm.snap"]);
    assert_eq!(ember.state(), "Paused");
}

#[test]
fn a_diff_into_a_fifo_device_or_kernel_interface_is_refused_without_blocking() {
    let ember = paused_guest(true);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let state = dir.path().join("vm.state");
    // `/proc/self/mem` is the VMM's own memory, which guest bytes must
    // never reach.
    let refusals = [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/null"), "not a regular file"),
        (Path::new("/proc/self/mem"), "kernel interface"),
    ];
    for (mem, needle) in refusals {
        let started = std::time::Instant::now();
        assert_refused(&ember, &create_body(&state, mem, "Diff"), needle);
        assert!(started.elapsed() < DEADLINE);
    }
    assert_eq!(entries(dir.path()), vec!["fifo"]);
    // The refused diffs took no dirty page: a full snapshot, then a diff,
    // still work and the VMM still answers.
    let mem = dir.path().join("vm.mem");
    ember.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&state, &mem, "Full"),
    );
    ember.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&state, &mem, "Diff"),
    );
    assert_eq!(ember.state(), "Paused");
}

#[test]
fn a_memory_file_truncated_under_a_restored_vm_ends_the_vmm_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.state"), dir.path().join("vm.mem"));
    {
        let ember = paused_guest(false);
        ember.ok(
            "PUT",
            "/snapshot/create",
            &create_body(&state, &mem, "Full"),
        );
    }
    let mut ember = Ember::start(&[]);
    ember.ok(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}}}"#,
            state.display(),
            mem.display()
        ),
    );
    std::fs::File::options()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(0)
        .unwrap();
    // The snapshot reads all of guest memory, the lost pages included.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    // The request is sent; no answer comes, the process ends.
    let body = create_body(&again.join("s"), &again.join("m"), "Full");
    let mut client = UnixStream::connect(ember.dir().join("api.sock")).unwrap();
    write!(
        client,
        "PUT /snapshot/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(ember.wait_exit(), ember_vmm::MEMORY_FAULT_EXIT_CODE);
    let log = ember.log();
    assert!(
        log.contains("guest memory could not be read (SIGBUS)"),
        "{log}"
    );
    assert!(!log.contains("seccomp violation"), "{log}");
    assert!(!again.join("s").exists() && !again.join("m").exists());
}
