//! Host files and sockets that a VM's configuration names, opened so that no
//! path can block or stall the VMM.
//!
//! - [`open_input`] opens a kernel, initrd, config file or disk: the type is
//!   checked on the path first (so that opening a device node with side
//!   effects, or a FIFO, is never tried), then the file is opened with
//!   `O_NONBLOCK` (an open of a FIFO swapped in meanwhile returns at once) and
//!   checked again on the open descriptor with `fstat`, which is what counts.
//! - [`bind_unix_listener`] binds a listening Unix socket, replacing a stale
//!   socket left by a process that died ([`clear_stale_socket`]) and refusing
//!   a live socket or anything that is not a socket; [`BoundListener`] is
//!   such a socket that removes its file when dropped. Sockets are only
//!   ever connected to without blocking (`connect_nonblocking`).

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// What an input file may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A regular file (kernel images, initrds, config files).
    RegularFile,
    /// A regular file or a block device (disk images).
    RegularFileOrBlockDevice,
}

impl InputKind {
    fn accepts(self, file_type: FileType) -> bool {
        match self {
            InputKind::RegularFile => file_type.is_file(),
            InputKind::RegularFileOrBlockDevice => {
                file_type.is_file() || file_type.is_block_device()
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            InputKind::RegularFile => "a regular file",
            InputKind::RegularFileOrBlockDevice => "a regular file or a block device",
        }
    }
}

/// What a file is, with an article, for error messages.
pub fn describe_file_type(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "an unknown kind of file"
    }
}

/// Refuses `file_type` unless `kind` accepts it, with an `InvalidInput` error
/// saying what the file is: "it is a FIFO, not a regular file".
fn check_type(file_type: FileType, kind: InputKind) -> io::Result<()> {
    if kind.accepts(file_type) {
        return Ok(());
    }
    Err(io::Error::new(
        ErrorKind::InvalidInput,
        format!(
            "it is {}, not {}",
            describe_file_type(file_type),
            kind.describe()
        ),
    ))
}

/// Opens the input file at `path` (symbolic links followed), for writing too
/// when `write`, refusing anything `kind` does not accept without ever
/// blocking: the file is opened with `O_NONBLOCK | O_CLOEXEC | O_NOCTTY` and
/// its type checked with `fstat` on the open descriptor.
///
/// The descriptor keeps `O_NONBLOCK`, which Linux ignores for reads and
/// writes of regular files and block devices.
pub fn open_input(path: &Path, kind: InputKind, write: bool) -> io::Result<File> {
    // A first look on the path: a FIFO or a device node is refused before it
    // is opened, since opening some devices has side effects.
    check_type(std::fs::metadata(path)?.file_type(), kind)?;
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    // What counts: the file actually opened, whatever the path now names.
    check_type(file.metadata()?.file_type(), kind)?;
    Ok(file)
}

/// Connects a non-blocking stream socket to `path` without blocking: a
/// listener whose backlog is full refuses (`WouldBlock`) instead of stalling
/// the event loop.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::other("AF_UNIX does not fit sa_family_t"))?;
    // One byte stays 0: the terminator.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable Unix socket path",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    let len = libc::socklen_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that
    // outlives the call; the result is checked.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Makes way for a listening socket at `path`: nothing there is fine; a socket
/// nobody accepts on (left by a process that died) is removed; a socket a
/// process accepts on, or anything that is not a socket, is refused. The
/// errors say why in a few words, for the caller to prefix with the path.
pub fn clear_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        // Never a blocking connect: a listener whose backlog is full would
        // hold the caller until it accepts.
        Ok(meta) if meta.file_type().is_socket() => match connect_nonblocking(path) {
            Ok(_) => Err(io::Error::new(
                ErrorKind::AddrInUse,
                "another process is listening on it",
            )),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(io::Error::new(
                ErrorKind::AddrInUse,
                "another process is listening on it (its backlog is full)",
            )),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot remove the stale socket: {e}"))
                }),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot check the existing socket: {e}"),
            )),
        },
        Ok(meta) => Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "the path exists and is not a socket (it is {})",
                describe_file_type(meta.file_type())
            ),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Binds a listening Unix socket at `path` after [`clear_stale_socket`].
pub fn bind_unix_listener(path: &Path) -> io::Result<UnixListener> {
    clear_stale_socket(path)?;
    UnixListener::bind(path)
}

/// A listening Unix socket bound at a path (non-blocking), whose file is
/// removed when it is dropped, unless something else has replaced it.
#[derive(Debug)]
pub struct BoundListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this listener created.
    file_id: Option<(u64, u64)>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

impl BoundListener {
    /// Binds at `path` as [`bind_unix_listener`] does.
    pub fn bind(path: &Path) -> io::Result<BoundListener> {
        let listener = bind_unix_listener(path)?;
        let bound = BoundListener {
            listener,
            path: path.to_path_buf(),
            file_id: file_id(path),
        };
        bound.listener.set_nonblocking(true)?;
        Ok(bound)
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if self.file_id.is_some() && file_id(&self.path) == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    fn refusal(path: &Path, kind: InputKind) -> String {
        let err = open_input(path, kind, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        err.to_string()
    }

    #[test]
    fn regular_files_open_and_others_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"bytes").unwrap();
        let opened = open_input(&file, InputKind::RegularFile, true).unwrap();
        assert_eq!(opened.metadata().unwrap().len(), 5);

        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let started = Instant::now();
        assert_eq!(
            refusal(&fifo, InputKind::RegularFile),
            "it is a FIFO, not a regular file"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            refusal(dir.path(), InputKind::RegularFileOrBlockDevice),
            "it is a directory, not a regular file or a block device"
        );
        assert_eq!(
            refusal(Path::new("/dev/zero"), InputKind::RegularFileOrBlockDevice),
            "it is a character device, not a regular file or a block device"
        );
        let missing = open_input(&dir.path().join("nope"), InputKind::RegularFile, false);
        assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn block_devices_are_disks_but_not_kernels() {
        // A block device node made here, so the test does not depend on the
        // host's disks: loop0's numbers (7:0); it is never read.
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("blk");
        let name = CString::new(node.as_os_str().as_bytes()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path; mknod creates a node.
        let made =
            unsafe { libc::mknod(name.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) };
        assert_eq!(made, 0, "mknod: {}", io::Error::last_os_error());
        assert_eq!(
            refusal(&node, InputKind::RegularFile),
            "it is a block device, not a regular file"
        );
        // Accepted by type; opening it may still fail if the host has no loop
        // driver, but never with InvalidInput.
        if let Err(e) = open_input(&node, InputKind::RegularFileOrBlockDevice, false) {
            assert_ne!(e.kind(), ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a leftover socket");
        let live = bind_unix_listener(&path).unwrap();

        let err = bind_unix_listener(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another process is listening"));
        drop(live);

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix_listener(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket (it is a regular file)"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let err = clear_stale_socket(dir.path()).unwrap_err().to_string();
        assert!(err.contains("it is a directory"), "{err}");
    }

    #[test]
    fn a_live_socket_with_a_full_backlog_is_refused_without_blocking() {
        use std::os::fd::AsRawFd;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = UnixListener::bind(&path).unwrap();
        // SAFETY: `live` is a bound listening socket; listen only changes
        // its backlog.
        assert_eq!(unsafe { libc::listen(live.as_raw_fd(), 0) }, 0);
        let mut pending = Vec::new();
        loop {
            match connect_nonblocking(&path) {
                Ok(stream) => pending.push(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(pending.len() < 1024, "the backlog never filled");
        }
        let err = clear_stale_socket(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("backlog is full"), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn a_bound_listener_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let bound = BoundListener::bind(&path).unwrap();
        assert_eq!(bound.path(), path);
        assert!(UnixStream::connect(&path).is_ok(), "it listens");
        let err = BoundListener::bind(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        drop(bound);
        assert!(!path.exists(), "removed on drop");

        let bound = BoundListener::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(bound);
        assert!(path.exists(), "a file that replaced the socket is kept");
    }
}
