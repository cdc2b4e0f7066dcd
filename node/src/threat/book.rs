//! The threat book: one threat record per layer (blob digest), from this node's imported reports
//! and from peers' gossip, bounded, merged deterministically, and written to disk as a snapshot.
//!
//! Pure: no clock, no I/O. Time comes in as `now` (seconds since the Unix epoch) and whether a
//! layer is cached comes in as a predicate, so the bounds and the merge are unit-tested here.
//!
//! # Merge
//!
//! A record carries `reported_at`, the time the scan was made (the report's own timestamp, never
//! later than when it was imported). For each layer the record with the newest `reported_at`
//! wins; on a tie, the higher score (in thousandths, as on the wire), then the more CVEs named,
//! then the longer CVE list, then the smaller first differing CVE id. Records equal in all of
//! that are one report heard twice (the first copy stays), so merging is commutative and
//! idempotent: nodes that heard the same records in any order hold the same book, and a copy
//! sent back by a peer changes nothing. A clean rescan (score 0, no CVEs) is a record like any
//! other, so it replaces an older finding.
//!
//! # Bounds
//!
//! * At most [`BookLimits::max_layers`] records. When a new layer would exceed it, the record
//!   with the oldest `reported_at` among layers this node does not hold goes first (scores kept
//!   for layers not cached yet are the bounded, evictable part); only if every record is of a held
//!   layer does the oldest of all go.
//! * At most [`BookLimits::max_cves_per_layer`] CVEs per record: the highest scoring ones are
//!   kept, `cves_total` says how many there were. The score is computed from all of them first.
//! * CVE ids and severity labels are checked ([`valid_cve_id`], [`Severity`]); a record from a
//!   peer with a `reported_at` more than [`MAX_CLOCK_SKEW_SECS`] in this node's future is refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_policy::threat::{combine_scores, Severity};
use shoal_proto::BlobDigest;

/// Longest CVE or advisory id accepted (`CVE-2024-123456`, `GHSA-xxxx-xxxx-xxxx`, `RHSA-...`).
pub const MAX_CVE_ID_BYTES: usize = 48;
/// How far in the future a peer's `reported_at` may be before the record is refused.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Whether `id` can be a vulnerability id: 1 to [`MAX_CVE_ID_BYTES`] of ASCII letters, digits,
/// `-`, `_`, `.` and `:`.
pub fn valid_cve_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CVE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The severity label as shown (`CRITICAL`, `HIGH`, ...).
pub fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "CRITICAL",
        Severity::High => "HIGH",
        Severity::Medium => "MEDIUM",
        Severity::Low => "LOW",
        Severity::Negligible => "NEGLIGIBLE",
        Severity::Unknown => "UNKNOWN",
    }
}

/// One vulnerability of a layer, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CveSummary {
    /// CVE or advisory id.
    pub id: String,
    /// The severity label (`CRITICAL`, `HIGH`, `MEDIUM`, `LOW`, `NEGLIGIBLE`, `UNKNOWN`).
    pub severity: String,
    /// Whether a fixed version exists.
    pub fixed: bool,
}

/// What the threat book knows about one layer: the shape lifecycle reads
/// (`threat_of(&BlobDigest) -> Option<LayerThreat>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerThreat {
    /// Combined score 0-100 (`shoal_policy::threat::combine_scores` over every finding).
    pub score: f64,
    /// The CVEs kept (the highest scoring, at most the book's per-layer cap).
    pub cves: Vec<CveSummary>,
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "peer")]
pub enum RecordSource {
    /// A report imported on this node.
    Local,
    /// Gossip written by this peer.
    Peer(String),
}

/// One layer's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreatRecord {
    /// The score and CVEs.
    pub threat: LayerThreat,
    /// How many CVEs the report named for the layer (more than `threat.cves` when cut).
    pub cves_total: u32,
    /// When the scan was made, seconds since the Unix epoch.
    pub reported_at: u64,
    /// Where the record came from.
    pub source: RecordSource,
}

impl ThreatRecord {
    /// The merge order (see the module docs): the greater record wins.
    ///
    /// The score counts in thousandths, the resolution it has on the wire, and the CVE list by
    /// its length before its ids: so the copy of a record that a peer sends back (score rounded,
    /// list cut to the wire's [`shoal_proto::gossip::MAX_THREAT_CVES`]) never replaces the record
    /// it was made from.
    fn merge_key(&self) -> (u64, u64, u32, usize, std::cmp::Reverse<Vec<&str>>) {
        (
            self.reported_at,
            (self.threat.score.clamp(0.0, 100.0) * 1000.0).round() as u64,
            self.cves_total,
            self.threat.cves.len(),
            std::cmp::Reverse(self.threat.cves.iter().map(|c| c.id.as_str()).collect()),
        )
    }

    /// Whether `self` beats `other` for the same layer.
    pub fn newer_than(&self, other: &ThreatRecord) -> bool {
        self.merge_key() > other.merge_key()
    }
}

/// One finding as the intake hands it over: id, severity, score 0-100, fix available.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredFinding {
    /// CVE or advisory id.
    pub id: String,
    /// Its severity label.
    pub severity: Severity,
    /// Its 0-100 score (CVSS × 10, else the label's).
    pub score: f64,
    /// A fixed version exists.
    pub fixed: bool,
}

/// The book's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookLimits {
    /// Layers with a record at most.
    pub max_layers: usize,
    /// CVEs kept per layer at most.
    pub max_cves_per_layer: usize,
}

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A score outside 0-100 or not finite.
    #[error("score outside 0-100")]
    Score,
    /// A CVE id that is empty, too long or has other characters.
    #[error("bad vulnerability id")]
    CveId,
    /// A severity label that is not one of the six.
    #[error("bad severity label")]
    Severity,
    /// More CVEs than the cap, or a total below the CVEs listed.
    #[error("bad CVE count")]
    CveCount,
    /// `reported_at` too far in the future.
    #[error("reported in the future")]
    Future,
}

/// What a merge did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// Taken: the layer had no record, or an older one.
    Taken,
    /// The book's record for the layer is as new or newer.
    Stale,
}

/// Builds one layer's record from its findings: de-duplicated by id (highest score, fixed if any
/// copy says so), scored over all of them, the highest scoring kept up to `max_cves`.
pub fn record_from_findings(
    findings: &[ScoredFinding],
    reported_at: u64,
    max_cves: usize,
) -> ThreatRecord {
    let mut by_id: BTreeMap<&str, (f64, Severity, bool)> = BTreeMap::new();
    for f in findings {
        let entry = by_id
            .entry(f.id.as_str())
            .or_insert((0.0, Severity::Unknown, false));
        if f.score >= entry.0 {
            entry.0 = f.score;
            entry.1 = entry.1.max(f.severity);
        }
        entry.2 |= f.fixed;
    }
    let scores: Vec<f64> = by_id.values().map(|v| v.0).collect();
    let mut ranked: Vec<(&str, (f64, Severity, bool))> = by_id.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.0.cmp(b.0)));
    let cves_total = ranked.len() as u32;
    ranked.truncate(max_cves);
    ThreatRecord {
        threat: LayerThreat {
            score: combine_scores(&scores),
            cves: ranked
                .into_iter()
                .map(|(id, (_, severity, fixed))| CveSummary {
                    id: id.to_owned(),
                    severity: severity_label(severity).to_owned(),
                    fixed,
                })
                .collect(),
        },
        cves_total,
        reported_at,
        source: RecordSource::Local,
    }
}

/// The book as written to disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BookSnapshot {
    /// Every record, by digest.
    pub layers: Vec<(String, ThreatRecord)>,
}

/// Threat records per layer, bounded (see the module docs).
#[derive(Debug, Clone)]
pub struct ThreatBook {
    limits: BookLimits,
    records: BTreeMap<BlobDigest, ThreatRecord>,
    /// `(reported_at, digest)` of every record: eviction order, oldest first.
    by_age: BTreeSet<(u64, BlobDigest)>,
}

impl ThreatBook {
    /// An empty book.
    pub fn new(limits: BookLimits) -> Self {
        Self {
            limits,
            records: BTreeMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    /// Checks a record against the rules (see the module docs).
    pub fn check(&self, record: &ThreatRecord, now: u64) -> Result<(), RecordError> {
        let score = record.threat.score;
        if !(score.is_finite() && (0.0..=100.0).contains(&score)) {
            return Err(RecordError::Score);
        }
        if record.threat.cves.len() > self.limits.max_cves_per_layer
            || (record.cves_total as usize) < record.threat.cves.len()
        {
            return Err(RecordError::CveCount);
        }
        for cve in &record.threat.cves {
            if !valid_cve_id(&cve.id) {
                return Err(RecordError::CveId);
            }
            if Severity::from_label(&cve.severity) == Severity::Unknown && cve.severity != "UNKNOWN"
            {
                return Err(RecordError::Severity);
            }
        }
        if record.reported_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(RecordError::Future);
        }
        Ok(())
    }

    /// Merges `record` for `layer` (checked first; see the module docs for the order). `held`
    /// says whether this node caches a layer, for the bound.
    pub fn merge(
        &mut self,
        now: u64,
        layer: BlobDigest,
        record: ThreatRecord,
        held: &dyn Fn(&BlobDigest) -> bool,
    ) -> Result<Merged, RecordError> {
        self.check(&record, now)?;
        match self.records.get(&layer) {
            Some(old) if !record.newer_than(old) => return Ok(Merged::Stale),
            Some(old) => {
                self.by_age.remove(&(old.reported_at, layer));
            }
            None => self.make_room(held),
        }
        self.by_age.insert((record.reported_at, layer));
        self.records.insert(layer, record);
        Ok(Merged::Taken)
    }

    /// Frees one place if the book is full: the oldest record of a layer not held, else the
    /// oldest record.
    fn make_room(&mut self, held: &dyn Fn(&BlobDigest) -> bool) {
        if self.records.len() < self.limits.max_layers.max(1) {
            return;
        }
        let victim = self
            .by_age
            .iter()
            .find(|(_, d)| !held(d))
            .or_else(|| self.by_age.iter().next())
            .copied();
        if let Some((at, digest)) = victim {
            self.by_age.remove(&(at, digest));
            self.records.remove(&digest);
        }
    }

    /// The record of `layer`.
    pub fn record(&self, layer: &BlobDigest) -> Option<&ThreatRecord> {
        self.records.get(layer)
    }

    /// The score and CVEs of `layer` (the shape lifecycle reads).
    pub fn threat_of(&self, layer: &BlobDigest) -> Option<LayerThreat> {
        self.records.get(layer).map(|r| r.threat.clone())
    }

    /// The 0-100 score of `layer` (0 without a record).
    pub fn score(&self, layer: &BlobDigest) -> f64 {
        self.records.get(layer).map_or(0.0, |r| r.threat.score)
    }

    /// Layers with a record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No record at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every record, in digest order.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobDigest, &ThreatRecord)> {
        self.records.iter()
    }

    /// At most `limit` records that `include` accepts, newest report first (what this node
    /// publishes again for members that joined after the first publication).
    pub fn newest(
        &self,
        limit: usize,
        include: &dyn Fn(&BlobDigest, &ThreatRecord) -> bool,
    ) -> Vec<(BlobDigest, ThreatRecord)> {
        self.by_age
            .iter()
            .rev()
            .filter_map(|(_, digest)| Some((*digest, self.records.get(digest)?)))
            .filter(|(digest, record)| include(digest, record))
            .take(limit)
            .map(|(digest, record)| (digest, record.clone()))
            .collect()
    }

    /// The book as written to disk.
    pub fn snapshot(&self) -> BookSnapshot {
        BookSnapshot {
            layers: self
                .records
                .iter()
                .map(|(d, r)| (d.to_string(), r.clone()))
                .collect(),
        }
    }

    /// A book from a snapshot: every record checked again and merged (so a hand-edited or old
    /// file cannot break the bounds); bad entries are skipped and counted.
    pub fn restore(
        limits: BookLimits,
        snapshot: BookSnapshot,
        now: u64,
        held: &dyn Fn(&BlobDigest) -> bool,
    ) -> (Self, usize) {
        let mut book = Self::new(limits);
        let mut skipped = 0;
        for (digest, record) in snapshot.layers {
            let Ok(digest) = digest.parse::<BlobDigest>() else {
                skipped += 1;
                continue;
            };
            if book.merge(now, digest, record, held).is_err() {
                skipped += 1;
            }
        }
        (book, skipped)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(byte: u8) -> BlobDigest {
        BlobDigest::from_bytes([byte; 32])
    }

    fn limits(max_layers: usize) -> BookLimits {
        BookLimits {
            max_layers,
            max_cves_per_layer: 3,
        }
    }

    fn finding(id: &str, severity: Severity, score: f64, fixed: bool) -> ScoredFinding {
        ScoredFinding {
            id: id.into(),
            severity,
            score,
            fixed,
        }
    }

    fn record(reported_at: u64, score: f64) -> ThreatRecord {
        let mut r = record_from_findings(
            &[finding("CVE-2024-1", Severity::High, score, false)],
            reported_at,
            3,
        );
        r.threat.score = score;
        r
    }

    const NOTHING_HELD: &dyn Fn(&BlobDigest) -> bool = &|_| false;

    #[test]
    fn a_record_scores_every_finding_and_keeps_the_worst_cves() {
        let findings = [
            finding("CVE-1", Severity::Low, 25.0, false),
            finding("CVE-2", Severity::Critical, 98.0, true),
            finding("CVE-2", Severity::Critical, 91.0, false),
            finding("CVE-3", Severity::Medium, 55.0, false),
            finding("CVE-4", Severity::High, 80.0, true),
        ];
        let r = record_from_findings(&findings, 7, 2);
        assert_eq!(r.cves_total, 4);
        assert_eq!(
            r.threat.cves,
            vec![
                CveSummary {
                    id: "CVE-2".into(),
                    severity: "CRITICAL".into(),
                    fixed: true
                },
                CveSummary {
                    id: "CVE-4".into(),
                    severity: "HIGH".into(),
                    fixed: true
                },
            ]
        );
        // All four findings count in the score, not only the two kept.
        assert_eq!(r.threat.score, combine_scores(&[25.0, 98.0, 55.0, 80.0]));
        assert_eq!(r.reported_at, 7);
        let clean = record_from_findings(&[], 8, 2);
        assert_eq!(clean.threat.score, 0.0);
        assert!(clean.threat.cves.is_empty());
    }

    #[test]
    fn the_newest_report_wins_whatever_the_order() {
        let mut book = ThreatBook::new(limits(10));
        assert_eq!(
            book.merge(100, d(1), record(50, 90.0), NOTHING_HELD),
            Ok(Merged::Taken)
        );
        // Older: stale, even with a higher score.
        assert_eq!(
            book.merge(100, d(1), record(40, 99.0), NOTHING_HELD),
            Ok(Merged::Stale)
        );
        // A clean rescan, newer: replaces.
        let clean = record_from_findings(&[], 60, 3);
        assert_eq!(
            book.merge(100, d(1), clean.clone(), NOTHING_HELD),
            Ok(Merged::Taken)
        );
        assert_eq!(book.score(&d(1)), 0.0);
        // The same record again changes nothing (idempotent, so it is not forwarded again).
        assert_eq!(
            book.merge(100, d(1), clean, NOTHING_HELD),
            Ok(Merged::Stale)
        );
    }

    #[test]
    fn a_peers_copy_of_a_record_never_replaces_the_record_it_was_made_from() {
        let findings: Vec<ScoredFinding> = (0..40)
            .map(|i| finding(&format!("CVE-2024-{i:04}"), Severity::High, 71.234_56, true))
            .collect();
        let original = record_from_findings(&findings, 50, 64);
        let mut book = ThreatBook::new(limits(10));
        book.limits.max_cves_per_layer = 64;
        assert_eq!(
            book.merge(100, d(1), original.clone(), NOTHING_HELD),
            Ok(Merged::Taken)
        );
        // What a peer holds after gossip, and would publish again: score in thousandths, the
        // worst 16 CVEs.
        let mut copy = original.clone();
        copy.threat.score = (original.threat.score * 1000.0).round() / 1000.0;
        copy.threat
            .cves
            .truncate(shoal_proto::gossip::MAX_THREAT_CVES);
        copy.source = RecordSource::Peer("b".into());
        assert_eq!(
            book.merge(100, d(1), copy.clone(), NOTHING_HELD),
            Ok(Merged::Stale)
        );
        assert_eq!(book.record(&d(1)), Some(&original));
        // In the other order the full record wins too.
        let mut other = ThreatBook::new(limits(10));
        other.limits.max_cves_per_layer = 64;
        other.merge(100, d(1), copy, NOTHING_HELD).unwrap();
        assert_eq!(
            other.merge(100, d(1), original.clone(), NOTHING_HELD),
            Ok(Merged::Taken)
        );
    }

    #[test]
    fn the_newest_records_come_first_and_only_those_asked_for() {
        let mut book = ThreatBook::new(limits(10));
        for (byte, at) in [(1, 30), (2, 10), (3, 50), (4, 20)] {
            book.merge(100, d(byte), record(at, 40.0), NOTHING_HELD)
                .unwrap();
        }
        let digests = |records: Vec<(BlobDigest, ThreatRecord)>| -> Vec<BlobDigest> {
            records.into_iter().map(|(d, _)| d).collect()
        };
        assert_eq!(digests(book.newest(3, &|_, _| true)), [d(3), d(1), d(4)]);
        assert_eq!(
            digests(book.newest(10, &|digest, _| *digest != d(3))),
            [d(1), d(4), d(2)]
        );
        assert!(book.newest(0, &|_, _| true).is_empty());
    }

    #[test]
    fn bad_records_are_refused_and_change_nothing() {
        let mut book = ThreatBook::new(limits(10));
        let mut bad_score = record(1, 50.0);
        bad_score.threat.score = f64::NAN;
        let mut bad_id = record(1, 50.0);
        bad_id.threat.cves[0].id = "CVE 1; rm".into();
        let mut bad_severity = record(1, 50.0);
        bad_severity.threat.cves[0].severity = "SCARY".into();
        let mut too_many = record(1, 50.0);
        too_many.threat.cves = vec![too_many.threat.cves[0].clone(); 4];
        too_many.cves_total = 4;
        let mut short_total = record(1, 50.0);
        short_total.cves_total = 0;
        for (bad, why) in [
            (bad_score, RecordError::Score),
            (bad_id, RecordError::CveId),
            (bad_severity, RecordError::Severity),
            (too_many, RecordError::CveCount),
            (short_total, RecordError::CveCount),
            (
                record(100 + MAX_CLOCK_SKEW_SECS + 1, 5.0),
                RecordError::Future,
            ),
        ] {
            assert_eq!(book.merge(100, d(1), bad, NOTHING_HELD), Err(why));
        }
        assert!(book.is_empty());
    }

    #[test]
    fn a_full_book_drops_the_oldest_score_of_a_layer_not_cached() {
        let mut book = ThreatBook::new(limits(3));
        for (byte, at) in [(1, 10), (2, 20), (3, 30)] {
            book.merge(100, d(byte), record(at, 50.0), NOTHING_HELD)
                .unwrap();
        }
        // Layer 1 is cached here, so layer 2 (the oldest not cached) goes.
        let held = |digest: &BlobDigest| *digest == d(1);
        book.merge(100, d(4), record(40, 50.0), &held).unwrap();
        assert_eq!(book.len(), 3);
        assert!(book.record(&d(1)).is_some());
        assert!(book.record(&d(2)).is_none());
        // Everything cached: the oldest of all goes.
        book.merge(100, d(5), record(50, 50.0), &|_| true).unwrap();
        assert!(book.record(&d(1)).is_none());
        assert_eq!(book.len(), 3);
        // Replacing a layer's record never evicts another.
        book.merge(100, d(5), record(60, 70.0), NOTHING_HELD)
            .unwrap();
        assert_eq!(book.len(), 3);
    }

    #[test]
    fn a_snapshot_restores_the_same_book_and_skips_bad_entries() {
        let mut book = ThreatBook::new(limits(10));
        book.merge(100, d(1), record(10, 40.0), NOTHING_HELD)
            .unwrap();
        let mut peer = record(20, 80.0);
        peer.source = RecordSource::Peer("12D3KooW".into());
        book.merge(100, d(2), peer, NOTHING_HELD).unwrap();
        let mut snapshot = book.snapshot();
        let json = serde_json::to_vec(&snapshot).unwrap();
        let read: BookSnapshot = serde_json::from_slice(&json).unwrap();
        assert_eq!(read, snapshot);
        snapshot
            .layers
            .push(("sha256:nothex".into(), record(1, 1.0)));
        let mut bad = record(1, 1.0);
        bad.threat.score = 101.0;
        snapshot.layers.push((d(3).to_string(), bad));
        let (restored, skipped) = ThreatBook::restore(limits(10), snapshot, 100, NOTHING_HELD);
        assert_eq!(skipped, 2);
        assert_eq!(restored.snapshot(), book.snapshot());
    }

    proptest! {
        /// Merging the same records in any order gives the same book, and the bound holds.
        #[test]
        fn merging_is_order_independent_and_bounded(
            records in proptest::collection::vec((0u8..6, 0u64..5, 0u8..3), 1..40),
            seed in any::<u64>(),
        ) {
            let make = |(layer, at, score): (u8, u64, u8)| (d(layer), record(at, f64::from(score) * 10.0));
            let all: Vec<_> = records.iter().copied().map(make).collect();
            let mut shuffled = all.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut a = ThreatBook::new(limits(100));
            let mut b = ThreatBook::new(limits(100));
            for (layer, r) in all { a.merge(10, layer, r, NOTHING_HELD).unwrap(); }
            for (layer, r) in shuffled { b.merge(10, layer, r, NOTHING_HELD).unwrap(); }
            prop_assert_eq!(a.snapshot(), b.snapshot());
            let mut small = ThreatBook::new(limits(2));
            for (layer, r) in records.iter().copied().map(make) {
                small.merge(10, layer, r, NOTHING_HELD).unwrap();
                prop_assert!(small.len() <= 2);
            }
        }
    }
}
