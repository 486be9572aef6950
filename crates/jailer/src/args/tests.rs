//! Validation: every refusal happens before anything is created.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

/// A chroot base and an executable program in temporary directories.
struct Setup {
    base: tempfile::TempDir,
    _bin: tempfile::TempDir,
    exec: PathBuf,
}

fn setup() -> Setup {
    let bin = tempfile::tempdir().unwrap();
    let exec = bin.path().join("prog");
    fs::write(&exec, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&exec, fs::Permissions::from_mode(0o755)).unwrap();
    Setup {
        base: tempfile::tempdir().unwrap(),
        _bin: bin,
        exec,
    }
}

impl Setup {
    fn args(&self) -> JailerArgs {
        JailerArgs {
            id: Some("vm-1".to_owned()),
            exec_file: Some(self.exec.clone()),
            uid: Some("1234".to_owned()),
            gid: Some("5678".to_owned()),
            chroot_base_dir: Some(self.base.path().to_owned()),
            ..JailerArgs::default()
        }
    }

    /// Validates `args`, expecting an error containing `why`, and checks that
    /// the chroot base is still empty.
    fn refuse(&self, args: &JailerArgs, why: &str) {
        let err = crate::with_cause(&args.validate().unwrap_err());
        assert!(err.contains(why), "expected {why:?} in: {err}");
        self.assert_nothing_created();
    }

    fn assert_nothing_created(&self) {
        let entries: Vec<_> = fs::read_dir(self.base.path()).unwrap().collect();
        assert!(entries.is_empty(), "validation created {entries:?}");
    }
}

#[test]
fn validates_a_good_configuration_without_creating_anything() {
    let s = setup();
    let mut args = s.args();
    args.exec_args = vec!["--flag".into()];
    args.new_pid_ns = true;
    let config = args.validate().unwrap();
    let base = fs::canonicalize(s.base.path()).unwrap();
    assert_eq!(config.id(), "vm-1");
    assert_eq!(config.exec_name(), "prog");
    assert_eq!((config.uid(), config.gid()), (1234, 5678));
    assert_eq!(config.jail_root(), base.join("prog/vm-1/root"));
    assert!(config.new_pid_ns() && !config.daemonize());
    assert!(config.cgroups().is_none());
    assert_eq!(config.resource_limits().len(), 1, "the no-file default");
    assert_eq!(config.exec_args(), ["--flag"]);
    s.assert_nothing_created();
}

#[test]
fn root_ids_are_allowed_with_a_warning() {
    let s = setup();
    assert_eq!(s.args().validate().unwrap().root_warning(), None);
    for (uid, gid, expected) in [
        ("0", "5678", "--uid 0:"),
        ("1234", "0", "--gid 0:"),
        ("0", "0", "--uid 0 and --gid 0:"),
    ] {
        let mut args = s.args();
        args.uid = Some(uid.to_owned());
        args.gid = Some(gid.to_owned());
        let warning = args.validate().unwrap().root_warning().unwrap();
        assert!(warning.starts_with(expected), "{warning}");
        assert!(!warning.contains('\n'));
    }
    s.assert_nothing_created();
}

#[test]
fn refuses_bad_ids() {
    let s = setup();
    for id in ["", "a/b", "../x", "has space", "é", &"x".repeat(65)] {
        let mut args = s.args();
        args.id = Some(id.to_owned());
        s.refuse(&args, "invalid --id");
    }
    let mut args = s.args();
    args.id = Some("x".repeat(64));
    args.validate().unwrap();
    args.id = None;
    s.refuse(&args, "missing required argument --id");
}

#[test]
fn refuses_missing_or_unsuitable_exec_files() {
    let s = setup();
    let mut args = s.args();
    args.exec_file = Some(s.exec.with_file_name("missing"));
    s.refuse(&args, "No such file");
    args.exec_file = Some(s.exec.parent().unwrap().to_owned());
    s.refuse(&args, "not a regular file");
    fs::set_permissions(&s.exec, fs::Permissions::from_mode(0o644)).unwrap();
    s.refuse(&s.args(), "not executable");
    fs::set_permissions(&s.exec, fs::Permissions::from_mode(0o4755)).unwrap();
    s.refuse(&s.args(), "set-user-ID");
}

#[test]
fn refuses_non_numeric_ids() {
    let s = setup();
    for uid in ["root", "-1", "1.5", "", "4294967295", "99999999999"] {
        let mut args = s.args();
        args.uid = Some(uid.to_owned());
        s.refuse(&args, "invalid --uid");
    }
    let mut args = s.args();
    args.gid = Some("wheel".to_owned());
    s.refuse(&args, "invalid --gid");
}

#[test]
fn refuses_a_chroot_base_that_is_a_file() {
    let s = setup();
    let file = s.base.path().join("file");
    fs::write(&file, b"").unwrap();
    let mut args = s.args();
    args.chroot_base_dir = Some(file.clone());
    let err = args.validate().unwrap_err().to_string();
    assert!(err.contains("not a directory"), "{err}");
    args.chroot_base_dir = Some(file.join("below"));
    let err = args.validate().unwrap_err().to_string();
    assert!(err.contains("not a directory"), "{err}");
    let entries: Vec<_> = fs::read_dir(s.base.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "only the test's own file");
}

#[test]
fn accepts_a_chroot_base_that_does_not_exist_yet() {
    let s = setup();
    let mut args = s.args();
    args.chroot_base_dir = Some(s.base.path().join("new/base"));
    let config = args.validate().unwrap();
    assert!(config.chroot_base().ends_with("new/base"));
    s.assert_nothing_created();
}

#[test]
fn refuses_bad_resource_limits() {
    let s = setup();
    for (limit, why) in [
        ("fsize", "expected fsize=N"),
        ("nofile=1", "fsize or no-file"),
        ("no-file=lots", "decimal"),
        ("no-file=0", "at least 128 open files"),
    ] {
        let mut args = s.args();
        args.resource_limits = vec![limit.to_owned()];
        s.refuse(&args, why);
    }
}

#[test]
fn refuses_bad_cgroup_arguments() {
    let s = setup();
    for (flag, value, why) in [
        ("cgroup", "devices.allow=a", "only cpu.*"),
        ("cgroup", "pids.max", "KEY=VALUE"),
        ("cgroup-version", "3", "must be 1 or 2"),
        ("parent-cgroup", "../up", "relative path"),
    ] {
        let mut args = s.args();
        match flag {
            "cgroup" => args.cgroups = vec![value.to_owned()],
            "cgroup-version" => args.cgroup_version = Some(value.to_owned()),
            _ => args.parent_cgroup = Some(value.to_owned()),
        }
        s.refuse(&args, why);
    }
    let mut args = s.args();
    args.cgroups = vec!["pids.max=1".to_owned(), "pids.max=2".to_owned()];
    s.refuse(&args, "twice");
}

#[test]
fn refuses_a_netns_that_is_not_a_network_namespace() {
    let s = setup();
    let mut args = s.args();
    args.netns = Some(PathBuf::from("/proc/self/ns/mnt"));
    s.refuse(&args, "not a network namespace");
    args.netns = Some(s.exec.clone());
    s.refuse(&args, "not a namespace file");
}

#[test]
fn refuses_a_jail_whose_program_or_devices_exist() {
    let s = setup();
    let root = s.base.path().join("prog/vm-1/root");
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(root.join("dev/kvm"), b"").unwrap();
    let err = s.args().validate().unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists(ref p) if p.ends_with("dev/kvm")),
        "{err}"
    );
    fs::remove_file(root.join("dev/kvm")).unwrap();
    fs::write(root.join("prog"), b"").unwrap();
    let err = s.args().validate().unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    fs::remove_file(root.join("prog")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("run")).unwrap();
    let err = crate::with_cause(&s.args().validate().unwrap_err());
    assert!(err.contains("not a directory"), "{err}");
}
