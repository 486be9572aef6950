//! The API's side of the MMDS: the shared data store behind `GET|PUT|PATCH
//! /mmds`, `PUT /mmds/config` and `--metadata`, answered in Firecracker's
//! words and status codes.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use ember_mmds::{Mmds, MmdsConfig, DEFAULT_SIZE_LIMIT};
use ember_vmm::host_files::{open_input, InputKind};
use serde_json::Value;

use crate::request::ApiResponse;
use crate::{Error, Result};

/// How much larger than the size limit a `--metadata` file may be, for the
/// whitespace of pretty-printed JSON (the limit counts compact JSON).
const METADATA_FILE_SLACK: usize = 8;

/// The MMDS data store, created at the first use before the start (as
/// Firecracker creates it), shared with the network devices that answer the
/// guest.
#[derive(Debug)]
pub struct MmdsHost {
    limit: usize,
    store: Option<Arc<Mutex<Mmds>>>,
}

impl Default for MmdsHost {
    fn default() -> Self {
        MmdsHost::new(DEFAULT_SIZE_LIMIT)
    }
}

/// Firecracker's answer to a refused store operation: 413 over the limit,
/// 400 otherwise.
fn store_refused(error: &ember_mmds::Error) -> ApiResponse {
    match error {
        ember_mmds::Error::DataStoreLimitExceeded => {
            ApiResponse::error(413, &format!("MMDS limit exceeded error: {error}"))
        }
        _ => ApiResponse::bad_request(&format!("MMDS error: {error}")),
    }
}

/// Firecracker's answer to a refused `PUT /mmds/config` (its spelling).
pub fn config_refused(error: &ember_mmds::Error) -> ApiResponse {
    ApiResponse::bad_request(&format!("MMMDS config error: {error}"))
}

impl MmdsHost {
    /// No store yet; when there is one, its document may take `limit` bytes.
    pub fn new(limit: usize) -> MmdsHost {
        MmdsHost { limit, store: None }
    }

    /// The store, if anything created it: what the network part serves.
    pub fn store(&self) -> Option<Arc<Mutex<Mmds>>> {
        self.store.clone()
    }

    /// The store, created empty if nothing did yet: the guest's side needs
    /// one when `mmds-config` names interfaces.
    pub fn store_or_create(&mut self) -> Arc<Mutex<Mmds>> {
        let limit = self.limit;
        self.store
            .get_or_insert_with(|| Arc::new(Mutex::new(Mmds::new(limit))))
            .clone()
    }

    /// Runs `f` on the store. Before the start (`started` false) the store
    /// is created if need be; after it, a VM without one is refused as
    /// Firecracker refuses it.
    fn with_store<T>(
        &mut self,
        started: bool,
        f: impl FnOnce(&mut Mmds) -> T,
    ) -> std::result::Result<T, ApiResponse> {
        let limit = self.limit;
        let store = match (&self.store, started) {
            (Some(store), _) => store,
            (None, true) => return Err(store_refused(&ember_mmds::Error::NotInitialized)),
            (None, false) => self.store.insert(Arc::new(Mutex::new(Mmds::new(limit)))),
        };
        let mut mmds = store.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(f(&mut mmds))
    }

    /// `GET /mmds`: the document, `{}` when empty.
    pub fn get(&mut self, started: bool) -> ApiResponse {
        let data = self.with_store(started, |mmds| match mmds.data() {
            Value::Null => ApiResponse::ok(&serde_json::json!({})),
            data => ApiResponse::ok(data),
        });
        data.unwrap_or_else(|refused| refused)
    }

    /// `PUT /mmds`.
    pub fn put(&mut self, data: Value, started: bool) -> ApiResponse {
        self.update(started, |mmds| mmds.put(data))
    }

    /// `PATCH /mmds`.
    pub fn patch(&mut self, patch: Value, started: bool) -> ApiResponse {
        self.update(started, |mmds| mmds.patch(patch))
    }

    fn update(
        &mut self,
        started: bool,
        f: impl FnOnce(&mut Mmds) -> ember_mmds::Result<()>,
    ) -> ApiResponse {
        match self.with_store(started, f) {
            Ok(Ok(())) => ApiResponse::no_content(),
            Ok(Err(e)) => store_refused(&e),
            Err(refused) => refused,
        }
    }

    /// Applies a checked `mmds-config`'s version and rendering to the store
    /// (before the start: created if need be).
    pub fn configure(&mut self, config: &MmdsConfig) {
        let _ = self.with_store(false, |mmds| {
            mmds.set_version(config.version);
            mmds.set_imds_compat(config.imds_compat);
        });
    }

    /// `--metadata FILE`: the file's JSON becomes the document, refused when
    /// it is not JSON or does not fit the size limit. At most a few times
    /// the limit is read, whatever the file's size.
    pub fn load_metadata(&mut self, path: &Path) -> Result<()> {
        let refused = |reason: String| Error::Metadata {
            path: path.to_owned(),
            reason,
        };
        let file = open_input(path, InputKind::RegularFile, false)
            .map_err(|e| refused(format!("cannot open it: {e}")))?;
        let cap = self
            .limit
            .saturating_mul(METADATA_FILE_SLACK)
            .saturating_add(4096);
        let mut text = Vec::new();
        file.take(u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1))
            .read_to_end(&mut text)
            .map_err(|e| refused(format!("cannot read it: {e}")))?;
        if text.len() > cap {
            return Err(refused(format!(
                "it is larger than {cap} bytes (the MMDS size limit is {} bytes)",
                self.limit
            )));
        }
        let data: Value = serde_json::from_slice(&text)
            .map_err(|e| refused(format!("it is not valid JSON: {e}")))?;
        let limit = self.limit;
        match self.with_store(false, |mmds| mmds.put(data)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(refused(format!(
                "{e} (the MMDS size limit is {limit} bytes)"
            ))),
            Err(_) => Err(refused("no MMDS store".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(response: &ApiResponse) -> Value {
        serde_json::from_str(response.body.as_deref().unwrap_or("null")).unwrap()
    }

    #[test]
    fn the_guest_side_gets_the_one_store_the_api_fills() {
        let mut host = MmdsHost::new(64);
        let store = host.store_or_create();
        assert_eq!(store.lock().unwrap().limit(), 64);
        assert!(Arc::ptr_eq(&store, &host.store_or_create()));
        host.put(json!({"a": "b"}), true);
        assert_eq!(store.lock().unwrap().data(), &json!({"a": "b"}));
    }

    #[test]
    fn before_the_start_the_store_is_made_on_demand() {
        let mut host = MmdsHost::new(64);
        assert!(host.store().is_none());
        let got = host.get(false);
        assert_eq!((got.status, body(&got)), (200, json!({})));
        let patched = host.patch(json!({"a": 1}), false);
        assert_eq!(patched.status, 400);
        assert_eq!(
            body(&patched)["fault_message"],
            "MMDS error: The MMDS data store is not initialized."
        );
        assert_eq!(host.put(json!({"a": 1}), false).status, 204);
        assert_eq!(host.patch(json!({"b": "c"}), false).status, 204);
        assert_eq!(body(&host.get(false)), json!({"a": 1, "b": "c"}));
        let big = host.put(json!({"a": "x".repeat(64)}), false);
        assert_eq!(big.status, 413);
        assert_eq!(
            body(&big)["fault_message"],
            "MMDS limit exceeded error: The MMDS patch request doesn't fit."
        );
        assert!(host.store().is_some());
    }

    #[test]
    fn after_the_start_a_vm_without_a_store_is_refused() {
        let mut host = MmdsHost::default();
        for response in [
            host.get(true),
            host.put(json!({}), true),
            host.patch(json!({}), true),
        ] {
            assert_eq!(response.status, 400);
            assert_eq!(
                body(&response)["fault_message"],
                "MMDS error: The MMDS data store is not initialized."
            );
        }
        assert!(host.store().is_none());
        assert_eq!(host.put(json!({"a": 1}), false).status, 204);
        assert_eq!(host.patch(json!({"a": 2}), true).status, 204);
        assert_eq!(body(&host.get(true)), json!({"a": 2}));
    }

    #[test]
    fn configure_sets_version_and_rendering() {
        let mut host = MmdsHost::default();
        let config: MmdsConfig = serde_json::from_value(json!({
            "version": "V2", "network_interfaces": ["eth0"], "imds_compat": true
        }))
        .unwrap();
        host.configure(&config);
        let store = host.store().unwrap();
        let mmds = store.lock().unwrap();
        assert_eq!(mmds.version(), ember_mmds::MmdsVersion::V2);
        assert!(mmds.imds_compat());
    }

    #[test]
    fn metadata_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let mut host = MmdsHost::new(32);
        let pretty = write("pretty.json", "{\n    \"a\":     \"b\"\n}\n");
        host.load_metadata(&pretty).unwrap();
        assert_eq!(body(&host.get(false)), json!({"a": "b"}));
        let cases = [
            (write("bad.json", "{nope"), "is not valid JSON"),
            (
                write("big.json", &format!(r#"{{"a": "{}"}}"#, "x".repeat(40))),
                "The MMDS patch request doesn't fit. (the MMDS size limit is 32 bytes)",
            ),
            (
                write("huge.json", &" ".repeat(32 * 8 + 4097)),
                "is larger than 4352 bytes",
            ),
            (dir.path().join("absent.json"), "cannot open it"),
        ];
        for (path, reason) in cases {
            let error = host.load_metadata(&path).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        assert_eq!(body(&host.get(false)), json!({"a": "b"}));
    }
}
