//! Sends 1 MiB in 64 KiB writes through a limiter of 256 KiB per 100 ms with
//! a 128 KiB one-time burst, as a device would: on refusal it sleeps on the
//! limiter's fd, then retries. Prints when each write went through.
//!
//! `cargo run -p ember-ratelimit --example throttle`

use std::os::fd::AsRawFd;
use std::time::Instant;

use ember_ratelimit::{BucketConfig, RateLimiter, TokenType};

const WRITE: u64 = 64 << 10;
const TOTAL: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bandwidth = BucketConfig {
        size: 256 << 10,
        one_time_burst: 128 << 10,
        refill_time_ms: 100,
    };
    let mut limiter = RateLimiter::new(Some(bandwidth), None)?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        if limiter.consume(WRITE, TokenType::Bytes) {
            sent += WRITE;
            println!(
                "{:>6.1} ms: {:>4} KiB sent",
                start.elapsed().as_secs_f64() * 1000.0,
                sent >> 10
            );
        } else {
            wait_for(&limiter)?;
            limiter.event_handler()?;
        }
    }
    Ok(())
}

/// Sleeps until the limiter's timerfd is readable.
fn wait_for(limiter: &RateLimiter) -> std::io::Result<()> {
    let mut fd = libc::pollfd {
        fd: limiter.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd for the duration of the call; no timeout.
    if unsafe { libc::poll(&mut fd, 1, -1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
