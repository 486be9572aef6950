//! Reading `/proc/self/mountinfo`: where each file system is mounted, with
//! its type and super-block options (which name a cgroup v1 hierarchy's
//! controllers).

use std::path::PathBuf;

/// One mount, as `/proc/<pid>/mountinfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory of the file system mounted here (field 4).
    pub(crate) root: PathBuf,
    /// Where it is mounted (field 5).
    pub(crate) mount_point: PathBuf,
    /// The file-system type, such as `cgroup` or `cgroup2`.
    pub(crate) fs_type: String,
    /// Super-block options, comma-separated.
    pub(crate) super_options: String,
}

impl Mount {
    /// The super-block options as a list.
    pub(crate) fn options(&self) -> impl Iterator<Item = &str> {
        self.super_options.split(',')
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            let fs_type = tail.next()?;
            let _source = tail.next()?;
            let super_options = tail.next()?;
            Some(Mount {
                root: unescape(head.get(3)?),
                mount_point: unescape(head.get(4)?),
                fs_type: fs_type.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 27 0:40 /sub /mnt/with\\040space rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parses_fields_and_optional_tags() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[1].fs_type, "cgroup");
        assert_eq!(
            mounts[1].options().collect::<Vec<_>>(),
            ["rw", "cpu", "cpuacct"]
        );
        assert_eq!(mounts[3].fs_type, "cgroup2");
    }

    #[test]
    fn unescapes_octal_sequences() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts[4].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(mounts[4].root, PathBuf::from("/sub"));
        assert_eq!(unescape("a\\134b\\12"), PathBuf::from("a\\b\\12"));
    }
}
