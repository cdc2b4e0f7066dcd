//! Which tags to watch for new versions, when to ask about each, and what a move means.
//!
//! Pure state driven by events with an explicit `now` (seconds). Clients' tag pulls give each tag
//! a demand score (pulls, halved every [`SCORE_HALF_LIFE_SECS`]); the top `watch_tags` by score
//! are watched. A watched tag is due when its cached resolution is older than the tag TTL (the
//! node never asks an upstream about a tag more often than it would for a client); each upstream
//! gets at most `checks_per_minute` checks (a token bucket), and an upstream that failed (a
//! `429` or `5xx` after the client's own retries, or no answer) is left alone for a back-off that
//! doubles per failure, from [`MIN_BACKOFF_SECS`] to [`MAX_BACKOFF_SECS`]. A check that finds
//! the tag at a digest other than the one this node last saw is a move: the caller pre-fetches
//! the new version.
//!
//! Bounded: at most `4 * watch_tags` tags are scored (at least 64); the lowest score goes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_proto::BlobDigest;

/// Half-life of a tag's demand score.
pub const SCORE_HALF_LIFE_SECS: u64 = 24 * 3600;
/// First back-off after an upstream failed a check.
pub const MIN_BACKOFF_SECS: u64 = 30;
/// Longest back-off.
pub const MAX_BACKOFF_SECS: u64 = 3600;

/// A tag of a repository of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WatchedTag {
    /// The upstream's configured name (`ns`).
    pub upstream: String,
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TagState {
    score: f64,
    scored_at: u64,
    /// The digest this node last saw the tag at.
    digest: Option<String>,
    /// When this node last resolved the tag (a client's pull or a check).
    resolved_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct UpstreamState {
    tokens: f64,
    refilled_at: u64,
    failures: u32,
    blocked_until: u64,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The upstream answered: the tag's digest now.
    Resolved(BlobDigest),
    /// The upstream failed or refused (429, 5xx, transport): back off.
    Failed,
}

/// The watcher's state.
#[derive(Debug, Clone)]
pub struct TagWatch {
    watch_tags: usize,
    checks_per_minute: u32,
    tag_ttl_secs: u64,
    tags: BTreeMap<WatchedTag, TagState>,
    upstreams: BTreeMap<String, UpstreamState>,
}

impl TagWatch {
    /// A watcher of the `watch_tags` most pulled tags.
    pub fn new(watch_tags: usize, checks_per_minute: u32, tag_ttl_secs: u64) -> Self {
        Self {
            watch_tags,
            checks_per_minute: checks_per_minute.max(1),
            tag_ttl_secs: tag_ttl_secs.max(1),
            tags: BTreeMap::new(),
            upstreams: BTreeMap::new(),
        }
    }

    fn capacity(&self) -> usize {
        (self.watch_tags * 4).max(64)
    }

    fn decayed(state: &TagState, now: u64) -> f64 {
        let age = now.saturating_sub(state.scored_at) as f64;
        state.score * 0.5f64.powf(age / SCORE_HALF_LIFE_SECS as f64)
    }

    /// A client pulled `tag` at `now` and was answered `digest`.
    pub fn record_pull(&mut self, now: u64, tag: WatchedTag, digest: BlobDigest) {
        if !self.tags.contains_key(&tag) && self.tags.len() >= self.capacity() {
            let lowest = self
                .tags
                .iter()
                .min_by(|a, b| Self::decayed(a.1, now).total_cmp(&Self::decayed(b.1, now)))
                .map(|(k, _)| k.clone());
            if let Some(lowest) = lowest {
                self.tags.remove(&lowest);
            }
        }
        let state = self.tags.entry(tag).or_insert(TagState {
            score: 0.0,
            scored_at: now,
            digest: None,
            resolved_at: 0,
        });
        state.score = Self::decayed(state, now) + 1.0;
        state.scored_at = now;
        state.digest = Some(digest.to_string());
        state.resolved_at = state.resolved_at.max(now);
    }

    /// The watched tags (the top `watch_tags` by score), highest first.
    pub fn watched(&self, now: u64) -> Vec<(WatchedTag, f64)> {
        let mut all: Vec<(WatchedTag, f64)> = self
            .tags
            .iter()
            .map(|(k, s)| (k.clone(), Self::decayed(s, now)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(self.watch_tags);
        all
    }

    /// The digest this node last saw `tag` at.
    pub fn last_digest(&self, tag: &WatchedTag) -> Option<BlobDigest> {
        self.tags
            .get(tag)
            .and_then(|s| s.digest.as_deref())
            .and_then(|d| d.parse().ok())
    }

    /// The watched tags to check now, highest demand first, within each upstream's rate and
    /// back-off; the checks are counted against the rate as they are handed out.
    pub fn due(&mut self, now: u64) -> Vec<WatchedTag> {
        let mut out = Vec::new();
        for (tag, _) in self.watched(now) {
            let Some(state) = self.tags.get(&tag) else {
                continue;
            };
            if now < state.resolved_at.saturating_add(self.tag_ttl_secs) {
                continue;
            }
            let rate = f64::from(self.checks_per_minute);
            let upstream = self
                .upstreams
                .entry(tag.upstream.clone())
                .or_insert(UpstreamState {
                    tokens: rate,
                    refilled_at: now,
                    ..UpstreamState::default()
                });
            if now < upstream.blocked_until {
                continue;
            }
            let elapsed = now.saturating_sub(upstream.refilled_at) as f64;
            upstream.tokens = (upstream.tokens + elapsed * rate / 60.0).min(rate);
            upstream.refilled_at = now;
            if upstream.tokens < 1.0 {
                continue;
            }
            upstream.tokens -= 1.0;
            out.push(tag);
        }
        out
    }

    /// What a check of `tag` found. Returns the previous digest when the tag moved.
    pub fn checked(
        &mut self,
        now: u64,
        tag: &WatchedTag,
        outcome: CheckOutcome,
    ) -> Option<BlobDigest> {
        match outcome {
            CheckOutcome::Failed => {
                let upstream = self.upstreams.entry(tag.upstream.clone()).or_default();
                upstream.failures = upstream.failures.saturating_add(1);
                let backoff = MIN_BACKOFF_SECS
                    .saturating_mul(1 << upstream.failures.saturating_sub(1).min(16))
                    .min(MAX_BACKOFF_SECS);
                upstream.blocked_until = now.saturating_add(backoff);
                None
            }
            CheckOutcome::Resolved(digest) => {
                if let Some(upstream) = self.upstreams.get_mut(&tag.upstream) {
                    upstream.failures = 0;
                    upstream.blocked_until = 0;
                }
                let state = self.tags.get_mut(tag)?;
                state.resolved_at = now;
                let before = state.digest.replace(digest.to_string());
                let before: Option<BlobDigest> = before.and_then(|d| d.parse().ok());
                before.filter(|b| *b != digest)
            }
        }
    }

    /// The watched tags and their state, for persistence.
    pub fn snapshot(&self) -> Vec<TagRecord> {
        self.tags
            .iter()
            .map(|(tag, s)| TagRecord {
                tag: tag.clone(),
                score: s.score,
                scored_at: s.scored_at,
                digest: s.digest.clone(),
                resolved_at: s.resolved_at,
            })
            .collect()
    }

    /// Restores tags from a snapshot (bad or excess records are skipped).
    pub fn restore(&mut self, records: Vec<TagRecord>) {
        for record in records {
            if self.tags.len() >= self.capacity() {
                break;
            }
            let valid_digest = record
                .digest
                .as_deref()
                .is_none_or(|d| d.parse::<BlobDigest>().is_ok());
            if !record.score.is_finite() || record.score < 0.0 || !valid_digest {
                continue;
            }
            self.tags.insert(
                record.tag,
                TagState {
                    score: record.score,
                    scored_at: record.scored_at,
                    digest: record.digest,
                    resolved_at: record.resolved_at,
                },
            );
        }
    }
}

/// One tag as written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The tag.
    pub tag: WatchedTag,
    /// Its score at `scored_at`.
    pub score: f64,
    /// When the score was last updated.
    pub scored_at: u64,
    /// The digest last seen.
    pub digest: Option<String>,
    /// When it was last resolved.
    pub resolved_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(upstream: &str, name: &str) -> WatchedTag {
        WatchedTag {
            upstream: upstream.into(),
            repo: "app".into(),
            tag: name.into(),
        }
    }

    fn digest(byte: u8) -> BlobDigest {
        BlobDigest::from_bytes([byte; 32])
    }

    #[test]
    fn the_most_pulled_tags_are_watched_and_checked_once_their_ttl_passed() {
        let mut watch = TagWatch::new(2, 100, 60);
        for _ in 0..3 {
            watch.record_pull(0, tag("o", "latest"), digest(1));
        }
        watch.record_pull(0, tag("o", "v2"), digest(2));
        watch.record_pull(0, tag("o", "v1"), digest(3));
        watch.record_pull(0, tag("o", "v1"), digest(3));
        let watched: Vec<String> = watch.watched(0).into_iter().map(|(t, _)| t.tag).collect();
        assert_eq!(watched, ["latest", "v1"]);
        assert!(
            watch.due(30).is_empty(),
            "resolved by a client within the TTL"
        );
        assert_eq!(watch.due(60), [tag("o", "latest"), tag("o", "v1")]);
    }

    #[test]
    fn a_move_is_reported_once_with_the_old_digest() {
        let mut watch = TagWatch::new(4, 100, 10);
        watch.record_pull(0, tag("o", "latest"), digest(1));
        let t = tag("o", "latest");
        assert_eq!(
            watch.checked(10, &t, CheckOutcome::Resolved(digest(1))),
            None
        );
        assert_eq!(
            watch.checked(20, &t, CheckOutcome::Resolved(digest(2))),
            Some(digest(1))
        );
        assert_eq!(
            watch.checked(30, &t, CheckOutcome::Resolved(digest(2))),
            None
        );
        assert_eq!(watch.last_digest(&t), Some(digest(2)));
    }

    #[test]
    fn each_upstream_is_rate_limited_and_backs_off_after_a_failure() {
        let mut watch = TagWatch::new(10, 2, 1);
        for name in ["a", "b", "c"] {
            watch.record_pull(0, tag("o", name), digest(1));
        }
        watch.record_pull(0, tag("p", "x"), digest(1));
        let due = watch.due(5);
        assert_eq!(due.iter().filter(|t| t.upstream == "o").count(), 2);
        assert_eq!(due.iter().filter(|t| t.upstream == "p").count(), 1);
        // One token back after 30 s.
        assert_eq!(
            watch.due(35).iter().filter(|t| t.upstream == "o").count(),
            1
        );
        watch.checked(35, &tag("p", "x"), CheckOutcome::Failed);
        assert!(watch
            .due(35 + MIN_BACKOFF_SECS - 1)
            .iter()
            .all(|t| t.upstream != "p"));
        watch.checked(36, &tag("p", "x"), CheckOutcome::Failed);
        assert!(watch
            .due(36 + MIN_BACKOFF_SECS + 1)
            .iter()
            .all(|t| t.upstream != "p"));
        assert!(watch
            .due(36 + 2 * MIN_BACKOFF_SECS)
            .iter()
            .any(|t| t.upstream == "p"));
    }

    #[test]
    fn the_table_is_bounded_and_survives_a_snapshot() {
        let mut watch = TagWatch::new(1, 10, 10);
        for i in 0..200u32 {
            watch.record_pull(u64::from(i), tag("o", &format!("t{i}")), digest(1));
        }
        assert!(watch.snapshot().len() <= 64);
        let mut restored = TagWatch::new(1, 10, 10);
        restored.restore(watch.snapshot());
        assert_eq!(restored.watched(500), watch.watched(500));
    }
}
