//! Criterion bench of the token bucket's hot path, `RateLimiter::consume`,
//! in the cases of `ember_benches::ratelimit::Case`: unlimited, limited
//! with budget left, refused by an empty bucket (which arms the refill
//! timer: a new limiter per call, made outside the measurement) and refused
//! while already blocked.
//!
//! Run with `cargo bench -p ember-benches` (or `--bench token_bucket`).

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ember_benches::ratelimit::Case;
use ember_ratelimit::RateLimiter;

/// A limiter for `case`, or the end of the bench with the reason.
fn limiter(case: Case) -> RateLimiter {
    match case.limiter() {
        Ok(limiter) => limiter,
        Err(e) => panic!("cannot set up {}: {e}", case.name()),
    }
}

fn consume(c: &mut Criterion) {
    let mut group = c.benchmark_group("RateLimiter::consume");
    for case in Case::ALL {
        if case == Case::RefusedArmsTimer {
            group.bench_function(case.name(), |b| {
                b.iter_batched(
                    || limiter(case),
                    |mut limiter| {
                        Case::consume(&mut limiter);
                        limiter
                    },
                    BatchSize::PerIteration,
                );
            });
        } else {
            let mut limiter = limiter(case);
            group.bench_function(case.name(), |b| b.iter(|| Case::consume(&mut limiter)));
        }
    }
    group.finish();
}

criterion_group!(benches, consume);
criterion_main!(benches);
