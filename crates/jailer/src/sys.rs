//! Thin safe wrappers over the system calls the jail needs. Each unsafe call is
//! made once, here, with its safety argument; callers see `io::Result`s.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use libc::{c_int, c_uint, gid_t, mode_t, pid_t, uid_t};

/// `ioctl` request returning the type (`CLONE_NEW*`) of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Turns a C return value into an `io::Result`, reading `errno` on -1.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for calls made through `libc::syscall`.
fn check_long(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A path or name as a C string; an interior NUL byte is an `InvalidInput`
/// error.
pub(crate) fn cstring(text: &OsStr) -> io::Result<CString> {
    CString::new(text.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Takes ownership of a descriptor a successful call just returned.
fn owned(fd: c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open-like call, so it is a
    // valid descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`; `dir` of `None` is the
/// current directory.
pub(crate) fn open_at(
    dir: Option<BorrowedFd<'_>>,
    name: &CStr,
    flags: c_int,
    mode: mode_t,
) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is a NUL-terminated string that outlives the call and
    // `dirfd` is a descriptor borrowed for the call or AT_FDCWD.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check(fd).map(owned)
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: mode_t) -> io::Result<()> {
    // SAFETY: valid NUL-terminated name and a borrowed directory descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat(dir, name, S_IFCHR | mode, makedev(major, minor))`.
pub(crate) fn mknod_char_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: mode_t,
    major: c_uint,
    minor: c_uint,
) -> io::Result<()> {
    let dev = libc::makedev(major, minor);
    // SAFETY: valid NUL-terminated name and a borrowed directory descriptor.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR | mode, dev) })
        .map(drop)
}

/// `unlinkat(dir, name, AT_REMOVEDIR if remove_dir)`.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> io::Result<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid NUL-terminated name and a borrowed directory descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// Changes owner and mode of `name` in `dir`, or of `dir` itself (which must
/// then be open for reading, not `O_PATH`) for an empty name. The owner change
/// never follows a symbolic link; callers only change the mode of what they
/// have just created.
pub(crate) fn chown_chmod_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: uid_t,
    gid: gid_t,
    mode: mode_t,
) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    if name.is_empty() {
        // SAFETY: fchown and fchmod take no pointers; `fd` is borrowed.
        check(unsafe { libc::fchown(fd, uid, gid) })?;
        // SAFETY: as above.
        return check(unsafe { libc::fchmod(fd, mode) }).map(drop);
    }
    // SAFETY: valid NUL-terminated name and a borrowed directory descriptor.
    check(unsafe { libc::fchownat(fd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: as above.
    check(unsafe { libc::fchmodat(fd, name.as_ptr(), mode, 0) }).map(drop)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` (of `dir` itself for an empty
/// name).
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` points to writable memory of the right size and type; the
    // name is NUL-terminated and the descriptor borrowed for the call.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), stat.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled the whole structure.
    Ok(unsafe { stat.assume_init() })
}

/// Whether the file at `path` carries the extended attribute `name`.
pub(crate) fn has_xattr(path: &CStr, name: &CStr) -> io::Result<bool> {
    // SAFETY: both strings are NUL-terminated; a NULL buffer of size 0 only
    // asks for the attribute's size.
    let ret = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if ret >= 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(error),
    }
}

/// The mount flags (`ST_*`) of the file system holding `path`.
pub(crate) fn mount_flags(path: &CStr) -> io::Result<libc::c_ulong> {
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `stat` points to writable memory of the right size; the path is
    // NUL-terminated.
    check(unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded, so it filled the whole structure.
    Ok(unsafe { stat.assume_init() }.f_flag)
}

/// `unshare(flags)`.
pub(crate) fn unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(source, target, NULL, flags, NULL)`.
pub(crate) fn mount(source: Option<&CStr>, target: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `source` is NULL or a NUL-terminated string, `target` is
    // NUL-terminated, and NULL file-system type and data are allowed for bind
    // and propagation changes.
    check(unsafe {
        libc::mount(
            source,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub(crate) fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both arguments are NUL-terminated strings valid for the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
}

/// `umount2(target, MNT_DETACH)`.
pub(crate) fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `chdir(path)`.
pub(crate) fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `stat(path)`, following symbolic links.
pub(crate) fn stat(path: &CStr) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` points to writable memory of the right size; the path is
    // NUL-terminated.
    check(unsafe { libc::stat(path.as_ptr(), stat.as_mut_ptr()) })?;
    // SAFETY: stat succeeded, so it filled the whole structure.
    Ok(unsafe { stat.assume_init() })
}

/// The namespace type (`CLONE_NEW*`) of a namespace file descriptor.
pub(crate) fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) })
}

/// `setns(fd, nstype)`.
pub(crate) fn setns(fd: BorrowedFd<'_>, nstype: c_int) -> io::Result<()> {
    // SAFETY: setns takes no pointers; the descriptor is borrowed for the call.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// Sets both the soft and the hard limit of `resource` to `value`.
pub(crate) fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit structure read during the call.
    check(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

/// Marks every descriptor from `first` upwards close-on-exec.
pub(crate) fn cloexec_from(first: c_uint) -> io::Result<()> {
    // SAFETY: close_range takes no pointers; CLOSE_RANGE_CLOEXEC only sets the
    // close-on-exec flag and closes nothing.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
}

/// Sets the close-on-exec flag of one descriptor; a closed one is not an
/// error.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD take an integer argument and no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EBADF) => Ok(()),
            _ => Err(error),
        };
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(drop)
}

/// `setsid()`.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// `dup2(old, new)`.
pub(crate) fn dup2(old: BorrowedFd<'_>, new: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes no pointers; replacing `new` (a standard stream) is
    // what the caller asks for.
    check(unsafe { libc::dup2(old.as_raw_fd(), new) }).map(drop)
}

/// A pipe whose both ends are close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `fork()`: `Some(child pid)` in the parent, `None` in the child.
///
/// The child must only make async-signal-safe calls if the parent has other
/// threads; the jailer is single-threaded when it forks.
pub(crate) fn fork() -> io::Result<Option<pid_t>> {
    // SAFETY: fork takes no arguments; the caller upholds the single-thread
    // requirement documented above.
    match check(unsafe { libc::fork() })? {
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Waits for `pid` to end and returns its wait status.
pub(crate) fn wait(pid: pid_t) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(status),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `kill(pid, signal)`.
pub(crate) fn kill(pid: pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `write(fd, bytes)` until everything is written.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for `bytes.len()` bytes.
        let ret = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(ret) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// `read(fd, buf)`, retried on EINTR; returns the byte count (0 at end of
/// file).
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the buffer is writable for `buf.len()` bytes.
        let ret = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(ret) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// Empties the ambient capability set (a no-op before Linux 4.3).
pub(crate) fn clear_ambient_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other.map(drop),
    }
}

/// Drops every supplementary group.
pub(crate) fn clear_groups() -> io::Result<()> {
    // SAFETY: a count of 0 means the list pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// `setresgid(real, effective, saved)`.
pub(crate) fn setresgid(real: gid_t, effective: gid_t, saved: gid_t) -> io::Result<()> {
    // SAFETY: setresgid takes no pointers.
    check(unsafe { libc::setresgid(real, effective, saved) }).map(drop)
}

/// `setresuid(real, effective, saved)`.
pub(crate) fn setresuid(real: uid_t, effective: uid_t, saved: uid_t) -> io::Result<()> {
    // SAFETY: setresuid takes no pointers.
    check(unsafe { libc::setresuid(real, effective, saved) }).map(drop)
}

/// Microseconds on `clock` (`CLOCK_MONOTONIC`, `CLOCK_PROCESS_CPUTIME_ID`);
/// 0 if the clock cannot be read.
pub(crate) fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// `execv(path, argv)` with the current environment; returns only on failure.
pub(crate) fn execv(path: &CStr, args: &[CString]) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `path` is NUL-terminated and `argv` is a NULL-terminated array of
    // pointers to NUL-terminated strings, all alive for the call.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

/// Ends the process at once with `code`, running no destructors and flushing
/// nothing (the forked child's way out).
pub(crate) fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}
