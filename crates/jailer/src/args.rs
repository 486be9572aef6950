//! The jailer's command line (Firecracker's flags) and its validation.
//!
//! [`JailerArgs`] holds the flags as given (filled by hand, or by
//! `JailerArgs::parse` with the `cli` feature); [`JailerArgs::validate`] checks
//! every value against the host, creating nothing, and returns the
//! [`JailConfig`] that [`crate::Jail::prepare`] builds.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cgroup::{parse_parent, CgroupHost, CgroupPlan, CgroupSetting, CgroupVersion};
use crate::dirs::check_below;
use crate::elf::{self, ExecKind};
use crate::jail::StartTimes;
use crate::netns::NetNs;
use crate::rlimit::{self, ResourceLimit};
use crate::{sys, Error, Result};

/// The chroot base when `--chroot-base-dir` is not given.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// The jailer's flags as given, before validation.
///
/// # Example
///
/// Validation refuses a bad value before creating anything:
///
/// ```
/// use ember_jailer::JailerArgs;
///
/// let args = JailerArgs {
///     id: Some("not/an/id".into()),
///     ..JailerArgs::default()
/// };
/// let refused = args.validate().unwrap_err().to_string();
/// assert!(refused.starts_with("invalid --id"), "{refused}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailerArgs {
    /// `--id`.
    pub id: Option<String>,
    /// `--exec-file`.
    pub exec_file: Option<PathBuf>,
    /// `--uid`.
    pub uid: Option<String>,
    /// `--gid`.
    pub gid: Option<String>,
    /// `--chroot-base-dir`; [`DEFAULT_CHROOT_BASE`] when `None`.
    pub chroot_base_dir: Option<PathBuf>,
    /// `--netns`.
    pub netns: Option<PathBuf>,
    /// `--daemonize`.
    pub daemonize: bool,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// `--cgroup-version`.
    pub cgroup_version: Option<String>,
    /// Every `--cgroup`, in order.
    pub cgroups: Vec<String>,
    /// `--parent-cgroup`.
    pub parent_cgroup: Option<String>,
    /// Every `--resource-limit`, in order.
    pub resource_limits: Vec<String>,
    /// What follows `--`: the program's arguments.
    pub exec_args: Vec<OsString>,
}

impl JailerArgs {
    /// Checks every value, creating nothing: the id; that the exec file is an
    /// executable regular file without set-id bits or file capabilities; the
    /// numeric uid and gid; that the chroot base is (or can be created as) a
    /// directory on a file system allowing devices and execution, and that
    /// the jail's device nodes and program do not exist yet in it; the
    /// resource limits; the cgroup keys, version, parent and controllers
    /// against the host's mounts; and that `--netns` is a network namespace
    /// (which is opened here and kept for joining).
    pub fn validate(&self) -> Result<JailConfig> {
        let id = self.id.as_deref().ok_or(Error::MissingArgument("id"))?;
        validate_id(id)?;
        let exec_file = self
            .exec_file
            .as_deref()
            .ok_or(Error::MissingArgument("exec-file"))?;
        let (exec_file, exec_name) = validate_exec_file(exec_file)?;
        let uid = numeric_id("uid", self.uid.as_deref())?;
        let gid = numeric_id("gid", self.gid.as_deref())?;
        let base = self
            .chroot_base_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROOT_BASE));
        let chroot_base = validate_chroot_base(&base)?;

        let root = Path::new(&exec_name).join(id).join("root");
        check_linkage(&exec_file, &chroot_base.join(&root))?;
        for dir in ["dev/net", "run"] {
            check_below(&chroot_base, &root.join(dir), false)?;
        }
        let mut new_files = vec![
            root.join(&exec_name),
            root.join("dev/kvm"),
            root.join("dev/urandom"),
            root.join("dev/net/tun"),
        ];
        if self.new_pid_ns {
            let mut pid_file = exec_name.clone();
            pid_file.push(".pid");
            new_files.push(root.join(pid_file));
        }
        for file in &new_files {
            check_below(&chroot_base, file, true)?;
        }

        let resource_limits = rlimit::parse_all(&self.resource_limits)?;
        let cgroups = self.validate_cgroups(&exec_name, id)?;
        let netns = self.netns.as_deref().map(NetNs::open).transpose()?;
        Ok(JailConfig {
            jail_root: chroot_base.join(&root),
            id: id.to_owned(),
            exec_file,
            exec_name,
            uid,
            gid,
            chroot_base,
            netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroups,
            resource_limits,
            exec_args: self.exec_args.clone(),
            start_times: StartTimes::now(),
        })
    }

    fn validate_cgroups(&self, exec_name: &OsStr, id: &str) -> Result<Option<CgroupPlan>> {
        let mut settings: Vec<CgroupSetting> = Vec::with_capacity(self.cgroups.len());
        for arg in &self.cgroups {
            let setting = CgroupSetting::parse(arg)?;
            if settings.iter().any(|s| s.key() == setting.key()) {
                return Err(Error::InvalidCgroupArg {
                    flag: "cgroup",
                    value: arg.clone(),
                    reason: "this key is given twice".to_owned(),
                });
            }
            settings.push(setting);
        }
        let version = self
            .cgroup_version
            .as_deref()
            .map(CgroupVersion::parse)
            .transpose()?;
        let parent = match &self.parent_cgroup {
            Some(parent) => parse_parent(parent)?,
            None => PathBuf::from(exec_name),
        };
        if settings.is_empty() {
            return Ok(None);
        }
        let host = CgroupHost::read()?;
        let version = version.unwrap_or(CgroupVersion::V1);
        CgroupPlan::new(&host, version, &settings, &parent, id).map(Some)
    }
}

/// Checks a jail id: 1 to 64 characters among `A-Z`, `a-z`, `0-9` and `-`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_owned()))
    }
}

fn numeric_id(flag: &'static str, value: Option<&str>) -> Result<u32> {
    let value = value.ok_or(Error::MissingArgument(flag))?;
    let invalid = || Error::InvalidNumericId {
        flag,
        value: value.to_owned(),
    };
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    // u32::MAX is -1, which the set*id calls read as "leave unchanged".
    value
        .parse::<u32>()
        .ok()
        .filter(|&n| n != u32::MAX)
        .ok_or_else(invalid)
}

fn validate_exec_file(path: &Path) -> Result<(PathBuf, OsString)> {
    let unsuitable = |path: &Path, reason| Error::Unsuitable {
        flag: "exec-file",
        path: path.to_owned(),
        reason,
    };
    let real = std::fs::canonicalize(path).map_err(|source| Error::BadPath {
        flag: "exec-file",
        path: path.to_owned(),
        source,
    })?;
    let meta = std::fs::metadata(&real).map_err(|source| Error::BadPath {
        flag: "exec-file",
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(unsuitable(path, "not a regular file"));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(unsuitable(path, "not executable"));
    }
    if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        return Err(unsuitable(
            path,
            "set-user-ID or set-group-ID: refusing to jail it",
        ));
    }
    let cpath = sys::cstring(real.as_os_str()).map_err(|source| Error::BadPath {
        flag: "exec-file",
        path: path.to_owned(),
        source,
    })?;
    let capabilities =
        sys::has_xattr(&cpath, c"security.capability").map_err(|source| Error::BadPath {
            flag: "exec-file",
            path: path.to_owned(),
            source,
        })?;
    if capabilities {
        return Err(unsuitable(
            path,
            "has file capabilities: refusing to jail it",
        ));
    }
    let name = real
        .file_name()
        .map(OsStr::to_owned)
        .ok_or_else(|| unsuitable(path, "has no file name"))?;
    Ok((real, name))
}

/// Refuses a dynamically linked program whose ELF interpreter is not in the
/// jail root: a jail holds no shared libraries, so it could not start. An
/// interpreter already placed in an existing jail (with its libraries, by the
/// operator) lets it through.
fn check_linkage(exec_file: &Path, jail_root: &Path) -> Result<()> {
    let bad = |source| Error::BadPath {
        flag: "exec-file",
        path: exec_file.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(exec_file).map_err(bad)?;
    let ExecKind::Dynamic(interpreter) = elf::classify(&mut file).map_err(bad)? else {
        return Ok(());
    };
    let inside = jail_root.join(interpreter.strip_prefix("/").unwrap_or(&interpreter));
    if std::fs::symlink_metadata(inside).is_ok() {
        return Ok(());
    }
    Err(Error::DynamicallyLinked {
        path: exec_file.to_owned(),
        interpreter,
        jail_root: jail_root.to_owned(),
    })
}

/// Resolves the chroot base to an absolute path whose existing part is a
/// directory on a file system that allows device nodes and execution.
fn validate_chroot_base(base: &Path) -> Result<PathBuf> {
    let unsuitable = |reason| Error::Unsuitable {
        flag: "chroot-base-dir",
        path: base.to_owned(),
        reason,
    };
    let bad = |source| Error::BadPath {
        flag: "chroot-base-dir",
        path: base.to_owned(),
        source,
    };
    let absolute = std::path::absolute(base).map_err(bad)?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(unsuitable("not a directory")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(bad(e)),
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return Err(unsuitable("has no existing ancestor directory")),
        }
    }
    let mut resolved = std::fs::canonicalize(existing).map_err(bad)?;
    let cpath = sys::cstring(resolved.as_os_str()).map_err(bad)?;
    let flags = sys::mount_flags(&cpath).map_err(bad)?;
    if flags & libc::ST_NODEV != 0 {
        return Err(unsuitable(
            "is on a file system mounted nodev: the jail's device nodes would not work",
        ));
    }
    if flags & libc::ST_NOEXEC != 0 {
        return Err(unsuitable(
            "is on a file system mounted noexec: the jailed program could not run",
        ));
    }
    for name in missing.into_iter().rev() {
        if name == ".." || name == "." {
            return Err(unsuitable("has '.' or '..' below its existing part"));
        }
        resolved.push(name);
    }
    Ok(resolved)
}

/// A validated jail configuration; see [`JailerArgs::validate`].
#[derive(Debug)]
pub struct JailConfig {
    id: String,
    exec_file: PathBuf,
    exec_name: OsString,
    uid: u32,
    gid: u32,
    chroot_base: PathBuf,
    jail_root: PathBuf,
    netns: Option<NetNs>,
    daemonize: bool,
    new_pid_ns: bool,
    cgroups: Option<CgroupPlan>,
    resource_limits: Vec<ResourceLimit>,
    exec_args: Vec<OsString>,
    start_times: StartTimes,
}

impl JailConfig {
    /// When the jailer started (by default, when the arguments were
    /// validated), for the start-time arguments passed to the program.
    pub fn start_times(&self) -> StartTimes {
        self.start_times
    }

    /// Sets when the jailer started: call it with [`StartTimes::now`] taken
    /// first thing in `main`, as Firecracker's jailer measures from there.
    pub fn set_start_times(&mut self, start: StartTimes) {
        self.start_times = start;
    }

    /// The jail id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The program to jail, with symbolic links resolved.
    pub fn exec_file(&self) -> &Path {
        &self.exec_file
    }

    /// The program's file name, its name inside the jail.
    pub fn exec_name(&self) -> &OsStr {
        &self.exec_name
    }

    /// The user the program runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The group the program runs as.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// A one-line warning when the program keeps root's user or group id
    /// (`--uid 0` or `--gid 0`): allowed, since some orchestrators pass them,
    /// but the jail then no longer confines what root can do.
    pub fn root_warning(&self) -> Option<String> {
        let which = match (self.uid == 0, self.gid == 0) {
            (true, true) => "--uid 0 and --gid 0",
            (true, false) => "--uid 0",
            (false, true) => "--gid 0",
            (false, false) => return None,
        };
        Some(format!(
            "{which}: the jailed program keeps root's privileges; give an unprivileged \
             uid and gid to confine it"
        ))
    }

    /// The absolute chroot base.
    pub fn chroot_base(&self) -> &Path {
        &self.chroot_base
    }

    /// `<chroot-base>/<exec-name>/<id>/root`.
    pub fn jail_root(&self) -> &Path {
        &self.jail_root
    }

    /// The network namespace to join.
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// Whether to start a new session with the standard streams on
    /// `/dev/null`.
    pub fn daemonize(&self) -> bool {
        self.daemonize
    }

    /// Whether the program becomes PID 1 of a new PID namespace.
    pub fn new_pid_ns(&self) -> bool {
        self.new_pid_ns
    }

    /// The cgroup plan, when `--cgroup` was given.
    pub fn cgroups(&self) -> Option<&CgroupPlan> {
        self.cgroups.as_ref()
    }

    /// The resource limits, defaults included.
    pub fn resource_limits(&self) -> &[ResourceLimit] {
        &self.resource_limits
    }

    /// The user's arguments for the program (after `--`); the program gets
    /// [`crate::firecracker_args`] before them.
    pub fn exec_args(&self) -> &[OsString] {
        &self.exec_args
    }
}

#[cfg(feature = "cli")]
mod parse;
#[cfg(feature = "cli")]
pub use parse::{Command, USAGE};

#[cfg(test)]
mod tests;
