//! Helpers shared by the `ember` binary's tests: running it to the end (with
//! a one-line error, or bounded by `timeout`), and an `ember --api-sock`
//! process with a small HTTP client.

#![allow(
    dead_code, // each test file uses part of it
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");
/// The longest any single wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body's `fault_message`.
    pub fn fault(&self) -> String {
        self.json()["fault_message"].as_str().unwrap().to_owned()
    }
}

/// Reads one HTTP response from `stream`.
pub fn read_reply(stream: impl Read) -> Reply {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    Reply {
        status,
        body: String::from_utf8(body).unwrap(),
        headers,
    }
}

/// Sends raw bytes on a new connection and reads the reply.
pub fn raw(socket: &Path, bytes: &[u8]) -> Reply {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(bytes).unwrap();
    read_reply(&mut stream)
}

/// Sends one request with a JSON body (if any).
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    raw(socket, format!("{head}{body}").as_bytes())
}

/// An `ember --api-sock` process with its serial output collected.
pub struct Ember {
    /// The `ember` process.
    pub child: Child,
    /// Its API socket.
    pub socket: PathBuf,
    output: Arc<Mutex<String>>,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

/// Waits until `text()` contains `needle`, failing after [`DEADLINE`].
fn wait_until_contains(text: impl Fn() -> String, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends each line `source` gives to the returned text, on a thread of its
/// own, so the child never blocks on a full pipe.
fn collect_lines(source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Collects `source`'s lines on a thread; the closure returns them so far.
pub fn collect_output(source: impl Read + Send + 'static) -> impl Fn() -> String {
    let text = collect_lines(source);
    move || text.lock().unwrap().clone()
}

impl Ember {
    /// Starts `ember --api-sock DIR/api.sock EXTRA...` in a new temporary
    /// directory and waits until the socket accepts.
    pub fn start(extra: &[&str]) -> Ember {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut child = Command::new(EMBER)
            .arg("--api-sock")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = collect_lines(child.stdout.take().unwrap());
        let log = collect_lines(child.stderr.take().unwrap());
        let deadline = Instant::now() + DEADLINE;
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the API socket never accepted");
            assert!(child.try_wait().unwrap().is_none(), "ember exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ember {
            child,
            socket,
            output,
            log,
            dir,
        }
    }

    /// Sends the metrics to `DIR/metrics.json` (`PUT /metrics`); returns the path.
    pub fn put_metrics(&self) -> PathBuf {
        let metrics = self.dir().join("metrics.json");
        self.ok(
            "PUT",
            "/metrics",
            &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
        );
        metrics
    }

    /// What ember wrote to standard error so far (its log by default).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// The temporary directory holding the socket (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// One request on a new connection.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(&self.socket, method, path, body)
    }

    /// Asserts a 204 for the request.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let reply = self.call(method, path, Some(body));
        assert_eq!(reply.status, 204, "{method} {path}: {}", reply.body);
    }

    /// Configures `kernel` with `cmdline`, `vcpus` and 64 MiB, then starts it.
    pub fn boot(&self, kernel: &str, cmdline: &str, vcpus: u8) {
        self.ok(
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "{cmdline}"}}"#),
        );
        self.ok(
            "PUT",
            "/machine-config",
            &format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": 64}}"#),
        );
        self.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    }

    /// The serial output so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the serial output holds `needle`.
    pub fn wait_for(&self, needle: &str) {
        wait_until_contains(|| self.output(), needle);
    }

    /// Waits until the log (standard error) shows `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        wait_until_contains(|| self.log(), needle);
    }

    /// Waits for the process to end and returns its status.
    pub fn wait_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ember did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit and returns its status code (-1 when a
    /// signal ended it).
    pub fn wait_exit(&mut self) -> i32 {
        self.wait_status().code().unwrap_or(-1)
    }

    /// `GET /`'s `state`.
    pub fn state(&self) -> String {
        self.call("GET", "/", None).json()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// How many times `needle` appears in the serial output.
    pub fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ember ARGS` to its end.
pub fn ember(args: &[&str]) -> Output {
    Command::new(EMBER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ember runs")
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `ember` failed with status 1 and one error line containing `needle`.
pub fn assert_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    let error_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ember: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "one error line expected:\n{err}");
    assert!(
        error_lines[0].contains(needle),
        "{needle:?} not in {:?}",
        error_lines[0]
    );
}

/// Writes `bytes` to `dir/name`.
pub fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `GET /`'s status, or `None` when nothing answers on `socket`.
pub fn request_ok(socket: &Path) -> Option<u16> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").ok()?;
    Some(read_reply(&mut stream).status)
}

/// Runs `ember ARGS` to its end, killed after 60 s (`timeout` exits 124 then).
pub fn ember_to_the_end(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(EMBER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("timeout and ember run")
}

/// Sends `signal` to process `pid` (a child of this test).
pub fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Asserts that `status` is death by `signal` (as Firecracker dies on a
/// termination signal), not an exit.
pub fn assert_died_by(status: ExitStatus, signal: i32) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.code(),
        None,
        "{status:?}: an exit, not death by signal {signal}"
    );
    assert_eq!(status.signal(), Some(signal), "{status:?}");
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `name` is a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
}
