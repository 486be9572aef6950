//! Describes a state file: its format version, architecture and sections.
//! Without an argument, writes a small state file, describes it and removes it.
//!
//! `cargo run -p ember-snapshot --example describe -- vm.state`

use std::path::PathBuf;

use ember_snapshot::{describe, read_state_file, write_atomic, Section, StateFile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (path, is_sample) = match std::env::args_os().nth(1) {
        Some(path) => (PathBuf::from(path), false),
        None => (write_sample()?, true),
    };
    let summary = read_state_file(&path).and_then(|bytes| describe(&bytes));
    if is_sample {
        std::fs::remove_file(&path)?;
    }
    print!("{}: {}", path.display(), summary?);
    Ok(())
}

/// Writes a state file with a required and an optional section to the
/// temporary directory; returns its path.
fn write_sample() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut state = StateFile::default();
    state
        .sections
        .push(Section::json("vm", 1, &[("vcpus", 2), ("mem_mib", 128)])?);
    let mut notes = Section::json("notes", 1, "written by the describe example")?;
    notes.required = false;
    state.sections.push(notes);
    let path = std::env::temp_dir().join(format!("ember-describe-{}.state", std::process::id()));
    write_atomic(&path, &state.to_bytes()?)?;
    Ok(path)
}
