#![allow(clippy::unwrap_used)]

use super::*;
use crate::error_chain;

fn entries(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn the_same_entry_by_two_spellings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let state = dir.path().join("vm.snap");
    for mem in [
        state.clone(),
        link.join("vm.snap"),
        dir.path().join("sub").join("..").join("vm.snap"),
    ] {
        let err = check_targets(&state, &mem).unwrap_err();
        assert!(matches!(err, Error::SnapshotPathsClash(_)), "{err}");
    }
    // Each file is first written under a temporary name beside it.
    let state_temp = format!(".vm.snap.{}.tmp", std::process::id());
    let err = check_targets(&state, &dir.path().join(&state_temp)).unwrap_err();
    assert!(matches!(err, Error::SnapshotPathsClash(_)), "{err}");
    let mem_temp = format!(".vm.mem.{}.tmp", std::process::id());
    let err = check_targets(&dir.path().join(mem_temp), &dir.path().join("vm.mem")).unwrap_err();
    assert!(matches!(err, Error::SnapshotPathsClash(_)), "{err}");
    check_targets(&state, &dir.path().join("vm.mem")).unwrap();
    check_targets(&state, &dir.path().join("sub").join("vm.snap")).unwrap();
    assert_eq!(
        entries(dir.path()),
        vec![OsString::from("link"), OsString::from("sub")]
    );
}

#[test]
fn directories_and_unreachable_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("vm.mem");
    let err = check_targets(dir.path(), &mem).unwrap_err();
    assert!(err.to_string().starts_with("cannot replace"), "{err}");
    let missing = dir.path().join("absent").join("vm.snap");
    let err = check_targets(&missing, &mem).unwrap_err();
    assert!(err.to_string().starts_with("cannot reach"), "{err}");
    let err = check_targets(&mem, Path::new("/")).unwrap_err();
    assert!(err.to_string().starts_with("cannot name"), "{err}");
}

#[test]
fn a_diff_goes_into_regular_files_only_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
    for path in [fifo.as_path(), Path::new("/dev/null"), link.as_path()] {
        let err = open_diff_target(path).unwrap_err();
        assert!(error_chain(&err).contains("not a regular file"), "{err}");
    }
    for path in [
        "/proc/self/mem",
        "/proc/sysrq-trigger",
        "/sys/kernel/uevent_helper",
    ] {
        if Path::new(path).is_file() {
            let err = open_diff_target(Path::new(path)).unwrap_err();
            assert!(error_chain(&err).contains("kernel interface"), "{err}");
        }
    }
    let created = dir.path().join("vm.mem");
    open_diff_target(&created).unwrap();
    assert!(created.is_file());
    assert!(!dir.path().join("target").exists());
}
