//! Serves a JSON document as the MMDS would to a guest asking for IMDS text:
//! `cargo run -p ember-mmds --example imds_text -- DOCUMENT.json [PATH...]`
//! prints, for each path (the whole document when none is given), what a
//! `GET` of that path answers.

use std::process::ExitCode;

use ember_mmds::{Mmds, OutputFormat};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: imds_text DOCUMENT.json [PATH...]");
        return ExitCode::from(2);
    };
    let document = match std::fs::read(&file).map(|bytes| serde_json::from_slice(&bytes)) {
        Ok(Ok(document)) => document,
        Ok(Err(e)) => return fail(&format!("{file}: not JSON: {e}")),
        Err(e) => return fail(&format!("cannot read {file}: {e}")),
    };
    let mut mmds = Mmds::default();
    if let Err(e) = mmds.put(document) {
        return fail(&format!("{file}: {e}"));
    }
    let paths: Vec<String> = args.collect();
    let paths = if paths.is_empty() {
        vec![String::from("/")]
    } else {
        paths
    };
    for path in &paths {
        match mmds.get(path, OutputFormat::Imds) {
            Ok(text) => println!("GET {path}\n{text}\n"),
            Err(e) => println!("GET {path}: {e}\n"),
        }
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("imds_text: {message}");
    ExitCode::FAILURE
}
