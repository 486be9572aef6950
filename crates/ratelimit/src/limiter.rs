//! The rate limiter a device holds: an optional bandwidth bucket, an optional
//! operations bucket, and the timerfd that tells the device when to try again.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::bucket::{BucketConfig, BucketState, Reduction, TokenBucket};
use crate::clock::{Clock, MonotonicClock};
use crate::timer::RefillTimer;
use crate::{Error, Result};

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// The bandwidth bucket, in bytes.
    Bytes,
    /// The operations bucket, one token per operation.
    Ops,
}

/// A change to one bucket, for [`RateLimiter::update_buckets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave the bucket and its levels as they are.
    Keep,
    /// Remove the bucket: that token type becomes unlimited.
    Disable,
    /// Replace the bucket by a new, full one (an unlimited configuration removes it).
    Set(BucketConfig),
}

impl BucketUpdate {
    fn apply(self, slot: &mut Option<TokenBucket>, clock: &dyn Clock) {
        match self {
            BucketUpdate::Keep => {}
            BucketUpdate::Disable => *slot = None,
            BucketUpdate::Set(config) => *slot = TokenBucket::new(config, clock.now()),
        }
    }
}

/// A rate limiter's levels as plain data. `None` means "unlimited".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RateLimiterState {
    /// The bandwidth bucket.
    pub bandwidth: Option<BucketState>,
    /// The operations bucket.
    pub ops: Option<BucketState>,
}

/// Token buckets for bytes and operations, plus a timerfd.
///
/// A device asks [`RateLimiter::consume`] before each operation. When a bucket
/// cannot pay, `consume` returns `false`, arms the timer for the moment the
/// bucket will hold enough tokens, and the limiter is *blocked*: every
/// `consume` fails until the device, woken by the timerfd (see [`AsRawFd`]),
/// calls [`RateLimiter::event_handler`]. The device then retries the refused
/// operation. A device that charged one bucket and is refused by the other
/// gives the first charge back with [`RateLimiter::manual_replenish`].
///
/// # Example
///
/// A limiter on a clock the caller controls, so nothing depends on how fast
/// this runs (the crate-level example waits on the timerfd instead):
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::{Duration, Instant};
///
/// use ember_ratelimit::{BucketConfig, BucketUpdate, Clock, RateLimiter, TokenType};
///
/// #[derive(Debug)]
/// struct ManualClock(Arc<Mutex<Instant>>);
/// impl Clock for ManualClock {
///     fn now(&self) -> Instant {
///         *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
///     }
/// }
///
/// let time = ManualClock(Arc::new(Mutex::new(Instant::now())));
/// let bytes = BucketConfig { size: 64 << 10, one_time_burst: 0, refill_time_ms: 100 };
/// let mut limiter = RateLimiter::with_clock(Some(bytes), None, Box::new(time))?;
///
/// // A request larger than the bucket goes through once, on a full bucket...
/// assert!(limiter.consume(96 << 10, TokenType::Bytes));
/// // ...and leaves a debt: 32 KiB owed, then 1 byte, is 150 ms of refill.
/// let state = limiter.state();
/// assert_eq!(state.bandwidth.map(|b| b.debt), Some(32 << 10));
/// assert!(!limiter.consume(1, TokenType::Bytes));
/// assert!(limiter.is_blocked());
///
/// // Operations were never limited; a new configuration turns that on and
/// // moves the timer so the device retries at once.
/// let ops = BucketConfig { size: 10, one_time_burst: 0, refill_time_ms: 1000 };
/// limiter.update_buckets(BucketUpdate::Keep, BucketUpdate::Set(ops));
/// assert!(limiter.bucket(TokenType::Ops).is_some());
///
/// // Snapshots: the levels as plain data, and a limiter rebuilt from them.
/// let restored = RateLimiter::restore(&limiter.state())?;
/// assert_eq!(restored.bucket(TokenType::Bytes).map(|b| b.debt()), Some(32 << 10));
/// # Ok::<(), ember_ratelimit::Error>(())
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: RefillTimer,
    blocked: bool,
    clock: Box<dyn Clock>,
}

impl RateLimiter {
    /// A limiter on the monotonic clock. A `None` or unlimited configuration
    /// (size or refill time 0) leaves that token type unlimited.
    pub fn new(bandwidth: Option<BucketConfig>, ops: Option<BucketConfig>) -> Result<RateLimiter> {
        RateLimiter::with_clock(bandwidth, ops, Box::new(MonotonicClock))
    }

    /// A limiter reading the time from `clock`.
    pub fn with_clock(
        bandwidth: Option<BucketConfig>,
        ops: Option<BucketConfig>,
        clock: Box<dyn Clock>,
    ) -> Result<RateLimiter> {
        let now = clock.now();
        Ok(RateLimiter {
            bandwidth: bandwidth.and_then(|c| TokenBucket::new(c, now)),
            ops: ops.and_then(|c| TokenBucket::new(c, now)),
            timer: RefillTimer::new()?,
            blocked: false,
            clock,
        })
    }

    /// A limiter on the monotonic clock with the levels saved in `state` (see
    /// [`RateLimiter::from_state`]): budgets, debts and one-time bursts as
    /// saved; refilling resumes now, with the fraction of a token that was
    /// accruing, so the time between the save and the restore earns nothing.
    pub fn restore(state: &RateLimiterState) -> Result<RateLimiter> {
        RateLimiter::from_state(state, Box::new(MonotonicClock))
    }

    /// A limiter with the levels saved in `state`. It starts unblocked: a device
    /// retries its pending work and the limiter blocks again if it must.
    pub fn from_state(state: &RateLimiterState, clock: Box<dyn Clock>) -> Result<RateLimiter> {
        let now = clock.now();
        Ok(RateLimiter {
            bandwidth: state
                .bandwidth
                .and_then(|s| TokenBucket::from_state(&s, now)),
            ops: state.ops.and_then(|s| TokenBucket::from_state(&s, now)),
            timer: RefillTimer::new()?,
            blocked: false,
            clock,
        })
    }

    /// The levels as plain data.
    pub fn state(&self) -> RateLimiterState {
        let now = self.clock.now();
        RateLimiterState {
            bandwidth: self.bandwidth.as_ref().map(|b| b.state(now)),
            ops: self.ops.as_ref().map(|b| b.state(now)),
        }
    }

    /// The bucket for `kind`, if that type is limited.
    pub fn bucket(&self, kind: TokenType) -> Option<&TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_ref(),
            TokenType::Ops => self.ops.as_ref(),
        }
    }

    fn bucket_mut(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Whether neither token type is limited.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether the limiter refuses everything until its timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes `tokens` of `kind` (all or nothing; see [`TokenBucket`] for the
    /// rules, including overconsumption). Returns `false`, and blocks the
    /// limiter until the timer fires, when the bucket cannot pay; always
    /// `false` while blocked; always `true` for an unlimited type.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        // An unlimited token type costs no clock read: it is the common case.
        if self.bucket(kind).is_none() {
            return true;
        }
        let now = self.clock.now();
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        match bucket.reduce(tokens, now) {
            Reduction::Consumed => true,
            Reduction::Insufficient(wait) => {
                match self.timer.arm(wait) {
                    Ok(()) => self.blocked = true,
                    // Without a timer nothing would ever unblock the device, so
                    // stay unblocked: the device retries on its next event.
                    Err(e) => log::error!("rate limiter: cannot arm the refill timer: {e}"),
                }
                false
            }
        }
    }

    /// Gives back `tokens` of `kind` charged for an operation that did not
    /// happen. Does not unblock the limiter.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.bucket_mut(kind) {
            bucket.replenish(tokens);
        }
    }

    /// To call when the timerfd is readable: consumes the expiration and
    /// unblocks the limiter. [`Error::SpuriousEvent`] (and still blocked when
    /// it was) when the timer had not fired.
    pub fn event_handler(&mut self) -> Result<()> {
        match self.timer.acknowledge() {
            Ok(true) => {
                self.blocked = false;
                Ok(())
            }
            Ok(false) => Err(Error::SpuriousEvent),
            Err(e) => {
                // The timer is unusable; do not leave the device stuck.
                self.blocked = false;
                Err(Error::Timer(e))
            }
        }
    }

    /// Changes the buckets at run time. A blocked limiter has its timer moved
    /// to fire at once (after [`crate::MIN_WAIT`]), so the device retries under
    /// the new configuration instead of waiting for the old one.
    pub fn update_buckets(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        bandwidth.apply(&mut self.bandwidth, self.clock.as_ref());
        ops.apply(&mut self.ops, self.clock.as_ref());
        if self.blocked {
            if let Err(e) = self.timer.arm(Duration::ZERO) {
                log::error!("rate limiter: cannot re-arm the refill timer: {e}");
                self.blocked = false;
            }
        }
    }
}

/// The timerfd to watch for readability.
impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Clone, Debug)]
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn new() -> ManualClock {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn config(size: u64, one_time_burst: u64, refill_time_ms: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    fn limiter(
        bandwidth: Option<BucketConfig>,
        ops: Option<BucketConfig>,
    ) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_clock(bandwidth, ops, Box::new(clock.clone())).unwrap();
        (limiter, clock)
    }

    /// Waits up to `ms` for the timerfd to become readable.
    fn timer_fires_within(limiter: &RateLimiter, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: limiter.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and the count says so.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    #[test]
    fn missing_or_zero_buckets_are_unlimited() {
        let (mut l, _clock) = limiter(None, None);
        assert!(l.is_unlimited());
        assert!(l.consume(u64::MAX, TokenType::Bytes));
        assert!(l.consume(u64::MAX, TokenType::Ops));

        let (mut l, _clock) = limiter(Some(config(0, 10, 100)), Some(config(10, 0, 0)));
        assert!(l.is_unlimited());
        for _ in 0..100 {
            assert!(l.consume(1 << 40, TokenType::Bytes));
            assert!(l.consume(1000, TokenType::Ops));
        }
        assert!(!l.is_blocked());
        assert_eq!(l.state(), RateLimiterState::default());
    }

    #[test]
    fn refusal_blocks_until_the_timer_fires() {
        // One operation every 20 ms.
        let (mut l, clock) = limiter(None, Some(config(1, 0, 20)));
        assert!(l.consume(1, TokenType::Ops));
        assert!(l.consume(1 << 30, TokenType::Bytes), "bytes are unlimited");
        assert!(!l.consume(1, TokenType::Ops));
        assert!(l.is_blocked());
        assert!(timer_fires_within(&l, 1000));
        // Still blocked until the device handles the timer event.
        assert!(!l.consume(1, TokenType::Bytes));
        l.event_handler().unwrap();
        assert!(!l.is_blocked());
        clock.advance(Duration::from_millis(20));
        assert!(l.consume(1, TokenType::Ops));
        assert!(!l.consume(1, TokenType::Ops));
    }

    #[test]
    fn blocked_limiter_waits_for_its_timer_even_when_tokens_exist() {
        // One operation a minute: the timer does not fire during the test.
        let (mut l, clock) = limiter(None, Some(config(1, 0, 60_000)));
        assert!(l.consume(1, TokenType::Ops));
        assert!(!l.consume(1, TokenType::Ops));
        clock.advance(Duration::from_secs(3600));
        assert!(!l.consume(1, TokenType::Ops));
        assert!(!l.consume(1, TokenType::Bytes));
        assert!(matches!(l.event_handler(), Err(Error::SpuriousEvent)));
        assert!(l.is_blocked());
    }

    #[test]
    fn timer_is_armed_for_the_computed_wait() {
        // 10 bytes per 100 ms; the first 10 are free.
        let (mut l, _clock) = limiter(Some(config(10, 0, 100)), None);
        assert!(l.consume(10, TokenType::Bytes));
        let start = Instant::now();
        // 5 bytes need 50 ms.
        assert!(!l.consume(5, TokenType::Bytes));
        assert!(!timer_fires_within(&l, 20), "not before the tokens exist");
        assert!(timer_fires_within(&l, 1000));
        assert!(start.elapsed() >= Duration::from_millis(50));
        l.event_handler().unwrap();
    }

    #[test]
    fn replenish_returns_the_first_charge_when_the_second_bucket_refuses() {
        let (mut l, _clock) = limiter(Some(config(100, 0, 1000)), Some(config(2, 0, 1000)));
        assert!(l.consume(30, TokenType::Bytes));
        assert!(l.consume(1, TokenType::Ops));
        assert!(!l.consume(80, TokenType::Bytes));
        assert!(l.is_blocked());
        l.manual_replenish(1, TokenType::Ops);
        assert_eq!(l.bucket(TokenType::Ops).unwrap().budget(), 2);
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().budget(), 70);
        l.manual_replenish(7, TokenType::Bytes);
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().budget(), 77);
        l.manual_replenish(700, TokenType::Bytes);
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().budget(), 100);
    }

    #[test]
    fn overconsumption_succeeds_then_blocks_the_next_request() {
        let (mut l, clock) = limiter(Some(config(100, 0, 100)), None);
        assert!(l.consume(350, TokenType::Bytes));
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().debt(), 250);
        assert!(!l.consume(1, TokenType::Bytes));
        assert!(l.is_blocked());
        // Paying 250 of debt and one token takes 251 ms.
        assert!(!timer_fires_within(&l, 100));
        clock.advance(Duration::from_millis(251));
        assert!(timer_fires_within(&l, 1000));
        l.event_handler().unwrap();
        assert!(l.consume(1, TokenType::Bytes));
    }

    #[test]
    fn update_buckets_keeps_disables_or_replaces() {
        let (mut l, _clock) = limiter(Some(config(100, 0, 1000)), Some(config(10, 0, 1000)));
        assert!(l.consume(60, TokenType::Bytes));
        assert!(l.consume(4, TokenType::Ops));

        l.update_buckets(BucketUpdate::Keep, BucketUpdate::Keep);
        assert_eq!(l.bucket(TokenType::Bytes).unwrap().budget(), 40);
        assert_eq!(l.bucket(TokenType::Ops).unwrap().budget(), 6);

        l.update_buckets(
            BucketUpdate::Set(config(1000, 5, 10)),
            BucketUpdate::Disable,
        );
        let bytes = l.bucket(TokenType::Bytes).unwrap();
        assert_eq!((bytes.budget(), bytes.burst()), (1000, 5));
        assert!(l.bucket(TokenType::Ops).is_none());
        assert!(l.consume(1 << 20, TokenType::Ops));

        l.update_buckets(BucketUpdate::Set(config(0, 0, 10)), BucketUpdate::Keep);
        assert!(l.is_unlimited());
    }

    #[test]
    fn updating_a_blocked_limiter_wakes_the_device_soon() {
        let (mut l, _clock) = limiter(None, Some(config(1, 0, 60_000)));
        assert!(l.consume(1, TokenType::Ops));
        assert!(!l.consume(1, TokenType::Ops));
        l.update_buckets(BucketUpdate::Keep, BucketUpdate::Disable);
        assert!(l.is_blocked(), "until the device handles the timer");
        assert!(timer_fires_within(&l, 1000));
        l.event_handler().unwrap();
        assert!(l.consume(1, TokenType::Ops));
    }

    #[test]
    fn state_round_trips() {
        let (mut l, clock) = limiter(Some(config(100, 50, 1000)), Some(config(10, 0, 100)));
        assert!(l.consume(120, TokenType::Bytes));
        assert!(l.consume(3, TokenType::Ops));
        clock.advance(Duration::from_millis(5));
        let state = l.state();
        let bandwidth = state.bandwidth.unwrap();
        assert_eq!((bandwidth.budget, bandwidth.burst), (30, 0));
        assert_eq!(bandwidth.pending_refill_ns, 5_000_000);
        assert_eq!(state.ops.unwrap().budget, 7);

        let clock2 = ManualClock::new();
        let restored = RateLimiter::from_state(&state, Box::new(clock2.clone())).unwrap();
        assert!(!restored.is_blocked());
        assert_eq!(restored.state(), state);
        clock2.advance(Duration::from_millis(5));
        let mut restored = restored;
        assert!(
            restored.consume(31, TokenType::Bytes),
            "10 ms in all: one more byte"
        );
        assert!(!restored.consume(1, TokenType::Bytes));
    }

    #[test]
    fn restore_keeps_levels_and_burst_on_the_monotonic_clock() {
        let (mut l, _clock) = limiter(Some(config(1000, 500, 60_000)), None);
        assert!(l.consume(700, TokenType::Bytes));
        let state = l.state();
        let mut restored = RateLimiter::restore(&state).unwrap();
        let bandwidth = restored.bucket(TokenType::Bytes).unwrap();
        assert_eq!((bandwidth.burst(), bandwidth.budget()), (0, 800));
        assert!(restored.consume(800, TokenType::Bytes));
        assert!(
            !restored.consume(100, TokenType::Bytes),
            "a minute per 1000"
        );
        assert!(restored.is_blocked());
    }

    #[test]
    fn state_serde_round_trip() {
        let (mut l, clock) = limiter(Some(config(100, 50, 1000)), Some(config(10, 3, 100)));
        assert!(l.consume(120, TokenType::Bytes));
        clock.advance(Duration::from_millis(3));
        let state = l.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: RateLimiterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert!(json.contains("\"one_time_burst\":3"), "{json}");
    }
}
