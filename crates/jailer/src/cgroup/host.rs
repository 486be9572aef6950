//! The host's cgroup layout: where each hierarchy is mounted (from
//! `/proc/self/mountinfo`) and which cgroup this process is in (from
//! `/proc/self/cgroup`).

use std::path::{Path, PathBuf};

use super::setting::{CgroupVersion, CONTROLLERS};
use crate::mountinfo::{self, Mount};
use crate::{Error, Result};

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    /// Hierarchy id; 0 is the unified (v2) hierarchy.
    hierarchy: u32,
    /// The v1 controllers of the hierarchy (empty for v2).
    controllers: Vec<String>,
    /// The cgroup, relative to the hierarchy's root.
    path: PathBuf,
}

/// The cgroup hierarchies of this host as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHost {
    mounts: Vec<Mount>,
    membership: Vec<Membership>,
}

impl CgroupHost {
    /// Reads this process's view of the host.
    pub fn read() -> Result<CgroupHost> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|source| Error::Fs {
                action: "read",
                path: PathBuf::from(path),
                source,
            })
        };
        Ok(CgroupHost::from_text(
            &read("/proc/self/mountinfo")?,
            &read("/proc/self/cgroup")?,
        ))
    }

    /// Builds the view from the text of `/proc/self/mountinfo` and
    /// `/proc/self/cgroup`.
    pub fn from_text(mountinfo: &str, proc_cgroup: &str) -> CgroupHost {
        let mounts = mountinfo::parse(mountinfo)
            .into_iter()
            .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
            .collect();
        let membership = proc_cgroup
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let hierarchy = fields.next()?.parse().ok()?;
                let controllers = fields.next()?;
                let path = fields.next()?;
                Some(Membership {
                    hierarchy,
                    controllers: controllers
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    path: PathBuf::from(path),
                })
            })
            .collect();
        CgroupHost { mounts, membership }
    }

    /// The version to use when none is asked for: 1 when a v1 hierarchy of
    /// one of [`CONTROLLERS`] is mounted (as Firecracker defaults to), else 2
    /// when the unified hierarchy is mounted.
    pub fn default_version(&self) -> Option<CgroupVersion> {
        let v1 = self
            .mounts
            .iter()
            .any(|m| m.fs_type == "cgroup" && m.options().any(|o| CONTROLLERS.contains(&o)));
        let v2 = self.mounts.iter().any(|m| m.fs_type == "cgroup2");
        match (v1, v2) {
            (true, _) => Some(CgroupVersion::V1),
            (false, true) => Some(CgroupVersion::V2),
            (false, false) => None,
        }
    }

    fn unavailable(version: CgroupVersion, controller: &str, detail: String) -> Error {
        Error::CgroupUnavailable {
            version: version.number(),
            controller: controller.to_owned(),
            detail,
        }
    }

    fn mount(&self, version: CgroupVersion, controller: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| match version {
            CgroupVersion::V1 => m.fs_type == "cgroup" && m.options().any(|o| o == controller),
            CgroupVersion::V2 => m.fs_type == "cgroup2",
        })
    }

    /// Where the hierarchy holding `controller` is mounted; for v2, also checks
    /// that the controller is offered by the root's `cgroup.controllers`.
    pub(crate) fn mount_for(&self, version: CgroupVersion, controller: &str) -> Result<PathBuf> {
        let Some(mount) = self.mount(version, controller) else {
            let what = match version {
                CgroupVersion::V1 => {
                    "no cgroup v1 hierarchy is mounted for it (v1 is the default, as in \
                     Firecracker; give --cgroup-version 2 for the unified hierarchy)"
                }
                CgroupVersion::V2 => "no cgroup2 file system is mounted",
            };
            return Err(Self::unavailable(version, controller, format!(": {what}")));
        };
        if version == CgroupVersion::V2 {
            let list = mount.mount_point.join("cgroup.controllers");
            let offered = std::fs::read_to_string(&list).map_err(|source| Error::Fs {
                action: "read",
                path: list.clone(),
                source,
            })?;
            if !offered.split_whitespace().any(|c| c == controller) {
                return Err(Self::unavailable(
                    version,
                    controller,
                    format!(
                        " in {} (it may be bound to a v1 hierarchy; try --cgroup-version 1)",
                        list.display()
                    ),
                ));
            }
        }
        Ok(mount.mount_point.clone())
    }

    /// The controllers of the v1 hierarchy mounted at `mount`.
    pub(crate) fn v1_controllers<'a>(&'a self, mount: &'a Path) -> impl Iterator<Item = &'a str> {
        self.mounts
            .iter()
            .filter(move |m| m.fs_type == "cgroup" && m.mount_point == mount)
            .flat_map(Mount::options)
    }

    /// The directory of the cgroup this process is in, in the hierarchy of
    /// `controller` mounted at `mount_point`.
    pub(crate) fn origin(
        &self,
        version: CgroupVersion,
        controller: &str,
        mount_point: &Path,
    ) -> Result<PathBuf> {
        let membership = self.membership.iter().find(|m| match version {
            CgroupVersion::V1 => m.controllers.iter().any(|c| c == controller),
            CgroupVersion::V2 => m.hierarchy == 0 && m.controllers.is_empty(),
        });
        let mount = self
            .mount(version, controller)
            .filter(|m| m.mount_point == mount_point);
        let relative = match (membership, mount) {
            (Some(membership), Some(mount)) => membership.path.strip_prefix(&mount.root).ok(),
            _ => None,
        };
        match relative {
            Some(relative) => Ok(mount_point.join(relative)),
            None => Err(Self::unavailable(
                version,
                controller,
                format!(
                    ": this process's cgroup is not visible under {} (see /proc/self/cgroup)",
                    mount_point.display()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    const PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/work/a
1:cpu,cpuacct:/
0::/
";

    fn host() -> CgroupHost {
        CgroupHost::from_text(MOUNTINFO, PROC_CGROUP)
    }

    #[test]
    fn finds_v1_hierarchies() {
        let host = host();
        assert_eq!(host.default_version(), Some(CgroupVersion::V1));
        assert_eq!(
            host.mount_for(CgroupVersion::V1, "cpu").unwrap(),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        let err = host.mount_for(CgroupVersion::V1, "cpuset").unwrap_err();
        assert!(err.to_string().contains("no cgroup v1 hierarchy"), "{err}");
        let mount = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(
            host.v1_controllers(&mount).collect::<Vec<_>>(),
            ["rw", "cpu", "cpuacct"]
        );
    }

    #[test]
    fn finds_this_process_cgroup() {
        let host = host();
        let memory = PathBuf::from("/sys/fs/cgroup/memory");
        assert_eq!(
            host.origin(CgroupVersion::V1, "memory", &memory).unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/work/a")
        );
        let unified = PathBuf::from("/sys/fs/cgroup/unified");
        assert_eq!(
            host.origin(CgroupVersion::V2, "pids", &unified).unwrap(),
            unified
        );
    }

    #[test]
    fn v2_only_hosts_default_to_v2() {
        let host = CgroupHost::from_text(
            "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
            "0::/user.slice\n",
        );
        assert_eq!(host.default_version(), Some(CgroupVersion::V2));
        let err = host.mount_for(CgroupVersion::V1, "pids").unwrap_err();
        assert!(err.to_string().contains("v1"), "{err}");
        assert_eq!(CgroupHost::from_text("", "").default_version(), None);
    }

    #[test]
    fn v2_checks_the_offered_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let mountinfo = format!(
            "30 1 0:26 / {} rw - cgroup2 cgroup2 rw\n",
            tmp.path().display()
        );
        let host = CgroupHost::from_text(&mountinfo, "0::/\n");
        assert_eq!(
            host.mount_for(CgroupVersion::V2, "memory").unwrap(),
            tmp.path()
        );
        let err = host.mount_for(CgroupVersion::V2, "pids").unwrap_err();
        assert!(err.to_string().contains("cgroup.controllers"), "{err}");
    }
}
