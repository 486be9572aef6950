//! A human summary of a state file, for `ember snapshot describe`.

use std::fmt::Write;

use crate::format::{arch_name, decode, FORMAT_VERSION};
use crate::Result;

/// Summarizes a state file: its format version, architecture and size, then
/// one line per section (id, version, required or optional, payload size).
/// Files of any architecture are described; malformed ones are an error.
///
/// # Example
///
/// ```
/// use ember_snapshot::{describe, Section, StateFile};
///
/// let mut state = StateFile::default();
/// state.sections.push(Section::json("vm", 1, &[1, 2, 3])?);
/// let text = describe(&state.to_bytes()?)?;
/// assert!(text.starts_with("Ember state file, format version 1"));
/// assert!(text.contains("vm  version 1      required  7 bytes"));
/// assert!(describe(b"not a state file").is_err());
/// # Ok::<(), ember_snapshot::Error>(())
/// ```
pub fn describe(bytes: &[u8]) -> Result<String> {
    let decoded = decode(bytes)?;
    let mut out = format!(
        "Ember state file, format version {FORMAT_VERSION}, architecture {}, {} bytes, {} sections\n",
        arch_name(decoded.arch),
        bytes.len(),
        decoded.sections.len()
    );
    let width = decoded
        .sections
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(0);
    for section in &decoded.sections {
        let kind = if section.required {
            "required"
        } else {
            "optional"
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "  {:width$}  version {:<5}  {kind}  {} bytes",
            section.id,
            section.version,
            section.payload.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Section, StateFile};

    #[test]
    fn lists_header_and_sections() {
        let mut optional = Section::json("device.block.rootfs", 3, &[0u8; 4]).unwrap();
        optional.required = false;
        let file = StateFile {
            sections: vec![Section::json("vm", 1, &"x").unwrap(), optional],
        };
        let bytes = file.to_bytes().unwrap();
        let text = describe(&bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("format version 1"), "{text}");
        let arch = format!("architecture {}", arch_name(crate::HOST_ARCH));
        assert!(lines[0].contains(&arch), "{text}");
        assert!(lines[0].contains(&format!("{} bytes, 2 sections", bytes.len())));
        assert!(lines[1].starts_with("  vm "), "{text}");
        assert!(lines[1].contains("version 1") && lines[1].contains("required"));
        assert!(lines[1].ends_with(" 3 bytes"), "{text}");
        assert!(
            lines[2].contains("device.block.rootfs  version 3"),
            "{text}"
        );
        assert!(lines[2].contains("optional") && lines[2].ends_with(" 9 bytes"));
        assert!(describe(&bytes[..bytes.len() - 1]).is_err());
    }
}
