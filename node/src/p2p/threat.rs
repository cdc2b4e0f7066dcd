//! Threat scores heard over gossip (`shoal/threat/1`): who may say how much, and where the news
//! goes.
//!
//! Rate-limited per author, because any member may write: a token bucket of [`BURST`] messages
//! refilled at one per [`REFILL`] (a node publishing the records of one large report sends a
//! burst, then paces itself the same way, see `threat::gossip`), for at most [`MAX_AUTHORS`]
//! authors (the one heard from longest ago goes first). A message over its author's budget is
//! ignored and not forwarded. What passes goes to the [`ThreatNews`] sink (the node's threat
//! book), which says whether anything in it was new: only then is it forwarded, so a record
//! travels the mesh once per newer report, not forever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::gossip::ThreatScores;

/// Authors whose budgets are kept at most.
pub const MAX_AUTHORS: usize = 2048;
/// Messages an author may send at once.
pub const BURST: u32 = 16;
/// One more message per author per this interval.
pub const REFILL: Duration = Duration::from_secs(1);

/// Where threat scores from peers go.
pub trait ThreatNews: Send + Sync {
    /// Merges the records `author` published; true when any was newer than what this node had.
    fn received(&self, author: PeerId, scores: ThreatScores) -> bool;

    /// `peer`, a member, subscribed to the threat topic: it may have joined after records were
    /// published (see `threat::gossip`'s republishing).
    fn member_subscribed(&self, peer: PeerId);
}

/// Each author's token bucket.
#[derive(Debug, Default)]
pub(crate) struct AuthorBudgets {
    by_author: HashMap<PeerId, (f64, Instant)>,
}

impl AuthorBudgets {
    /// Takes one message of `author`'s budget at `now`; false when it has none left.
    pub(crate) fn take(&mut self, author: PeerId, now: Instant) -> bool {
        if !self.by_author.contains_key(&author) && self.by_author.len() >= MAX_AUTHORS {
            let oldest = self
                .by_author
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                self.by_author.remove(&oldest);
            }
        }
        let (tokens, at) = self
            .by_author
            .entry(author)
            .or_insert((f64::from(BURST), now));
        let refilled = now.saturating_duration_since(*at).as_secs_f64() / REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(f64::from(BURST));
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Authors with a budget.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_author.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_author_gets_a_burst_then_one_message_per_interval() {
        let mut budgets = AuthorBudgets::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let t = Instant::now();
        for _ in 0..BURST {
            assert!(budgets.take(a, t));
        }
        assert!(!budgets.take(a, t), "over the burst");
        assert!(budgets.take(b, t), "another author has its own budget");
        assert!(budgets.take(a, t + REFILL));
        assert!(!budgets.take(a, t + REFILL));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut budgets = AuthorBudgets::default();
        let t = Instant::now();
        for i in 0..MAX_AUTHORS + 10 {
            budgets.take(PeerId::random(), t + Duration::from_millis(i as u64));
        }
        assert_eq!(budgets.len(), MAX_AUTHORS);
    }
}
