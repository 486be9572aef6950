//! `snapshot_state`: arbitrary bytes as a state file, through
//! `ember_snapshot::StateFile::from_bytes` and `ember_snapshot::describe`.
//!
//! Invariants: nothing panics and every error is one displayable line;
//! `describe` accepts exactly what decodes (on any architecture) and has one
//! line per section after its header; a file that parses re-serializes to
//! bytes that parse back to the same sections, and to the same bytes when
//! every section is kept; a reader that knows no section keeps only the
//! optional ones out (or refuses the file for a required one).

use ember_snapshot::{describe, StateFile};

/// Runs one input.
pub fn run(data: &[u8]) {
    let description = describe(data);
    let parsed = match StateFile::from_bytes(data, &|_| true) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "multi-line error: {message}");
            if let Ok(text) = description {
                assert!(
                    message.contains("this host is"),
                    "describe accepted what parsing refused ({message}): {text}"
                );
            }
            return;
        }
    };
    let text = description.expect("describe refused a file that parses");
    assert_eq!(text.lines().count(), parsed.sections.len() + 1, "{text}");

    let bytes = parsed.to_bytes().expect("parsed sections serialize");
    assert_eq!(bytes, data, "a parsed file serializes to its own bytes");
    let again = StateFile::from_bytes(&bytes, &|_| true).expect("re-serialized file parses");
    assert_eq!(again, parsed);

    match StateFile::from_bytes(data, &|_| false) {
        Ok(none) => {
            assert!(none.sections.is_empty());
            assert!(parsed.sections.iter().all(|s| !s.required));
        }
        Err(e) => {
            assert!(parsed.sections.iter().any(|s| s.required), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach past the checksum: all but the cut one parse.
    #[test]
    fn seeds_parse_except_the_truncated_one() {
        for (name, bytes) in crate::seeds::snapshot_state() {
            let parsed = StateFile::from_bytes(&bytes, &|_| true);
            assert_eq!(parsed.is_ok(), name != "truncated", "{name}");
        }
    }
}
