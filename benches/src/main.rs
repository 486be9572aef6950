//! `ember-benches`: runs Ember's benchmarks, prints a table of figures and
//! saves them as JSON; or compares two saved runs.
//!
//! ```text
//! ember-benches [GROUP...] [--quick] [--out FILE] [--no-build]
//! ember-benches compare OLD.json [NEW.json] [--noise PCT]
//! ```
//!
//! Groups: `all` (the default), `block`, `net`, `vsock`, `boot`, `api`,
//! `snapshot`, `seccomp`, `ratelimit`, `rng`, `balloon`, `mmds`. Exit status: 0 when every group ran, 1 when one
//! failed (its error is printed under the table and saved), 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use ember_benches::paths::{self, Binaries};
use ember_benches::report::{compare, GroupError, Report};
use ember_benches::{
    api, balloon, block, boot, mmds, net, ratelimit, rng, seccomp, snapshot, vsock, Result,
};

const USAGE: &str = "\
usage: ember-benches [GROUP...] [--quick] [--out FILE] [--no-build]
       ember-benches compare OLD.json [NEW.json] [--noise PCT]

GROUP: all (default), block, net, vsock, rng, balloon, mmds, boot, api, snapshot,
  seccomp, ratelimit
  --quick     fewer and shorter rounds (a smoke run, figures are noisier)
  --out FILE  where to save the JSON (default <target>/bench-results.json)
  --no-build  do not build ember and ember-jailer first (boot, api,
              snapshot); they are taken from beside this program, or from
              EMBER_BIN and EMBER_JAILER_BIN
compare: the change of every figure from OLD to NEW (default: the latest
  results), marked better or worse beyond the noise (default 5%)";

/// Every group, in the order `all` runs them.
const GROUPS: [&str; 11] = [
    "seccomp",
    "ratelimit",
    "block",
    "net",
    "vsock",
    "rng",
    "balloon",
    "mmds",
    "api",
    "boot",
    "snapshot",
];

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run {
        groups: Vec<&'static str>,
        quick: bool,
        out: Option<PathBuf>,
        build: bool,
    },
    Compare {
        old: PathBuf,
        new: Option<PathBuf>,
        noise: f64,
    },
    Help,
}

fn parse(args: &[String]) -> std::result::Result<Command, String> {
    let mut it = args.iter();
    if args.first().map(String::as_str) == Some("compare") {
        it.next();
        let (mut files, mut noise) = (Vec::new(), 5.0);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--noise" => {
                    let value = it.next().ok_or("--noise needs a percentage")?;
                    noise = value
                        .parse()
                        .map_err(|_| format!("--noise {value}: not a number"))?;
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                file => files.push(PathBuf::from(file)),
            }
        }
        let mut files = files.into_iter();
        let old = files.next().ok_or("compare needs OLD.json")?;
        let new = files.next();
        if files.next().is_some() {
            return Err("compare takes at most two files".to_owned());
        }
        return Ok(Command::Compare { old, new, noise });
    }
    let (mut groups, mut quick, mut out, mut build) = (Vec::new(), false, None, true);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => quick = true,
            "--no-build" => build = false,
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a file")?)),
            "all" => groups.extend(GROUPS),
            name => match GROUPS.iter().find(|g| **g == name) {
                Some(group) => groups.push(*group),
                None => return Err(format!("unknown group or option `{name}`")),
            },
        }
    }
    if groups.is_empty() {
        groups.extend(GROUPS);
    }
    groups.dedup();
    Ok(Command::Run {
        groups,
        quick,
        out,
        build,
    })
}

/// Runs one group, adding its figures to `report`.
fn run_group(
    group: &str,
    quick: bool,
    bins: &mut Option<Binaries>,
    build: bool,
    report: &mut Report,
) -> Result<()> {
    let scratch = paths::scratch_dir()?;
    let mut binaries = || -> Result<Binaries> {
        if bins.is_none() {
            *bins = Some(Binaries::locate(build)?);
        }
        bins.clone()
            .ok_or_else(|| ember_benches::Error::Unexpected("no binaries".to_owned()))
    };
    match group {
        "seccomp" => report.figures.extend(seccomp::run()?),
        "ratelimit" => report.figures.extend(ratelimit::run(quick)?),
        "block" => {
            let (size, rounds, small, large) = if quick {
                (64 << 20, 3, 100 * block::IN_FLIGHT, 1024)
            } else {
                (256 << 20, 9, 1000 * block::IN_FLIGHT, 8192)
            };
            let options = block::Options {
                path: scratch.join(format!("block-{}M.img", size >> 20)),
                file_size: size,
                rounds,
                small_ops: small,
                large_ops: large,
            };
            report.figures.extend(block::run(&options)?);
        }
        "net" => report.figures.extend(net::run(&net::Options::new(quick))?),
        "vsock" => report
            .figures
            .extend(vsock::run(&scratch, vsock::Options::new(quick))?),
        "boot" => {
            let options = boot::Options {
                runs: if quick { 5 } else { 30 },
                launches: if quick { 10 } else { 40 },
                parallel: 2,
            };
            boot::run(&binaries()?, &scratch, options, report)?;
        }
        "rng" => report.figures.extend(rng::run(rng::Options::new(quick))?),
        "balloon" => report
            .figures
            .extend(balloon::run(if quick { 2 } else { 7 })?),
        "mmds" => report.figures.extend(mmds::run(mmds::Options::new(quick))?),
        "api" => {
            let options = api::Options {
                starts: if quick { 5 } else { 30 },
                requests: if quick { 1000 } else { 10_000 },
                boots: if quick { 3 } else { 20 },
            };
            api::run(&binaries()?, &scratch, options, report)?;
        }
        "snapshot" => {
            let options = snapshot::Options {
                rounds: if quick { 3 } else { 10 },
                clones: 8,
            };
            snapshot::run(&binaries()?, &scratch, options, report)?;
        }
        other => {
            return Err(ember_benches::Error::Unexpected(format!(
                "no group {other}"
            )))
        }
    }
    Ok(())
}

fn run(groups: &[&str], quick: bool, out: Option<PathBuf>, build: bool) -> Result<bool> {
    let mut report = Report::new(&paths::workspace());
    let mut bins = None;
    let mut all_ran = true;
    for &group in groups {
        eprintln!("ember-benches: {group}...");
        report.groups.push(group.to_owned());
        if let Err(e) = run_group(group, quick, &mut bins, build, &mut report) {
            eprintln!("ember-benches: {group} failed: {e}");
            report.errors.push(GroupError {
                group: group.to_owned(),
                error: e.to_string(),
            });
            all_ran = false;
        }
    }
    report.unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print!("{}", report.table());
    let out = match out {
        Some(out) => out,
        None => paths::default_results()?,
    };
    report.save(&out)?;
    eprintln!("ember-benches: figures saved to {}", out.display());
    Ok(all_ran)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("ember-benches: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(true)
        }
        Command::Run {
            groups,
            quick,
            out,
            build,
        } => run(&groups, quick, out, build),
        Command::Compare { old, new, noise } => (|| {
            let new = match new {
                Some(new) => new,
                None => paths::default_results()?,
            };
            let text = compare(&Report::load(&old)?, &Report::load(&new)?, noise);
            print!("{text}");
            Ok(true)
        })(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ember-benches: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn groups_and_flags() {
        assert_eq!(
            parse(&args("")).unwrap(),
            Command::Run {
                groups: GROUPS.to_vec(),
                quick: false,
                out: None,
                build: true
            }
        );
        assert_eq!(
            parse(&args("block api --quick --out r.json --no-build")).unwrap(),
            Command::Run {
                groups: vec!["block", "api"],
                quick: true,
                out: Some(PathBuf::from("r.json")),
                build: false
            }
        );
        let Command::Run { groups, .. } = parse(&args("all")).unwrap() else {
            panic!("not a run");
        };
        assert_eq!(groups, GROUPS);
        assert!(parse(&args("disk")).unwrap_err().contains("disk"));
        assert!(parse(&args("--out")).is_err());
        assert_eq!(parse(&args("--help")).unwrap(), Command::Help);
    }

    #[test]
    fn compare_arguments() {
        assert_eq!(
            parse(&args("compare a.json b.json --noise 2")).unwrap(),
            Command::Compare {
                old: PathBuf::from("a.json"),
                new: Some(PathBuf::from("b.json")),
                noise: 2.0
            }
        );
        assert!(parse(&args("compare")).is_err());
        assert!(parse(&args("compare a b c")).is_err());
        assert!(parse(&args("compare a --noise x")).is_err());
    }
}
