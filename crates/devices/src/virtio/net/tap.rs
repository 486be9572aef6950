//! A TAP network interface opened from `/dev/net/tun`: the host side of a
//! virtio-net device.
//!
//! The interface is opened by name with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`:
//! every frame read or written starts with a virtio-net header (the size set
//! with [`Tap::set_vnet_hdr_size`]) and carries no packet-information prefix.
//! The file is non-blocking: reads return [`io::ErrorKind::WouldBlock`] when
//! no frame is queued. Each ioctl is wrapped once below, in a safe method.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::Error;

/// The clone device every TAP interface is opened through.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Longest interface name, without the terminating NUL (`IFNAMSIZ - 1`).
pub const MAX_IFACE_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    if_name: String,
}

/// Checks `name` before it goes to the kernel: non-empty, short enough for
/// `ifr_name`, no NUL, `/` or whitespace (which the kernel refuses anyway).
fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFACE_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid interface name (1 to {MAX_IFACE_NAME_LEN} bytes, no '/', NUL or spaces)"
            ),
        ))
    }
}

/// Turns an ioctl's (or fcntl's) return value into a result.
fn ioctl_result(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Opens (creating it if needed) the TAP interface `name` with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking and close-on-exec.
    ///
    /// The interface is created in the network namespace of the calling
    /// thread. A persistent interface made by someone else (`ip tuntap add`)
    /// is attached to if its owner and flags allow it.
    pub fn open(name: &str) -> Result<Tap, Error> {
        let fail = |error| Error::Tap {
            name: name.to_owned(),
            error,
        };
        check_name(name).map_err(fail)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(fail)?;
        let mut ifr = IfReq::new(name);
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        ifr.set_flags(flags);
        set_iff(&file, &mut ifr).map_err(fail)?;
        Ok(Tap {
            file,
            if_name: ifr.name(),
        })
    }

    /// Takes a TAP file someone else opened and attached to its interface
    /// (a CNI plugin, a jailer), such as [`Tap::open`] opens: with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. The file is made non-blocking
    /// (a flag of the open file, shared with other descriptors of it).
    /// Fails if `fd` is not a TAP attached to an interface with those flags.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, Error> {
        let file = File::from(fd);
        let fail = |name: String, error| Error::Tap { name, error };
        let unnamed = || format!("fd {}", file.as_raw_fd());
        let mut ifr = IfReq::new("");
        get_iff(&file, &mut ifr).map_err(|error| fail(unnamed(), error))?;
        let wanted = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if ifr.flags() & wanted != wanted {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a TAP opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR",
            );
            return Err(fail(ifr.name(), error));
        }
        set_nonblocking(&file).map_err(|error| fail(ifr.name(), error))?;
        Ok(Tap {
            file,
            if_name: ifr.name(),
        })
    }

    /// The interface's name, as the kernel reports it.
    pub fn if_name(&self) -> &str {
        &self.if_name
    }

    /// Tells the kernel which offloads the reader of this TAP handles
    /// (`TUNSETOFFLOAD`, a combination of `libc::TUN_F_*`): with
    /// `TUN_F_CSUM` it may hand over frames with a partial checksum, with
    /// `TUN_F_TSO4`/`TUN_F_TSO6`/`TUN_F_UFO` (which need `TUN_F_CSUM`)
    /// unsegmented TCP or UDP packets. Fails if the kernel does not support a
    /// flag or the combination.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long); the fd is open for the borrow of `self.file`, and the kernel
        // neither reads nor writes our memory.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        ioctl_result(ret)
    }

    /// Sets the size of the virtio-net header in front of every frame
    /// (`TUNSETVNETHDRSZ`): 10 for the legacy header, 12 for
    /// `virtio_net_hdr_v1` (virtio 1.x) or with mergeable buffers.
    pub fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()> {
        let value: c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `value`, alive for the call; the fd is open.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &value as *const c_int,
            )
        };
        ioctl_result(ret)
    }

    /// The size of the virtio-net header in front of every frame (`TUNGETVNETHDRSZ`).
    pub fn vnet_hdr_size(&self) -> io::Result<i32> {
        let mut value: c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer, which
        // points at `value`, alive and writable for the call; the fd is open.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNGETVNETHDRSZ,
                &mut value as *mut c_int,
            )
        };
        ioctl_result(ret)?;
        Ok(value)
    }

    /// Reads one frame (header included) into `buf`. A frame longer than
    /// `buf` is truncated by the kernel, so `buf` should hold the largest
    /// frame. [`io::ErrorKind::WouldBlock`] when no frame is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Reads one frame scattered over `bufs` (`readv`).
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Writes one frame (header included) from `buf`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one frame gathered from `bufs` (`writev`).
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }
}

/// The file descriptor to watch for readability.
impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// `struct ifreq` as TUNSETIFF uses it: a name and the flags.
struct IfReq(libc::ifreq);

impl IfReq {
    /// A request for interface `name`, which [`check_name`] accepted (it
    /// fits with its NUL terminator).
    fn new(name: &str) -> IfReq {
        // SAFETY: `ifreq` is plain old data (a byte array and a union of
        // integers, arrays, socket addresses and a pointer); all zeroes is a
        // valid value of each.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        IfReq(ifr)
    }

    fn set_flags(&mut self, flags: c_int) {
        // The flags field is a C short; every IFF_* value used fits.
        self.0.ifr_ifru.ifru_flags = i16::try_from(flags).unwrap_or(0);
    }

    /// The flags the kernel wrote back.
    fn flags(&self) -> c_int {
        // SAFETY: every bit pattern is a valid short; TUNGETIFF (or
        // `set_flags`) wrote the flags member.
        c_int::from(unsafe { self.0.ifr_ifru.ifru_flags })
    }

    /// The name, up to its first NUL.
    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .ifr_name
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// TUNSETIFF: attaches `file` to the interface `ifr` names, creating it if
/// needed; the kernel writes the final name back into `ifr`.
fn set_iff(file: &File, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` through the
    // pointer, which points at `ifr.0`, alive and writable for the call; the
    // fd is open for the borrow of `file`.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr.0 as *mut libc::ifreq,
        )
    };
    ioctl_result(ret)
}

/// TUNGETIFF: the name and flags of the interface `file` is attached to.
fn get_iff(file: &File, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: TUNGETIFF writes one `struct ifreq` through the pointer,
    // which points at `ifr.0`, alive and writable for the call; the fd is
    // open for the borrow of `file`.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNGETIFF,
            &mut ifr.0 as *mut libc::ifreq,
        )
    };
    ioctl_result(ret)
}

/// Adds `O_NONBLOCK` to the flags of the open file.
fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and only returns the flags; the fd
    // is open for the borrow of `file`.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    ioctl_result(flags)?;
    // SAFETY: F_SETFL takes the flags by value; the fd is open.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    ioctl_result(ret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::virtio::net::tests::host::{in_netns, test_frame, HostPort};

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for bad in ["", "a-name-far-too-long", "a/b", "a b", "nul\0", ".", ".."] {
            let err = Tap::open(bad).unwrap_err();
            assert!(
                matches!(&err, Error::Tap { error, .. } if error.kind() == io::ErrorKind::InvalidInput),
                "{bad:?}: {err}"
            );
        }
        assert!(check_name("exactly15bytes!").is_ok());
    }

    #[test]
    fn open_sets_the_name_the_header_size_and_offloads() {
        in_netns(|| {
            let tap = Tap::open("ember-t%d").unwrap();
            assert_eq!(tap.if_name(), "ember-t0", "the kernel fills in %d");
            // The kernel's default header is the legacy 10-byte one.
            assert_eq!(tap.vnet_hdr_size().unwrap(), 10);
            tap.set_vnet_hdr_size(12).unwrap();
            assert_eq!(tap.vnet_hdr_size().unwrap(), 12);
            assert!(tap.set_vnet_hdr_size(4).is_err(), "smaller than the header");
            tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
                .unwrap();
            tap.set_offload(0).unwrap();
            assert!(tap.set_offload(0x8000_0000).is_err(), "unknown flag");
        });
    }

    #[test]
    fn an_open_tap_is_taken_by_its_fd() {
        in_netns(|| {
            let opened = Tap::open("ember-fd").unwrap();
            let tap = Tap::from_fd(OwnedFd::from(opened.file.try_clone().unwrap())).unwrap();
            assert_eq!(tap.if_name(), "ember-fd");
            tap.set_vnet_hdr_size(12).unwrap();
            assert_eq!(opened.vnet_hdr_size().unwrap(), 12, "the same file");
            let mut buf = [0u8; 64];
            let err = tap.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        });
        let not_a_tap = OwnedFd::from(File::open("/dev/null").unwrap());
        let err = Tap::from_fd(not_a_tap).unwrap_err();
        assert!(err.to_string().starts_with("TAP interface fd "), "{err}");
    }

    #[test]
    fn frames_cross_in_both_directions_with_their_header() {
        in_netns(|| {
            let tap = Tap::open("ember-rw").unwrap();
            tap.set_vnet_hdr_size(12).unwrap();
            let port = HostPort::new(tap.if_name());
            let mut buf = [0u8; 256];
            assert_eq!(
                tap.read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );

            // Guest to host: a zeroed header and the frame, written in two pieces.
            let frame = test_frame(60, 1);
            let header = [0u8; 12];
            let n = tap
                .writev(&[IoSlice::new(&header), IoSlice::new(&frame)])
                .unwrap();
            assert_eq!(n, 72);
            assert_eq!(port.recv().unwrap(), frame);
            tap.write(&[&header[..], &frame[..]].concat()).unwrap();
            assert_eq!(port.recv().unwrap(), frame);

            // Host to guest: the header comes first, then the frame as sent.
            port.send(&frame);
            let n = tap.read(&mut buf).unwrap();
            assert_eq!(n, 72);
            assert_eq!(buf[12..72], frame[..]);
            port.send(&frame);
            let (mut hdr, mut data) = ([0xffu8; 12], [0u8; 100]);
            let n = tap
                .readv(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(&mut data)])
                .unwrap();
            assert_eq!(n, 72);
            assert_eq!(hdr[..10], [0; 10], "flags, gso_type, lengths: none");
            assert_eq!(data[..60], frame[..]);
        });
    }
}
