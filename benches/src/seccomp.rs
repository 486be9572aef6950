//! How many system calls each default seccomp filter of `ember` allows
//! (`ember_jailer::seccomp::default_syscall_counts`): smaller is a smaller
//! attack surface.

use ember_jailer::seccomp::default_syscall_counts;

use crate::report::Figure;
use crate::stats::Better;
use crate::{Error, Result};

/// The group name in reports.
pub const GROUP: &str = "seccomp";

/// One figure per thread kind.
pub fn run() -> Result<Vec<Figure>> {
    let counts = default_syscall_counts()
        .map_err(|e| Error::Unexpected(format!("default seccomp filters: {e}")))?;
    Ok(counts
        .into_iter()
        .map(|(kind, count)| {
            Figure::new(
                GROUP,
                &format!("{} thread filter", kind.name()),
                count as f64,
                "syscalls",
                Better::Lower,
            )
            .note("allowed system calls")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_has_a_figure() {
        let figures = run().unwrap();
        let names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vmm thread filter",
                "vcpu thread filter",
                "api thread filter"
            ]
        );
        assert!(figures.iter().all(|f| f.value > 0.0));
    }
}
