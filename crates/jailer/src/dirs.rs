//! The jail's files on the host, created one component at a time through
//! directory descriptors: below the chroot base no symbolic link is followed,
//! and everything created is recorded in the undo list as it is created.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::undo::{Step, Undo};
use crate::{sys, Error, Result};

/// Flags for opening a directory we act in: readable (so that `fchown` and
/// `fchmod` work on it) and never through a symbolic link.
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Permission bits of the program's copy in the jail: readable and executable
/// by the jailed user, writable by no one but root.
pub(crate) const EXEC_MODE: u32 = 0o755;

fn fs_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Fs {
        action,
        path: path.to_owned(),
        source,
    }
}

fn name_of(name: &OsStr, path: &Path) -> Result<CString> {
    sys::cstring(name).map_err(fs_error("use", path))
}

/// An open directory and the host path it was reached by.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    fd: Rc<OwnedFd>,
    path: PathBuf,
}

impl Dir {
    /// Opens an existing directory; symbolic links in `path` are followed (it
    /// is the operator's own path, such as a cgroup mount or the chroot base).
    pub(crate) fn open(path: &Path) -> Result<Dir> {
        let name = name_of(path.as_os_str(), path)?;
        let fd = sys::open_at(None, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(fs_error("open directory", path))?;
        Ok(Dir {
            fd: Rc::new(fd),
            path: path.to_owned(),
        })
    }

    /// Opens `path`, creating the components missing below its longest
    /// existing ancestor (mode 0755 less the umask).
    pub(crate) fn create_all(path: &Path, undo: &mut Undo) -> Result<Dir> {
        let mut existing = path;
        let mut missing = Vec::new();
        while !existing.is_dir() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name);
                    existing = parent;
                }
                _ => break,
            }
        }
        let mut dir = Dir::open(existing)?;
        for name in missing.into_iter().rev() {
            dir = dir.subdir(name, 0o755, undo)?.0;
        }
        Ok(dir)
    }

    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Records in `undo` that the entry `name` (host path `path`) was
    /// created here, so that it is removed again.
    fn record_created(&self, name: CString, is_dir: bool, path: PathBuf, undo: &mut Undo) {
        undo.push(Step::Remove {
            dir: self.fd.clone(),
            name,
            is_dir,
            path,
        });
    }

    /// Creates the regular file `name` (host path `path`), which must not
    /// exist and is never reached through a symbolic link, with permission
    /// bits `mode` less the umask, and records it.
    fn create_new(
        &self,
        name: CString,
        path: &Path,
        mode: u32,
        undo: &mut Undo,
    ) -> Result<OwnedFd> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let file =
            sys::open_at(Some(self.fd()), &name, flags, mode).map_err(fs_error("create", path))?;
        self.record_created(name, false, path.to_owned(), undo);
        Ok(file)
    }

    /// Opens sub-directory `name`, creating it with `mode` (less the umask) if
    /// it does not exist; the flag tells whether it was created. An existing
    /// entry that is not a directory, or is a symbolic link, is an error.
    pub(crate) fn subdir(&self, name: &OsStr, mode: u32, undo: &mut Undo) -> Result<(Dir, bool)> {
        let path = self.path.join(name);
        let cname = name_of(name, &path)?;
        let created = match sys::mkdir_at(self.fd(), &cname, mode) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(fs_error("create directory", &path)(e)),
        };
        if created {
            self.record_created(cname.clone(), true, path.clone(), undo);
        }
        let fd = sys::open_at(Some(self.fd()), &cname, DIR_FLAGS, 0).map_err(fs_error(
            "open directory (it must not be a symbolic link)",
            &path,
        ))?;
        Ok((
            Dir {
                fd: Rc::new(fd),
                path,
            },
            created,
        ))
    }

    /// Creates the character device `name` (`major:minor`), owned by
    /// `uid:gid` with permission bits `mode`.
    pub(crate) fn mknod(
        &self,
        name: &CStr,
        (major, minor): (u32, u32),
        owner: (u32, u32),
        mode: u32,
        undo: &mut Undo,
    ) -> Result<()> {
        let path = self.path.join(OsStr::from_bytes(name.to_bytes()));
        sys::mknod_char_at(self.fd(), name, 0o600, major, minor)
            .map_err(fs_error("create device node", &path))?;
        self.record_created(name.to_owned(), false, path.clone(), undo);
        sys::chown_chmod_at(self.fd(), name, owner.0, owner.1, mode)
            .map_err(fs_error("set owner and mode of", &path))
    }

    /// Puts a copy of the program to jail here as `name`, owned by the
    /// jailer's user (root) with mode [`EXEC_MODE`], as Firecracker's jailer
    /// does. Never a hard link: the jail's file is its own inode, so nothing
    /// done to it (an operator's `chown -R` of the jail, a write by the jailed
    /// process) reaches the host's binary. Set-id bits are never copied.
    pub(crate) fn place_exec(&self, name: &OsStr, source: &Path, undo: &mut Undo) -> Result<()> {
        let path = self.path.join(name);
        let cname = name_of(name, &path)?;
        let target = self.create_new(cname, &path, 0o700, undo)?;
        let mut input = File::open(source).map_err(fs_error("open", source))?;
        let mut output = File::from(target);
        io::copy(&mut input, &mut output).map_err(fs_error("copy the exec file to", &path))?;
        // An explicit mode, not less the umask: the jailed user (not the
        // owner) must be able to execute it.
        output
            .set_permissions(std::fs::Permissions::from_mode(EXEC_MODE))
            .map_err(fs_error("set the mode of", &path))
    }

    /// Makes this directory owned by `uid:gid` with permission bits `mode`,
    /// recording its previous owner and mode.
    pub(crate) fn own(&self, uid: u32, gid: u32, mode: u32, undo: &mut Undo) -> Result<()> {
        let before = sys::stat_at(self.fd(), c"").map_err(fs_error("inspect", &self.path))?;
        let old_mode = before.st_mode & 0o7777;
        if (before.st_uid, before.st_gid, old_mode) == (uid, gid, mode) {
            return Ok(());
        }
        undo.push(Step::Restore {
            dir: self.fd.clone(),
            uid: before.st_uid,
            gid: before.st_gid,
            mode: old_mode,
            path: self.path.clone(),
        });
        sys::chown_chmod_at(self.fd(), c"", uid, gid, mode)
            .map_err(fs_error("set owner and mode of", &self.path))
    }

    /// Creates the regular file `name` (mode 0644), which must not exist, with
    /// `contents`.
    pub(crate) fn create_file(&self, name: &OsStr, contents: &[u8], undo: &mut Undo) -> Result<()> {
        let path = self.path.join(name);
        let cname = name_of(name, &path)?;
        let file = self.create_new(cname, &path, 0o644, undo)?;
        sys::write_all(file.as_fd(), contents).map_err(fs_error("write", &path))
    }
}

/// Checks, creating nothing, that `relative` can be created or reused below
/// the existing directory `base`: each existing component must be a real
/// directory (not a symbolic link), and the last one must not exist at all
/// when `must_be_new`.
pub(crate) fn check_below(base: &Path, relative: &Path, must_be_new: bool) -> Result<()> {
    let mut path = base.to_owned();
    let components: Vec<Component<'_>> = relative.components().collect();
    for (index, component) in components.iter().enumerate() {
        path.push(component);
        let last = index + 1 == components.len();
        match std::fs::symlink_metadata(&path) {
            Ok(_) if last && must_be_new => return Err(Error::AlreadyExists(path)),
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::Fs {
                    action: "use",
                    path,
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a directory (or a symbolic link)",
                    ),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fs_error("inspect", &path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn create_all_records_only_what_it_creates() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        let mut undo = Undo::new();
        let dir = Dir::create_all(&tmp.path().join("a/b/c"), &mut undo).unwrap();
        assert_eq!(dir.path(), tmp.path().join("a/b/c"));
        assert!(tmp.path().join("a/b/c").is_dir());
        assert_eq!(undo.len(), 2);
        drop(undo);
        assert!(!tmp.path().join("a/b").exists());
        assert!(tmp.path().join("a").is_dir());
    }

    #[test]
    fn subdir_refuses_symbolic_links() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("dev")).unwrap();
        let mut undo = Undo::new();
        let root = Dir::open(tmp.path()).unwrap();
        let err = root
            .subdir(OsStr::new("dev"), 0o700, &mut undo)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(undo.is_empty());
    }

    #[test]
    fn place_exec_copies_into_a_new_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("prog");
        std::fs::write(&source, b"#!/bin/sh\necho jailed\n").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o4700)).unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        let mut undo = Undo::new();
        let root = Dir::open(&tmp.path().join("root")).unwrap();
        root.place_exec(OsStr::new("prog"), &source, &mut undo)
            .unwrap();
        let placed_path = tmp.path().join("root/prog");
        let placed = std::fs::metadata(&placed_path).unwrap();
        let original = std::fs::metadata(&source).unwrap();
        assert_ne!(
            (placed.dev(), placed.ino()),
            (original.dev(), original.ino()),
            "a copy, not a hard link"
        );
        assert_eq!(original.nlink(), 1);
        assert_eq!(
            std::fs::read(&placed_path).unwrap(),
            std::fs::read(&source).unwrap()
        );
        assert_eq!(
            placed.mode() & 0o7777,
            EXEC_MODE,
            "no set-id bit, executable by all"
        );
        // Changing the jail's copy leaves the host's program alone.
        std::os::unix::fs::chown(&placed_path, Some(4321), Some(8765)).unwrap();
        assert_eq!(std::fs::metadata(&source).unwrap().uid(), original.uid());
        drop(undo);
        assert!(!placed_path.exists());
        assert!(source.exists());
    }

    #[test]
    fn create_file_refuses_an_existing_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"old").unwrap();
        let mut undo = Undo::new();
        let dir = Dir::open(tmp.path()).unwrap();
        assert!(dir.create_file(OsStr::new("f"), b"new", &mut undo).is_err());
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"old");
        dir.create_file(OsStr::new("g"), b"42", &mut undo).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("g")).unwrap(), b"42");
    }

    #[test]
    fn check_below_finds_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("x/root")).unwrap();
        std::fs::write(tmp.path().join("x/root/prog"), b"").unwrap();
        check_below(tmp.path(), Path::new("x/root/dev/kvm"), true).unwrap();
        let err = check_below(tmp.path(), Path::new("x/root/prog"), true).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        let err = check_below(tmp.path(), Path::new("x/root/prog/y"), false).unwrap_err();
        let err = crate::with_cause(&err);
        assert!(err.contains("not a directory"), "{err}");
    }
}
