//! Proposal rate limiting: a token bucket per sandbox, so a workload that
//! floods `POST /v1/proposals` cannot bury the operator's inbox or keep
//! the store busy. Pure: the caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Proposals a sandbox may send at once after a quiet spell.
pub const BURST: u32 = 20;
/// One more proposal is allowed per this interval (20 a minute).
pub const REFILL_EVERY: Duration = Duration::from_secs(3);
/// Sandboxes tracked at once; the least recently seen is forgotten first
/// (forgetting only ever grants a fresh burst).
const MAX_SANDBOXES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When the bucket last gained (or was created with) tokens.
    refilled: Instant,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct ProposalLimiter {
    buckets: HashMap<String, Bucket>,
}

impl ProposalLimiter {
    /// Takes a token for `sandbox`; when none is left, how long until one is.
    pub fn admit(&mut self, sandbox: &str, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(sandbox) && self.buckets.len() >= MAX_SANDBOXES {
            self.forget_oldest();
        }
        let bucket = self.buckets.entry(sandbox.to_string()).or_insert(Bucket {
            tokens: BURST,
            refilled: now,
            last_seen: now,
        });
        bucket.last_seen = now;
        let earned =
            now.saturating_duration_since(bucket.refilled).as_nanos() / REFILL_EVERY.as_nanos();
        if earned > 0 {
            bucket.tokens = BURST.min(bucket.tokens.saturating_add(earned as u32));
            bucket.refilled += REFILL_EVERY * earned as u32;
        }
        if bucket.tokens == 0 {
            let next = bucket.refilled + REFILL_EVERY;
            return Err(next.saturating_duration_since(now));
        }
        if bucket.tokens == BURST {
            // A full bucket does not bank time toward the next token.
            bucket.refilled = now;
        }
        bucket.tokens -= 1;
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last_seen)
            .map(|(name, _)| name.clone())
        {
            self.buckets.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_flood_is_refused_with_a_wait() {
        let mut limiter = ProposalLimiter::default();
        let t0 = Instant::now();
        for i in 0..BURST {
            assert!(limiter.admit("a", t0).is_ok(), "proposal {i}");
        }
        let wait = limiter.admit("a", t0).unwrap_err();
        assert_eq!(wait, REFILL_EVERY);
        let wait = limiter.admit("a", t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(wait, REFILL_EVERY - Duration::from_secs(2));
    }

    #[test]
    fn tokens_come_back_one_per_interval_up_to_the_burst() {
        let mut limiter = ProposalLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            limiter.admit("a", t0).unwrap();
        }
        let later = t0 + REFILL_EVERY * 2;
        assert!(limiter.admit("a", later).is_ok());
        assert!(limiter.admit("a", later).is_ok());
        assert!(limiter.admit("a", later).is_err());
        // A long quiet spell refills to the burst, not beyond.
        let much_later = later + REFILL_EVERY * 100;
        for _ in 0..BURST {
            assert!(limiter.admit("a", much_later).is_ok());
        }
        assert!(limiter.admit("a", much_later).is_err());
    }

    #[test]
    fn sandboxes_have_their_own_buckets() {
        let mut limiter = ProposalLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            limiter.admit("noisy", t0).unwrap();
        }
        assert!(limiter.admit("noisy", t0).is_err());
        assert!(limiter.admit("quiet", t0).is_ok());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut limiter = ProposalLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SANDBOXES + 10) {
            limiter
                .admit(&format!("s{i}"), t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(limiter.buckets.len(), MAX_SANDBOXES);
        assert!(!limiter.buckets.contains_key("s0"));
    }
}
