//! The host's random bytes: `getrandom(2)`, never blocking the event loop.

use std::io;

/// Fills `buf` from the host's `getrandom`, non-blocking (`GRND_NONBLOCK`:
/// if the host's pool is not initialized yet this fails with `WouldBlock`
/// rather than stalling the device's event loop). Interrupted and short
/// reads are retried.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed buffer of exactly
        // `rest.len()` bytes; getrandom writes at most that many into it.
        let ret =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        match usize::try_from(ret) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => done += n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn fills_the_whole_buffer_with_varying_bytes() {
        let mut a = vec![0u8; 100_000];
        fill_random(&mut a).unwrap();
        // All-zero tails would betray a short read left unfilled.
        assert!(a[a.len() - 64..].iter().any(|&b| b != 0));
        let mut b = vec![0u8; 64];
        fill_random(&mut b).unwrap();
        assert_ne!(a[..64], b[..]);
        fill_random(&mut []).unwrap();
    }
}
