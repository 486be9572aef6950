//! `ember-jailer`: starts a program (normally `ember`) inside a jail, with
//! Firecracker's jailer flags. The work is done by the ember-jailer library;
//! this is argument handling, exit codes and one-line errors.

use std::process::ExitCode;

use ember_jailer::args::{Command, USAGE};
use ember_jailer::{Jail, JailerArgs, StartTimes};

/// Exit status when jailing failed after validation (nothing is left behind).
const EXIT_ERROR: u8 = 1;
/// Exit status when the command line is refused (nothing was done).
const EXIT_USAGE: u8 = 2;

/// Prints `error` and its causes on one line.
fn fail(code: u8, error: &ember_jailer::Error) -> ExitCode {
    let causes = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source());
    let messages: Vec<String> = causes.map(|e| e.to_string().replace('\n', " ")).collect();
    eprintln!("ember-jailer: error: {}", messages.join(": "));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let start = StartTimes::now();
    let args = match JailerArgs::parse(std::env::args_os().skip(1)) {
        Ok(Command::Jail(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("ember-jailer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let mut config = match args.validate() {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    config.set_start_times(start);
    if let Some(warning) = config.root_warning() {
        eprintln!("ember-jailer: warning: {warning}");
    }
    // `exec` replaces this process with the program, or returns once a forked
    // child has started it, or fails having removed everything it created.
    match Jail::prepare(config).and_then(Jail::exec) {
        Ok(_forked) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_ERROR, &e),
    }
}
