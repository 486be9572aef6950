//! Reading a Firecracker JSON config file into [`VmResources`].

use std::path::Path;

use crate::model::VmResources;
use crate::{Error, Result};

/// Largest config file accepted (Firecracker configs are a few KiB).
const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Reads and parses the config file at `path`. Errors name the file and, for
/// malformed JSON, the line and column.
pub fn load(path: &Path) -> Result<VmResources> {
    let read_err = |source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_SIZE {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes is larger than the {MAX_CONFIG_SIZE}-byte limit"),
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
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
        let err = load(&bad).unwrap_err().to_string();
        assert!(err.contains("line 4 column 3"), "{err}");

        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        assert_eq!(load(&good).unwrap().machine_config.vcpu_count, 1);
    }
}
