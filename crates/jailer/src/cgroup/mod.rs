//! cgroups for the jailed process, v1 or v2.
//!
//! `--cgroup KEY=VALUE` writes VALUE into
//! `<mount>/<parent>/<id>/KEY`, where `<mount>` is the hierarchy of KEY's
//! controller (v1) or the unified hierarchy (v2) and `<parent>` is
//! `--parent-cgroup` (default: the exec file's name), as with Firecracker's
//! jailer; the jailed process then joins that
//! cgroup. Only the `cpu`, `cpuset`, `memory` and `pids` controllers are
//! accepted. Nothing is created when no `--cgroup` is given.
//!
//! [`CgroupPlan::new`] validates everything against the host's mounts without
//! touching anything; [`CgroupPlan::create`] creates the directories (recorded
//! for undo) and writes the values; [`Cgroups::attach`] moves the calling
//! process in.

mod host;
mod setting;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use host::CgroupHost;
pub use setting::{parse_parent, CgroupSetting, CgroupVersion, CONTROLLERS};

use crate::dirs::Dir;
use crate::undo::{Step, Undo};
use crate::{sys, Error, Result};

/// The jail's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    /// `<parent>/<id>` below the mount.
    relative: PathBuf,
    /// Controllers the settings use (enabled along the path in v2).
    controllers: Vec<String>,
    /// What to write, in order.
    settings: Vec<CgroupSetting>,
    /// The cgroup this process is in now, in this hierarchy.
    origin: PathBuf,
    /// A v1 hierarchy with the cpuset controller: new levels must copy
    /// `cpuset.cpus` and `cpuset.mems` from their parent before use.
    cpuset_v1: bool,
}

/// Validated cgroup work for one jail: which directories to create and what to
/// write in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    version: CgroupVersion,
    groups: Vec<Group>,
}

impl CgroupPlan {
    /// Plans the cgroups for `settings` (which must not be empty) in
    /// `<parent>/<id>`, checking that each controller is available on `host`
    /// for `version`.
    pub fn new(
        host: &CgroupHost,
        version: CgroupVersion,
        settings: &[CgroupSetting],
        parent: &Path,
        id: &str,
    ) -> Result<CgroupPlan> {
        let relative = parent.join(id);
        let mut groups: Vec<Group> = Vec::new();
        for setting in settings {
            let controller = setting.controller();
            let mount = host.mount_for(version, controller)?;
            let group = match groups.iter_mut().find(|g| g.mount == mount) {
                Some(group) => group,
                None => {
                    let origin = host.origin(version, controller, &mount)?;
                    let cpuset_v1 = version == CgroupVersion::V1
                        && host.v1_controllers(&mount).any(|c| c == "cpuset");
                    groups.push(Group {
                        mount,
                        relative: relative.clone(),
                        controllers: Vec::new(),
                        settings: Vec::new(),
                        origin,
                        cpuset_v1,
                    });
                    let last = groups.len() - 1;
                    &mut groups[last]
                }
            };
            if !group.controllers.iter().any(|c| c == controller) {
                group.controllers.push(controller.to_owned());
            }
            group.settings.push(setting.clone());
        }
        Ok(CgroupPlan { version, groups })
    }

    /// The cgroup version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The jail's cgroup directory in each hierarchy used.
    pub fn leaves(&self) -> Vec<PathBuf> {
        self.groups
            .iter()
            .map(|g| g.mount.join(&g.relative))
            .collect()
    }

    /// Creates the cgroup directories (recording each new one in `undo`) and
    /// writes the settings. Directories that already exist are reused.
    pub fn create(&self, undo: &mut Undo) -> Result<Cgroups> {
        let mut joins = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut dir = Dir::open(&group.mount)?;
            for component in group.relative.iter() {
                if self.version == CgroupVersion::V2 {
                    enable_controllers(&dir, &group.controllers)?;
                }
                let (child, created) = dir.subdir(component, 0o755, undo)?;
                if created && group.cpuset_v1 {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        inherit(&dir, &child, file)?;
                    }
                }
                dir = child;
            }
            for setting in &group.settings {
                write(&dir, setting.key(), setting.value())?;
            }
            let procs = open_procs(&dir.path().join("cgroup.procs"))?;
            let origin_path = group.origin.join("cgroup.procs");
            let origin = open_procs(&origin_path)?;
            joins.push(Join {
                procs,
                path: dir.path().to_owned(),
                origin,
                origin_path,
            });
        }
        Ok(Cgroups { joins })
    }
}

/// The created cgroups, ready to be joined.
#[derive(Debug)]
pub struct Cgroups {
    joins: Vec<Join>,
}

#[derive(Debug)]
struct Join {
    procs: OwnedFd,
    path: PathBuf,
    origin: OwnedFd,
    origin_path: PathBuf,
}

impl Cgroups {
    /// Moves the calling process (all its threads) into every jail cgroup;
    /// `undo` moves it back first, so the directories can then be removed.
    /// Works from inside the jail: the files were opened by [`CgroupPlan::create`].
    pub fn attach(self, undo: &mut Undo) -> Result<()> {
        for join in self.joins {
            undo.push(Step::LeaveCgroup {
                procs: join.origin,
                path: join.origin_path,
            });
            // "0" names the writing process, whatever PID namespace it is in.
            sys::write_all(join.procs.as_fd(), b"0").map_err(|source| Error::CgroupWrite {
                value: "0".to_owned(),
                path: join.path.join("cgroup.procs"),
                source,
            })?;
        }
        Ok(())
    }
}

fn open_procs(path: &Path) -> Result<OwnedFd> {
    let name = sys::cstring(path.as_os_str()).map_err(|source| Error::Fs {
        action: "use",
        path: path.to_owned(),
        source,
    })?;
    sys::open_at(None, &name, libc::O_WRONLY, 0).map_err(|source| Error::Fs {
        action: "open",
        path: path.to_owned(),
        source,
    })
}

/// Writes `value` into the cgroup file `name` of `dir` in one `write`.
fn write(dir: &Dir, name: &str, value: &str) -> Result<()> {
    let path = dir.path().join(name);
    let error = |source| Error::CgroupWrite {
        value: value.to_owned(),
        path: path.clone(),
        source,
    };
    let cname = sys::cstring(OsStr::new(name)).map_err(error)?;
    let file = sys::open_at(Some(dir.fd()), &cname, libc::O_WRONLY | libc::O_NOFOLLOW, 0)
        .map_err(error)?;
    sys::write_all(file.as_fd(), value.as_bytes()).map_err(error)
}

/// Reads the cgroup file `name` of `dir`, trimmed.
fn read(dir: &Dir, name: &str) -> Result<String> {
    let path = dir.path().join(name);
    let error = |source| Error::Fs {
        action: "read",
        path: path.clone(),
        source,
    };
    let cname = sys::cstring(OsStr::new(name)).map_err(error)?;
    let fd = sys::open_at(Some(dir.fd()), &cname, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
        .map_err(error)?;
    let mut text = String::new();
    File::from(fd).read_to_string(&mut text).map_err(error)?;
    Ok(text.trim().to_owned())
}

/// Copies a v1 cpuset file from `parent` into the new `child` level (an empty
/// cpuset refuses every task).
fn inherit(parent: &Dir, child: &Dir, file: &str) -> Result<()> {
    let value = read(parent, file)?;
    if value.is_empty() {
        return Err(Error::Fs {
            action: "inherit",
            path: parent.path().join(file),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the parent cgroup's value is empty; set it first",
            ),
        });
    }
    write(child, file, &value)
}

/// Enables `controllers` for the children of the v2 cgroup `dir`.
fn enable_controllers(dir: &Dir, controllers: &[String]) -> Result<()> {
    let enabled = read(dir, "cgroup.subtree_control")?;
    for controller in controllers {
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(dir, "cgroup.subtree_control", &format!("+{controller}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
