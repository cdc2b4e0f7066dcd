//! The origin budget of pre-fetching: a token bucket of bytes per hour, driven by `now`.
//!
//! Pre-fetches that no peer can serve spend from it; one that does not fit waits for the next
//! plan. The bucket holds at most one hour's bytes and starts full, so a node that was idle can
//! pre-position one release at once.

/// Origin bytes pre-fetching may still spend.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginBudget {
    bytes_per_hour: u64,
    available: f64,
    refilled_at: u64,
}

impl OriginBudget {
    /// A full bucket of `bytes_per_hour` at `now` (seconds).
    pub fn new(bytes_per_hour: u64, now: u64) -> Self {
        Self {
            bytes_per_hour,
            available: bytes_per_hour as f64,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.refilled_at) as f64;
        let cap = self.bytes_per_hour as f64;
        self.available = (self.available + elapsed * cap / 3600.0).min(cap);
        self.refilled_at = self.refilled_at.max(now);
    }

    /// Spends `bytes` if the budget has them; false (and nothing spent) if not.
    pub fn try_spend(&mut self, now: u64, bytes: u64) -> bool {
        self.refill(now);
        if bytes as f64 > self.available {
            return false;
        }
        self.available -= bytes as f64;
        true
    }

    /// Bytes available at `now`.
    pub fn available(&mut self, now: u64) -> u64 {
        self.refill(now);
        self.available as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_within_the_hourly_rate_and_refills_linearly() {
        let mut budget = OriginBudget::new(3600, 0);
        assert!(budget.try_spend(0, 3000));
        assert!(!budget.try_spend(0, 601));
        assert!(budget.try_spend(1, 601));
        assert_eq!(
            budget.available(10_000),
            3600,
            "never more than an hour's bytes"
        );
        let mut none = OriginBudget::new(0, 0);
        assert!(!none.try_spend(100, 1));
        assert!(none.try_spend(100, 0));
    }
}
