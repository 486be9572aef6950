//! Filter compilation, filter files, and what the default filters let a
//! process do (each checked in a forked child, which the filter then ends).

use std::os::fd::AsFd;

use super::*;
use crate::sys;

#[test]
fn default_filters_compile_for_every_thread_kind() {
    let filters = default_filters().unwrap();
    assert_eq!(filters.keys().copied().collect::<Vec<_>>(), ThreadKind::ALL);
    assert!(filters.values().all(|program| !program.is_empty()));
}

#[test]
fn default_filters_allow_the_documented_number_of_syscalls() {
    // seccomp/README.md lists these; update both when regenerating.
    let counts = default_syscall_counts().unwrap();
    assert_eq!(counts[&ThreadKind::Vmm], 51);
    assert_eq!(counts[&ThreadKind::Vcpu], 21);
    assert_eq!(counts[&ThreadKind::Api], 25);
}

const SMALL: &str = r#"{
  "vmm": {"default_action": "trap", "filter_action": "allow",
          "filter": [{"syscall": "read"}, {"syscall": "write", "comment": "logs"}]},
  "vcpu": {"mismatch_action": "kill_process", "match_action": "allow",
           "filter": [{"syscall": "ioctl",
                       "args": [{"index": 1, "type": "dword", "op": "eq", "val": 44672}]}]},
  "api": {"mismatch_action": {"errno": 1}, "match_action": "allow", "filter": []}
}"#;

#[test]
fn filter_files_in_firecracker_format_parse() {
    let filters = filters_from_json(SMALL.as_bytes()).unwrap();
    assert_eq!(filters.len(), 3);
    let counts = syscall_counts(SMALL.as_bytes()).unwrap();
    assert_eq!(counts[&ThreadKind::Vmm], 2);
    assert_eq!(counts[&ThreadKind::Vcpu], 1);
    assert_eq!(counts[&ThreadKind::Api], 0);
}

#[test]
fn malformed_filter_files_are_clear_errors() {
    let missing_api = r#"{"vmm": {"default_action": "trap", "filter_action": "allow", "filter": []},
                         "vcpu": {"default_action": "trap", "filter_action": "allow", "filter": []}}"#;
    let extra = SMALL.replacen("\"api\"", "\"apis\"", 1);
    let bad_call = SMALL.replacen("\"read\"", "\"no_such_call\"", 1);
    for (text, why) in [
        ("{\"vmm\": ", "Error parsing Json"),
        ("[1, 2]", "Error parsing Json"),
        (missing_api, "no filter for thread kind \"api\""),
        (&extra, "unknown thread kind \"apis\""),
        (&bad_call, "no_such_call"),
    ] {
        let err = filters_from_json(text.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("seccomp filter: "), "{err}");
        assert!(err.contains(why), "expected {why:?} in: {err}");
        assert!(syscall_counts(text.as_bytes()).is_err());
    }
}

/// Forks a child that installs the default filter of `kind`, runs `body` (which
/// must not allocate) and exits 0. Returns its exit status and standard error.
fn run_filtered(kind: ThreadKind, body: fn()) -> (i32, String) {
    let program = default_filters().unwrap().remove(&kind).unwrap();
    let (read, write) = sys::pipe().unwrap();
    match sys::fork().unwrap() {
        None => {
            if sys::dup2(write.as_fd(), libc::STDERR_FILENO).is_err() || apply(&program).is_err() {
                sys::exit_now(2);
            }
            body();
            sys::exit_now(0);
        }
        Some(pid) => {
            drop(write);
            let mut output = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match sys::read(read.as_fd(), &mut buf).unwrap() {
                    0 => break,
                    n => output.extend_from_slice(&buf[..n]),
                }
            }
            let status = sys::wait(pid).unwrap();
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            (
                libc::WEXITSTATUS(status),
                String::from_utf8(output).unwrap(),
            )
        }
    }
}

fn say(text: &[u8]) {
    // SAFETY: writes a valid buffer to standard error.
    unsafe { libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len()) };
}

fn assert_violation((status, stderr): (i32, String), before: &str, syscall: i64) {
    assert_eq!(status, VIOLATION_EXIT_CODE, "stderr: {stderr}");
    let expected = format!("{before}seccomp violation: syscall {syscall} on thread ");
    assert!(
        stderr.starts_with(&expected),
        "expected {expected:?}, got {stderr:?}"
    );
    assert!(stderr.ends_with('\n') && stderr.lines().count() == before.lines().count() + 1);
}

#[test]
fn vcpu_filter_traps_an_inet_socket() {
    let outcome = run_filtered(ThreadKind::Vcpu, || {
        // SAFETY: socket takes no pointers.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert_violation(outcome, "", libc::SYS_socket);
}

#[test]
fn vcpu_filter_allows_kvm_run_but_not_terminal_ioctls() {
    let outcome = run_filtered(ThreadKind::Vcpu, || {
        // SAFETY: ioctls on an invalid descriptor only fail with EBADF.
        let ret = unsafe { libc::ioctl(-1, 0xae80) };
        if ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
            say(b"KVM_RUN reached the kernel\n");
        }
        // SAFETY: as above (TCGETS).
        unsafe { libc::ioctl(-1, libc::TCGETS) };
    });
    assert_violation(outcome, "KVM_RUN reached the kernel\n", libc::SYS_ioctl);
}

#[test]
fn vcpu_filter_traps_execve() {
    let outcome = run_filtered(ThreadKind::Vcpu, || {
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        // SAFETY: a NUL-terminated path and a NULL-terminated argv.
        unsafe { libc::execv(c"/bin/true".as_ptr(), argv.as_ptr()) };
    });
    assert_violation(outcome, "", libc::SYS_execve);
}

#[test]
fn vmm_filter_allows_memory_but_never_executable() {
    let outcome = run_filtered(ThreadKind::Vmm, || {
        let map = |prot| {
            // SAFETY: an anonymous private mapping chosen by the kernel.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            }
        };
        if map(libc::PROT_READ | libc::PROT_WRITE) != libc::MAP_FAILED {
            say(b"rw mapping ok\n");
        }
        map(libc::PROT_READ | libc::PROT_EXEC);
    });
    assert_violation(outcome, "rw mapping ok\n", libc::SYS_mmap);
}

#[test]
fn vmm_filter_allows_the_terminal_ioctls() {
    let outcome = run_filtered(ThreadKind::Vmm, || {
        // SAFETY: TCGETS on an invalid descriptor fails with EBADF.
        let ret = unsafe { libc::ioctl(-1, libc::TCGETS) };
        if ret == -1 {
            say(b"TCGETS reached the kernel\n");
        }
        // SAFETY: KVM_RUN on an invalid descriptor (the main thread never runs a vCPU).
        unsafe { libc::ioctl(-1, 0xae80) };
    });
    assert_violation(outcome, "TCGETS reached the kernel\n", libc::SYS_ioctl);
}

#[test]
fn api_filter_refuses_creating_sockets() {
    let outcome = run_filtered(ThreadKind::Api, || {
        say(b"api\n");
        // SAFETY: socket takes no pointers.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    });
    assert_violation(outcome, "api\n", libc::SYS_socket);
}

#[test]
fn a_filtered_child_can_still_exit_normally() {
    let (status, stderr) = run_filtered(ThreadKind::Vcpu, || say(b"fine\n"));
    assert_eq!((status, stderr.as_str()), (0, "fine\n"));
}

#[test]
fn every_filter_lets_std_channels_yield() {
    // std's mpsc channels spin, then yield, while the other end is mid-send:
    // an API flood once ended the VMM on this call.
    for kind in ThreadKind::ALL {
        let (status, stderr) = run_filtered(kind, || {
            // SAFETY: sched_yield takes no arguments.
            unsafe { libc::sched_yield() };
            say(b"yielded\n");
        });
        assert_eq!((status, stderr.as_str()), (0, "yielded\n"), "{kind:?}");
    }
}
