//! Per-thread seccomp allow-lists for the `ember` VMM.
//!
//! Each thread kind gets its own filter: [`ThreadKind::Vmm`] (the main thread:
//! event loop, device emulation), [`ThreadKind::Vcpu`] (`KVM_RUN` and
//! synchronous port/MMIO exits) and [`ThreadKind::Api`] (the HTTP API thread).
//! The default lists live in `seccomp/x86_64.json` beside this crate, in the
//! JSON format of seccompiler (Firecracker's), and were derived by tracing the
//! `ember` binary; `seccomp/README.md` there tells how to regenerate them.
//!
//! A call outside the list is trapped: the SIGSYS handler [`apply`] installs
//! writes `seccomp violation: syscall N on thread NAME` to standard error and
//! ends the process with status [`VIOLATION_EXIT_CODE`].

pub mod compiled;
mod sigsys;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

pub use seccompiler::BpfProgram;
pub use sigsys::VIOLATION_EXIT_CODE;

use crate::{Error, Result};

/// The default filters, for x86_64.
pub const DEFAULT_FILTERS_JSON: &str = include_str!("../../seccomp/x86_64.json");

/// Ember is x86_64-only; the syscall names in the JSON are resolved for it.
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;

/// The kinds of thread of the `ember` VMM, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread: event loop and device I/O (key `vmm`).
    Vmm,
    /// A vCPU thread (key `vcpu`).
    Vcpu,
    /// The HTTP API thread (key `api`).
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api];

    /// The kind's key in a filter file: `vmm`, `vcpu` or `api`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }

    /// The kind for a filter-file key.
    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A compiled filter for each thread kind.
pub type Filters = BTreeMap<ThreadKind, BpfProgram>;

/// Compiles the default filters.
pub fn default_filters() -> Result<Filters> {
    filters_from_json(DEFAULT_FILTERS_JSON.as_bytes())
}

/// Compiles a filter file (what `--seccomp-filter FILE` names): a JSON object
/// with exactly the keys `vmm`, `vcpu` and `api`, each a seccompiler filter
/// (`mismatch_action`/`default_action`, `match_action`/`filter_action`,
/// `filter`).
///
/// # Example
///
/// ```
/// use ember_jailer::seccomp::{filters_from_json, ThreadKind};
///
/// let allow_all = r#"{"mismatch_action": "allow", "match_action": "trap", "filter": []}"#;
/// let file = format!(r#"{{"vmm": {allow_all}, "vcpu": {allow_all}, "api": {allow_all}}}"#);
/// let filters = filters_from_json(file.as_bytes())?;
/// assert_eq!(filters.len(), ThreadKind::ALL.len());
/// assert!(filters_from_json(r#"{"vmm": {}}"#.as_bytes()).is_err());
/// # Ok::<(), ember_jailer::Error>(())
/// ```
pub fn filters_from_json<R: Read>(reader: R) -> Result<Filters> {
    let compiled = seccompiler::compile_from_json(reader, ARCH).map_err(Error::SeccompCompile)?;
    by_thread(compiled)
}

/// The programs of a filter file by thread kind: exactly `vmm`, `vcpu` and
/// `api`, no other.
fn by_thread(programs: impl IntoIterator<Item = (String, BpfProgram)>) -> Result<Filters> {
    let mut filters = Filters::new();
    for (name, program) in programs {
        let kind = ThreadKind::from_name(&name).ok_or(Error::SeccompUnknownThread(name))?;
        filters.insert(kind, program);
    }
    for kind in ThreadKind::ALL {
        if !filters.contains_key(&kind) {
            return Err(Error::SeccompMissingThread(kind.name()));
        }
    }
    Ok(filters)
}

/// Reads a filter file in either format, told apart by content: JSON (its
/// first non-blank byte is `{`) as [`filters_from_json`] takes it, or
/// Firecracker's compiled format (what `seccompiler-bin` writes; see
/// [`compiled`]). Either way it must hold exactly the thread kinds `vmm`,
/// `vcpu` and `api`; in the compiled format an empty program means that
/// thread runs unfiltered, as in Firecracker.
pub fn filters_from_file<R: Read>(reader: R) -> Result<Filters> {
    let limit = compiled::MAX_FILE_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(Error::SeccompRead)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return filters_from_json(bytes.as_slice());
    }
    let programs = compiled::decode(&bytes).map_err(|e| Error::SeccompBinary(e.0))?;
    by_thread(programs)
}

/// How many distinct system calls each filter of a filter file has rules for
/// (for an allow-list, how many it allows), for reports.
pub fn syscall_counts<R: Read>(mut reader: R) -> Result<BTreeMap<ThreadKind, usize>> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(Error::SeccompRead)?;
    // Compiling first gives the precise error for a malformed file.
    filters_from_json(text.as_bytes())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::SeccompRead(std::io::Error::other(e)))?;
    let mut counts = BTreeMap::new();
    for kind in ThreadKind::ALL {
        let names: BTreeSet<&str> = value[kind.name()]["filter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|rule| rule["syscall"].as_str())
            .collect();
        counts.insert(kind, names.len());
    }
    Ok(counts)
}

/// [`syscall_counts`] of the default filters.
pub fn default_syscall_counts() -> Result<BTreeMap<ThreadKind, usize>> {
    syscall_counts(DEFAULT_FILTERS_JSON.as_bytes())
}

/// Keeps the C library's allocator inside the filters. Call it first thing
/// in `main`, before any thread exists.
///
/// glibc gives each new thread its own malloc arena, a heap of its own that
/// shrinks when enough memory is freed at its top. The first such shrink in
/// the process reads `/proc/sys/vm/overcommit_memory` (to choose between
/// `madvise` and remapping), an `openat` that no thread filter but the VMM's
/// allows: a client that made the API thread allocate and free a few MiB
/// killed the VMM. With a single arena (`M_ARENA_MAX` = 1) every thread
/// allocates from the main heap, which grows and shrinks with `brk`, so that
/// path is never taken; large blocks still come from `mmap` and go back with
/// `munmap`, both allowed. The cost is one shared allocator lock, which the
/// vCPU threads' hot paths (`KVM_RUN`, port and MMIO exits) do not take.
/// musl has no per-thread arenas, so there this does nothing.
pub fn confine_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets a malloc tunable; called before threads
        // start, nothing races with it.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// Installs `program` on the calling thread (after `PR_SET_NO_NEW_PRIVS`,
/// which seccompiler sets), first installing the process's SIGSYS handler if
/// this is the first filter. Filters stack and cannot be removed; threads
/// created afterwards inherit the filter, so install each thread's own filter
/// on that thread, and the main thread's after spawning the others.
///
/// Allocation-free, so it may be called in a child forked from a
/// multi-threaded process.
///
/// An empty program installs nothing (a compiled filter file's way of
/// leaving a thread unfiltered, as in Firecracker).
pub fn apply(program: &BpfProgram) -> Result<()> {
    if program.is_empty() {
        return Ok(());
    }
    sigsys::install_handler()?;
    sigsys::remember_thread_name();
    seccompiler::apply_filter(program).map_err(Error::SeccompInstall)
}

#[cfg(test)]
mod tests;
