//! Ember's Firecracker-compatible front end.
//!
//! - [`model`]: the VM resources with Firecracker's JSON names and fields
//!   (`boot-source`, `machine-config`, `drives`, ...), shared by the config file
//!   and the REST API, and their translation into an [`ember_vmm::VmConfig`].
//! - [`config_file`]: reading a Firecracker config file.
//! - [`socket`], [`http`], [`connection`], [`server`]: the REST API's HTTP
//!   server on a Unix socket; [`routes`] and [`request`] turn requests into
//!   typed ones, which cross to the VMM thread through [`channel`]; there
//!   [`controller`] answers them (`GET /vm/config` in [`full_config`]'s
//!   shape) and [`service`] runs it all.
//! - [`mmds`]: the API's side of the microVM metadata service (the store
//!   itself is the `ember-mmds` crate).
//! - [`logger`], [`metrics`], [`destination`]: logs and metrics to files or FIFOs.

/// The Firecracker release whose API (swagger) and command line Ember
/// follows, as a macro so that it can be `concat!`ed.
macro_rules! firecracker_version {
    () => {
        "1.16.1"
    };
}

/// The Firecracker release whose API and command line Ember follows.
pub const FIRECRACKER_VERSION: &str = firecracker_version!();

/// What Ember reports where Firecracker reports its version (`--version`'s
/// `Firecracker vX.Y.Z` line and `GET /version`'s `firecracker_version`):
/// [`FIRECRACKER_VERSION`] with Ember's own version as semver build metadata,
/// e.g. `1.16.1+ember.0.1.0`. Tools that compare Firecracker versions (Kata
/// Containers, the Go SDK) read 1.16.1, since build metadata does not count
/// in semver comparisons, and it still says that this is Ember.
pub const REPORTED_FIRECRACKER_VERSION: &str =
    concat!(firecracker_version!(), "+ember.", env!("CARGO_PKG_VERSION"));

pub mod balloon;
pub mod channel;
pub mod config_file;
pub mod connection;
pub mod controller;
pub mod destination;
pub mod full_config;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod model;
pub mod request;
pub mod routes;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod socket;

/// Errors from the configuration front end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file cannot be read.
    #[error("cannot read config file {path}")]
    ReadConfig {
        /// The path given.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid JSON for the model.
    #[error("invalid config file {path}")]
    ParseConfig {
        /// The path given.
        path: std::path::PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// A field has a value Ember does not accept.
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        /// The JSON field, e.g. `machine-config.vcpu_count`.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A Firecracker resource Ember does not provide (yet).
    #[error("`{0}` is not supported by this version of Ember")]
    Unsupported(&'static str),
    /// The log destination cannot be opened.
    #[error("cannot open log file {path}")]
    OpenLog {
        /// The path given.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The serial console's output cannot be opened.
    #[error("cannot open the serial output {path}")]
    OpenSerial {
        /// The path given.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A logger is already installed in this process.
    #[error("a logger is already installed")]
    LoggerInstalled,
    /// The API socket cannot be created.
    #[error("cannot create the API socket {path}: {reason}")]
    ApiSocket {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP server failed.
    #[error("API server: {0}")]
    ApiServer(String),
    /// A system call failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] ember_vmm::Error),
    /// `--metrics-path` could not be set up.
    #[error("--metrics-path: {0}")]
    MetricsPath(String),
    /// The `--metadata` file was refused.
    #[error("--metadata {path}: {reason}")]
    Metadata {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The config file's `logger` or `metrics` object was refused.
    #[error("config file: {0}")]
    ConfigFileSettings(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
