//! The limiters the engine applies, each on the engine's clock (`now` is always an input):
//! token buckets for bandwidth, a fixed-memory per-source limiter for unauthenticated
//! answers, a log-line limiter, and the allocation quota shared by the shards.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Refusal;
use crate::sys::Locked;

/// A token bucket of bytes: `rate` per second, holding up to one second's worth.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::new()
    }
}

impl Bucket {
    pub const fn new() -> Self {
        Bucket {
            tokens: f64::MAX,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant, cap: f64) {
        let refill = self
            .last
            .map_or(cap, |l| now.saturating_duration_since(l).as_secs_f64() * cap);
        self.tokens = (self.tokens.min(cap) + refill).min(cap);
        self.last = Some(now);
    }

    /// For byte streams, which wait instead of dropping: takes `n` tokens even into debt,
    /// and returns how long until the debt is paid (zero when there was room).
    pub fn take_or_wait(&mut self, now: Instant, rate: u64, n: usize) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let cap = rate as f64;
        self.refill(now, cap);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / cap)
        }
    }

    /// Takes `n` tokens if there are enough; `rate` 0 means unlimited.
    pub(crate) fn take(&mut self, now: Instant, rate: u64, n: usize) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = rate as f64;
        self.refill(now, cap);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Limits unauthenticated responses per source IP with two rows of hashed token buckets
/// (a count-min sketch): fixed memory, whatever the number of sources, so a spoofed flood
/// creates no state; an address is limited only when both of its buckets are empty.
pub(super) struct SourceLimiter {
    rows: Box<[[(f32, u32); 2]]>,
    /// Secret keys of the two rows' hashes, from the engine's seeded RNG.
    keys: [u128; 2],
    start: Instant,
}

impl SourceLimiter {
    const BUCKETS: usize = 4096;

    pub(super) fn new(start: Instant, keys: [u128; 2]) -> Self {
        SourceLimiter {
            rows: vec![[(0.0, 0); 2]; Self::BUCKETS].into_boxed_slice(),
            keys,
            start,
        }
    }

    pub(super) fn allow(&mut self, now: Instant, ip: IpAddr, rate: u32) -> bool {
        use std::hash::{Hash, Hasher};
        if rate == 0 {
            return true;
        }
        // Milliseconds since start, plus one: 0 is kept for "never touched".
        let ms = u32::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let rate = rate as f32;
        // SipHash over a secret key and the address: where an address lands cannot be chosen
        // from outside, and the same seed gives the same buckets.
        let idx = [0, 1].map(|r| {
            let mut h = std::hash::DefaultHasher::new();
            h.write_u128(self.keys[r]);
            ip.hash(&mut h);
            (h.finish() as usize) % Self::BUCKETS
        });
        let mut level = [0f32; 2];
        for r in 0..2 {
            let (tokens, last) = self.rows[idx[r]][r];
            // A bucket never touched starts full.
            let refill = if last == 0 {
                rate
            } else {
                ms.saturating_sub(last) as f32 * rate / 1000.0
            };
            level[r] = (tokens + refill).min(rate);
        }
        let ok = level[0] >= 1.0 || level[1] >= 1.0;
        for r in 0..2 {
            let take = if ok { 1.0 } else { 0.0 };
            self.rows[idx[r]][r] = ((level[r] - take).max(0.0), ms);
        }
        ok
    }
}

/// Allocation counts shared by every shard, so that quotas hold process-wide.
#[derive(Debug, Default)]
pub struct Quota {
    // Taken only on Allocate and on allocation end, never on the packet path or across an
    // await.
    inner: Mutex<QuotaInner>,
}

#[derive(Debug, Default)]
struct QuotaInner {
    total: u32,
    per_user: std::collections::HashMap<Box<str>, u32>,
    /// Allocations other nodes of a cluster hold, by user, as last read from their leases.
    elsewhere: std::collections::HashMap<Box<str>, u32>,
}

impl Quota {
    /// Counts one more allocation for `user`, unless a limit is reached.
    pub(super) fn acquire(&self, user: &str, max_total: u32, max_user: u32) -> Result<(), Refusal> {
        let mut q = self.inner.locked();
        let used = q.per_user.get(user).copied().unwrap_or(0) + q.elsewhere.get(user).copied().unwrap_or(0);
        if q.total >= max_total {
            return Err(Refusal::ServerQuota);
        }
        if used >= max_user {
            return Err(Refusal::UserQuota);
        }
        q.total += 1;
        *q.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(())
    }

    pub(super) fn release(&self, user: &str) {
        let mut q = self.inner.locked();
        q.total = q.total.saturating_sub(1);
        if let Some(n) = q.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                q.per_user.remove(user);
            }
        }
    }

    /// Allocations held process-wide.
    pub fn total(&self) -> u32 {
        self.inner.locked().total
    }

    /// This node's allocations by user (what a cluster node publishes as its leases).
    pub fn per_user(&self) -> Vec<(String, u32)> {
        let q = self.inner.locked();
        q.per_user.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    }

    /// What other nodes hold, by user: counted against `max_allocations_per_user` with this
    /// node's own. An empty map (a single node, or Redis out of reach) leaves local counts.
    pub fn set_elsewhere(&self, elsewhere: std::collections::HashMap<Box<str>, u32>) {
        self.inner.locked().elsewhere = elsewhere;
    }
}

/// Allows a burst of log lines, then a steady trickle, so a flood cannot fill a disk.
#[derive(Debug)]
pub(super) struct LogLimiter {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: f64 = 20.0;
    const PER_SEC: f64 = 5.0;

    pub(super) fn new() -> Self {
        LogLimiter {
            tokens: Self::BURST,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed_since_last)` when a line may be logged now.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * Self::PER_SEC).min(Self::BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_waits_out_its_debt_instead_of_dropping() {
        let t0 = Instant::now();
        let mut b = Bucket::new();
        // 1000 bytes a second: the first second's worth passes at once.
        assert_eq!(b.take_or_wait(t0, 1000, 1000), Duration::ZERO);
        // 500 more: half a second of debt.
        assert_eq!(b.take_or_wait(t0, 1000, 500), Duration::from_millis(500));
        // Half a second later the debt is paid; 250 more wait a quarter second.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.take_or_wait(later, 1000, 250), Duration::from_millis(250));
        assert_eq!(b.take_or_wait(later, 0, 1 << 30), Duration::ZERO, "rate 0: no limit");
    }

    #[test]
    fn a_bucket_holds_one_second_and_refills_with_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new();
        assert!(b.take(t0, 1000, 1000), "starts full");
        assert!(!b.take(t0, 1000, 1), "then empty");
        assert!(
            !b.take(t0 + Duration::from_millis(400), 1000, 500),
            "400 ms gives 400 bytes"
        );
        assert!(b.take(t0 + Duration::from_millis(500), 1000, 500));
        assert!(
            b.take(t0 + Duration::from_secs(60), 1000, 1000),
            "never more than a second's worth"
        );
        assert!(!b.take(t0 + Duration::from_secs(60), 1000, 1));
        assert!(b.take(t0, 0, usize::MAX), "rate 0 is no limit");
    }

    #[test]
    fn the_source_limiter_allows_the_rate_per_address_and_recovers() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(t0, [1, 2]);
        let a: IpAddr = [198, 18, 0, 1].into();
        let b: IpAddr = [198, 18, 0, 2].into();
        let now = t0 + Duration::from_millis(5);
        let allowed = (0..200).filter(|_| l.allow(now, a, 50)).count();
        assert_eq!(allowed, 50, "a full bucket's worth at once");
        assert!(l.allow(now, b, 50), "another source has its own budget");
        let later = now + Duration::from_millis(100);
        let refilled = (0..200).filter(|_| l.allow(later, a, 50)).count();
        assert!((4..=6).contains(&refilled), "5 more in 100 ms at 50/s: {refilled}");
        assert!(l.allow(later, a, 0), "rate 0 is no limit");
    }

    #[test]
    fn the_log_limiter_allows_a_burst_then_a_trickle_and_counts_what_it_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new();
        assert_eq!((0..100).filter(|_| l.allow(t0).is_some()).count(), 20);
        // A second later, five more lines; the first carries the 80 suppressed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.allow(t1), Some(80));
        assert_eq!((0..10).filter(|_| l.allow(t1).is_some()).count(), 4);
    }

    #[test]
    fn the_quota_names_the_limit_it_hit_and_gives_slots_back() {
        let q = Quota::default();
        assert_eq!(q.acquire("a", 3, 2), Ok(()));
        assert_eq!(q.acquire("a", 3, 2), Ok(()));
        assert_eq!(q.acquire("a", 3, 2), Err(Refusal::UserQuota));
        assert_eq!(q.acquire("b", 3, 2), Ok(()));
        assert_eq!(q.acquire("c", 3, 2), Err(Refusal::ServerQuota));
        q.release("a");
        assert_eq!(q.total(), 2);
        assert_eq!(q.acquire("c", 3, 2), Ok(()));
    }
}
