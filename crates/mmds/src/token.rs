//! MMDS V2 session tokens: random strings handed out for `PUT
//! /latest/api/token` with a time to live, then required on every `GET`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Shortest time to live of a token, in seconds (Firecracker's).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// Longest time to live of a token, in seconds (Firecracker's, six hours).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21600;
/// Most tokens alive at once: past it, the token closest to expiring is
/// forgotten, so a guest asking for tokens in a loop cannot grow the store.
pub const MAX_LIVE_TOKENS: usize = 1024;

/// Random bytes in a token (256 bits, printed as 64 hex digits).
const TOKEN_BYTES: usize = 32;

/// The live tokens and when each expires.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
///
/// use ember_mmds::TokenStore;
///
/// let mut tokens = TokenStore::default();
/// let now = Instant::now();
/// let token = tokens.generate(60, now)?;
/// assert!(tokens.is_valid(&token, now + Duration::from_secs(59)));
/// assert!(!tokens.is_valid(&token, now + Duration::from_secs(60)));
/// assert!(tokens.generate(0, now).is_err(), "a time to live of 1 to 21600 s");
/// # Ok::<(), ember_mmds::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct TokenStore {
    expiries: HashMap<String, Instant>,
}

/// `bytes` as lowercase hex digits.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Checks a time to live against Firecracker's bounds.
fn check_ttl(ttl_seconds: u32) -> Result<Duration> {
    if (MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
        Ok(Duration::from_secs(u64::from(ttl_seconds)))
    } else {
        Err(Error::InvalidTtlValue(ttl_seconds))
    }
}

impl TokenStore {
    /// A new token valid for `ttl_seconds` from `now`, from the system's
    /// random number generator. Expired tokens are dropped first and, with
    /// [`MAX_LIVE_TOKENS`] alive, the one closest to expiring.
    pub fn generate(&mut self, ttl_seconds: u32, now: Instant) -> Result<String> {
        let ttl = check_ttl(ttl_seconds)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(Error::Random)?;
        let token = to_hex(&bytes);
        self.purge(now);
        if self.expiries.len() >= MAX_LIVE_TOKENS {
            self.evict_soonest();
        }
        self.expiries.insert(token.clone(), now + ttl);
        Ok(token)
    }

    /// Whether `token` was handed out and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        token.len() == 2 * TOKEN_BYTES && self.expiries.get(token).is_some_and(|&end| now < end)
    }

    /// How many tokens are kept (expired ones included until the next purge).
    pub fn len(&self) -> usize {
        self.expiries.len()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.expiries.is_empty()
    }

    /// Forgets the tokens expired at `now`.
    pub fn purge(&mut self, now: Instant) {
        self.expiries.retain(|_, end| now < *end);
    }

    fn evict_soonest(&mut self) {
        let soonest = self
            .expiries
            .iter()
            .min_by_key(|(_, end)| **end)
            .map(|(token, _)| token.clone());
        if let Some(token) = soonest {
            self.expiries.remove(&token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds_are_firecrackers() {
        let mut store = TokenStore::default();
        let now = Instant::now();
        for bad in [0, MAX_TOKEN_TTL_SECONDS + 1, u32::MAX] {
            let error = store.generate(bad, now).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "Invalid time to live value provided for token: {bad}. \
                     Please provide a value between 1 and 21600."
                )
            );
        }
        assert!(store.is_empty());
        for good in [MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS] {
            assert!(store.generate(good, now).is_ok());
        }
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn tokens_are_random_hex_and_valid_until_they_expire() {
        let mut store = TokenStore::default();
        let now = Instant::now();
        let token = store.generate(10, now).unwrap();
        let other = store.generate(10, now).unwrap();
        assert_ne!(token, other);
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(store.is_valid(&token, now));
        assert!(store.is_valid(&token, now + Duration::from_millis(9999)));
        assert!(!store.is_valid(&token, now + Duration::from_secs(10)));
        assert!(!store.is_valid("INVALID_TOKEN", now));
        assert!(!store.is_valid(&token.to_uppercase(), now));
        assert!(!store.is_valid("", now));
    }

    #[test]
    fn expired_tokens_are_forgotten() {
        let mut store = TokenStore::default();
        let now = Instant::now();
        store.generate(1, now).unwrap();
        let kept = store.generate(100, now).unwrap();
        store.purge(now + Duration::from_secs(2));
        assert_eq!(store.len(), 1);
        assert!(store.is_valid(&kept, now + Duration::from_secs(2)));
    }

    #[test]
    fn live_tokens_are_bounded_and_the_soonest_to_expire_goes() {
        let mut store = TokenStore::default();
        let now = Instant::now();
        let first = store.generate(1, now).unwrap();
        let mut last = String::new();
        for _ in 0..MAX_LIVE_TOKENS + 10 {
            last = store.generate(MAX_TOKEN_TTL_SECONDS, now).unwrap();
        }
        assert_eq!(store.len(), MAX_LIVE_TOKENS);
        assert!(!store.is_valid(&first, now));
        assert!(store.is_valid(&last, now));
    }

    #[test]
    fn hex_is_two_digits_a_byte() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
