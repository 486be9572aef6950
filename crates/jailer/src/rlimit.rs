//! `--resource-limit fsize=N` and `no-file=N`: the jailed process's file-size
//! and open-file limits (soft and hard), as Firecracker's jailer sets them.

use crate::{sys, Error, Result};

/// The open-file limit when `no-file` is not given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The lowest `no-file` accepted. `ember` with the API, a log and a metrics
/// file, two drives (one rate-limited) and vsock uses descriptors 0 to 41
/// with one vCPU and 0 to 111 with 32 (Ember's most: each vCPU takes two),
/// before any API client or vsock connection; a network interface adds about
/// seven. Below this, such a VM fails to start or to accept connections.
pub const MIN_NO_FILE: u64 = 128;

/// A limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `fsize`: the largest file the process may write (`RLIMIT_FSIZE`), bytes.
    FileSize,
    /// `no-file`: one more than the largest descriptor number
    /// (`RLIMIT_NOFILE`).
    NoFile,
}

impl Resource {
    /// The flag's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Resource::FileSize => "fsize",
            Resource::NoFile => "no-file",
        }
    }

    fn id(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::NoFile => libc::RLIMIT_NOFILE,
        }
    }
}

/// One limit: soft and hard are both set to `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    /// The resource.
    pub resource: Resource,
    /// The limit.
    pub value: u64,
}

impl ResourceLimit {
    /// Parses `fsize=N` or `no-file=N` (N decimal).
    pub fn parse(arg: &str) -> Result<ResourceLimit> {
        let invalid = |reason: &str| Error::InvalidResourceLimit {
            value: arg.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| invalid("expected fsize=N or no-file=N"))?;
        let resource = match name {
            "fsize" => Resource::FileSize,
            "no-file" => Resource::NoFile,
            _ => return Err(invalid("the resource must be fsize or no-file")),
        };
        let value = value
            .parse()
            .map_err(|_| invalid("the limit must be a decimal number"))?;
        if resource == Resource::NoFile && value < MIN_NO_FILE {
            return Err(invalid(&format!(
                "the VMM needs at least {MIN_NO_FILE} open files (a VM with 32 vCPUs, a few \
                 devices and the API uses about 120)"
            )));
        }
        Ok(ResourceLimit { resource, value })
    }

    /// Applies the limit to the calling process.
    pub fn apply(&self) -> Result<()> {
        sys::set_rlimit(self.resource.id(), self.value).map_err(|source| Error::Sys {
            call: match self.resource {
                Resource::FileSize => "setrlimit(RLIMIT_FSIZE)",
                Resource::NoFile => "setrlimit(RLIMIT_NOFILE)",
            },
            source,
        })
    }
}

/// Parses every `--resource-limit`, refusing a resource given twice, and adds
/// `no-file=2048` when `no-file` is absent.
pub fn parse_all<S: AsRef<str>>(args: &[S]) -> Result<Vec<ResourceLimit>> {
    let mut limits: Vec<ResourceLimit> = Vec::with_capacity(args.len() + 1);
    for arg in args {
        let limit = ResourceLimit::parse(arg.as_ref())?;
        if limits.iter().any(|l| l.resource == limit.resource) {
            return Err(Error::InvalidResourceLimit {
                value: arg.as_ref().to_owned(),
                reason: "this resource is limited twice".to_owned(),
            });
        }
        limits.push(limit);
    }
    if !limits.iter().any(|l| l.resource == Resource::NoFile) {
        limits.push(ResourceLimit {
            resource: Resource::NoFile,
            value: DEFAULT_NO_FILE,
        });
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_and_adds_the_default() {
        let limits = parse_all(&["fsize=1048576"]).unwrap();
        assert_eq!(
            limits,
            [
                ResourceLimit {
                    resource: Resource::FileSize,
                    value: 1 << 20
                },
                ResourceLimit {
                    resource: Resource::NoFile,
                    value: DEFAULT_NO_FILE
                },
            ]
        );
        let limits = parse_all(&["no-file=128"]).unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].value, MIN_NO_FILE);
    }

    #[test]
    fn refuses_bad_syntax() {
        for (arg, why) in [
            ("fsize", "fsize=N"),
            ("cpu=1", "fsize or no-file"),
            ("no-file=-1", "decimal"),
            ("no-file=1k", "decimal"),
            ("no-file=", "decimal"),
            ("fsize=18446744073709551616", "decimal"),
            ("no-file=0", "at least 128 open files"),
            ("no-file=127", "at least 128 open files"),
        ] {
            let err = ResourceLimit::parse(arg).unwrap_err().to_string();
            assert!(err.contains(why), "{arg}: {err}");
        }
        let err = parse_all(&["fsize=1", "fsize=2"]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
