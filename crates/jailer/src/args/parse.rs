//! Reading the jailer's command line (Firecracker's flags) into [`JailerArgs`]:
//! the `cli` feature, which the `ember-jailer` binary enables, so that a VMM
//! using this crate's seccomp filters or jail steps does not carry a parser.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use lexopt::prelude::*;
use lexopt::Parser;

use super::JailerArgs;
use crate::{Error, Result};

/// Usage text of the `ember-jailer` binary.
pub const USAGE: &str = "\
Usage:
  ember-jailer --id ID --exec-file PATH --uid UID --gid GID [OPTIONS] [-- ARGS...]

Starts PATH jailed in <chroot-base-dir>/<exec-file name>/<ID>/root, as UID:GID,
in a new mount namespace, as Firecracker's jailer does: with the arguments
--id ID --start-time-us N --start-time-cpu-us N --parent-cpu-time-us N, then ARGS.
PATH must be statically linked (or its ELF interpreter already in the jail).

Options:
  --id ID                   Jail id: 1 to 64 characters among A-Z, a-z, 0-9, '-'
  --exec-file PATH          The program to jail (copied into the jail)
  --uid UID, --gid GID      Numeric user and group the program runs as
  --chroot-base-dir DIR     Where jails are made (default /srv/jailer)
  --netns PATH              Network namespace to join, e.g. /var/run/netns/NAME
  --daemonize               Start a new session; stdin, stdout and stderr go to /dev/null
  --new-pid-ns              Run the program as PID 1 of a new PID namespace; its pid
                            is written to <exec-file name>.pid in the jail
  --cgroup-version 1|2      cgroup version (default 1, as Firecracker)
  --cgroup KEY=VALUE        Write VALUE to the jail's cgroup file KEY (cpu.*, cpuset.*,
                            memory.*, pids.*); repeatable
  --parent-cgroup NAME      Parent of the jail's cgroups (default the exec file's name);
                            the cgroup is <mount>/<NAME>/<ID>
  --resource-limit RES=N    fsize=N or no-file=N (default no-file=2048, at least 128);
                            repeatable
  --version                 Print the version
  --help                    Print this help

Exit status: the program's, since the jailer becomes it; 0 when the program was
started in a forked child (--new-pid-ns, or --daemonize from a process-group
leader); 1 when jailing failed (nothing is left behind); 2 when the command line
is refused (nothing was done).";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print usage.
    Help,
    /// Print the version.
    Version,
    /// Jail a program.
    Jail(Box<JailerArgs>),
}

/// What reading one more item of the command line led to.
enum Step {
    /// A flag was recorded; read on.
    More,
    /// The command line is exhausted (or `--` ended the flags).
    End,
    /// A flag that ends parsing (`--help`, `--version`).
    Stop(Command),
}

impl JailerArgs {
    /// Parses the command line (without the program name).
    ///
    /// # Example
    ///
    /// ```
    /// use ember_jailer::args::Command;
    /// use ember_jailer::JailerArgs;
    ///
    /// let line = "--id vm1 --exec-file /usr/bin/ember --uid 100 --gid 100 -- --no-api";
    /// let Command::Jail(args) = JailerArgs::parse(line.split(' '))? else {
    ///     unreachable!("no --help or --version given");
    /// };
    /// assert_eq!(args.id.as_deref(), Some("vm1"));
    /// assert_eq!(args.exec_args, ["--no-api"]);
    /// assert_eq!(JailerArgs::parse(["--help"])?, Command::Help);
    /// # Ok::<(), ember_jailer::Error>(())
    /// ```
    pub fn parse<I>(args: I) -> Result<Command>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        let mut parser = Parser::from_args(args);
        let mut args = JailerArgs::default();
        loop {
            match args.read_next(&mut parser)? {
                Step::More => {}
                Step::End => return Ok(Command::Jail(Box::new(args))),
                Step::Stop(command) => return Ok(command),
            }
        }
    }

    /// Reads the next flag (with its value) or the `--` that starts the
    /// program's arguments.
    fn read_next(&mut self, parser: &mut Parser) -> Result<Step> {
        let mut raw = parser.raw_args().map_err(lex)?;
        if raw.peek() == Some(OsStr::new("--")) {
            raw.next();
            self.exec_args = raw.collect();
            return Ok(Step::End);
        }
        let Some(arg) = parser.next().map_err(lex)? else {
            return Ok(Step::End);
        };
        match arg {
            Long("id") => once(&mut self.id, "id", text(parser, "id")?)?,
            Long("exec-file") => once(&mut self.exec_file, "exec-file", path(parser)?)?,
            Long("uid") => once(&mut self.uid, "uid", text(parser, "uid")?)?,
            Long("gid") => once(&mut self.gid, "gid", text(parser, "gid")?)?,
            Long("chroot-base-dir") => {
                once(&mut self.chroot_base_dir, "chroot-base-dir", path(parser)?)?
            }
            Long("netns") => once(&mut self.netns, "netns", path(parser)?)?,
            Long("daemonize") => self.daemonize = true,
            Long("new-pid-ns") => self.new_pid_ns = true,
            Long("cgroup-version") => {
                let value = text(parser, "cgroup-version")?;
                once(&mut self.cgroup_version, "cgroup-version", value)?
            }
            Long("cgroup") => self.cgroups.push(text(parser, "cgroup")?),
            Long("parent-cgroup") => {
                let value = text(parser, "parent-cgroup")?;
                once(&mut self.parent_cgroup, "parent-cgroup", value)?
            }
            Long("resource-limit") => self.resource_limits.push(text(parser, "resource-limit")?),
            Long("help") | Short('h') => return Ok(Step::Stop(Command::Help)),
            Long("version") | Short('V') => return Ok(Step::Stop(Command::Version)),
            Value(value) => {
                return Err(Error::Usage(format!(
                    "unexpected argument {value:?} (the program's arguments go after --)"
                )))
            }
            other => return Err(lex(other.unexpected())),
        }
        Ok(Step::More)
    }
}

fn lex(error: lexopt::Error) -> Error {
    Error::Usage(error.to_string())
}

fn once<T>(slot: &mut Option<T>, flag: &str, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(Error::Usage(format!("--{flag} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// The flag's value, which must be UTF-8.
fn text(parser: &mut Parser, flag: &str) -> Result<String> {
    parser
        .value()
        .map_err(lex)?
        .into_string()
        .map_err(|v| Error::Usage(format!("--{flag} {v:?}: not valid UTF-8")))
}

/// The flag's value as a path.
fn path(parser: &mut Parser) -> Result<PathBuf> {
    Ok(parser.value().map_err(lex)?.into())
}

#[cfg(test)]
mod tests;
