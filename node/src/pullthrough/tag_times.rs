//! When a cached tag is fresh, on the monotonic clock.
//!
//! A tag's record in the store carries the wall-clock time the upstream answered, which survives
//! restarts but not a clock step: set back a day, it would keep a tag fresh for a day (frozen);
//! set forward, it would expire every tag at once. So this process also remembers, on the
//! monotonic clock, when it resolved each tag itself, and judges freshness by that. Only a tag
//! not resolved since the start (or forgotten because the table was full) falls back to the
//! wall-clock record, and a record from the future (the clock went back) counts as stale, never
//! as fresh. The decisions take `now` as arguments, so tests drive both clocks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tags remembered at most; past it the table is emptied (freshness then falls back to the
/// wall-clock records until tags are resolved again).
const MAX_TAGS: usize = 100_000;

/// Whether a tag is fresh: by the monotonic time this process resolved it, if known, else by
/// the wall-clock record (never fresh if that lies in the future).
pub fn tag_is_fresh(
    resolved_at: Option<Instant>,
    fetched_at_ms: u64,
    now: Instant,
    now_ms: u64,
    ttl: Duration,
) -> bool {
    match resolved_at {
        Some(at) => now.saturating_duration_since(at) < ttl,
        None => {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            fetched_at_ms <= now_ms && now_ms - fetched_at_ms < ttl_ms
        }
    }
}

/// The monotonic times this process resolved tags at, by tag key.
#[derive(Debug, Default)]
pub struct TagTimes {
    resolved: Mutex<HashMap<String, Instant>>,
}

impl TagTimes {
    /// The upstream resolved `key` at `now`.
    pub fn resolved(&self, key: &str, now: Instant) {
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if resolved.len() >= MAX_TAGS && !resolved.contains_key(key) {
            resolved.clear();
        }
        resolved.insert(key.to_owned(), now);
    }

    /// `key` was resolved other than by the upstream (a peer): it must not be fresh.
    pub fn forget(&self, key: &str) {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Whether `key`, recorded as fetched at `fetched_at_ms`, is fresh at `now` / `now_ms`.
    pub fn is_fresh(
        &self,
        key: &str,
        fetched_at_ms: u64,
        now: Instant,
        now_ms: u64,
        ttl: Duration,
    ) -> bool {
        let resolved_at = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied();
        tag_is_fresh(resolved_at, fetched_at_ms, now, now_ms, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn a_wall_clock_jump_neither_expires_nor_freezes_a_tag_resolved_here() {
        let times = TagTimes::default();
        let start = Instant::now();
        let wall = 1_000_000_000_000;
        times.resolved("t", start);
        // The wall clock jumps forward a day a minute later: still fresh.
        let later = start + Duration::from_secs(60);
        assert!(times.is_fresh("t", wall, later, wall + DAY_MS, TTL));
        // It jumps back a day: the tag still expires after its lifetime.
        let expired = start + TTL + Duration::from_secs(1);
        assert!(!times.is_fresh("t", wall, expired, wall - DAY_MS, TTL));
    }

    #[test]
    fn a_tag_known_only_from_its_record_is_never_fresh_from_the_future() {
        let times = TagTimes::default();
        let now = Instant::now();
        let wall = 1_000_000_000_000;
        assert!(times.is_fresh("t", wall - 1000, now, wall, TTL));
        assert!(!times.is_fresh("t", wall - TTL.as_millis() as u64, now, wall, TTL));
        // Recorded "in the future": the clock went back since; stale, not frozen fresh.
        assert!(!times.is_fresh("t", wall + DAY_MS, now, wall, TTL));
    }

    #[test]
    fn a_forgotten_tag_falls_back_to_its_record() {
        let times = TagTimes::default();
        let now = Instant::now();
        times.resolved("t", now);
        times.forget("t");
        assert!(!times.is_fresh("t", 0, now, 1_000_000_000_000, TTL));
    }
}
