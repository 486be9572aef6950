//! An `ember --api-sock` process and a small HTTP client for it, shared by
//! the binary's API test files.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

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
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
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
    pub child: Child,
    pub socket: PathBuf,
    output: Arc<Mutex<String>>,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// Appends each line `source` gives to `sink`, on a thread of its own, so the
/// child never blocks on a full pipe.
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

impl Ember {
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
            _dir: dir,
        }
    }

    /// What ember wrote to standard error so far (its log by default).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(&self.socket, method, path, body)
    }

    /// Asserts a 204 for the request.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let reply = self.call(method, path, Some(body));
        assert_eq!(reply.status, 204, "{method} {path}: {}", reply.body);
    }

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

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared in:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "ember did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn state(&self) -> String {
        self.call("GET", "/", None).json()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

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

