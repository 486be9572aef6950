//! The undo list: everything the jail creates on the host is recorded here as
//! it is created, and removed again, newest first, if a later step fails.
//!
//! Steps hold descriptors of the directories they act in, so they still work
//! after the process has moved into the jail's mount namespace and no longer
//! sees the host's paths.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;

use crate::sys;

/// One thing to take back.
#[derive(Debug)]
pub(crate) enum Step {
    /// Remove the file or empty directory `name` from `dir`.
    Remove {
        /// The directory holding it.
        dir: Rc<OwnedFd>,
        /// Its name there.
        name: CString,
        /// Whether it is a directory.
        is_dir: bool,
        /// Its full path, for reports.
        path: PathBuf,
    },
    /// Give a directory that existed before back its owner and mode.
    Restore {
        /// The directory itself.
        dir: Rc<OwnedFd>,
        /// Its previous owner.
        uid: u32,
        /// Its previous group.
        gid: u32,
        /// Its previous permission bits.
        mode: u32,
        /// Its path, for reports.
        path: PathBuf,
    },
    /// Move this process back to the cgroup it came from, so that the cgroup
    /// it joined can be removed.
    LeaveCgroup {
        /// `cgroup.procs` of the original cgroup, open for writing.
        procs: OwnedFd,
        /// Its path, for reports.
        path: PathBuf,
    },
}

impl Step {
    fn run(self) -> Result<(), String> {
        match self {
            Step::Remove {
                dir,
                name,
                is_dir,
                path,
            } => sys::unlink_at(dir.as_fd(), &name, is_dir)
                .map_err(|e| format!("cannot remove {}: {e}", path.display())),
            Step::Restore {
                dir,
                uid,
                gid,
                mode,
                path,
            } => sys::chown_chmod_at(dir.as_fd(), c"", uid, gid, mode)
                .map_err(|e| format!("cannot restore owner and mode of {}: {e}", path.display())),
            Step::LeaveCgroup { procs, path } => sys::write_all(procs.as_fd(), b"0")
                .map_err(|e| format!("cannot move back to {}: {e}", path.display())),
        }
    }
}

/// Steps to take back if the jail cannot be completed.
///
/// Dropping an `Undo` runs the remaining steps, newest first, so an early
/// return with `?` cleans up by itself; [`Undo::commit`] forgets them once the
/// jail is complete. Undoing is best effort: a step that fails (for example a
/// directory someone else put a file into meanwhile) is skipped and reported
/// by [`Undo::rollback`].
#[derive(Default)]
pub struct Undo {
    steps: Vec<Step>,
}

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Undo")
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl Undo {
    /// An empty list.
    pub fn new() -> Undo {
        Undo::default()
    }

    /// Records a step.
    pub(crate) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// How many steps are recorded.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Keeps everything that was created: the steps are forgotten.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Takes everything back now, newest first, and returns a description of
    /// each step that failed.
    pub fn rollback(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some(step) = self.steps.pop() {
            if let Err(failure) = step.run() {
                failures.push(failure);
            }
        }
        failures
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Nobody is left to report to: the caller's error explains the failure.
        let _failures = self.rollback();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn open_dir(path: &std::path::Path) -> Rc<OwnedFd> {
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        Rc::new(sys::open_at(None, &name, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap())
    }

    #[test]
    fn drop_removes_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::write(tmp.path().join("a/f"), b"x").unwrap();
        let top = open_dir(tmp.path());
        let inner = open_dir(&tmp.path().join("a"));
        let mut undo = Undo::new();
        undo.push(Step::Remove {
            dir: top,
            name: CString::new("a").unwrap(),
            is_dir: true,
            path: tmp.path().join("a"),
        });
        undo.push(Step::Remove {
            dir: inner,
            name: CString::new("f").unwrap(),
            is_dir: false,
            path: tmp.path().join("a/f"),
        });
        assert_eq!(undo.len(), 2);
        drop(undo);
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn commit_keeps_everything() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let mut undo = Undo::new();
        undo.push(Step::Remove {
            dir: open_dir(tmp.path()),
            name: CString::new("f").unwrap(),
            is_dir: false,
            path: tmp.path().join("f"),
        });
        undo.commit();
        assert!(tmp.path().join("f").exists());
    }

    #[test]
    fn rollback_reports_failures_and_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("busy")).unwrap();
        std::fs::write(tmp.path().join("busy/other"), b"x").unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let top = open_dir(tmp.path());
        let mut undo = Undo::new();
        undo.push(Step::Remove {
            dir: top.clone(),
            name: CString::new("f").unwrap(),
            is_dir: false,
            path: tmp.path().join("f"),
        });
        undo.push(Step::Remove {
            dir: top,
            name: CString::new("busy").unwrap(),
            is_dir: true,
            path: tmp.path().join("busy"),
        });
        let failures = undo.rollback();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("busy"), "{failures:?}");
        assert!(!tmp.path().join("f").exists());
        assert!(undo.is_empty());
    }
}
