//! Where a rate limiter gets the time from: the monotonic clock in production,
//! anything a test wants in tests.

use std::fmt::Debug;
use std::time::Instant;

/// A source of monotonic instants.
pub trait Clock: Debug + Send {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock ([`Instant::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
