//! Entering the jail's mount namespace: a private copy of the host's mounts,
//! the jail root bind-mounted onto itself, `pivot_root` into it and the old
//! root detached, so that nothing of the host stays reachable by path.

use std::io;

use crate::dirs::Dir;
use crate::{sys, Error, Result};

fn sys_error(call: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Sys { call, source }
}

/// Moves the calling process into a new mount namespace whose root is `root`.
/// The process must be single-threaded.
pub(crate) fn enter(root: &Dir) -> Result<()> {
    sys::unshare(libc::CLONE_NEWNS).map_err(sys_error(
        "unshare(CLONE_NEWNS) (is the process single-threaded?)",
    ))?;
    // No mount or unmount below may propagate back to the host.
    sys::mount(None, c"/", libc::MS_REC | libc::MS_PRIVATE)
        .map_err(sys_error("making / recursively private"))?;
    let path = sys::cstring(root.path().as_os_str()).map_err(sys_error("naming the jail root"))?;
    // pivot_root needs the new root to be a mount point.
    sys::mount(Some(&path), &path, libc::MS_BIND | libc::MS_REC)
        .map_err(sys_error("bind-mounting the jail root onto itself"))?;
    sys::chdir(&path).map_err(sys_error("chdir to the jail root"))?;
    let here = sys::stat(c".").map_err(sys_error("stat of the jail root"))?;
    let prepared = sys::stat_at(root.fd(), c"").map_err(sys_error("stat of the jail root"))?;
    if (here.st_dev, here.st_ino) != (prepared.st_dev, prepared.st_ino) {
        return Err(Error::Sys {
            call: "entering the jail root",
            source: io::Error::other("the jail root was replaced after it was prepared"),
        });
    }
    // With new_root and put_old both ".", the old root ends up stacked on the
    // new one, and unmounting "." removes it.
    sys::pivot_root(c".", c".").map_err(sys_error("pivot_root"))?;
    sys::umount_detach(c".").map_err(sys_error("unmounting the old root"))?;
    sys::chdir(c"/").map_err(sys_error("chdir to /"))
}
