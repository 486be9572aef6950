//! `--netns PATH`: the network namespace the jailed process joins, such as
//! `/var/run/netns/NAME` made by `ip netns add NAME`. The file is opened and
//! checked when the arguments are validated and joined with `setns` inside
//! the jail.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{sys, Error, Result};

/// An open network-namespace file.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<NetNs> {
        let bad = |source| Error::BadPath {
            flag: "netns",
            path: path.to_owned(),
            source,
        };
        let name = sys::cstring(OsStr::new(path)).map_err(bad)?;
        let fd = sys::open_at(None, &name, libc::O_RDONLY, 0).map_err(bad)?;
        match sys::namespace_type(fd.as_fd()) {
            Ok(libc::CLONE_NEWNET) => Ok(NetNs {
                fd,
                path: path.to_owned(),
            }),
            Ok(_) => Err(Error::Unsuitable {
                flag: "netns",
                path: path.to_owned(),
                reason: "a namespace, but not a network namespace",
            }),
            Err(_) => Err(Error::Unsuitable {
                flag: "netns",
                path: path.to_owned(),
                reason: "not a namespace file (expected e.g. /var/run/netns/NAME)",
            }),
        }
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into the namespace.
    pub fn join(&self) -> Result<()> {
        sys::setns(self.fd.as_fd(), libc::CLONE_NEWNET).map_err(|source| Error::Sys {
            call: "setns(CLONE_NEWNET)",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_network_namespaces_only() {
        let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(ns.path(), Path::new("/proc/self/ns/net"));
        let err = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
        let err = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert!(err.to_string().contains("not a namespace file"), "{err}");
        let err = NetNs::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(matches!(err, Error::BadPath { .. }), "{err}");
    }
}
