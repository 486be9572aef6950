//! Builds `ember-jail-probe`, the program the integration tests jail, as a
//! static executable (a jail holds no shared libraries), and tells the tests
//! where it is through `EMBER_JAIL_PROBE`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "probe/probe.rs";
    println!("cargo:rerun-if-changed={source}");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| "target".into()));
    let target = env::var("TARGET").unwrap_or_default();
    let probe = out_dir.join("ember-jail-probe");
    let mut command = Command::new(&rustc);
    command.args(["--edition=2021", "-O", "-C", "target-feature=+crt-static"]);
    if !target.is_empty() {
        command.args(["--target", &target]);
    }
    command.arg("-o").arg(&probe).arg(source);
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("building the static test probe {source} failed: {status}"),
        Err(e) => panic!("cannot run {}: {e}", rustc.to_string_lossy()),
    }
    println!("cargo:rustc-env=EMBER_JAIL_PROBE={}", probe.display());
}
