//! The server loop against a stand-in VMM thread that answers every request
//! with its own debug text, flagged deprecated as the request says (and
//! stops after `GET /machine-config`), with
//! small limits so each rule shows quickly.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::*;
use crate::channel;

struct TestServer {
    socket: PathBuf,
    counters: Arc<ApiCounters>,
    server: JoinHandle<Result<()>>,
    vmm: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A server with `limits`, whose VMM answers `GET /version` after `delay`.
fn start(limits: ServerLimits, delay: Duration) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (to_vmm, api_end) = channel::channel().unwrap();
    let counters = Arc::new(ApiCounters::default());
    let thread_counters = counters.clone();
    let server = std::thread::spawn(move || serve(listener, to_vmm, thread_counters, limits, None));
    let vmm = std::thread::spawn(move || {
        while let Ok(request) = api_end.requests.recv() {
            if request == ApiRequest::GetVersion {
                std::thread::sleep(delay);
            }
            let body = serde_json::json!({ "request": format!("{request:?}") });
            let mut answer = ApiResponse::ok(&body);
            answer.deprecated = request.deprecation().is_some();
            api_end.responses.send(answer).unwrap();
            if request == ApiRequest::GetMachineConfig {
                return;
            }
        }
    });
    TestServer {
        socket,
        counters,
        server,
        vmm,
        _dir: dir,
    }
}

fn small_limits() -> ServerLimits {
    ServerLimits {
        http: HttpLimits {
            max_header_bytes: 256,
            max_payload_bytes: 64,
        },
        max_connections: 4,
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
    }
}

fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one response: the status and the body.
fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn get(socket: &Path, path: &str) -> (u16, String) {
    let mut stream = connect(socket);
    write!(stream, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut BufReader::new(stream))
}

fn fault(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["fault_message"].as_str().unwrap().to_owned()
}

fn stop(server: TestServer) {
    assert_eq!(get(&server.socket, "/machine-config").0, 200);
    server.vmm.join().unwrap();
    // With the VMM gone, the server ends: at once if it saw the channel
    // close, or at the next request, which it answers 503.
    if let Ok(mut stream) = UnixStream::connect(&server.socket) {
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
    }
    server.server.join().unwrap().unwrap();
}

#[test]
fn pipelined_requests_get_one_answer_each_in_order() {
    let server = start(small_limits(), Duration::ZERO);
    let mut stream = connect(&server.socket);
    stream
        .write_all(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let first = read_response(&mut reader);
    assert!(first.1.contains("GetVersion"), "{first:?}");
    assert!(read_response(&mut reader).1.contains("GetInstanceInfo"));
    let third = read_response(&mut reader);
    assert_eq!(third.0, 400);
    assert!(fault(&third.1).contains("GET nope"), "{third:?}");
    assert_eq!(server.counters.get.load(Ordering::Relaxed), 3);
    assert_eq!(server.counters.failed.load(Ordering::Relaxed), 1);
    stop(server);
}

#[test]
fn connections_over_the_limit_get_503_and_freed_slots_are_reused() {
    let server = start(small_limits(), Duration::ZERO);
    let held: Vec<UnixStream> = (0..4).map(|_| connect(&server.socket)).collect();
    let (status, body) = get(&server.socket, "/");
    assert_eq!(status, 503);
    assert!(fault(&body).contains("at most 4"), "{body}");
    assert_eq!(
        server.counters.refused_connections.load(Ordering::Relaxed),
        1
    );
    drop(held);
    // The slots of clients that left are free at once, whether or not their
    // hang-ups were handled before the next connection came.
    for _ in 0..20 {
        let held: Vec<UnixStream> = (0..4).map(|_| connect(&server.socket)).collect();
        drop(held);
        assert_eq!(get(&server.socket, "/").0, 200);
    }
    stop(server);
}

#[test]
fn slow_and_idle_connections_time_out() {
    let server = start(small_limits(), Duration::ZERO);
    let mut partial = connect(&server.socket);
    partial.write_all(b"GET / HT").unwrap();
    let idle = connect(&server.socket);
    let started = Instant::now();
    let (status, body) = read_response(&mut BufReader::new(partial));
    assert_eq!(status, 408, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    let mut idle = idle;
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "closed without a word"
    );
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(
        server
            .counters
            .timed_out_connections
            .load(Ordering::Relaxed),
        2
    );
    stop(server);
}

#[test]
fn oversized_requests_are_refused_and_the_connection_closed() {
    let server = start(small_limits(), Duration::ZERO);
    let mut stream = connect(&server.socket);
    stream
        .write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 65\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let (status, body) = read_response(&mut reader);
    assert_eq!(status, 400);
    assert!(fault(&body).contains("limit of 64"), "{body}");
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);

    let mut stream = connect(&server.socket);
    let header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(300));
    stream.write_all(header.as_bytes()).unwrap();
    let (status, body) = read_response(&mut BufReader::new(stream));
    assert_eq!(status, 400);
    assert!(fault(&body).contains("256 bytes"), "{body}");
    stop(server);
}

#[test]
fn a_slow_vmm_does_not_stop_other_clients_from_connecting() {
    let server = start(small_limits(), Duration::from_millis(300));
    let socket = server.socket.clone();
    let slow = std::thread::spawn(move || get(&socket, "/version"));
    std::thread::sleep(Duration::from_millis(50));
    // Accepted and read at once; answered when the VMM is free.
    let started = Instant::now();
    let mut refused = connect(&server.socket);
    refused.write_all(b"BREW / HTTP/1.1\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut BufReader::new(refused));
    assert_eq!(status, 400);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "answered without the VMM"
    );
    assert_eq!(slow.join().unwrap().0, 200);
    assert_eq!(get(&server.socket, "/").0, 200);
    stop(server);
}

#[test]
fn deprecated_requests_are_answered_with_a_deprecation_header() {
    let server = start(small_limits(), Duration::ZERO);
    let head_of = |body: &str| {
        let mut stream = connect(&server.socket);
        let request = format!(
            "PUT /vsock HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                return head;
            }
            head.push_str(&line);
        }
    };
    let deprecated = head_of(r#"{"vsock_id":"v","guest_cid":3,"uds_path":"/v"}"#);
    assert!(
        deprecated.contains("\r\nDeprecation: true\r\n"),
        "{deprecated}"
    );
    let current = head_of(r#"{"guest_cid":3,"uds_path":"/v"}"#);
    assert!(current.starts_with("HTTP/1.1 200"), "{current}");
    assert!(!current.contains("Deprecation"), "{current}");
    stop(server);
}
