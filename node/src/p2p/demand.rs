//! Regional demand heard over gossip: each member's latest [`DemandSummary`], added up per region.
//!
//! Bounded and rate-limited, because any member may write: one summary per author is kept (a new
//! one replaces it), at most [`MAX_AUTHORS`] authors (the one heard from longest ago goes first),
//! and an author's summary arriving sooner than [`MIN_INTERVAL`] after its last accepted one is
//! ignored and not forwarded, so a chatty member cannot flood the mesh through this node. Readers
//! ask for summaries younger than an age they choose (a departed member's demand fades out).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::gossip::DemandSummary;
use shoal_proto::BlobDigest;

/// Authors whose summaries are kept at most (256 entries each: about 20 MiB at the limit).
pub const MAX_AUTHORS: usize = 2048;
/// Shortest interval between two accepted summaries of one author.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a summary was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Recorded (and worth forwarding).
    Recorded,
    /// Older than what the author already said, or too soon after it.
    Ignored,
}

/// The latest summary of each author.
#[derive(Debug, Default)]
pub(crate) struct RegionalDemand {
    by_author: HashMap<PeerId, (u64, Instant, DemandSummary)>,
}

impl RegionalDemand {
    /// Takes `summary`, written by `author` with gossip sequence number `sequence`, at `now`.
    pub(crate) fn record(
        &mut self,
        author: PeerId,
        sequence: u64,
        summary: DemandSummary,
        now: Instant,
    ) -> Taken {
        if let Some((last_sequence, at, _)) = self.by_author.get(&author) {
            if sequence <= *last_sequence || now.saturating_duration_since(*at) < MIN_INTERVAL {
                return Taken::Ignored;
            }
        } else if self.by_author.len() >= MAX_AUTHORS {
            let oldest = self
                .by_author
                .iter()
                .min_by_key(|(_, (_, at, _))| *at)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                self.by_author.remove(&oldest);
            }
        }
        self.by_author.insert(author, (sequence, now, summary));
        Taken::Recorded
    }

    /// Forecast pulls per region and blob, summed over the authors heard from within `max_age`
    /// of `now`.
    pub(crate) fn by_region(
        &self,
        now: Instant,
        max_age: Duration,
    ) -> BTreeMap<String, BTreeMap<BlobDigest, f64>> {
        let mut out: BTreeMap<String, BTreeMap<BlobDigest, f64>> = BTreeMap::new();
        for (_, at, summary) in self.by_author.values() {
            if now.saturating_duration_since(*at) > max_age {
                continue;
            }
            let region = out.entry(summary.region.clone()).or_default();
            for entry in &summary.entries {
                *region
                    .entry(BlobDigest::from_bytes(entry.blob))
                    .or_default() += f64::from(entry.milli_pulls) / 1000.0;
            }
        }
        out
    }

    /// Authors with a summary.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_author.len()
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::gossip::DemandEntry;

    use super::*;

    fn summary(region: &str, blob: u8, milli_pulls: u32) -> DemandSummary {
        DemandSummary {
            region: region.into(),
            entries: vec![DemandEntry {
                blob: [blob; 32],
                milli_pulls,
            }],
        }
    }

    #[test]
    fn summaries_add_up_per_region_and_replace_the_authors_last() {
        let mut table = RegionalDemand::default();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t = Instant::now();
        assert_eq!(
            table.record(a, 1, summary("eu", 1, 1500), t),
            Taken::Recorded
        );
        assert_eq!(
            table.record(b, 1, summary("eu", 1, 500), t),
            Taken::Recorded
        );
        assert_eq!(
            table.record(c, 1, summary("us", 1, 1000), t),
            Taken::Recorded
        );
        let sums = table.by_region(t, Duration::from_secs(60));
        assert_eq!(sums["eu"][&BlobDigest::from_bytes([1; 32])], 2.0);
        assert_eq!(sums["us"][&BlobDigest::from_bytes([1; 32])], 1.0);
        // Too soon, or stale: ignored. Later: replaces.
        assert_eq!(
            table.record(a, 2, summary("eu", 2, 1000), t),
            Taken::Ignored
        );
        let later = t + MIN_INTERVAL;
        assert_eq!(
            table.record(a, 1, summary("eu", 2, 1000), later),
            Taken::Ignored
        );
        assert_eq!(
            table.record(a, 3, summary("eu", 2, 1000), later),
            Taken::Recorded
        );
        let sums = table.by_region(later, Duration::from_secs(60));
        assert_eq!(sums["eu"][&BlobDigest::from_bytes([1; 32])], 0.5);
        // Old summaries fade out.
        assert!(table
            .by_region(later + Duration::from_secs(61), Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = RegionalDemand::default();
        let t = Instant::now();
        for i in 0..MAX_AUTHORS + 10 {
            table.record(
                PeerId::random(),
                1,
                summary("eu", 1, 1),
                t + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(table.len(), MAX_AUTHORS);
    }
}
