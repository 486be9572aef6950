//! Where a snapshot's files land: both paths checked before anything is
//! written, the diff memory file opened without blocking on or writing into
//! something that is not a regular file or is a kernel interface (full
//! snapshots' files are [`PendingFile`]s, which appear whole or not at all).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use ember_snapshot::PendingFile;

use crate::{Error, Result};

fn file_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::SnapshotFile {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The directory entry a snapshot path names: its directory (symbolic links
/// followed, as the kernel follows them) by device and inode, and its own
/// name (which a rename replaces as it is, symbolic link or not).
#[derive(Debug)]
struct Landing {
    dir_dev: u64,
    dir_ino: u64,
    name: OsString,
}

/// Where `path` lands; refuses a path with no file name, in a directory
/// that cannot be reached, or naming a directory.
fn landing(path: &Path) -> Result<Landing> {
    let name = path
        .file_name()
        .ok_or_else(|| file_error("name", path)(std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir).map_err(file_error("reach the directory of", path))?;
    if std::fs::symlink_metadata(path).is_ok_and(|existing| existing.is_dir()) {
        return Err(file_error("replace", path)(
            std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    Ok(Landing {
        dir_dev: dir_meta.dev(),
        dir_ino: dir_meta.ino(),
        name: name.to_owned(),
    })
}

/// Checks the two paths of a snapshot before anything is written: each in
/// a reachable directory and not naming a directory, and neither the same
/// directory entry as the other or as the other's temporary file (the
/// second file would replace the first).
pub(super) fn check_targets(state_path: &Path, mem_path: &Path) -> Result<()> {
    let state = landing(state_path)?;
    let mem = landing(mem_path)?;
    let same_dir = (state.dir_dev, state.dir_ino) == (mem.dir_dev, mem.dir_ino);
    let temporary = |path: &Path| {
        PendingFile::temporary_path(path)
            .ok()
            .and_then(|temp| temp.file_name().map(OsStr::to_owned))
    };
    if same_dir
        && (state.name == mem.name
            || Some(&state.name) == temporary(mem_path).as_ref()
            || Some(&mem.name) == temporary(state_path).as_ref())
    {
        return Err(Error::SnapshotPathsClash(mem_path.to_owned()));
    }
    Ok(())
}

/// A refusal of `path` as the memory file of a diff snapshot.
fn refused_diff_target(path: &Path, reason: &'static str) -> Error {
    file_error("write a diff snapshot into", path)(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        reason,
    ))
}

/// Opens (creating it if missing) the memory file a diff snapshot writes
/// into. Anything at the path that is not a regular file (a FIFO, a device,
/// a socket, a symbolic link) is refused before it is opened, and again
/// after, without blocking; so is a file of a kernel interface file system.
pub(super) fn open_diff_target(path: &Path) -> Result<File> {
    const NOT_REGULAR: &str = "not a regular file";
    if std::fs::symlink_metadata(path).is_ok_and(|existing| !existing.is_file()) {
        return Err(refused_diff_target(path, NOT_REGULAR));
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(file_error("open", path))?;
    if !file
        .metadata()
        .map_err(file_error("inspect", path))?
        .is_file()
    {
        return Err(refused_diff_target(path, NOT_REGULAR));
    }
    if on_kernel_interface(&file).map_err(file_error("inspect", path))? {
        return Err(refused_diff_target(
            path,
            "a kernel interface file (procfs, sysfs, cgroup, debugfs, tracefs, securityfs or bpffs), not storage",
        ));
    }
    Ok(file)
}

/// File systems whose regular files are kernel interfaces rather than
/// storage: guest bytes written there would be handed to the kernel
/// (`/proc/self/mem` would write into the VMM itself).
const KERNEL_INTERFACE_FILE_SYSTEMS: [libc::c_long; 8] = [
    libc::PROC_SUPER_MAGIC,
    libc::SYSFS_MAGIC,
    libc::CGROUP_SUPER_MAGIC,
    libc::CGROUP2_SUPER_MAGIC,
    libc::DEBUGFS_MAGIC,
    libc::TRACEFS_MAGIC,
    libc::SECURITYFS_MAGIC,
    libc::BPF_FS_MAGIC,
];

/// Whether `file` is on one of the [`KERNEL_INTERFACE_FILE_SYSTEMS`].
fn on_kernel_interface(file: &File) -> std::io::Result<bool> {
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call's duration and `stat` is a
    // valid, writable statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(KERNEL_INTERFACE_FILE_SYSTEMS.contains(&stat.f_type))
}

#[cfg(test)]
mod tests;
