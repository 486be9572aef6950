//! The jailer's cgroups on the real kernel (as root): values written, the
//! program listed in `cgroup.procs`, and a pids limit refusing forks. Uses
//! cgroup v1 where its pids hierarchy is mounted (Firecracker's default),
//! else v2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn a_pids_limit_refuses_forks_and_the_program_is_in_the_cgroup() {
    require_root();
    let cgroup = JailCgroup::pids("pids");
    let base = Base::new();
    let flags = cgroup.flags(&["pids.max=4"]);
    let (child, report) =
        start_waiting(base.command(&cgroup.id, &flags, &["--fork", "10", "--wait"]));
    let leaf = cgroup.leaf();
    let read = |file: &str| std::fs::read_to_string(leaf.join(file)).unwrap();
    assert_eq!(read("pids.max").trim(), "4");
    let procs = read("cgroup.procs");
    let pid = child.id().to_string();
    assert!(procs.lines().any(|p| p == pid), "{pid} not in {procs}");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = format!("/{}/{}", cgroup.parent, cgroup.id);
    assert!(
        membership.lines().any(|l| l.ends_with(&path)),
        "{membership}"
    );
    // The program itself counts: three children fit under a limit of four.
    assert_eq!(report["forks"], "3", "{report:?}");
    assert_eq!(report["fork_error"], libc::EAGAIN.to_string());
    finish(child);
}

#[test]
fn new_cpuset_levels_get_usable_cpus_and_memory_nodes() {
    require_root();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1_cpuset = mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let options = tail.split(' ').nth(2)?;
        let mount_point = head.split(' ').nth(4)?;
        (tail.starts_with("cgroup ") && options.split(',').any(|o| o == "cpuset"))
            .then(|| std::path::PathBuf::from(mount_point))
    });
    // Without a v1 cpuset hierarchy, v2 needs no inheritance: use the
    // hierarchy the pids test uses, with a pids key.
    let (version, mount, key) = match v1_cpuset {
        Some(mount) => ("1", mount, "cpuset.cpus=0"),
        None => {
            let (version, mount) = pids_hierarchy();
            (version, mount, "pids.max=100")
        }
    };
    let cgroup = JailCgroup::new("cpuset", version, mount);
    let base = Base::new();
    let (code, _, stderr) = run(base.command(&cgroup.id, &cgroup.flags(&[key]), &[]));
    assert_eq!(code, 0, "{stderr}");
    if version == "1" {
        let leaf = cgroup.leaf();
        let read = |file: &str| std::fs::read_to_string(leaf.join(file)).unwrap();
        assert_eq!(read("cpuset.cpus").trim(), "0");
        assert!(
            !read("cpuset.mems").trim().is_empty(),
            "inherited from the parent"
        );
    }
}

#[test]
fn the_default_parent_is_the_exec_file_name_and_the_default_version_1() {
    require_root();
    let (version, mount) = pids_hierarchy();
    let id = unique("defaults");
    // No --parent-cgroup: <mount>/<exec file name>/<id>, as Firecracker.
    let _cleanup = CgroupCleanup::new(&mount, PROBE_NAME, &id);
    let base = Base::new();
    let flags = ["--cgroup-version", version, "--cgroup", "pids.max=7"];
    let (child, _) = start_waiting(base.command(&id, &flags, &["--wait"]));
    let leaf = mount.join(PROBE_NAME).join(&id);
    let limit = std::fs::read_to_string(leaf.join("pids.max")).unwrap();
    assert_eq!(limit.trim(), "7");
    finish(child);

    // No --cgroup-version: v1, as Firecracker; refused up front where no v1
    // pids hierarchy is mounted.
    let id = unique("default-version");
    let _cleanup = CgroupCleanup::new(&mount, PROBE_NAME, &id);
    let (code, _, stderr) = run(base.command(&id, &["--cgroup", "pids.max=7"], &[]));
    if version == "1" {
        assert_eq!(code, 0, "{stderr}");
        assert!(mount.join(PROBE_NAME).join(&id).join("pids.max").exists());
    } else {
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("cgroup v1"), "{stderr}");
        assert!(stderr.contains("--cgroup-version 2"), "{stderr}");
        assert!(!base.root(&id).exists(), "nothing is created");
    }
}
