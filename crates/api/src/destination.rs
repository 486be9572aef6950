//! Where logs, metrics and the serial console go: a regular file (appended
//! to) or a FIFO, opened non-blocking so a reader that stops reading costs a
//! counted, lost line (or byte, for the console) and never a stuck VMM.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// A log or metrics destination that counts the lines it could not write.
#[derive(Debug)]
pub struct Destination {
    file: File,
    missed_lines: u64,
}

impl Destination {
    /// Opens `path`: a FIFO is opened non-blocking for reading and writing (so the
    /// open succeeds before a reader appears), anything else is created or
    /// appended to, also non-blocking: should the path become a FIFO between
    /// the check and the open, the open fails (no reader) or succeeds without
    /// waiting, and never stalls the thread.
    pub fn open(path: &Path) -> io::Result<Destination> {
        let is_fifo = std::fs::metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        let file = if is_fifo {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?
        } else {
            OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?
        };
        Ok(Destination {
            file,
            missed_lines: 0,
        })
    }

    /// Writes one line (which should end with a newline). A line that cannot be
    /// written whole is counted as missed.
    pub fn write_line(&mut self, line: &str) {
        match self.file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            _ => self.missed_lines += 1,
        }
    }

    /// Lines that could not be written.
    pub fn missed_lines(&self) -> u64 {
        self.missed_lines
    }
}

/// Raw bytes, for the serial console: a write the destination cannot take at
/// once (a full FIFO) fails with `WouldBlock` instead of waiting, and the
/// caller counts the bytes lost.
impl Write for Destination {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_fifo_loses_lines_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut dest = Destination::open(&fifo).unwrap();
        let line = format!("{}\n", "x".repeat(1000));
        for _ in 0..200 {
            dest.write_line(&line);
        }
        // A pipe holds 64 KiB: most of the 200 KB could not be written.
        assert!(dest.missed_lines() > 100, "{}", dest.missed_lines());
    }

    #[test]
    fn raw_writes_to_a_full_fifo_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut dest = Destination::open(&fifo).unwrap();
        let chunk = [b'x'; 4096];
        let mut written = 0;
        let error = loop {
            match dest.write(&chunk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written <= 16 << 20,
                "a FIFO nobody reads took {written} bytes"
            );
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(written > 0);
    }

    #[test]
    fn a_file_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "old\n").unwrap();
        let mut dest = Destination::open(&path).unwrap();
        dest.write_line("new\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
        assert_eq!(dest.missed_lines(), 0);
    }
}
