//! A minimal HTTP/1.1 client over a Unix socket, enough to time Ember's
//! API: one request at a time, `Content-Length` bodies, keep-alive.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{Context, Error, Result};

/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply: the status code and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// The bytes of a request with an optional JSON body.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut text =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        text.push_str("\r\n");
    }
    text.into_bytes()
}

/// Reads one reply from `reader`.
pub fn read_reply(reader: &mut impl BufRead) -> Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line).ctx("reading the status line")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Unexpected(format!("bad HTTP status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).ctx("reading a header")?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value
                .trim()
                .parse()
                .map_err(|_| Error::Unexpected(format!("bad Content-Length {line:?}")))?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ctx("reading the body")?;
    Ok(Reply { status, body })
}

/// A connection to an API socket, kept open between requests.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> Result<Client> {
        let stream =
            UnixStream::connect(socket).ctx(format!("connecting to {}", socket.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .ctx("setting a read timeout")?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its reply.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<Reply> {
        self.send(&request_bytes(method, path, body))
    }

    /// Sends prepared request bytes and reads the reply.
    pub fn send(&mut self, request: &[u8]) -> Result<Reply> {
        self.reader
            .get_mut()
            .write_all(request)
            .ctx("sending a request")?;
        read_reply(&mut self.reader)
    }

    /// Sends a request and fails unless the status is `expected`.
    pub fn expect(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        expected: u16,
    ) -> Result<Reply> {
        let reply = self.request(method, path, body)?;
        if reply.status == expected {
            Ok(reply)
        } else {
            Err(Error::Unexpected(format!(
                "{method} {path}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_body_length() {
        let get = String::from_utf8(request_bytes("GET", "/", None)).unwrap();
        assert!(get.starts_with("GET / HTTP/1.1\r\n") && get.ends_with("\r\n\r\n"));
        assert!(!get.contains("Content-Length"));
        let put =
            String::from_utf8(request_bytes("PUT", "/machine-config", Some("{\"a\":1}"))).unwrap();
        assert!(put.contains("Content-Length: 7\r\n\r\n{\"a\":1}"), "{put}");
    }

    #[test]
    fn replies_back_to_back_on_one_connection() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let mut theirs = theirs;
        theirs
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}\
                  HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n",
            )
            .unwrap();
        let mut reader = BufReader::new(mine);
        assert_eq!(
            read_reply(&mut reader).unwrap(),
            Reply {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        assert_eq!(read_reply(&mut reader).unwrap().status, 204);
        drop(theirs);
        assert!(read_reply(&mut reader).is_err());
    }

    #[test]
    fn a_client_talks_to_a_server() {
        let dir = std::env::temp_dir().join(format!("ember-benches-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            for _ in 0..2 {
                let mut line = String::new();
                while line != "\r\n" {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                }
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!")
                    .unwrap();
            }
        });
        let mut client = Client::connect(&socket).unwrap();
        assert_eq!(client.request("GET", "/", None).unwrap().body, b"nope!");
        let err = client.expect("GET", "/", None, 200).unwrap_err();
        assert!(err.to_string().contains("400 nope!"), "{err}");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
