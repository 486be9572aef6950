//! `fuzz-seeds OUT_DIR`: writes every fuzz target's generated seeds into
//! `OUT_DIR/<target>/<name>` (see `scripts/fuzz-seeds.sh`, which also adds
//! the test-guest kernels).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds OUT_DIR");
        return ExitCode::from(2);
    };
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme_path).ok();
    for (target, seeds) in ember_fuzz_harness::seeds::all(readme.as_deref()) {
        let dir = out.join(target);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("fuzz-seeds: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        for (name, bytes) in &seeds {
            let path = dir.join(name);
            if let Err(e) = std::fs::write(&path, bytes) {
                eprintln!("fuzz-seeds: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
    ExitCode::SUCCESS
}
