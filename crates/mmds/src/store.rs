//! The MMDS data store: one JSON document under a size limit, its version
//! and rendering settings, and the V2 session tokens.

use std::io;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::merge::merge_patch;
use crate::token::TokenStore;
use crate::{Error, Result};

/// Firecracker's default size limit of the document, in bytes: its default
/// API payload limit, which `--mmds-size-limit` defaults to.
pub const DEFAULT_SIZE_LIMIT: usize = 51200;

/// The MMDS version: V1 answers any `GET`, V2 only `GET`s with a session token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Version 1 (no tokens; deprecated by Firecracker).
    #[default]
    V1,
    /// Version 2 (session tokens).
    V2,
}

/// How a value is rendered for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// The value as compact JSON (`Accept: application/json`).
    Json,
    /// EC2 IMDS plain text: an object's keys one a line (`/` after those
    /// holding objects), a string's text; other values are refused.
    Imds,
}

/// The metadata store.
///
/// # Example
///
/// A store limited to 64 bytes of compact JSON refuses a larger document and
/// keeps the one it has:
///
/// ```
/// use ember_mmds::{Error, Mmds, OutputFormat};
/// use serde_json::json;
///
/// let mut mmds = Mmds::new(64);
/// assert!(matches!(mmds.patch(json!({"a": 1})), Err(Error::NotInitialized)));
/// mmds.put(json!({"instance-id": "i-1"}))?;
/// let too_big = json!({"instance-id": "x".repeat(100)});
/// assert!(matches!(mmds.put(too_big), Err(Error::DataStoreLimitExceeded)));
/// assert_eq!(mmds.get("/instance-id", OutputFormat::Imds)?, "i-1");
/// # Ok::<(), ember_mmds::Error>(())
/// ```
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    initialized: bool,
    limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: TokenStore,
}

impl Default for Mmds {
    fn default() -> Self {
        Mmds::new(DEFAULT_SIZE_LIMIT)
    }
}

/// A writer that only counts, and fails once past a limit so that
/// serialization stops early.
struct Counter {
    written: usize,
    limit: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `value`, as compact JSON, takes at most `limit` bytes (measured
/// without building the text).
pub fn fits(value: &Value, limit: usize) -> bool {
    serde_json::to_writer(&mut Counter { written: 0, limit }, value).is_ok()
}

/// `json` as IMDS plain text.
fn format_imds(json: &Value) -> Result<String> {
    match json {
        Value::Object(fields) => Ok(fields
            .iter()
            .map(|(key, value)| match value {
                Value::Object(_) => format!("{key}/"),
                _ => key.clone(),
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Value::String(text) => Ok(text.clone()),
        _ => Err(Error::UnsupportedValueType),
    }
}

impl Mmds {
    /// An empty store whose document may take `limit` bytes as compact JSON.
    pub fn new(limit: usize) -> Mmds {
        Mmds {
            data: Value::Null,
            initialized: false,
            limit,
            version: MmdsVersion::default(),
            imds_compat: false,
            tokens: TokenStore::default(),
        }
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The version.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Sets the version.
    pub fn set_version(&mut self, version: MmdsVersion) {
        self.version = version;
    }

    /// Whether every value is rendered as IMDS plain text, whatever the
    /// guest's `Accept` header (EC2 IMDS compatibility).
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// Sets the IMDS compatibility.
    pub fn set_imds_compat(&mut self, imds_compat: bool) {
        self.imds_compat = imds_compat;
    }

    /// Replaces the document (`PUT /mmds`); refused, the store unchanged,
    /// when it does not fit the limit.
    pub fn put(&mut self, data: Value) -> Result<()> {
        if !fits(&data, self.limit) {
            return Err(Error::DataStoreLimitExceeded);
        }
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// Merges `patch` into the document (`PATCH /mmds`, RFC 7396); refused
    /// before the first [`Mmds::put`] and, the store unchanged, when the
    /// result does not fit the limit.
    pub fn patch(&mut self, patch: Value) -> Result<()> {
        if !self.initialized {
            return Err(Error::NotInitialized);
        }
        let mut patched = self.data.clone();
        merge_patch(&mut patched, patch);
        if !fits(&patched, self.limit) {
            return Err(Error::DataStoreLimitExceeded);
        }
        self.data = patched;
        Ok(())
    }

    /// The document (`GET /mmds`; `null` before the first `PUT`).
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The value at `path` (a JSON pointer such as `/latest/meta-data/`,
    /// a trailing `/` ignored, the empty path for the whole document)
    /// rendered as `format` asks, or always as IMDS text with
    /// [`Mmds::imds_compat`].
    pub fn get(&self, path: &str, format: OutputFormat) -> Result<String> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self.data.pointer(pointer).ok_or(Error::NotFound)?;
        match (self.imds_compat, format) {
            (false, OutputFormat::Json) => Ok(value.to_string()),
            _ => format_imds(value),
        }
    }

    /// A V2 session token valid for `ttl_seconds` (1 to 21600).
    pub fn generate_token(&mut self, ttl_seconds: u32) -> Result<String> {
        self.tokens.generate(ttl_seconds, Instant::now())
    }

    /// Whether `token` is a V2 session token that has not expired.
    pub fn is_valid_token(&self, token: &str) -> bool {
        self.tokens.is_valid(token, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_replaces_patch_merges_and_get_returns() {
        let mut mmds = Mmds::default();
        assert_eq!(mmds.data(), &Value::Null);
        let patch = json!({"latest": {"meta-data": {"ami-id": "dummy"}}});
        assert!(matches!(
            mmds.patch(patch.clone()),
            Err(Error::NotInitialized)
        ));
        mmds.put(json!({"meta-data": {"iam": "dummy"}, "user-data": "1522850095"}))
            .unwrap();
        mmds.patch(json!({"user-data": "10"})).unwrap();
        assert_eq!(
            mmds.data(),
            &json!({"meta-data": {"iam": "dummy"}, "user-data": "10"})
        );
        mmds.put(patch.clone()).unwrap();
        assert_eq!(mmds.data(), &patch);
        mmds.patch(json!({"latest": {"meta-data": {"ami-id": null, "k": "v"}}}))
            .unwrap();
        assert_eq!(mmds.data(), &json!({"latest": {"meta-data": {"k": "v"}}}));
    }

    /// test_mmds_limit_scenario's sizes: a document of exactly the limit
    /// fits, one byte more does not, and a refusal changes nothing.
    #[test]
    fn the_limit_is_the_compact_json_size() {
        let mut mmds = Mmds::new(51200);
        let big =
            |n| json!({"latest": {"meta-data": {"ami-id": "smth", "secret_key": "a".repeat(n)}}});
        assert_eq!(big(51142).to_string().len(), 51200);
        mmds.put(json!({"a": 1})).unwrap();
        assert!(matches!(
            mmds.put(big(51143)),
            Err(Error::DataStoreLimitExceeded)
        ));
        assert_eq!(mmds.data(), &json!({"a": 1}));
        mmds.put(big(51142)).unwrap();
        let grow = json!({"latest": {"meta-data": {"secret_key2": "bbbbbbbbbb"}}});
        let error = mmds.patch(grow).unwrap_err();
        assert_eq!(error.to_string(), "The MMDS patch request doesn't fit.");
        assert_eq!(mmds.data(), &big(51142));
        mmds.patch(json!({"latest": {"meta-data": {"secret_key": "a"}}}))
            .unwrap();
        assert_eq!(mmds.data().to_string().len(), 59);
        assert!(fits(&json!(null), 4));
        assert!(!fits(&json!(null), 3));
        assert!(Mmds::new(0).put(json!({})).is_err());
    }

    fn sample(imds_compat: bool) -> Mmds {
        let mut mmds = Mmds::default();
        mmds.set_imds_compat(imds_compat);
        mmds.put(json!({
            "name": {"first": "John", "second": "Doe"},
            "age": 43,
            "phones": ["+401234567", "+441234567"],
            "member": false,
            "latest": {"meta-data": {"ami-id": "ami-1", "network": {"x": "y"}}}
        }))
        .unwrap();
        mmds
    }

    #[test]
    fn paths_render_as_json_or_imds_text() {
        let mmds = sample(false);
        let json = |path| mmds.get(path, OutputFormat::Json);
        let imds = |path| mmds.get(path, OutputFormat::Imds);
        assert_eq!(json("/name").unwrap(), r#"{"first":"John","second":"Doe"}"#);
        assert_eq!(
            json("/name/").unwrap(),
            r#"{"first":"John","second":"Doe"}"#
        );
        assert_eq!(json("/age").unwrap(), "43");
        assert_eq!(json("/phones/1").unwrap(), r#""+441234567""#);
        assert_eq!(imds("/name").unwrap(), "first\nsecond");
        assert_eq!(imds("/name/first").unwrap(), "John");
        assert_eq!(imds("/latest/meta-data/").unwrap(), "ami-id\nnetwork/");
        assert_eq!(imds("").unwrap(), "age\nlatest/\nmember\nname/\nphones");
        for path in ["/age", "/phones", "/member"] {
            assert!(
                matches!(imds(path), Err(Error::UnsupportedValueType)),
                "{path}"
            );
        }
        for path in ["/nowhere", "/name/third", "name"] {
            assert!(matches!(json(path), Err(Error::NotFound)), "{path}");
            assert!(matches!(imds(path), Err(Error::NotFound)), "{path}");
        }
    }

    #[test]
    fn imds_compat_renders_text_whatever_is_asked() {
        let mmds = sample(true);
        for format in [OutputFormat::Json, OutputFormat::Imds] {
            assert_eq!(mmds.get("/name", format).unwrap(), "first\nsecond");
            assert!(matches!(
                mmds.get("/age", format),
                Err(Error::UnsupportedValueType)
            ));
        }
    }

    #[test]
    fn version_and_tokens() {
        let mut mmds = Mmds::default();
        assert_eq!(mmds.version(), MmdsVersion::V1);
        mmds.set_version(MmdsVersion::V2);
        assert_eq!(mmds.version(), MmdsVersion::V2);
        let token = mmds.generate_token(60).unwrap();
        assert!(mmds.is_valid_token(&token));
        assert!(!mmds.is_valid_token("foo"));
        assert!(matches!(
            mmds.generate_token(0),
            Err(Error::InvalidTtlValue(0))
        ));
    }
}
