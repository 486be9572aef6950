//! Compiles a seccomp filter file (JSON or Firecracker's compiled format; the
//! default filters when none is given) and prints each thread's BPF program
//! size.
//!
//! `cargo run -p ember-jailer --example filter_size -- [FILTERS]`

use std::fs::File;
use std::process::ExitCode;

use ember_jailer::seccomp::{self, Filters};

fn main() -> ExitCode {
    match compile(std::env::args_os().nth(1)) {
        Ok(filters) => {
            for (kind, program) in &filters {
                println!("{:<4} {:>5} BPF instructions", kind.name(), program.len());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("filter_size: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The filters of the file at `path`, or the default ones.
fn compile(path: Option<std::ffi::OsString>) -> Result<Filters, String> {
    let Some(path) = path else {
        return seccomp::default_filters().map_err(|e| e.to_string());
    };
    let file = File::open(&path).map_err(|e| format!("cannot open {path:?}: {e}"))?;
    seccomp::filters_from_file(file).map_err(|e| format!("{path:?}: {e}"))
}
