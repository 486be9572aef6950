//! `config_file`: arbitrary bytes as a Firecracker config file, through the
//! parse and validation of `ember_api::config_file::load`.
//!
//! Invariants: nothing panics and every error can be displayed; text that is
//! not UTF-8 is refused as `load` refuses it (it reads the file as a
//! string); anything accepted serializes to JSON that parses (and validates)
//! back to an equal value, and translates into a VM configuration exactly
//! when it names a kernel.

use ember_api::config_file;
use ember_api::model::VmResources;
use ember_vmm::StartTime;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let resources = match config_file::parse(text) {
        Ok(resources) => resources,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let json = serde_json::to_string(&resources).expect("accepted resources serialize");
    let back: VmResources =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert_eq!(back, resources, "round trip through {json}");
    let again = config_file::parse(&json)
        .unwrap_or_else(|e| panic!("{json} parses but no longer validates: {e}"));
    assert_eq!(again, resources);
    let pretty = serde_json::to_string_pretty(&resources).expect("serialize");
    assert_eq!(config_file::parse(&pretty).ok(), Some(resources.clone()));
    match resources.to_vm_config(StartTime::now()) {
        Ok(config) => {
            let boot = resources.boot_source.as_ref().expect("a kernel was named");
            assert_eq!(config.kernel, boot.kernel_image_path);
            assert_eq!(config.drives.len(), resources.drives.len());
        }
        Err(e) => assert!(
            resources.boot_source.is_none(),
            "valid resources with a kernel refused: {e}"
        ),
    }
}
