//! Jailing a microVM monitor and filtering its system calls.
//!
//! This crate does what Firecracker's jailer does, as a library another VMM can
//! reuse step by step:
//!
//! 1. [`JailerArgs::validate`] checks every input (ids, paths, cgroup keys,
//!    resource limits, the network namespace) and creates nothing;
//! 2. [`Jail::prepare`] builds the jail on the host: the
//!    `<chroot-base>/<exec-name>/<id>/root` tree with the exec file and the
//!    `/dev/kvm`, `/dev/net/tun` and `/dev/urandom` nodes, and the cgroups with
//!    their values;
//! 3. [`Jail::exec`] enters it (new mount namespace, `pivot_root`, cgroups,
//!    network namespace, resource limits, optional new session and PID
//!    namespace), drops to the unprivileged uid/gid and executes the program
//!    with Firecracker's jailer's arguments first ([`firecracker_args`]).
//!
//! Every step records what it created in an [`Undo`] list, so a failure at
//! any point, including a failed `execve`, leaves nothing behind.
//!
//! The [`seccomp`] module holds the per-thread system-call allow-lists of the
//! `ember` VMM and installs them.
//!
//! Firecracker's jailer command line is read by `JailerArgs::parse`, with the
//! `cli` feature (the `ember-jailer` binary's).
//!
//! # Example
//!
//! The default filters compiled to BPF, one program per thread kind:
//!
//! ```
//! use ember_jailer::seccomp::{default_filters, ThreadKind};
//!
//! let filters = default_filters()?;
//! for kind in ThreadKind::ALL {
//!     assert!(!filters[&kind].is_empty(), "{} has a filter", kind.name());
//! }
//! # Ok::<(), ember_jailer::Error>(())
//! ```
//!
//! Jailing a program (as root; `no_run` here):
//!
//! ```no_run
//! use ember_jailer::{Jail, JailerArgs};
//!
//! let args = JailerArgs {
//!     id: Some("vm1".into()),
//!     exec_file: Some("/usr/local/bin/ember".into()),
//!     uid: Some("10001".into()),
//!     gid: Some("10001".into()),
//!     exec_args: vec!["--no-api".into(), "--config-file".into(), "/vm.json".into()],
//!     ..JailerArgs::default()
//! };
//! let config = args.validate()?; // checks everything, creates nothing
//! let forked = Jail::prepare(config)?.exec()?; // returns only when it forked
//! println!("the program runs as pid {}", forked.pid);
//! # Ok::<(), ember_jailer::Error>(())
//! ```

pub mod args;
pub mod cgroup;
mod dirs;
pub mod elf;
mod jail;
mod mount_ns;
mod mountinfo;
pub mod netns;
mod process;
pub mod rlimit;
pub mod seccomp;
mod sys;
pub mod undo;

use std::io;
use std::path::PathBuf;

pub use args::{JailConfig, JailerArgs};
pub use jail::{firecracker_args, Forked, Jail, StartTimes};
pub use undo::Undo;

/// Everything that can go wrong while validating, building or entering a jail,
/// or while compiling and installing seccomp filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line cannot be parsed.
    #[error("{0}")]
    Usage(String),
    /// A required argument is missing.
    #[error("missing required argument --{0}")]
    MissingArgument(&'static str),
    /// The jail id is empty, too long or has characters other than
    /// `[A-Za-z0-9-]`.
    #[error("invalid --id {0:?}: use 1 to 64 characters among A-Z, a-z, 0-9 and '-'")]
    InvalidId(String),
    /// A `--uid` or `--gid` value is not a decimal id.
    #[error("invalid --{flag} {value:?}: not a numeric id below 4294967295")]
    InvalidNumericId {
        /// `uid` or `gid`.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A path given on the command line cannot be used.
    #[error("--{flag} {path}")]
    BadPath {
        /// The flag that named the path.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        source: io::Error,
    },
    /// A path has the wrong type or properties.
    #[error("--{flag} {path}: {reason}")]
    Unsuitable {
        /// The flag that named the path.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The program is dynamically linked and its ELF interpreter is not in
    /// the jail, so it could not start there.
    #[error(
        "--exec-file {path}: dynamically linked (ELF interpreter {interpreter}), but the jail \
         holds no shared libraries: build it statically, e.g. RUSTFLAGS=\"-C \
         target-feature=+crt-static\" cargo build --release -p ember --target \
         x86_64-unknown-linux-gnu (or put the interpreter and libraries in {jail_root} first)"
    )]
    DynamicallyLinked {
        /// The program.
        path: PathBuf,
        /// The interpreter it names.
        interpreter: PathBuf,
        /// The jail root it was looked for in.
        jail_root: PathBuf,
    },
    /// Something the jail must create already exists.
    #[error("{0} already exists; remove it or pick another --id")]
    AlreadyExists(PathBuf),
    /// A `--cgroup`, `--cgroup-version` or `--parent-cgroup` value is invalid.
    #[error("invalid --{flag} {value:?}: {reason}")]
    InvalidCgroupArg {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No cgroup hierarchy offers a controller a `--cgroup` key needs.
    #[error("cgroup v{version}: controller {controller:?} is not available{detail}")]
    CgroupUnavailable {
        /// The cgroup version in use.
        version: u8,
        /// The controller.
        controller: String,
        /// Where it was looked for.
        detail: String,
    },
    /// A `--resource-limit` value is invalid.
    #[error("invalid --resource-limit {value:?}: {reason}")]
    InvalidResourceLimit {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system operation while building or removing the jail failed.
    #[error("cannot {action} {path}")]
    Fs {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A value could not be written into a cgroup file.
    #[error("cannot write {value:?} to {path}")]
    CgroupWrite {
        /// The value.
        value: String,
        /// The cgroup file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A system call needed to enter the jail failed.
    #[error("{call} failed")]
    Sys {
        /// The call, with its salient arguments.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The forked child (new PID namespace or daemon) failed before it could
    /// execute the program.
    #[error("in the jailed child: {call} failed")]
    Child {
        /// The call that failed in the child.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The seccomp filter file is not valid JSON in the expected format, or
    /// names an unknown system call.
    #[error("seccomp filter: {0}")]
    SeccompCompile(seccompiler::Error),
    /// The seccomp filter file is neither JSON nor a valid compiled filter.
    #[error("seccomp filter: not JSON, and not a valid compiled filter (Firecracker's seccompiler-bin format): {0}")]
    SeccompBinary(String),
    /// The seccomp filter file lacks a filter for a thread kind.
    #[error(
        "seccomp filter: no filter for thread kind {0:?} (need \"vmm\", \"vcpu\" and \"api\")"
    )]
    SeccompMissingThread(&'static str),
    /// The seccomp filter file has a filter for an unknown thread kind.
    #[error("seccomp filter: unknown thread kind {0:?} (expected \"vmm\", \"vcpu\" or \"api\")")]
    SeccompUnknownThread(String),
    /// The seccomp filter file could not be read.
    #[error("seccomp filter: cannot read it: {0}")]
    SeccompRead(io::Error),
    /// A seccomp filter could not be installed.
    #[error("cannot install the seccomp filter: {0}")]
    SeccompInstall(seccompiler::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A test's view of an error: its message and its cause's, as the binary
/// prints them.
#[cfg(test)]
pub(crate) fn with_cause(error: &Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}
