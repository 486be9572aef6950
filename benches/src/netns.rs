//! A private network namespace for the net benchmark, the interface
//! settings it needs (up, MTU, transmit queue length), and a raw packet
//! socket that puts frames on a TAP interface, towards the TAP's reader.
//!
//! Network namespaces belong to threads: [`in_new_netns`] runs a closure on
//! a new thread that first calls `unshare(CLONE_NEWNET)`, so the TAP and the
//! sockets it opens live in a namespace that disappears with the thread,
//! and the host's interfaces are never touched. Needs `CAP_SYS_ADMIN` and
//! `CAP_NET_ADMIN` (root). The same approach as the device tests of
//! ember-devices (`virtio/net/tests/host.rs`), with errors returned instead
//! of panics.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Context, Error, Result};

/// Runs `f` on a new thread in a new network namespace with IPv6 off (so
/// the kernel sends nothing of its own through the interfaces).
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: unshare takes flags by value and changes only the
            // calling thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).ctx("unshare(CLONE_NEWNET) (needs root)");
            }
            for scope in ["all", "default"] {
                // Absent without IPv6 support: nothing to silence then.
                let _ =
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1");
            }
            f()
        });
        thread.join().unwrap_or_else(|_| {
            Err(Error::Unexpected(
                "the namespace thread panicked".to_owned(),
            ))
        })
    })
}

/// -1 as the last OS error, with what failed.
fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error()).ctx(what)
    } else {
        Ok(ret)
    }
}

/// A new socket of `domain`, `kind` and `protocol`.
fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: socket takes its arguments by value.
    let ret = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    let raw = check(ret, "socket")?;
    // SAFETY: `raw` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// An `ifreq` naming interface `name`.
fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(Error::Unexpected(format!(
            "interface name {name} is too long"
        )));
    }
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// Runs an interface ioctl that reads or fills `ifr`.
fn if_ioctl(request: libc::c_ulong, ifr: &mut libc::ifreq, what: &str) -> Result<()> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: the interface ioctls read and write one ifreq, which is
    // alive and writable for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, ifr as *mut libc::ifreq) };
    check(ret, what)?;
    Ok(())
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> Result<()> {
    let mut ifr = ifreq(name)?;
    if_ioctl(libc::SIOCGIFFLAGS, &mut ifr, "SIOCGIFFLAGS")?;
    // SAFETY: the union holds the flags SIOCGIFFLAGS just wrote.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    // IFF_UP is 1: it fits the short the kernel keeps the flags in.
    #[allow(clippy::cast_possible_truncation)]
    let up = libc::IFF_UP as libc::c_short;
    ifr.ifr_ifru.ifru_flags = flags | up;
    if_ioctl(libc::SIOCSIFFLAGS, &mut ifr, "SIOCSIFFLAGS")
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: i32) -> Result<()> {
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_mtu = mtu;
    if_ioctl(libc::SIOCSIFMTU, &mut ifr, "SIOCSIFMTU")
}

/// Sets the transmit queue length of interface `name` (for a TAP: how many
/// frames wait for its reader before the kernel drops them).
pub fn set_txqueuelen(name: &str, len: i32) -> Result<()> {
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_metric = len;
    if_ioctl(libc::SIOCSIFTXQLEN, &mut ifr, "SIOCSIFTXQLEN")
}

/// A raw packet socket that sends frames out of one interface and receives
/// nothing (protocol 0).
#[derive(Debug)]
pub struct PacketSender {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketSender {
    /// A sender on interface `name`, for frames of EtherType `ethertype`.
    pub fn new(name: &str, ethertype: u16) -> Result<PacketSender> {
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let cname = CString::new(name)
            .map_err(|_| Error::Unexpected(format!("bad interface name {name}")))?;
        // SAFETY: the pointer is a NUL-terminated string alive for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error()).ctx(format!("no interface {name}"));
        }
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        // AF_PACKET is 17: it fits the family field.
        #[allow(clippy::cast_possible_truncation)]
        let family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_family = family;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = libc::c_int::try_from(index)
            .map_err(|_| Error::Unexpected(format!("interface index {index}")))?;
        Ok(PacketSender { fd, addr })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // A sockaddr_ll is 20 bytes.
        #[allow(clippy::cast_possible_truncation)]
        let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffer is valid for reads of its length and the
        // address is a sockaddr_ll of the given size, both alive for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                addr_len,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(Error::Unexpected(format!(
                "sent {n} of {} bytes",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()).ctx("sendto(AF_PACKET)"),
        }
    }
}
