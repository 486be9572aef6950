//! Plans and creation against fake cgroup trees in temporary directories
//! (the real kernel is exercised by the ember-jailer binary's tests).

use std::fs;

use super::*;

fn settings(args: &[&str]) -> Vec<CgroupSetting> {
    args.iter()
        .map(|a| CgroupSetting::parse(a).unwrap())
        .collect()
}

/// A fake v2 mount whose `ember/prog/vm1` levels exist with their files.
fn fake_v2() -> (tempfile::TempDir, CgroupHost) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    fs::write(root.join("cgroup.subtree_control"), "cpu\n").unwrap();
    fs::write(root.join("cgroup.procs"), "").unwrap();
    for level in ["ember", "ember/prog"] {
        fs::create_dir_all(root.join(level)).unwrap();
        fs::write(root.join(level).join("cgroup.subtree_control"), "").unwrap();
    }
    let leaf = root.join("ember/prog/vm1");
    fs::create_dir_all(&leaf).unwrap();
    for file in ["pids.max", "memory.max", "cgroup.procs"] {
        fs::write(leaf.join(file), "").unwrap();
    }
    let mountinfo = format!("30 1 0:26 / {} rw - cgroup2 cgroup2 rw\n", root.display());
    let host = CgroupHost::from_text(&mountinfo, "0::/\n");
    (tmp, host)
}

#[test]
fn v2_plan_enables_controllers_and_writes_values() {
    let (tmp, host) = fake_v2();
    let plan = CgroupPlan::new(
        &host,
        CgroupVersion::V2,
        &settings(&["pids.max=64", "memory.max=256M"]),
        Path::new("ember/prog"),
        "vm1",
    )
    .unwrap();
    let leaf = tmp.path().join("ember/prog/vm1");
    assert_eq!(plan.leaves(), std::slice::from_ref(&leaf));
    let mut undo = Undo::new();
    let cgroups = plan.create(&mut undo).unwrap();
    assert!(undo.is_empty(), "every level existed already");
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    assert_eq!(read(&leaf.join("pids.max")), "64");
    assert_eq!(read(&leaf.join("memory.max")), "256M");
    // The fake files keep only the last write of each level.
    assert_eq!(read(&tmp.path().join("cgroup.subtree_control")), "+memory");
    assert_eq!(
        read(&tmp.path().join("ember/prog/cgroup.subtree_control")),
        "+memory"
    );
    cgroups.attach(&mut undo).unwrap();
    assert_eq!(read(&leaf.join("cgroup.procs")), "0");
    assert_eq!(undo.len(), 1);
    drop(undo);
    assert_eq!(
        read(&tmp.path().join("cgroup.procs")),
        "0",
        "moved back on undo"
    );
}

#[test]
fn v2_plan_refuses_controllers_the_root_does_not_offer() {
    let (_tmp, host) = fake_v2();
    let err = CgroupPlan::new(
        &host,
        CgroupVersion::V2,
        &settings(&["cpuset.cpus=0"]),
        Path::new("ember/prog"),
        "vm1",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("\"cpuset\" is not available"),
        "{err}"
    );
}

#[test]
fn v1_settings_are_grouped_per_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let cpu = tmp.path().join("cpu,cpuacct");
    let pids = tmp.path().join("pids");
    let mountinfo = format!(
        "1 1 0:1 / {} rw - cgroup cgroup rw,cpu,cpuacct\n2 1 0:2 / {} rw - cgroup cgroup rw,pids\n",
        cpu.display(),
        pids.display()
    );
    let host = CgroupHost::from_text(&mountinfo, "2:pids:/\n1:cpu,cpuacct:/\n");
    let plan = CgroupPlan::new(
        &host,
        CgroupVersion::V1,
        &settings(&["cpu.shares=512", "pids.max=8", "cpu.cfs_quota_us=1000"]),
        Path::new("vms/prog"),
        "vm1",
    )
    .unwrap();
    assert_eq!(
        plan.leaves(),
        [cpu.join("vms/prog/vm1"), pids.join("vms/prog/vm1")]
    );
    assert_eq!(plan.groups[0].settings.len(), 2);
    assert!(!plan.groups[0].cpuset_v1);
}

#[test]
fn a_failed_write_removes_the_levels_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let pids = tmp.path().join("pids");
    fs::create_dir(&pids).unwrap();
    fs::write(pids.join("cgroup.procs"), "").unwrap();
    let mountinfo = format!("2 1 0:2 / {} rw - cgroup cgroup rw,pids\n", pids.display());
    let host = CgroupHost::from_text(&mountinfo, "2:pids:/\n");
    let plan = CgroupPlan::new(
        &host,
        CgroupVersion::V1,
        &settings(&["pids.max=8"]),
        Path::new("ember/prog"),
        "vm1",
    )
    .unwrap();
    let mut undo = Undo::new();
    // A plain directory has no pids.max: the write fails after three mkdirs.
    let err = plan.create(&mut undo).unwrap_err();
    assert!(err.to_string().contains("pids.max"), "{err}");
    assert_eq!(undo.len(), 3);
    drop(undo);
    assert!(!pids.join("ember").exists());
}
