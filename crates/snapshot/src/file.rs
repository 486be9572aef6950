//! Reading and writing state files on disk: atomic replacement, and reads
//! that never block on or swallow something that is not a regular file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest state file [`read_state_file`] accepts (64 MiB).
pub const MAX_STATE_FILE_SIZE: u64 = 64 << 20;

fn io_error<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A file that replaces `path` whole, or not at all: it is written under a
/// temporary name beside `path` ([`PendingFile::temporary_path`]), renamed
/// over `path` by [`PendingFile::commit`], and removed if dropped before.
/// Several pending files can be prepared and then committed one after the
/// other, so that a failure while writing any of them changes no path.
#[derive(Debug)]
pub struct PendingFile {
    temp: PathBuf,
    path: PathBuf,
    file: File,
    committed: bool,
}

impl PendingFile {
    /// The temporary name that stands for `path` until a commit:
    /// `.NAME.PID.tmp` in the same directory (one per process and path: a
    /// leftover of this process is replaced).
    pub fn temporary_path(path: &Path) -> Result<PathBuf> {
        let name = path.file_name().ok_or_else(|| Error::Io {
            action: "write to",
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let mut temp = OsString::from(".");
        temp.push(name);
        temp.push(format!(".{}.tmp", std::process::id()));
        Ok(path.with_file_name(temp))
    }

    /// Creates the (empty) temporary file for `path`.
    pub fn create(path: &Path) -> Result<PendingFile> {
        let temp = Self::temporary_path(path)?;
        let _ = std::fs::remove_file(&temp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(io_error("create", path))?;
        Ok(PendingFile {
            temp,
            path: path.to_owned(),
            file,
            committed: false,
        })
    }

    /// A pending replacement of `path` holding `bytes`, synced to disk.
    pub fn with_bytes(path: &Path, bytes: &[u8]) -> Result<PendingFile> {
        let mut pending = Self::create(path)?;
        pending
            .file
            .write_all(bytes)
            .and_then(|()| pending.file.sync_all())
            .map_err(io_error("write", path))?;
        Ok(pending)
    }

    /// The open temporary file, to write the content into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Renames the temporary file over the path.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.path)
            .map_err(io_error("rename a temporary file to", &self.path))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` so that the path holds either its old content or
/// all of `bytes` (a [`PendingFile`], synced, then committed), and makes the
/// rename durable by syncing the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    PendingFile::with_bytes(path, bytes)?.commit()?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the directory of", path))
}

/// Reads a state file, refusing (without blocking) anything that is not a
/// regular file, and files over [`MAX_STATE_FILE_SIZE`].
///
/// # Example
///
/// ```
/// use ember_snapshot::{read_state_file, write_atomic};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("vm.state");
/// write_atomic(&path, b"old")?;
/// write_atomic(&path, b"new")?;
/// assert_eq!(read_state_file(&path)?, b"new");
/// // Only the file is left in the directory: no temporary beside it.
/// assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
/// // A directory is not a state file.
/// assert!(read_state_file(dir.path()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_state_file(path: &Path) -> Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error("open", path))?;
    let metadata = file.metadata().map_err(io_error("inspect", path))?;
    let kind = metadata.file_type();
    let not_regular = |kind| {
        Err(Error::NotRegularFile {
            path: PathBuf::from(path),
            kind,
        })
    };
    if kind.is_dir() {
        return not_regular("directory");
    }
    if kind.is_fifo() {
        return not_regular("FIFO");
    }
    if kind.is_char_device() {
        return not_regular("character device");
    }
    if kind.is_block_device() {
        return not_regular("block device");
    }
    if kind.is_socket() {
        return not_regular("socket");
    }
    let too_large = |size| Error::StateFileTooLarge {
        path: path.to_owned(),
        size,
    };
    if metadata.len() > MAX_STATE_FILE_SIZE {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::new();
    // One byte past the cap tells a file that grew since `fstat`.
    file.take(MAX_STATE_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MAX_STATE_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_file_appears_whole_on_commit_and_not_at_all_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.snap");
        std::fs::write(&path, b"old").unwrap();
        drop(PendingFile::with_bytes(&path, b"new").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec![OsString::from("vm.snap")]);
        PendingFile::with_bytes(&path, b"new")
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(entries(dir.path()), vec![OsString::from("vm.snap")]);
    }

    fn entries(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.state");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        assert_eq!(entries(dir.path()), vec![OsString::from("vm.state")]);
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the path: the rename fails after the write.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let err = write_atomic(&path, b"bytes").unwrap_err();
        assert!(err.to_string().contains("cannot rename"), "{err}");
        assert_eq!(entries(dir.path()), vec![OsString::from("taken")]);
        let missing = dir.path().join("no-such-dir").join("f");
        assert!(write_atomic(&missing, b"x").is_err());
    }

    #[test]
    fn reads_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"state").unwrap();
        assert_eq!(read_state_file(&path).unwrap(), b"state");
    }

    #[test]
    fn refuses_directories_fifos_devices_and_huge_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_state_file(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{err}"
        );

        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read_state_file(&fifo).unwrap_err();
        assert!(
            matches!(err, Error::NotRegularFile { kind: "FIFO", .. }),
            "{err}"
        );

        let err = read_state_file(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotRegularFile {
                    kind: "character device",
                    ..
                }
            ),
            "{err}"
        );

        let huge = dir.path().join("huge");
        File::create(&huge)
            .unwrap()
            .set_len(MAX_STATE_FILE_SIZE + 1)
            .unwrap();
        let err = read_state_file(&huge).unwrap_err();
        assert!(matches!(err, Error::StateFileTooLarge { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));

        let err = read_state_file(&dir.path().join("absent")).unwrap_err();
        assert!(err.to_string().starts_with("cannot open"), "{err}");
    }
}
