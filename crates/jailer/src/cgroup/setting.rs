//! Parsing the cgroup flags: `--cgroup-version`, `--cgroup KEY=VALUE` and
//! `--parent-cgroup`.

use std::path::PathBuf;

use crate::{Error, Result};

/// The controllers whose files `--cgroup` may write.
pub const CONTROLLERS: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];

/// A cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (the default, as in Firecracker).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// Parses `1` or `2`.
    pub fn parse(text: &str) -> Result<CgroupVersion> {
        match text {
            "1" => Ok(CgroupVersion::V1),
            "2" => Ok(CgroupVersion::V2),
            _ => Err(Error::InvalidCgroupArg {
                flag: "cgroup-version",
                value: text.to_owned(),
                reason: "must be 1 or 2".to_owned(),
            }),
        }
    }

    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

/// One `--cgroup KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    key: String,
    value: String,
}

impl CgroupSetting {
    /// Parses `KEY=VALUE`: KEY is `<controller>.<file>` with a controller from
    /// [`CONTROLLERS`] and a file name of lower-case letters, digits, `_` and
    /// `.`; VALUE is non-empty and on one line.
    pub fn parse(arg: &str) -> Result<CgroupSetting> {
        let invalid = |reason: &str| Error::InvalidCgroupArg {
            flag: "cgroup",
            value: arg.to_owned(),
            reason: reason.to_owned(),
        };
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| invalid("expected KEY=VALUE, e.g. pids.max=64"))?;
        let (controller, file) = key
            .split_once('.')
            .ok_or_else(|| invalid("the key must be <controller>.<file>, e.g. memory.max"))?;
        if !CONTROLLERS.contains(&controller) {
            return Err(invalid(
                "only cpu.*, cpuset.*, memory.* and pids.* keys are allowed",
            ));
        }
        let file_ok = !file.is_empty()
            && !file.starts_with('.')
            && !file.contains("..")
            && file
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !file_ok {
            return Err(invalid(
                "the key has characters other than a-z, 0-9, '_' and '.'",
            ));
        }
        if value.trim().is_empty() || value.contains(['\n', '\0']) {
            return Err(invalid("the value must be non-empty and on one line"));
        }
        Ok(CgroupSetting {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The file name, such as `pids.max`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value to write.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The controller, such as `pids`.
    pub fn controller(&self) -> &str {
        self.key.split_once('.').map_or(&self.key, |(c, _)| c)
    }
}

/// Validates a `--parent-cgroup` name: a relative path of normal components
/// (no `.`, `..`, or leading `/`).
pub fn parse_parent(text: &str) -> Result<PathBuf> {
    let normal = text
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal || text.contains(['\n', '\0']) {
        return Err(Error::InvalidCgroupArg {
            flag: "parent-cgroup",
            value: text.to_owned(),
            reason: "must be a relative path without '.' or '..' components".to_owned(),
        });
    }
    Ok(PathBuf::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_values() {
        let s = CgroupSetting::parse("cpu.max=100000 1000000").unwrap();
        assert_eq!(
            (s.key(), s.value(), s.controller()),
            ("cpu.max", "100000 1000000", "cpu")
        );
        let s = CgroupSetting::parse("memory.limit_in_bytes=1G").unwrap();
        assert_eq!(s.controller(), "memory");
        assert_eq!(CgroupSetting::parse("pids.max=a=b").unwrap().value(), "a=b");
    }

    #[test]
    fn refuses_bad_settings() {
        for (arg, why) in [
            ("pids.max", "KEY=VALUE"),
            ("devices.allow=a", "only cpu"),
            ("cgroup.procs=1", "only cpu"),
            ("pids=1", "<controller>.<file>"),
            ("pids./../x=1", "characters"),
            ("pids..max=1", "characters"),
            ("pids.MAX=1", "characters"),
            ("pids.max=", "non-empty"),
            ("pids.max= ", "non-empty"),
            ("pids.max=1\n2", "one line"),
        ] {
            let err = CgroupSetting::parse(arg).unwrap_err().to_string();
            assert!(err.contains(why), "{arg:?}: {err}");
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(CgroupVersion::parse("1").unwrap(), CgroupVersion::V1);
        assert_eq!(CgroupVersion::parse("2").unwrap().number(), 2);
        assert!(CgroupVersion::parse("3").is_err());
        assert!(CgroupVersion::parse("v2").is_err());
    }

    #[test]
    fn validates_parent_names() {
        assert_eq!(parse_parent("vms/web").unwrap(), PathBuf::from("vms/web"));
        for bad in [
            "", "/abs", "a/../b", "..", ".", "a/./b", "a/", "a//b", "a\nb",
        ] {
            assert!(parse_parent(bad).is_err(), "{bad:?}");
        }
    }
}
