//! When to look this node up again through its members (a Kademlia bootstrap), so that a node
//! that joins through one member still finds the others when its first lookup reached no one.
//!
//! A node bootstraps when its first member proves membership: it asks that member for the peers
//! closest to its own id, which connects it to the rest of the network. That one request can be
//! lost: the transport rule closes the connection it was sent on a moment after the proof (two
//! connections to the same member, one per transport), or the member restarts. Kademlia's own
//! periodic bootstrap comes only minutes later, and until then the node sees one member and
//! decides every blob's home among two nodes. So a bootstrap whose self-lookup no peer answered
//! is tried again after a backoff (1 s, doubling to a minute), until one is answered.
//!
//! A state machine driven by outcomes and `now`; the swarm task carries out its decisions.

use std::time::{Duration, Instant};

/// First wait before a bootstrap is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between tries; Kademlia's periodic bootstrap covers the steady state.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Whether and when the next bootstrap is due.
#[derive(Debug)]
pub(super) struct BootstrapRetry {
    due_at: Option<Instant>,
    backoff: Duration,
}

impl Default for BootstrapRetry {
    fn default() -> Self {
        Self {
            due_at: None,
            backoff: FIRST_RETRY,
        }
    }
}

impl BootstrapRetry {
    /// A bootstrap's self-lookup finished; `answered` is whether any peer answered it. An
    /// unanswered one is tried again after the backoff, which doubles; an answered one ends the
    /// retries and resets the backoff.
    pub(super) fn on_self_lookup(&mut self, answered: bool, now: Instant) {
        if answered {
            *self = Self::default();
            return;
        }
        self.due_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }

    /// When the next bootstrap is due, if one is.
    pub(super) fn due_at(&self) -> Option<Instant> {
        self.due_at
    }

    /// Whether a bootstrap is due at `now`; if so, it is taken (the caller starts it, and its
    /// outcome comes back through [`BootstrapRetry::on_self_lookup`]).
    pub(super) fn take_due(&mut self, now: Instant) -> bool {
        match self.due_at {
            Some(at) if at <= now => {
                self.due_at = None;
                true
            }
            _ => false,
        }
    }

    /// Nothing to ask (no peer in the routing table): stop retrying; the next member to prove
    /// membership starts a bootstrap of its own.
    pub(super) fn give_up(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_self_lookup_is_tried_again_with_a_doubling_backoff_up_to_a_minute() {
        let start = Instant::now();
        let mut retry = BootstrapRetry::default();
        assert_eq!(retry.due_at(), None);
        assert!(!retry.take_due(start));

        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..9 {
            retry.on_self_lookup(false, now);
            let at = retry.due_at().expect("a retry is scheduled");
            assert!(
                !retry.take_due(at - Duration::from_millis(1)),
                "not before it is due"
            );
            assert!(retry.take_due(at));
            assert!(!retry.take_due(at), "taken once");
            waits.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn an_answered_self_lookup_ends_the_retries_and_resets_the_backoff() {
        let now = Instant::now();
        let mut retry = BootstrapRetry::default();
        retry.on_self_lookup(false, now);
        retry.on_self_lookup(false, now);
        retry.on_self_lookup(true, now);
        assert_eq!(retry.due_at(), None);
        assert!(!retry.take_due(now + MAX_RETRY));
        retry.on_self_lookup(false, now);
        assert_eq!(retry.due_at(), Some(now + FIRST_RETRY));
    }

    #[test]
    fn giving_up_clears_what_was_due() {
        let now = Instant::now();
        let mut retry = BootstrapRetry::default();
        retry.on_self_lookup(false, now);
        retry.on_self_lookup(false, now);
        retry.give_up();
        assert_eq!(retry.due_at(), None);
        retry.on_self_lookup(false, now);
        assert_eq!(retry.due_at(), Some(now + FIRST_RETRY));
    }
}
