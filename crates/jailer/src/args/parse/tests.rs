//! Reading the flags: values, repeats, help, version and the program's arguments.

use super::*;

fn parse(line: &str) -> Result<Command> {
    JailerArgs::parse(line.split_whitespace())
}

#[test]
fn parses_firecracker_flags() {
    let cmd = parse(
        "--id a --exec-file /bin/x --uid 1 --gid 2 --chroot-base-dir /j --netns /n \
         --daemonize --new-pid-ns --cgroup-version 2 --cgroup pids.max=4 --cgroup cpu.max=9 \
         --parent-cgroup p --resource-limit fsize=1 --resource-limit no-file=200 -- --api-sock /s x",
    )
    .unwrap();
    let Command::Jail(a) = cmd else {
        panic!("not a jail command: {cmd:?}")
    };
    assert_eq!(a.id.as_deref(), Some("a"));
    assert_eq!(a.exec_file, Some(PathBuf::from("/bin/x")));
    assert_eq!((a.uid.as_deref(), a.gid.as_deref()), (Some("1"), Some("2")));
    assert_eq!(a.chroot_base_dir, Some(PathBuf::from("/j")));
    assert_eq!(a.netns, Some(PathBuf::from("/n")));
    assert!(a.daemonize && a.new_pid_ns);
    assert_eq!(a.cgroup_version.as_deref(), Some("2"));
    assert_eq!(a.cgroups, ["pids.max=4", "cpu.max=9"]);
    assert_eq!(a.parent_cgroup.as_deref(), Some("p"));
    assert_eq!(a.resource_limits, ["fsize=1", "no-file=200"]);
    assert_eq!(a.exec_args, ["--api-sock", "/s", "x"]);
}

#[test]
fn parse_refuses_bad_usage() {
    for (line, why) in [
        ("--id a --id b", "--id given twice"),
        ("--id a stray", "unexpected argument \"stray\""),
        ("--bogus", "bogus"),
        ("--uid", "missing argument"),
    ] {
        let err = parse(line).unwrap_err().to_string();
        assert!(err.contains(why), "{line}: {err}");
    }
    assert_eq!(parse("--id a --help").unwrap(), Command::Help);
    assert_eq!(parse("-V").unwrap(), Command::Version);
    let Command::Jail(a) = parse("-- --id x").unwrap() else {
        panic!("not a jail command")
    };
    assert_eq!(
        (a.id, a.exec_args),
        (None, vec![OsString::from("--id"), "x".into()])
    );
}
