//! A measured child process (`ember`, or `ember-jailer` running it): its
//! output lines, each with the instant it was read, and its exit.
//!
//! Standard output and standard error are read on two threads into one
//! channel, so a benchmark can wait for a line (the boot-timer log line, the
//! guest's `hlt: parked`) while it does other things, and knows the process
//! has ended when both streams are closed. The child is killed if the
//! [`Running`] is dropped before it exits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::{Context, Error, Result};

/// What the reader threads report.
#[derive(Debug)]
enum Output {
    /// A line and when it was read.
    Line(Instant, String),
    /// One stream reached its end.
    Closed,
}

/// A running child process.
#[derive(Debug)]
pub struct Running {
    child: Child,
    output: Receiver<Output>,
    open_streams: usize,
    /// Every line read so far, for error messages.
    seen: Vec<String>,
    /// When `spawn` was called.
    pub started: Instant,
    exited: Option<ExitStatus>,
}

fn forward(stream: impl Read + Send + 'static, to: Sender<Output>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if to.send(Output::Line(Instant::now(), line)).is_err() {
                return;
            }
        }
        let _ = to.send(Output::Closed);
    });
}

impl Running {
    /// Starts `command` with standard input closed, standard error read
    /// and, if `stdout` is true, standard output read (else discarded).
    pub fn spawn(mut command: Command, stdout: bool) -> Result<Running> {
        command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let started = Instant::now();
        let mut child = command
            .spawn()
            .ctx(format!("starting {:?}", command.get_program()))?;
        let (tx, rx) = channel();
        let mut open_streams = 0;
        if let Some(err) = child.stderr.take() {
            forward(err, tx.clone());
            open_streams += 1;
        }
        if let Some(out) = child.stdout.take() {
            forward(out, tx);
            open_streams += 1;
        }
        Ok(Running {
            child,
            output: rx,
            open_streams,
            seen: Vec::new(),
            started,
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of output, for error messages.
    fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(8);
        self.seen[from..].join(" | ")
    }

    /// Waits up to `timeout` for a line containing `needle`; returns it and
    /// when it was read.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(Output::Line(at, line)) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        let line = self.seen.last().cloned().unwrap_or_default();
                        return Ok((at, line));
                    }
                }
                Ok(Output::Closed) => {
                    self.open_streams = self.open_streams.saturating_sub(1);
                    if self.open_streams == 0 {
                        let status = self.child.wait().ctx("waiting for the child")?;
                        self.exited = Some(status);
                        return Err(Error::Unexpected(format!(
                            "exited ({status}) before printing {needle:?}: {}",
                            self.tail()
                        )));
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(Error::Timeout(format!(
                        "no {needle:?} within {timeout:?}: {}",
                        self.tail()
                    )))
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to end (its streams closed,
    /// then reaped); returns its status and when it was reaped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(Instant, ExitStatus)> {
        let deadline = Instant::now() + timeout;
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(Output::Line(_, line)) => self.seen.push(line),
                Ok(Output::Closed) => self.open_streams -= 1,
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "the process did not exit within {timeout:?}: {}",
                        self.tail()
                    )))
                }
            }
        }
        let status = self.child.wait().ctx("waiting for the child")?;
        let at = Instant::now();
        self.exited = Some(status);
        Ok((at, status))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| Error::Unexpected("pid out of range".to_owned()))?;
        // SAFETY: kill takes plain values; the pid is our own unreaped child,
        // so it cannot have been reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(Error::Io {
                what: "SIGTERM".to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        self.wait_exit(timeout).map(|(_, status)| status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The number after `key=` in `line`, if any (`key=123 other=4`).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let pattern = format!("{key}=");
    let at = line.find(&pattern)? + pattern.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What the boot-timer log line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTime {
    /// `guest-boot-time-us`: wall time from the start request.
    pub wall_us: u64,
    /// `guest-boot-cpu-us`: the process's CPU time by then.
    pub cpu_us: u64,
}

/// Parses the boot-timer log line.
pub fn parse_boot_time(line: &str) -> Option<BootTime> {
    Some(BootTime {
        wall_us: field(line, "guest-boot-time-us")?,
        cpu_us: field(line, "guest-boot-cpu-us")?,
    })
}

/// The needle of the boot-timer log line.
pub const BOOT_TIME_KEY: &str = "guest-boot-time-us=";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_line() {
        let line = "2026-11-25T10:23:39.724022 [anonymous-instance:fc_vcpu 0] \
                    guest-boot-time-us=22697 guest-boot-time-ms=22 guest-boot-cpu-us=9534";
        assert_eq!(
            parse_boot_time(line),
            Some(BootTime {
                wall_us: 22697,
                cpu_us: 9534
            })
        );
        assert_eq!(parse_boot_time("guest-boot-time-us=5"), None);
        assert_eq!(field("a=1 b=22x", "b"), Some(22));
        assert_eq!(field("a=", "a"), None);
    }

    #[test]
    fn lines_and_exit_of_a_child() {
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo out-line; echo err-line >&2; exit 3"]);
        let mut child = Running::spawn(sh, true).unwrap();
        let (at, line) = child.wait_line("err", Duration::from_secs(10)).unwrap();
        assert_eq!(line, "err-line");
        assert!(at >= child.started);
        let (_, status) = child.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            child.terminate(Duration::from_secs(1)).unwrap().code(),
            Some(3)
        );
    }

    #[test]
    fn a_missing_line_is_an_error_not_a_hang() {
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo nothing"]);
        let mut child = Running::spawn(sh, true).unwrap();
        let err = child
            .wait_line("never", Duration::from_secs(10))
            .unwrap_err();
        assert!(err.to_string().contains("nothing"), "{err}");
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let mut child = Running::spawn(sleeper, false).unwrap();
        let err = child.wait_line("x", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        let status = child.terminate(Duration::from_secs(10)).unwrap();
        assert!(!status.success());
    }
}
