//! The token bucket's hot path: [`RateLimiter::consume`] in the cases a
//! device meets on every request. The same cases back the criterion bench
//! (`benches/token_bucket.rs`, `cargo bench -p ember-benches`); the table
//! gets a quick median of plain timing loops.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ember_ratelimit::{BucketConfig, RateLimiter, TokenType};

use crate::report::Figure;
use crate::stats::{median, Better};
use crate::{Error, Result};

/// The group name in reports.
pub const GROUP: &str = "ratelimit";

/// A situation `consume` is called in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// No bucket: every call succeeds at once.
    Unlimited,
    /// A bucket with budget left: the refill arithmetic, then a take.
    WithBudget,
    /// An empty bucket: the call computes the wait, arms the timerfd and
    /// blocks the limiter (one `timerfd_settime`).
    RefusedArmsTimer,
    /// A blocked limiter: refused without looking at the bucket.
    RefusedBlocked,
}

impl Case {
    /// Every case, in report order.
    pub const ALL: [Case; 4] = [
        Case::Unlimited,
        Case::WithBudget,
        Case::RefusedArmsTimer,
        Case::RefusedBlocked,
    ];

    /// The figure's name.
    pub fn name(self) -> &'static str {
        match self {
            Case::Unlimited => "consume, unlimited",
            Case::WithBudget => "consume, limited with budget",
            Case::RefusedArmsTimer => "consume, refused (arms timer)",
            Case::RefusedBlocked => "consume, refused (already blocked)",
        }
    }

    /// A limiter in this situation. Each call of
    /// [`Case::consume`] leaves it in the same situation, except for
    /// [`Case::RefusedArmsTimer`], which needs a new limiter per call.
    pub fn limiter(self) -> Result<RateLimiter> {
        let limited = |size| {
            Some(BucketConfig {
                size,
                one_time_burst: 0,
                refill_time_ms: 1000,
            })
        };
        let timer = |e| Error::Unexpected(format!("rate limiter: {e}"));
        let mut limiter = match self {
            Case::Unlimited => RateLimiter::new(None, None),
            // A budget no benchmark can spend.
            Case::WithBudget => RateLimiter::new(None, limited(u64::MAX / 4)),
            Case::RefusedArmsTimer | Case::RefusedBlocked => RateLimiter::new(None, limited(1)),
        }
        .map_err(timer)?;
        if matches!(self, Case::RefusedArmsTimer | Case::RefusedBlocked)
            && !limiter.consume(1, TokenType::Ops)
        {
            return Err(Error::Unexpected(
                "a full bucket refused a token".to_owned(),
            ));
        }
        if self == Case::RefusedBlocked && limiter.consume(1, TokenType::Ops) {
            return Err(Error::Unexpected("an empty bucket gave a token".to_owned()));
        }
        Ok(limiter)
    }

    /// The call measured: one operation's token. Returns what `consume` did.
    pub fn consume(limiter: &mut RateLimiter) -> bool {
        limiter.consume(black_box(1), TokenType::Ops)
    }
}

/// Nanoseconds per call of `case`, the median of `rounds` rounds of
/// `calls` calls.
pub fn time_case(case: Case, rounds: usize, calls: u32) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let mut elapsed = Duration::ZERO;
        if case == Case::RefusedArmsTimer {
            // One limiter per call, made outside the timing.
            for _ in 0..calls {
                let mut limiter = case.limiter()?;
                let start = Instant::now();
                black_box(Case::consume(&mut limiter));
                elapsed += start.elapsed();
            }
        } else {
            let mut limiter = case.limiter()?;
            let start = Instant::now();
            for _ in 0..calls {
                black_box(Case::consume(&mut limiter));
            }
            elapsed = start.elapsed();
        }
        samples.push(elapsed.as_secs_f64() * 1e9 / f64::from(calls));
    }
    median(&samples).ok_or_else(|| Error::Unexpected("no rounds".to_owned()))
}

/// The figures: nanoseconds per `consume` in each case.
pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for case in Case::ALL {
        let calls = match (case, quick) {
            (Case::RefusedArmsTimer, _) => 2_000,
            (_, true) => 200_000,
            (_, false) => 2_000_000,
        };
        let ns = time_case(case, 5, calls)?;
        let mut figure = Figure::new(GROUP, case.name(), ns, "ns/call", Better::Lower);
        if case == Case::RefusedArmsTimer {
            figure = figure.note("timed one call at a time (includes the clock read)");
        }
        figures.push(figure);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_case_behaves_as_named() {
        let mut unlimited = Case::Unlimited.limiter().unwrap();
        assert!(Case::consume(&mut unlimited));
        let mut budget = Case::WithBudget.limiter().unwrap();
        assert!((0..1000).all(|_| Case::consume(&mut budget)));
        let mut arms = Case::RefusedArmsTimer.limiter().unwrap();
        assert!(!arms.is_blocked());
        assert!(!Case::consume(&mut arms));
        assert!(arms.is_blocked());
        let mut blocked = Case::RefusedBlocked.limiter().unwrap();
        assert!(blocked.is_blocked());
        assert!(!Case::consume(&mut blocked));
        assert!(time_case(Case::Unlimited, 1, 100).unwrap() >= 0.0);
    }
}
