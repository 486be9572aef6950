//! Reading a Firecracker JSON config file into [`VmResources`].

use std::io::Read;
use std::path::Path;

use ember_vmm::host_files::{open_input, InputKind};

use crate::model::VmResources;
use crate::{Error, Result};

/// Largest config file accepted (Firecracker configs are a few KiB).
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Reads and parses the config file at `path`. It must be a regular file
/// (a FIFO, directory or device is refused without blocking), and at most
/// [`MAX_CONFIG_SIZE`] bytes are read whatever its size says, so a file that
/// grows while it is read cannot make Ember read forever. Errors name the file
/// and, for malformed JSON, the line and column.
pub fn load(path: &Path) -> Result<VmResources> {
    let read_err = |source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    };
    let file = open_input(path, InputKind::RegularFile, false).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than the {MAX_CONFIG_SIZE}-byte limit"),
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse(&text).map_err(|e| match e {
        Error::ParseConfig { source, .. } => Error::ParseConfig {
            path: path.to_owned(),
            source,
        },
        other => other,
    })
}

/// Parses and validates the text of a config file: what [`load`] does once the
/// file is read (also the entry point of the `config_file` fuzz target).
/// Malformed JSON is an [`Error::ParseConfig`] with an empty path, which
/// [`load`] replaces by the file's.
pub fn parse(text: &str) -> Result<VmResources> {
    let resources: VmResources =
        serde_json::from_str(text).map_err(|source| Error::ParseConfig {
            path: std::path::PathBuf::new(),
            source,
        })?;
    resources.validate()?;
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = load(&missing).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read config file"),
            "{err}"
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            "{\n  \"boot-source\": {\n    \"kernel_image_path\": \"k\",\n  }\n}",
        )
        .unwrap();
        let err = ember_vmm::error_chain(&load(&bad).unwrap_err());
        assert!(err.contains("line 4 column 3"), "{err}");

        for (path, what) in [
            (dir.path(), "it is a directory, not a regular file"),
            (
                Path::new("/dev/zero"),
                "it is a character device, not a regular file",
            ),
        ] {
            let err = ember_vmm::error_chain(&load(path).unwrap_err());
            assert!(err.contains(what), "{err}");
        }
        let big = dir.path().join("big.json");
        let padding = " ".repeat(usize::try_from(MAX_CONFIG_SIZE).unwrap());
        std::fs::write(&big, format!("{{}}{padding}")).unwrap();
        let err = ember_vmm::error_chain(&load(&big).unwrap_err());
        assert!(err.contains("larger than the 1048576-byte limit"), "{err}");
        std::fs::write(&big, &padding[2..]).unwrap();
        let err = ember_vmm::error_chain(&load(&big).unwrap_err());
        assert!(
            err.contains("EOF while parsing"),
            "at the limit it is read: {err}"
        );

        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        assert_eq!(load(&good).unwrap().machine().vcpu_count, 1);
    }
}
