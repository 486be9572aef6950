//! `ember-test-guests DIR`: copies the built test guest images into `DIR`.
//!
//! Creates `DIR` (and its parents) if needed, copies `guest-elf64`,
//! `guest-pvh` and `guest-bzimage` into it and prints each destination path
//! on its own line. Exits with status 2 on bad usage and 1 on I/O errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage(prog: &str) -> ExitCode {
    eprintln!("usage: {prog} DIR");
    eprintln!(
        "copies the Ember test guest images (guest-elf64, guest-pvh, guest-bzimage) into DIR"
    );
    ExitCode::from(2)
}

fn copy_all(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let mut copied = Vec::new();
    for (name, src) in ember_test_guests::all() {
        let dst = dir.join(name);
        std::fs::copy(src, &dst)
            .map_err(|e| format!("cannot copy {src} to {}: {e}", dst.display()))?;
        copied.push(dst);
    }
    Ok(copied)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let prog = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ember-test-guests".to_owned());
    let dir = match (args.next(), args.next()) {
        (Some(dir), None) if !dir.is_empty() && dir != "-h" && dir != "--help" => {
            PathBuf::from(dir)
        }
        _ => return usage(&prog),
    };
    match copy_all(&dir) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{prog}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
