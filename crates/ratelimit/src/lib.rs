//! Token-bucket rate limiting for virtual devices, with the semantics of
//! Firecracker's `rate_limiter` object: an optional bandwidth bucket (bytes) and
//! an optional operations bucket, each `{ size, one_time_burst, refill_time_ms }`.
//!
//! - [`bucket`]: one bucket as plain, deterministic data ([`TokenBucket`]): the
//!   refill arithmetic, the one-time burst and overconsumption.
//! - [`limiter`]: the [`RateLimiter`] a device holds, with a timerfd that wakes the
//!   device when a refused request can go through.
//! - [`clock`]: the time source, replaceable in tests.
//!
//! How a device uses it: register the limiter's fd ([`std::os::fd::AsRawFd`]) for
//! readability on its event loop; before each request call
//! [`RateLimiter::consume`]; when it returns `false`, leave the request queued and
//! stop; when the fd fires, call [`RateLimiter::event_handler`] and resume.
//!
//! Snapshots: [`RateLimiter::state`] gives the levels as plain data
//! ([`RateLimiterState`]; with the `serde` feature, serializable) and
//! [`RateLimiter::restore`] rebuilds a limiter from them.
//!
//! A bucket of size 0 or refill time 0 is "unlimited", as in Firecracker.
//! Unlike Firecracker, a refused request consumes nothing (not even the one-time
//! burst), and a request larger than the bucket is only let through when the
//! bucket is full; it then leaves a debt that later requests wait for.

pub mod bucket;
pub mod clock;
pub mod limiter;
mod timer;

pub use bucket::{BucketConfig, BucketState, Reduction, TokenBucket};
pub use clock::{Clock, MonotonicClock};
pub use limiter::{BucketUpdate, RateLimiter, RateLimiterState, TokenType};
pub use timer::MIN_WAIT;

/// Errors from the rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, arming or reading the refill timerfd failed.
    #[error("rate limiter timer: {0}")]
    Timer(std::io::Error),
    /// The timer event was handled although the timer had not fired.
    #[error("rate limiter timer event without an expiration")]
    SpuriousEvent,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
