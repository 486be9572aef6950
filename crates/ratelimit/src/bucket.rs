//! One token bucket: its configuration, its live levels and the refill arithmetic.
//! Every operation takes the current time as an argument, so the bucket is plain
//! deterministic data that tests drive with made-up instants.

use std::time::{Duration, Instant};

const NANOS_PER_MILLI: u128 = 1_000_000;

/// Configuration of one bucket, with the fields of Firecracker's `TokenBucket` object.
///
/// A bucket whose `size` or `refill_time_ms` is 0 does not limit anything (see
/// [`BucketConfig::is_unlimited`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BucketConfig {
    /// Tokens the bucket holds when full; it refills linearly from empty to full
    /// in `refill_time_ms`.
    pub size: u64,
    /// Extra tokens available once, spent before the regular budget and never refilled.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to refill completely.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// Whether this configuration means "no limit" (size or refill time of 0).
    pub fn is_unlimited(&self) -> bool {
        self.size == 0 || self.refill_time_ms == 0
    }
}

/// The levels of a bucket as plain data, for snapshots and live updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BucketState {
    /// The bucket's configuration.
    pub config: BucketConfig,
    /// Tokens in the regular budget (at most `config.size`).
    pub budget: u64,
    /// Tokens owed after an overconsumption; refills pay this back before the
    /// budget grows. Non-zero only when `budget` is 0.
    pub debt: u64,
    /// What is left of the one-time burst.
    pub burst: u64,
    /// Nanoseconds of refill time accrued since the levels were last credited.
    pub pending_refill_ns: u64,
}

/// What [`TokenBucket::reduce`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Reduction {
    /// The tokens were taken.
    Consumed,
    /// Nothing was taken: the bucket needs this long to hold enough tokens.
    Insufficient(Duration),
}

/// A token bucket with its live levels.
///
/// Consumption rules, in order, for a request of `n` tokens:
/// 1. the one-time burst pays for the request if it covers all of it;
/// 2. otherwise the rest of the burst plus the budget pay for it if together
///    they cover it (the burst is spent first);
/// 3. otherwise, if the part not covered by the burst is larger than `size`
///    (so waiting could never satisfy it) and the budget is full, the request
///    is allowed: the budget drops to 0 and the excess becomes a debt that
///    refills pay back before anything else can be consumed (overconsumption);
/// 4. otherwise nothing is taken and the caller learns how long to wait.
///
/// Requests are all-or-nothing: a refused request leaves every level unchanged.
///
/// # Example
///
/// 1000 bytes per second with a one-time burst of 500, driven with made-up
/// instants:
///
/// ```
/// use std::time::{Duration, Instant};
///
/// use ember_ratelimit::{BucketConfig, Reduction, TokenBucket};
///
/// let config = BucketConfig { size: 1000, one_time_burst: 500, refill_time_ms: 1000 };
/// let start = Instant::now();
/// let mut bucket = TokenBucket::new(config, start).ok_or("unlimited")?;
///
/// // The burst pays first, then the budget.
/// assert_eq!(bucket.reduce(1200, start), Reduction::Consumed);
/// assert_eq!((bucket.burst(), bucket.budget()), (0, 300));
/// // 500 more needs 200 more tokens: 200 ms of refill.
/// assert_eq!(bucket.reduce(500, start), Reduction::Insufficient(Duration::from_millis(200)));
/// // A refused request takes nothing; 200 ms later it goes through.
/// assert_eq!(bucket.reduce(500, start + Duration::from_millis(200)), Reduction::Consumed);
/// assert_eq!(bucket.budget(), 0);
///
/// // Size or refill time 0 means "no limit": there is no bucket.
/// let unlimited = BucketConfig { size: 0, ..config };
/// assert!(unlimited.is_unlimited());
/// assert!(TokenBucket::new(unlimited, start).is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    config: BucketConfig,
    budget: u64,
    debt: u64,
    burst: u64,
    /// The instant up to which refill time has been accounted for.
    last_update: Instant,
    /// Progress toward the next token, in token-nanoseconds (always below
    /// `refill_ns`): keeping the exact remainder makes many small refills earn
    /// exactly what one large refill would.
    partial: u128,
}

impl TokenBucket {
    /// A full bucket with its whole one-time burst, or `None` when `config`
    /// means "unlimited".
    pub fn new(config: BucketConfig, now: Instant) -> Option<TokenBucket> {
        (!config.is_unlimited()).then_some(TokenBucket {
            config,
            budget: config.size,
            debt: 0,
            burst: config.one_time_burst,
            last_update: now,
            partial: 0,
        })
    }

    /// Rebuilds a bucket from saved levels, as if `state` had been taken at `now`.
    /// Levels beyond what the configuration allows are clamped. `None` when the
    /// configuration means "unlimited".
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// use ember_ratelimit::{BucketConfig, TokenBucket};
    ///
    /// let config = BucketConfig { size: 100, one_time_burst: 0, refill_time_ms: 100 };
    /// let saved_at = Instant::now();
    /// let mut bucket = TokenBucket::new(config, saved_at).ok_or("unlimited")?;
    /// let _ = bucket.reduce(100, saved_at);
    /// let state = bucket.state(saved_at + Duration::from_micros(500));
    /// assert_eq!((state.budget, state.pending_refill_ns), (0, 500_000));
    ///
    /// // Restored later: the half token that was accruing is kept, and the
    /// // time between save and restore earns nothing.
    /// let restored_at = saved_at + Duration::from_secs(60);
    /// let mut restored = TokenBucket::from_state(&state, restored_at).ok_or("unlimited")?;
    /// restored.refill(restored_at + Duration::from_micros(500));
    /// assert_eq!(restored.budget(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_state(state: &BucketState, now: Instant) -> Option<TokenBucket> {
        let mut bucket = TokenBucket::new(state.config, now)?;
        bucket.budget = state.budget.min(state.config.size);
        bucket.debt = if bucket.budget == 0 { state.debt } else { 0 };
        bucket.burst = state.burst.min(state.config.one_time_burst);
        bucket.last_update = now
            .checked_sub(Duration::from_nanos(state.pending_refill_ns))
            .unwrap_or(now);
        Some(bucket)
    }

    /// The levels as plain data, with the refill time accrued up to `now`
    /// (rounded down to the nanosecond).
    pub fn state(&self, now: Instant) -> BucketState {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        let pending = elapsed.saturating_add(self.partial / u128::from(self.config.size));
        BucketState {
            config: self.config,
            budget: self.budget,
            debt: self.debt,
            burst: self.burst,
            pending_refill_ns: u64::try_from(pending).unwrap_or(u64::MAX),
        }
    }

    /// The configuration.
    pub fn config(&self) -> BucketConfig {
        self.config
    }

    /// Tokens in the regular budget, as of the last operation.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Tokens owed after an overconsumption, as of the last operation.
    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// Remaining one-time burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.config.refill_time_ms) * NANOS_PER_MILLI
    }

    fn is_full(&self) -> bool {
        self.debt == 0 && self.budget == self.config.size
    }

    /// Token-nanoseconds earned by `now` and not yet credited, or `None` when
    /// that overflows (after centuries: the bucket is certainly full by then).
    fn progress(&self, now: Instant) -> Option<u128> {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        elapsed
            .checked_mul(u128::from(self.config.size))?
            .checked_add(self.partial)
    }

    /// Credits the whole tokens earned between the last update and `now`; the
    /// fraction of a token earned stays pending for the next refill. A full
    /// bucket earns nothing and keeps nothing pending. An instant before the
    /// last update changes nothing.
    pub fn refill(&mut self, now: Instant) {
        if now <= self.last_update {
            return;
        }
        if self.is_full() {
            self.fill(now);
            return;
        }
        let Some(progress) = self.progress(now) else {
            self.fill(now);
            return;
        };
        let earned = progress / self.refill_ns();
        let missing = u128::from(self.debt) + u128::from(self.config.size - self.budget);
        if earned >= missing {
            self.fill(now);
            return;
        }
        // `earned < missing`, and the debt is paid first, so what is left for
        // the budget fits in it.
        let paid = u64::try_from(earned).unwrap_or(u64::MAX).min(self.debt);
        self.debt -= paid;
        self.budget += u64::try_from(earned - u128::from(paid)).unwrap_or(0);
        self.partial = progress % self.refill_ns();
        self.last_update = now;
    }

    fn fill(&mut self, now: Instant) {
        self.debt = 0;
        self.budget = self.config.size;
        self.partial = 0;
        self.last_update = now;
    }

    /// Time from `now` until the budget holds `target` tokens (`target <= size`).
    fn time_until(&self, target: u64, now: Instant) -> Duration {
        let needed =
            u128::from(target) + u128::from(self.debt) - u128::from(target.min(self.budget));
        let have = self.progress(now).unwrap_or(u128::MAX);
        let wait_ns = needed
            .saturating_mul(self.refill_ns())
            .saturating_sub(have)
            .div_ceil(u128::from(self.config.size));
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` from the bucket at `now`, following the rules in the type's
    /// documentation.
    pub fn reduce(&mut self, tokens: u64, now: Instant) -> Reduction {
        self.refill(now);
        if tokens <= self.burst {
            self.burst -= tokens;
            return Reduction::Consumed;
        }
        let rest = tokens - self.burst;
        if rest <= self.budget {
            self.burst = 0;
            self.budget -= rest;
            return Reduction::Consumed;
        }
        if rest > self.config.size && self.is_full() {
            self.burst = 0;
            self.budget = 0;
            self.debt = rest - self.config.size;
            return Reduction::Consumed;
        }
        Reduction::Insufficient(self.time_until(rest.min(self.config.size), now))
    }

    /// Gives back `tokens` (for an operation that was charged but not performed):
    /// they pay back any debt, then go to the budget, which never exceeds `size`.
    /// The one-time burst is never replenished.
    pub fn replenish(&mut self, tokens: u64) {
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        let room = self.config.size - self.budget;
        self.budget += (tokens - paid).min(room);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64, now: Instant) -> TokenBucket {
        let config = BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        };
        TokenBucket::new(config, now).unwrap()
    }

    #[test]
    fn zero_size_or_zero_refill_time_is_unlimited() {
        let now = Instant::now();
        for (size, refill_time_ms) in [(0, 100), (100, 0), (0, 0)] {
            let config = BucketConfig {
                size,
                one_time_burst: 50,
                refill_time_ms,
            };
            assert!(config.is_unlimited());
            assert!(TokenBucket::new(config, now).is_none());
        }
    }

    #[test]
    fn starts_full_and_refills_linearly() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 0, 1000, t0);
        assert_eq!(b.reduce(1000, t0), Reduction::Consumed);
        assert_eq!(b.budget(), 0);
        // 1000 tokens per second: one per millisecond.
        b.refill(t0 + ms(250));
        assert_eq!(b.budget(), 250);
        b.refill(t0 + ms(999));
        assert_eq!(b.budget(), 999);
        b.refill(t0 + ms(5000));
        assert_eq!(b.budget(), 1000, "never above size");
    }

    #[test]
    fn fractional_tokens_carry_over_between_refills() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms: one token every 3.33 ms.
        let mut b = bucket(3, 0, 10, t0);
        assert_eq!(b.reduce(3, t0), Reduction::Consumed);
        let step = Duration::from_micros(2500);
        let mut now = t0;
        for _ in 0..4 {
            now += step;
            b.refill(now);
        }
        // 10 ms in 2.5 ms steps: exactly the same as one 10 ms refill.
        assert_eq!(b.budget(), 3);

        let mut b = bucket(3, 0, 10, t0);
        assert_eq!(b.reduce(3, t0), Reduction::Consumed);
        b.refill(t0 + Duration::from_micros(5000));
        assert_eq!(b.budget(), 1, "5 ms earns 1.5 tokens, 1 credited");
        b.refill(t0 + Duration::from_micros(6700));
        assert_eq!(b.budget(), 2, "the half token was kept pending");
    }

    #[test]
    fn full_bucket_does_not_bank_idle_time() {
        let t0 = Instant::now();
        let mut b = bucket(10, 0, 100, t0);
        b.refill(t0 + ms(1000));
        assert_eq!(b.reduce(10, t0 + ms(1000)), Reduction::Consumed);
        assert_eq!(
            b.reduce(1, t0 + ms(1000)),
            Reduction::Insufficient(ms(10)),
            "idle time while full earned nothing"
        );
    }

    #[test]
    fn refused_request_reports_the_wait_and_takes_nothing() {
        let t0 = Instant::now();
        let mut b = bucket(100, 0, 1000, t0);
        assert_eq!(b.reduce(60, t0), Reduction::Consumed);
        // 40 left; 70 needs 30 more tokens = 300 ms.
        assert_eq!(b.reduce(70, t0), Reduction::Insufficient(ms(300)));
        assert_eq!(b.budget(), 40);
        // 100 ms later, 10 have been earned: 200 ms to go.
        assert_eq!(b.reduce(70, t0 + ms(100)), Reduction::Insufficient(ms(200)));
        assert_eq!(b.budget(), 50);
        assert_eq!(b.reduce(70, t0 + ms(300)), Reduction::Consumed);
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn wait_accounts_for_pending_fraction() {
        let t0 = Instant::now();
        // One token every 10 ms.
        let mut b = bucket(1, 0, 10, t0);
        assert_eq!(b.reduce(1, t0), Reduction::Consumed);
        assert_eq!(b.reduce(1, t0 + ms(4)), Reduction::Insufficient(ms(6)));
        assert_eq!(b.reduce(1, t0 + ms(10)), Reduction::Consumed);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refilled() {
        let t0 = Instant::now();
        let mut b = bucket(100, 50, 1000, t0);
        assert_eq!(b.reduce(30, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget()), (20, 100));
        // 20 from the burst, 10 from the budget.
        assert_eq!(b.reduce(30, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget()), (0, 90));
        b.refill(t0 + ms(10_000));
        assert_eq!((b.burst(), b.budget()), (0, 100));
        b.replenish(1000);
        assert_eq!((b.burst(), b.budget()), (0, 100));
    }

    #[test]
    fn burst_plus_budget_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut b = bucket(100, 50, 1000, t0);
        assert_eq!(b.reduce(80, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget()), (0, 70));
        // 90 > 70: refused, and nothing is lost.
        assert!(matches!(b.reduce(90, t0), Reduction::Insufficient(_)));
        assert_eq!((b.burst(), b.budget()), (0, 70));

        let mut b = bucket(10, 5, 1000, t0);
        assert_eq!(b.reduce(10, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget()), (0, 5));
        let mut b = bucket(10, 5, 1000, t0);
        assert_eq!(b.reduce(4, t0), Reduction::Consumed);
        assert_eq!(b.reduce(9, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget()), (0, 2));
        assert!(matches!(b.reduce(3, t0), Reduction::Insufficient(_)));
        assert_eq!((b.burst(), b.budget()), (0, 2), "refusal kept the rest");
    }

    #[test]
    fn overconsumption_needs_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        // 100 tokens per second.
        let mut b = bucket(100, 0, 1000, t0);
        assert_eq!(b.reduce(1, t0), Reduction::Consumed);
        // Not full: a request larger than the bucket waits until it is full.
        assert_eq!(b.reduce(250, t0), Reduction::Insufficient(ms(10)));
        assert_eq!(b.reduce(250, t0 + ms(10)), Reduction::Consumed);
        assert_eq!((b.budget(), b.debt()), (0, 150));
        // The debt of 150 plus one token is 1.51 s away.
        assert_eq!(b.reduce(1, t0 + ms(10)), Reduction::Insufficient(ms(1510)));
        b.refill(t0 + ms(1010));
        assert_eq!((b.budget(), b.debt()), (0, 50));
        assert_eq!(b.reduce(1, t0 + ms(1520)), Reduction::Consumed);
        assert_eq!((b.budget(), b.debt()), (0, 0));
    }

    #[test]
    fn overconsumption_uses_the_burst_first() {
        let t0 = Instant::now();
        let mut b = bucket(100, 30, 1000, t0);
        // 30 from the burst, 100 from the full budget, 20 of debt.
        assert_eq!(b.reduce(150, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget(), b.debt()), (0, 0, 20));
        // A request the burst alone covers never touches the budget.
        let mut b = bucket(100, 300, 1000, t0);
        assert_eq!(b.reduce(250, t0), Reduction::Consumed);
        assert_eq!((b.burst(), b.budget(), b.debt()), (50, 100, 0));
    }

    #[test]
    fn replenish_pays_debt_then_budget_up_to_size() {
        let t0 = Instant::now();
        let mut b = bucket(100, 0, 1000, t0);
        assert_eq!(b.reduce(130, t0), Reduction::Consumed);
        assert_eq!((b.budget(), b.debt()), (0, 30));
        b.replenish(20);
        assert_eq!((b.budget(), b.debt()), (0, 10));
        b.replenish(50);
        assert_eq!((b.budget(), b.debt()), (40, 0));
        b.replenish(1000);
        assert_eq!((b.budget(), b.debt()), (100, 0));
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let t0 = Instant::now() + ms(1000);
        let mut b = bucket(10, 0, 100, t0);
        assert_eq!(b.reduce(10, t0), Reduction::Consumed);
        b.refill(t0 - ms(500));
        assert_eq!(b.budget(), 0);
        assert_eq!(b.reduce(1, t0 - ms(500)), Reduction::Insufficient(ms(10)));
    }

    #[test]
    fn extreme_configurations_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = bucket(u64::MAX, 0, u64::MAX, t0);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Consumed);
        let Reduction::Insufficient(wait) = b.reduce(u64::MAX, t0 + ms(1)) else {
            panic!("an empty bucket cannot pay");
        };
        assert!(wait > Duration::from_secs(100 * 365 * 24 * 3600));
        b.refill(t0 + Duration::from_secs(1 << 40));
        b.replenish(u64::MAX);
        assert_eq!(b.budget(), u64::MAX);

        let mut b = bucket(u64::MAX, u64::MAX, 1, t0);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Consumed);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Consumed);
        assert_eq!(b.reduce(u64::MAX, t0 + ms(1)), Reduction::Consumed);
    }

    #[test]
    fn state_round_trips_levels_and_pending_time() {
        let t0 = Instant::now();
        let mut b = bucket(100, 40, 1000, t0);
        assert_eq!(b.reduce(140, t0), Reduction::Consumed);
        assert_eq!(b.reduce(0, t0 + ms(105)), Reduction::Consumed);
        let state = b.state(t0 + ms(108));
        assert_eq!(
            state,
            BucketState {
                config: b.config(),
                budget: 10,
                debt: 0,
                burst: 0,
                pending_refill_ns: 8_000_000,
            }
        );
        let t1 = t0 + ms(50_000);
        let mut restored = TokenBucket::from_state(&state, t1).unwrap();
        // 8 ms were pending: 2 more ms make one more token.
        restored.refill(t1 + ms(2));
        assert_eq!(restored.budget(), 11);
    }

    #[test]
    fn restore_clamps_impossible_levels() {
        let t0 = Instant::now();
        let state = BucketState {
            config: BucketConfig {
                size: 10,
                one_time_burst: 5,
                refill_time_ms: 100,
            },
            budget: 50,
            debt: 7,
            burst: 9,
            pending_refill_ns: u64::MAX,
        };
        let b = TokenBucket::from_state(&state, t0).unwrap();
        assert_eq!((b.budget(), b.debt(), b.burst()), (10, 0, 5));
        let unlimited = BucketState {
            config: BucketConfig::default(),
            ..state
        };
        assert!(TokenBucket::from_state(&unlimited, t0).is_none());
    }
}
