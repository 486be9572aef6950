//! The SIGSYS handler for trapped system calls: it names the call and the
//! thread on standard error and ends the process, using only `write` and
//! `exit_group`, which every default filter allows.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_void, siginfo_t};

use crate::{Error, Result};

/// Exit status after a seccomp violation (128 + SIGSYS).
pub const VIOLATION_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: c_int = 1;

/// The start of `siginfo_t` for SIGSYS on x86_64 (`_sigsys` of the union).
#[repr(C)]
struct SigsysInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    _pad: c_int,
    call_addr: *mut c_void,
    syscall: c_int,
    arch: u32,
}

thread_local! {
    /// This thread's name as it was when its filter was installed.
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A message built on the stack, since the handler must not allocate.
struct Line {
    bytes: [u8; 96],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut value: u32) {
        let mut digits = [0u8; 10];
        let mut start = digits.len();
        loop {
            start -= 1;
            // `value % 10` is below 10, so it fits in a byte.
            digits[start] = b'0' + (value % 10).to_le_bytes()[0];
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

extern "C" fn on_sigsys(_signal: c_int, info: *mut siginfo_t, _context: *mut c_void) {
    let mut line = Line {
        bytes: [0; 96],
        len: 0,
    };
    line.push(b"seccomp violation: syscall ");
    let syscall = if info.is_null() {
        None
    } else {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, which is
        // 128 bytes long, larger than the SigsysInfo prefix read here.
        let info = unsafe { &*info.cast::<SigsysInfo>() };
        (info.code == SYS_SECCOMP).then_some(info.syscall)
    };
    match syscall.and_then(|n| u32::try_from(n).ok()) {
        Some(number) => line.push_number(number),
        None => line.push(b"?"),
    }
    line.push(b" on thread ");
    let name = THREAD_NAME.with(Cell::get);
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match name.get(..name_len) {
        Some(name) if !name.is_empty() => line.push(name),
        _ => line.push(b"?"),
    }
    line.push(b"\n");
    let text = line.bytes.get(..line.len).unwrap_or_default();
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for
    // its length. _exit never returns.
    unsafe {
        libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len());
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

/// Installs the SIGSYS handler for the whole process, once.
pub(crate) fn install_handler() -> Result<()> {
    if INSTALLED.load(Ordering::SeqCst) {
        return Ok(());
    }
    // SAFETY: an all-zero sigaction is valid (SIG_DFL, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is a valid sigaction whose handler only makes
    // async-signal-safe calls; the old action is not asked for.
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(Error::Sys {
            call: "sigaction(SIGSYS)",
            source: std::io::Error::last_os_error(),
        });
    }
    INSTALLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Records the calling thread's name for the handler's message.
pub(crate) fn remember_thread_name() {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the
    // 16-byte buffer.
    let ret = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    if ret == 0 {
        THREAD_NAME.with(|cell| cell.set(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        for (value, text) in [(0, "0"), (41, "41"), (u32::MAX, "4294967295")] {
            let mut line = Line {
                bytes: [0; 96],
                len: 0,
            };
            line.push_number(value);
            assert_eq!(&line.bytes[..line.len], text.as_bytes());
        }
    }

    #[test]
    fn truncates_long_lines() {
        let mut line = Line {
            bytes: [0; 96],
            len: 0,
        };
        line.push(&[b'x'; 200]);
        assert_eq!(line.len, 96);
    }
}
