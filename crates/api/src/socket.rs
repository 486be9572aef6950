//! The API socket: created with mode 0600 where nothing else is; a stale
//! socket nobody accepts on (left by a killed process) is replaced, anything
//! else at the path refused; [`SocketGuard`] removes it on exit.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Removes the API socket when dropped.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the API socket at `path` with mode 0600. An existing path is refused
/// unless it is a socket nobody accepts on (a leftover), which is replaced.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketGuard)> {
    let socket_err = |reason: String| Error::ApiSocket {
        path: path.to_owned(),
        reason,
    };
    ember_vmm::host_files::clear_stale_socket(path).map_err(|e| socket_err(e.to_string()))?;
    // SAFETY: umask only changes this process's file-creation mask; it is
    // restored right after the bind, before any other thread exists.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
    let listener = bound.map_err(|e| socket_err(e.to_string()))?;
    let guard = SocketGuard(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| socket_err(format!("cannot set mode 0600: {e}")))?;
    Ok((listener, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        {
            let (_listener, _guard) = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // A second server on the same live socket is refused.
            let err = bind(&path).unwrap_err().to_string();
            assert!(err.contains("another process is listening"), "{err}");
        }
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn stale_sockets_are_replaced_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a leftover socket");
        let (_listener, _guard) = bind(&path).unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
