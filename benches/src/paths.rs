//! Where things are: the workspace, the target directory the benchmark was
//! built in, scratch files, the results file, and the `ember` and
//! `ember-jailer` binaries (built on demand with the same profile).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Context, Error, Result};

/// The workspace root (this package's parent directory).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The directory holding the running executable: `<target>/<profile>`
/// (also for `cargo bench`, whose executables sit one level deeper in
/// `deps`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().ctx("finding the benchmark executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::Unexpected(format!("{} has no directory", exe.display())))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The cargo target directory the benchmark was built in.
pub fn target_dir() -> Result<PathBuf> {
    let profile = profile_dir()?;
    Ok(profile.parent().unwrap_or(&profile).to_path_buf())
}

/// Scratch space for disk images, sockets and jails: `<target>/bench-data`,
/// on the same file system as the build (local disk, not a tmpfs).
pub fn scratch_dir() -> Result<PathBuf> {
    let dir = target_dir()?.join("bench-data");
    std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Where results go unless `--out` says otherwise: `<target>/bench-results.json`.
pub fn default_results() -> Result<PathBuf> {
    Ok(target_dir()?.join("bench-results.json"))
}

/// The binaries the process benchmarks run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// `ember`.
    pub ember: PathBuf,
    /// `ember-jailer`.
    pub jailer: PathBuf,
}

impl Binaries {
    /// `ember` and `ember-jailer` from the environment (`EMBER_BIN`,
    /// `EMBER_JAILER_BIN`), else beside the benchmark executable, built
    /// there first with the benchmark's own profile unless `build` is false.
    pub fn locate(build: bool) -> Result<Binaries> {
        let dir = profile_dir()?;
        if build
            && (std::env::var_os("EMBER_BIN").is_none()
                || std::env::var_os("EMBER_JAILER_BIN").is_none())
        {
            build_binaries(&dir)?;
        }
        let pick = |var: &str, name: &str| {
            let path = std::env::var_os(var).map_or_else(|| dir.join(name), PathBuf::from);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Unexpected(format!(
                    "{} is missing: build it (`cargo build --release -p ember -p ember-jailer-bin`) or set {var}",
                    path.display()
                )))
            }
        };
        Ok(Binaries {
            ember: pick("EMBER_BIN", "ember")?,
            jailer: pick("EMBER_JAILER_BIN", "ember-jailer")?,
        })
    }
}

/// The cargo arguments that build into `profile_dir` (`<target>/<profile>`).
pub fn cargo_build_args(profile_dir: &Path, manifest: &Path) -> Vec<String> {
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let mut args = vec![
        "build".to_owned(),
        "--quiet".to_owned(),
        "--manifest-path".to_owned(),
        manifest.display().to_string(),
        "--target-dir".to_owned(),
        target.display().to_string(),
        "-p".to_owned(),
        "ember".to_owned(),
        "-p".to_owned(),
        "ember-jailer-bin".to_owned(),
    ];
    match profile.as_str() {
        "debug" => {}
        "release" => args.push("--release".to_owned()),
        other => args.extend(["--profile".to_owned(), other.to_owned()]),
    }
    args
}

fn build_binaries(profile_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = cargo_build_args(profile_dir, &workspace().join("Cargo.toml"));
    eprintln!("building ember and ember-jailer: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(&args)
        .status()
        .ctx("running cargo build")?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Unexpected(format!(
            "cargo build of ember and ember-jailer failed: {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_arguments_follow_the_profile() {
        let manifest = Path::new("/w/Cargo.toml");
        let release = cargo_build_args(Path::new("/t/release"), manifest);
        assert!(release.ends_with(&["--release".to_owned()]));
        assert!(release.windows(2).any(|w| w == ["--target-dir", "/t"]));
        let debug = cargo_build_args(Path::new("/t/debug"), manifest);
        assert!(!debug
            .iter()
            .any(|a| a.starts_with("--release") || a == "--profile"));
        let custom = cargo_build_args(Path::new("/t/bench"), manifest);
        assert!(custom.ends_with(&["--profile".to_owned(), "bench".to_owned()]));
    }

    #[test]
    fn the_workspace_holds_this_package() {
        assert!(workspace().join("benches").join("Cargo.toml").is_file());
    }
}
