//! The host's side of a TAP in tests: a private network namespace per test,
//! and an `AF_PACKET` socket on the TAP interface to send and receive frames
//! as the rest of the host would.
//!
//! How tests get a network namespace: [`in_netns`] runs the test body on a
//! new thread that first calls `unshare(CLONE_NEWNET)`. Network namespaces
//! belong to threads, so only that thread (and the sockets and TAP devices
//! it opens) lives in the new namespace; the rest of the test process is
//! untouched, and the namespace disappears with the thread and its fds. This
//! needs `CAP_SYS_ADMIN` (the tests run as root) and works with any number
//! of test threads. IPv6 is disabled in the namespace so the kernel sends no
//! router or neighbour solicitations through the TAP while a test runs.
//!
//! This file uses only `std` and `libc`: the integration tests include it
//! with `#[path]`.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The EtherType of test frames (IEEE 802 local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// Runs `f` on a new thread in a new network namespace and returns its
/// result; a panic in `f` fails the caller.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes flags by value and changes only the calling
        // thread's namespaces.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        for scope in ["all", "default"] {
            // Absent without IPv6 support: nothing to silence then.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1");
        }
        f()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A test frame of `len` bytes (at least 14): broadcast destination,
/// source 02:00:00:00:00:<seed>, EtherType [`TEST_ETHERTYPE`], then bytes
/// `(i * 7 + seed) & 0xff` for each offset `i`.
pub fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, seed]);
    frame[12..14].copy_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame
}

/// Returns -1 as the last OS error.
fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

/// An ifreq naming `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// A socket for interface ioctls in the calling thread's namespace.
fn control_socket() -> OwnedFd {
    // SAFETY: socket takes its arguments by value.
    let ret = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = check(ret, "socket(AF_INET)").unwrap();
    // SAFETY: `raw` is a new fd nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Sets IFF_UP on interface `name`.
fn link_up(name: &str) -> io::Result<()> {
    let fd = control_socket();
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the ifreq, which is alive and writable.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    check(ret, "SIOCGIFFLAGS")?;
    // SAFETY: the union holds the flags SIOCGIFFLAGS just wrote.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which is alive.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) };
    check(ret, "SIOCSIFFLAGS")?;
    Ok(())
}

/// Sets the transmit queue length of interface `name` (for a TAP: how many
/// frames wait for the reader before the kernel drops them).
pub fn set_txqueuelen(name: &str, len: i32) {
    let fd = control_socket();
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_metric = len;
    // SAFETY: SIOCSIFTXQLEN reads the ifreq, which is alive.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFTXQLEN, &ifr) };
    check(ret, "SIOCSIFTXQLEN").unwrap();
}

/// A raw packet socket on a TAP interface, receiving only test frames.
#[derive(Debug)]
pub struct HostPort {
    fd: OwnedFd,
}

impl HostPort {
    /// Brings interface `name` up and binds a socket to it.
    pub fn new(name: &str) -> HostPort {
        let protocol = TEST_ETHERTYPE.to_be();
        let (domain, kind) = (libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC);
        // SAFETY: socket takes its arguments by value.
        let ret = unsafe { libc::socket(domain, kind, libc::c_int::from(protocol)) };
        let raw = check(ret, "socket(AF_PACKET)").unwrap();
        // SAFETY: `raw` is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        link_up(name).unwrap();
        let cname = CString::new(name).unwrap();
        // SAFETY: the pointer is a NUL-terminated string alive for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(index, 0, "no interface {name}");
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as libc::c_int;
        let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let addr_ptr = (&addr as *const libc::sockaddr_ll).cast();
        // SAFETY: the address is a sockaddr_ll of the given size, alive for the call.
        let ret = unsafe { libc::bind(fd.as_raw_fd(), addr_ptr, addr_len) };
        check(ret, "bind(AF_PACKET)").unwrap();
        HostPort { fd }
    }

    /// Sends `frame` out of the interface (towards the TAP's reader).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next test frame the TAP's reader wrote, waiting up to two seconds.
    pub fn recv(&self) -> io::Result<Vec<u8>> {
        self.recv_within(Duration::from_secs(2))?
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    }

    /// The next incoming test frame, or `None` if none arrives within `wait`.
    pub fn recv_within(&self, wait: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one pollfd, alive and writable for the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if check(ready, "poll")? == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; 70_000];
            // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the buffer and the address are valid for writes of the
            // given sizes, alive for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
    }
}
