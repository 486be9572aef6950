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
//!
//! # Example
//!
//! A device allowed 2 operations per 20 ms (and unlimited bytes), sleeping on
//! the limiter's fd when refused:
//!
//! ```
//! use std::os::fd::AsRawFd;
//!
//! use ember_ratelimit::{BucketConfig, RateLimiter, TokenType};
//!
//! let ops = BucketConfig { size: 2, one_time_burst: 0, refill_time_ms: 20 };
//! let mut limiter = RateLimiter::new(None, Some(ops))?;
//! assert!(limiter.consume(4096, TokenType::Bytes));
//! assert!(limiter.consume(1, TokenType::Ops));
//! assert!(limiter.consume(1, TokenType::Ops));
//! // The bucket is empty: the request stays queued and the timer is armed.
//! assert!(!limiter.consume(1, TokenType::Ops));
//! assert!(limiter.is_blocked());
//!
//! // An event loop would watch the fd with epoll; here, wait for it with poll(2).
//! let mut fd = libc::pollfd { fd: limiter.as_raw_fd(), events: libc::POLLIN, revents: 0 };
//! // SAFETY: `fd` is one valid pollfd for the duration of the call.
//! let ready = unsafe { libc::poll(&mut fd, 1, 1000) };
//! assert_eq!(ready, 1);
//! limiter.event_handler()?;
//! assert!(!limiter.is_blocked());
//! assert!(limiter.consume(1, TokenType::Ops));
//! # Ok::<(), ember_ratelimit::Error>(())
//! ```

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
