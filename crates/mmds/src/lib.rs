//! The host side of the microVM metadata service (MMDS): the data store the
//! API fills and the guest-facing network stack reads.
//!
//! - [`Mmds`] ([`store`]): the JSON document, replaced by `PUT`, merged by
//!   `PATCH` ([`merge`], RFC 7396) and refused over its size limit before
//!   anything is stored; the V1/V2 version, the IMDS compatibility setting,
//!   and [`Mmds::get`], a path's value rendered as JSON or IMDS plain text.
//! - [`TokenStore`] ([`token`]): MMDS V2 session tokens (random, with a time
//!   to live of 1 to 21600 seconds, a bounded number alive at once).
//! - [`MmdsConfig`] ([`config`]): `PUT /mmds/config` and the config file's
//!   `mmds-config`.
//!
//! The network part ([`net`], with the `net` feature: ARP, TCP and HTTP
//! answered by the VMM for the guest) shares one `Arc<Mutex<Mmds>>` with the API and calls, per guest request,
//! [`Mmds::version`], [`Mmds::generate_token`] for `PUT /latest/api/token`,
//! [`Mmds::is_valid_token`] for V2 `GET`s, and [`Mmds::get`].
//!
//! # Example
//!
//! A document stored, patched and read back as the guest sees it:
//!
//! ```
//! use ember_mmds::{Mmds, OutputFormat};
//! use serde_json::json;
//!
//! let mut mmds = Mmds::default();
//! mmds.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "tags": {}}}}))?;
//! mmds.patch(json!({"latest": {"meta-data": {"hostname": "vm1", "tags": null}}}))?;
//! assert_eq!(
//!     mmds.get("/latest/meta-data/", OutputFormat::Imds)?,
//!     "ami-id\nhostname"
//! );
//! assert_eq!(mmds.get("/latest/meta-data/hostname", OutputFormat::Json)?, "\"vm1\"");
//! # Ok::<(), ember_mmds::Error>(())
//! ```

pub mod config;
pub mod merge;
#[cfg(feature = "net")]
pub mod net;
pub mod store;
pub mod token;

pub use config::{is_link_local_valid, MmdsConfig, DEFAULT_IPV4_ADDRESS};
pub use store::{Mmds, MmdsVersion, OutputFormat, DEFAULT_SIZE_LIMIT};
pub use token::{TokenStore, MAX_LIVE_TOKENS, MAX_TOKEN_TTL_SECONDS, MIN_TOKEN_TTL_SECONDS};

/// MMDS errors, displayed in Firecracker's words.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `PUT` or `PATCH` would make the document larger than the limit.
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
    /// No value at the path asked for.
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// A `PATCH` before any `PUT`.
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// The value cannot be rendered as IMDS plain text.
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
    /// A token's time to live is out of range.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtlValue(u32),
    /// The system's random number generator failed.
    #[error("Failed to generate a token: {0}")]
    Random(getrandom::Error),
    /// `mmds-config` names no interface.
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkIfaceList,
    /// `mmds-config`'s address is not a usable link-local one.
    #[error("The MMDS IPv4 address is not link local.")]
    InvalidIpv4Addr,
    /// `mmds-config` names an interface the VM does not have.
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not \
         correspond to any existing network interface."
    )]
    InvalidNetworkInterfaceId,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
