//! Summaries of repeated measurements: median, percentiles (nearest rank),
//! rates, and the overhead of one figure over its baseline; and the order
//! in which the two sides of a comparison run.

use std::time::Duration;

/// The `p`th percentile (0 < p <= 100) of `samples` by the nearest-rank
/// method: the smallest sample such that at least `p`% of the samples are
/// less than or equal to it. `None` for no samples or a `p` out of range.
/// `samples` need not be sorted.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[nearest_rank(sorted.len(), p)])
}

/// Index into a sorted list of `n` samples of the `p`th percentile.
fn nearest_rank(n: usize, p: f64) -> usize {
    let rank = (p / 100.0 * n as f64).ceil();
    // `rank` is a whole number in 1..=n for p in (0, 100].
    #[allow(clippy::cast_possible_truncation)]
    let rank = rank as usize;
    rank.clamp(1, n) - 1
}

/// The median: the mean of the two middle samples for an even count.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// A distribution of samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` if there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let at = |p| sorted[nearest_rank(n, p)];
        Some(Summary {
            count: n,
            min: *sorted.first()?,
            median: median(&sorted)?,
            p90: at(90.0),
            p99: at(99.0),
            max: *sorted.last()?,
        })
    }
}

/// `count` events in `elapsed`, per second (0 for no time at all).
pub fn per_second(count: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

/// Whether a bigger figure is better (a rate) or a smaller one (a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Rates: requests/s, MB/s.
    Higher,
    /// Times, sizes, counts of things to keep small.
    Lower,
}

/// How much more time per operation `value` costs than `baseline`, in
/// percent: for rates `baseline / value - 1`, for times `value / baseline -
/// 1`. Positive means slower than the baseline. `None` if either is not
/// positive.
pub fn overhead_pct(value: f64, baseline: f64, better: Better) -> Option<f64> {
    if !(value > 0.0 && baseline > 0.0) {
        return None;
    }
    let ratio = match better {
        Better::Higher => baseline / value,
        Better::Lower => value / baseline,
    };
    Some((ratio - 1.0) * 100.0)
}

/// Runs `a` then `b` in even rounds and `b` then `a` in odd ones, so that
/// neither side of a comparison always runs second, on what the other left
/// in the caches; both get `shared` (what both sides use). Returns both
/// results in the order `(a, b)`.
pub fn in_turn<S, A, B, E>(
    round: usize,
    shared: &mut S,
    a: impl FnOnce(&mut S) -> Result<A, E>,
    b: impl FnOnce(&mut S) -> Result<B, E>,
) -> Result<(A, B), E> {
    if round.is_multiple_of(2) {
        let a = a(shared)?;
        Ok((a, b(shared)?))
    } else {
        let b = b(shared)?;
        Ok((a(shared)?, b))
    }
}

/// Durations as milliseconds.
pub fn millis(durations: &[Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// Durations as microseconds.
pub fn micros(durations: &[Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 90.0), Some(90.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 99.5), Some(100.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&samples, 0.1), Some(1.0));
        // Few samples: the 99th percentile of 10 is the largest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&ten, 0.0), None);
        assert_eq!(percentile(&ten, 101.0), None);
        assert_eq!(percentile(&ten, f64::NAN), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summary_of_samples() {
        let samples: Vec<f64> = (0..1000).map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!((s.min, s.max), (0.0, 999.0));
        assert_eq!(s.median, 499.5);
        assert_eq!(s.p90, 899.0);
        assert_eq!(s.p99, 989.0);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn overhead_is_extra_time_per_operation() {
        // 90k/s against 100k/s: each operation takes 11.1% longer.
        let rate = overhead_pct(90_000.0, 100_000.0, Better::Higher).unwrap();
        assert!((rate - 11.111).abs() < 0.01, "{rate}");
        let time = overhead_pct(11.0, 10.0, Better::Lower).unwrap();
        assert!((time - 10.0).abs() < 1e-9, "{time}");
        let faster = overhead_pct(120.0, 100.0, Better::Higher).unwrap();
        assert!(faster < 0.0);
        assert_eq!(overhead_pct(0.0, 1.0, Better::Higher), None);
        assert_eq!(overhead_pct(1.0, 0.0, Better::Lower), None);
    }

    #[test]
    fn sides_take_turns() {
        let mut order = Vec::new();
        for round in 0..2 {
            let got = in_turn::<_, _, _, ()>(
                round,
                &mut order,
                |order| {
                    order.push('a');
                    Ok(1)
                },
                |order| {
                    order.push('b');
                    Ok(2)
                },
            );
            assert_eq!(got, Ok((1, 2)));
        }
        assert_eq!(order, ['a', 'b', 'b', 'a']);
        let failed = in_turn::<_, u8, u8, _>(1, &mut (), |_| Ok(1), |_| Err("b failed"));
        assert_eq!(failed, Err("b failed"));
    }

    #[test]
    fn rates_and_units() {
        assert_eq!(per_second(500.0, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_second(1.0, Duration::ZERO), 0.0);
        assert_eq!(millis(&[Duration::from_micros(1500)]), vec![1.5]);
        assert_eq!(micros(&[Duration::from_nanos(2500)]), vec![2.5]);
    }
}
