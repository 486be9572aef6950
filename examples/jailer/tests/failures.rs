//! The jailer binary's failures: refused command lines create nothing (exit
//! 2), and a failure part-way, even after entering the jail, removes the
//! jail's directories and cgroups again (exit 1). Errors are one line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

fn assert_one_line_error(stderr: &str, expected: &str) {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ember-jailer: error: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
}

#[test]
fn refused_command_lines_exit_2_and_create_nothing() {
    require_root();
    let base = Base::new();
    let scratch = base.scratch().to_str().unwrap().to_owned();
    let missing = format!("{scratch}/missing");
    let long_id = "x".repeat(65);
    fn good(id: &str) -> Vec<&str> {
        vec!["--id", id, "--exec-file", PROBE, "--uid", "1", "--gid", "1"]
    }
    let with = |extra: &[&'static str]| {
        let mut args = good("ok");
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (good("a/b"), "invalid --id"),
        (good(&long_id), "invalid --id"),
        (
            vec![
                "--id",
                "ok",
                "--exec-file",
                PROBE,
                "--uid",
                "nobody",
                "--gid",
                "1",
            ],
            "invalid --uid",
        ),
        (
            vec![
                "--id",
                "ok",
                "--exec-file",
                &missing,
                "--uid",
                "1",
                "--gid",
                "1",
            ],
            "No such file",
        ),
        (
            vec![
                "--id",
                "ok",
                "--exec-file",
                &scratch,
                "--uid",
                "1",
                "--gid",
                "1",
            ],
            "not a regular file",
        ),
        (
            vec!["--id", "ok", "--uid", "1", "--gid", "1"],
            "missing required argument --exec-file",
        ),
        (with(&["--cgroup", "devices.allow=a"]), "only cpu.*"),
        (with(&["--resource-limit", "fsize:1"]), "fsize=N"),
        (
            with(&["--resource-limit", "no-file=0"]),
            "invalid --resource-limit \"no-file=0\": the VMM needs at least 128 open files",
        ),
        (
            with(&["--netns", "/proc/self/status"]),
            "not a namespace file",
        ),
        (with(&["--cgroup-version", "3"]), "must be 1 or 2"),
        (with(&["--uid", "2"]), "--uid given twice"),
        (with(&["--bogus"]), "bogus"),
        (with(&["stray"]), "unexpected argument"),
    ];
    for (args, expected) in cases {
        let mut command = jailer(&args);
        command.arg("--chroot-base-dir").arg(base.path());
        let (code, _, stderr) = run(command);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_one_line_error(&stderr, expected);
        assert!(!base.exists(), "{args:?} created the chroot base");
    }
}

#[test]
fn a_chroot_base_that_is_a_file_is_refused() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let (code, _, stderr) = run({
        let mut command = jailer(&[
            "--id",
            "x",
            "--exec-file",
            PROBE,
            "--uid",
            "1",
            "--gid",
            "1",
        ]);
        command.arg("--chroot-base-dir").arg(&file);
        command
    });
    assert_eq!(code, 2);
    assert_one_line_error(&stderr, "not a directory");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 1);
}

#[test]
fn a_failed_cgroup_write_leaves_nothing_behind() {
    require_root();
    let cgroup = JailCgroup::pids("badwrite");
    let base = Base::new();
    let flags = cgroup.flags(&["pids.max=lots"]);
    let (code, _, stderr) = run(base.command(&cgroup.id, &flags, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "cannot write \"lots\"");
    assert!(!base.exists(), "the jail tree was left behind");
    cgroup.assert_removed();
}

/// A file that passes validation (executable, regular) but that `execve`
/// refuses, so the jailer fails at its very last step.
fn not_a_program(base: &Base) -> PathBuf {
    let path = base.scratch().join("not-a-program");
    std::fs::write(&path, b"no interpreter line\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_failed_exec_inside_the_jail_leaves_nothing_behind() {
    require_root();
    let cgroup = JailCgroup::pids("badexec");
    let base = Base::new();
    let exec = not_a_program(&base);
    let mut flags = cgroup.flags(&["pids.max=10"]);
    flags.extend(["--resource-limit", "fsize=100000"]);
    let (code, _, stderr) = run(base.command_for(exec.to_str().unwrap(), &cgroup.id, &flags, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(
        &stderr,
        "execve of the jailed program failed: Exec format error",
    );
    assert!(!base.exists(), "the jail tree was left behind");
    cgroup.assert_removed();
}

#[test]
fn a_failed_exec_in_a_new_pid_namespace_leaves_nothing_behind() {
    require_root();
    let base = Base::new();
    let exec = not_a_program(&base);
    let id = unique("badexec-pidns");
    let (code, _, stderr) =
        run(base.command_for(exec.to_str().unwrap(), &id, &["--new-pid-ns"], &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(
        &stderr,
        "in the jailed child: execve of the jailed program failed",
    );
    assert!(
        !base.exists(),
        "the jail tree (or the pid file) was left behind"
    );
}

#[test]
fn a_dynamically_linked_program_is_refused_up_front_unless_its_interpreter_is_in_the_jail() {
    require_root();
    let base = Base::new();
    let interpreter = dynamic_interpreter(JAILER);
    // The jailer itself is dynamically linked; the jail has no ld.so.
    let id = unique("dynamic");
    let (code, _, stderr) = run(base.command_for(JAILER, &id, &[], &[]));
    assert_eq!(code, 2, "{stderr}");
    assert_one_line_error(&stderr, "dynamically linked");
    assert!(stderr.contains("build it statically"), "{stderr}");
    assert!(stderr.contains("target-feature=+crt-static"), "{stderr}");
    assert!(stderr.contains(&interpreter), "{stderr}");
    assert!(!base.exists(), "nothing is created");

    // With the interpreter placed in the jail first (the libraries are the
    // operator's business), it passes the check (the empty stand-in then
    // fails at execve, a later step).
    let root = base.path().join("ember-jailer").join(&id).join("root");
    let inside = root.join(interpreter.trim_start_matches('/'));
    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
    std::fs::write(&inside, b"").unwrap();
    let (code, _, stderr) = run(base.command_for(JAILER, &id, &[], &[]));
    assert_ne!(code, 2, "{stderr}");
    assert!(!stderr.contains("dynamically linked"), "{stderr}");
}

/// The ELF interpreter `program` names, as `ldd`'s last line shows it.
fn dynamic_interpreter(program: &str) -> String {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with('/') && w.contains("ld-"))
        .expect("the jailer test binary is dynamically linked")
        .to_owned()
}

#[test]
fn an_existing_jail_is_reused_but_a_leftover_program_is_refused() {
    require_root();
    let base = Base::new();
    let id = unique("reuse");
    let root = base.root(&id);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("vm-config.json"), b"{}").unwrap();
    let (code, _, stderr) = run(base.command(&id, &[], &[]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        root.join("vm-config.json").exists(),
        "the operator's files stay"
    );
    let (code, _, stderr) = run(base.command(&id, &[], &[]));
    assert_eq!(code, 2);
    assert_one_line_error(&stderr, "already exists");
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run(jailer(&["--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("--exec-file PATH"), "{stdout}");
    let (code, stdout, _) = run(jailer(&["--version"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ember-jailer "), "{stdout}");
}
