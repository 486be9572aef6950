//! The host side of a virtio-net device, as a trait: a TAP interface
//! ([`super::Tap`]) by default, or anything else that carries frames with
//! their virtio-net header through a file descriptor: a TAP opened by
//! someone else (a CNI plugin hands over its fd), a socket pair in tests.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use super::Tap;

/// What a [`super::Net`] device needs from its host side.
///
/// Every frame read or written starts with a virtio-net header of the size
/// set with [`NetBackend::set_vnet_hdr_size`]. The file descriptor
/// ([`AsRawFd`]) is watched for readability on the device's event loop
/// (so it must be non-blocking and pollable: reads return
/// [`io::ErrorKind::WouldBlock`] when no frame waits), and the device
/// writes frames gathered from guest memory to it with `writev(2)`; each
/// read, write or `writev` carries exactly one frame.
///
/// # Example
///
/// A socket pair as the host side, one frame per datagram, without
/// offloads:
///
/// ```
/// use std::io;
/// use std::os::fd::{AsRawFd, RawFd};
/// use std::os::unix::net::UnixDatagram;
///
/// use ember_devices::virtio::net::NetBackend;
///
/// #[derive(Debug)]
/// struct SocketBackend(UnixDatagram);
///
/// impl AsRawFd for SocketBackend {
///     fn as_raw_fd(&self) -> RawFd {
///         self.0.as_raw_fd()
///     }
/// }
///
/// impl NetBackend for SocketBackend {
///     fn name(&self) -> &str {
///         "socket"
///     }
///     fn set_vnet_hdr_size(&self, _size: i32) -> io::Result<()> {
///         Ok(())
///     }
///     fn set_offload(&self, flags: u32) -> io::Result<()> {
///         match flags {
///             0 => Ok(()),
///             _ => Err(io::ErrorKind::Unsupported.into()),
///         }
///     }
///     fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
///         self.0.recv(buf)
///     }
///     fn write(&self, buf: &[u8]) -> io::Result<usize> {
///         self.0.send(buf)
///     }
/// }
///
/// let (device_end, host_end) = UnixDatagram::pair().unwrap();
/// device_end.set_nonblocking(true).unwrap();
/// let backend = SocketBackend(device_end);
/// backend.write(&[0; 12 + 14]).unwrap();
/// let mut frame = [0; 64];
/// assert_eq!(host_end.recv(&mut frame).unwrap(), 26);
/// ```
pub trait NetBackend: AsRawFd + Send + fmt::Debug {
    /// A name for logs, errors and the device's saved state (the TAP's
    /// interface name).
    fn name(&self) -> &str;

    /// Sets the size of the virtio-net header in front of every frame.
    fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()>;

    /// Tells the host side which offloads the device's driver handles (a
    /// combination of `libc::TUN_F_*`, see [`Tap::set_offload`]); fails if
    /// it does not support one. The device probes with this which
    /// offloads it offers.
    fn set_offload(&self, flags: u32) -> io::Result<()>;

    /// Reads one frame (header included) into `buf`;
    /// [`io::ErrorKind::WouldBlock`] when none waits.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame (header included) from `buf`.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl NetBackend for Tap {
    fn name(&self) -> &str {
        self.if_name()
    }

    fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()> {
        Tap::set_vnet_hdr_size(self, size)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read(self, buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Tap::write(self, buf)
    }
}
