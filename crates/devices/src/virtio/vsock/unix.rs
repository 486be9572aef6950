//! The host side of the hybrid vsock: Unix-socket helpers the event loop can
//! call without ever blocking, and the `CONNECT <port>\n` / `OK <port>\n`
//! handshake of host-initiated connections (Firecracker's protocol).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub(crate) use crate::host_files::connect_nonblocking;
use crate::virtio::iov::GuestIoVecs;

/// Longest `CONNECT <port>\n` line read from a host client, newline included.
pub(crate) const MAX_CONNECT_LINE: usize = 32;

/// The Unix socket a guest connection to host port `port` goes to:
/// `<uds_path>_<port>`.
pub(crate) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = uds_path.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Writes to a stream without ever raising SIGPIPE (whatever the process's
/// SIGPIPE disposition): a peer that went away is an `EPIPE` error.
pub(crate) fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the
        // call; the result is checked.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Sends guest data (`sendmsg` straight from guest memory), never raising
/// SIGPIPE, as [`send`] does.
pub(crate) fn send_guest(stream: &UnixStream, data: &GuestIoVecs<'_, '_>) -> io::Result<usize> {
    loop {
        match data.sendmsg(stream, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads into `buf`, retrying on EINTR.
pub(crate) fn recv(mut stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// What reading a host client's command line gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineStatus {
    /// No complete line yet; wait for more.
    Incomplete,
    /// A valid `CONNECT <port>` line.
    Connect(u32),
    /// The client closed, sent something else, or a line too long.
    Invalid,
}

/// A freshly accepted host client, before its `CONNECT <port>\n` line.
#[derive(Debug)]
pub(crate) struct HostClient {
    pub(crate) stream: UnixStream,
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
}

impl HostClient {
    pub(crate) fn new(stream: UnixStream) -> HostClient {
        HostClient {
            stream,
            line: [0; MAX_CONNECT_LINE],
            len: 0,
        }
    }

    /// Reads what is available of the command line, one byte at a time so
    /// that data the client sends after the line stays in the socket for the
    /// guest.
    pub(crate) fn read_line(&mut self) -> LineStatus {
        loop {
            let mut byte = [0u8; 1];
            match recv(&self.stream, &mut byte) {
                Ok(0) => return LineStatus::Invalid,
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line[..self.len]),
                Ok(_) if self.len == MAX_CONNECT_LINE - 1 => return LineStatus::Invalid,
                Ok(_) => {
                    self.line[self.len] = byte[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineStatus::Incomplete,
                Err(_) => return LineStatus::Invalid,
            }
        }
    }
}

/// Parses a command line (without its newline) the way Firecracker does:
/// whitespace-separated words, the first `connect` in any case, the second a
/// decimal port; anything after that is ignored.
pub(crate) fn parse_connect(line: &[u8]) -> LineStatus {
    let Ok(line) = std::str::from_utf8(line) else {
        return LineStatus::Invalid;
    };
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(cmd), Some(port)) if cmd.eq_ignore_ascii_case("connect") => port
            .parse::<u32>()
            .map_or(LineStatus::Invalid, LineStatus::Connect),
        _ => LineStatus::Invalid,
    }
}

/// The acknowledgement a host client gets once the guest accepted: the
/// host-side port of the connection.
pub(crate) fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn connect_lines() {
        for (line, expected) in [
            (&b"CONNECT 1234"[..], LineStatus::Connect(1234)),
            (b"connect 0", LineStatus::Connect(0)),
            (b"Connect   52 \r", LineStatus::Connect(52)),
            (b"CONNECT 4294967295", LineStatus::Connect(u32::MAX)),
            (b"CONNECT 1234 extra", LineStatus::Connect(1234)),
            (b"CONNECT 4294967296", LineStatus::Invalid),
            (b"CONNECT -1", LineStatus::Invalid),
            (b"CONNECT 0x10", LineStatus::Invalid),
            (b"CONNECT", LineStatus::Invalid),
            (b"LISTEN 5", LineStatus::Invalid),
            (b"", LineStatus::Invalid),
            (b"CONNECT \xff", LineStatus::Invalid),
        ] {
            assert_eq!(parse_connect(line), expected, "{line:?}");
        }
    }

    #[test]
    fn port_paths_and_ok_lines() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
        assert_eq!(ok_line(1 << 30), "OK 1073741824\n");
    }

    #[test]
    fn line_reader_stops_at_the_newline() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut client = HostClient::new(a);
        assert_eq!(client.read_line(), LineStatus::Incomplete);
        b.write_all(b"CONN").unwrap();
        assert_eq!(client.read_line(), LineStatus::Incomplete);
        b.write_all(b"ECT 77\npayload").unwrap();
        assert_eq!(client.read_line(), LineStatus::Connect(77));
        let mut rest = [0u8; 16];
        let n = recv(&client.stream, &mut rest).unwrap();
        assert_eq!(&rest[..n], b"payload");
    }

    #[test]
    fn line_reader_refuses_long_lines_and_eof() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut client = HostClient::new(a);
        b.write_all(&[b'x'; MAX_CONNECT_LINE]).unwrap();
        assert_eq!(client.read_line(), LineStatus::Invalid);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        drop(b);
        assert_eq!(HostClient::new(a).read_line(), LineStatus::Invalid);
    }

    #[test]
    fn nonblocking_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s_5");
        assert_eq!(
            connect_nonblocking(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let listener = UnixListener::bind(&path).unwrap();
        let stream = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(send(&stream, b"abc").unwrap(), 3);
        let mut buf = [0u8; 3];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        peer.write_all(b"xy").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv(&stream, &mut buf).unwrap(), 2);
        assert_eq!(
            recv(&stream, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(peer);
        assert_eq!(
            send(&stream, b"z").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        let long = PathBuf::from("/".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
