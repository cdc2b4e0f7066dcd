//! Threat records on the wire (`shoal_proto::gossip::ThreatScores`, topic `shoal/threat/1`): the
//! conversion both ways, and the pacing of what this node publishes.
//!
//! A record travels with its report's time, its score (in thousandths) and its worst
//! [`MAX_THREAT_CVES`] CVEs; `cves_total` still says how many the report named. A receiver merges
//! each entry into its book like a local record (checked, newest report wins, bounded), marked as
//! coming from the author. Publishing is paced like the receivers' budget (a burst of
//! `p2p::threat::BURST` messages, then one per `p2p::threat::REFILL`), so a large report reaches
//! peers whole instead of being cut off by their rate limit.
//!
//! Gossip reaches only the members subscribed when a record is published. So that a member that
//! joins later learns the book too, every node publishes its [`REPUBLISH_RECORDS`] newest records
//! again when a member subscribes to the topic ([`RepublishSchedule`]: [`JOIN_SETTLE`] after the
//! subscription, so members joining together share one round; at most one round per
//! [`REPUBLISH_GAP`]; and one every [`REPUBLISH_EVERY`] in any case, for a join this node did not
//! see). Receivers merge such a copy like any record: members that have it find it stale (not
//! forwarded, nothing changes), the newcomer takes it.

use std::time::{Duration, Instant};

use shoal_policy::threat::Severity;
use shoal_proto::gossip::{
    ThreatCve, ThreatEntry, ThreatScores, MAX_MILLI_SCORE, MAX_THREAT_CVES, MAX_THREAT_ENTRIES,
};
use shoal_proto::BlobDigest;
use tokio::sync::mpsc;

use super::book::{severity_label, CveSummary, LayerThreat, RecordSource, ThreatRecord};
use crate::p2p::threat::{BURST, REFILL};
use crate::p2p::PeerNetwork;

/// Messages waiting to be published at most (32 layers each); more are dropped and logged.
pub const PUBLISH_QUEUE: usize = 1024;

/// Records published again per round at most (eight messages), newest report first.
pub const REPUBLISH_RECORDS: usize = 8 * MAX_THREAT_ENTRIES;
/// How long after a member subscribes the round starts.
pub const JOIN_SETTLE: Duration = Duration::from_secs(2);
/// Rounds start at most this often, however many members join.
pub const REPUBLISH_GAP: Duration = Duration::from_secs(60);
/// A round starts at least this often.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(30 * 60);

/// When this node publishes its newest records again: a pure schedule driven by joins and an
/// explicit `now` (see the module docs).
#[derive(Debug, Clone)]
pub struct RepublishSchedule {
    /// When the last round started, or the schedule began.
    last: Instant,
    /// Whether a round started yet (the gap counts from rounds only).
    started_one: bool,
    /// The next round asked for by a join.
    due: Option<Instant>,
}

impl RepublishSchedule {
    /// A schedule whose first periodic round is [`REPUBLISH_EVERY`] after `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            last: now,
            started_one: false,
            due: None,
        }
    }

    /// A member subscribed at `now`: a round [`JOIN_SETTLE`] later, or once [`REPUBLISH_GAP`]
    /// has passed since the last round, whichever is later; a round already due sooner stays.
    pub fn member_joined(&mut self, now: Instant) {
        let mut at = now + JOIN_SETTLE;
        if self.started_one {
            at = at.max(self.last + REPUBLISH_GAP);
        }
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }

    /// When the next round starts.
    pub fn next_round(&self) -> Instant {
        let periodic = self.last + REPUBLISH_EVERY;
        self.due.map_or(periodic, |due| due.min(periodic))
    }

    /// Whether a round starts at `now` (it is then counted as started).
    pub fn start_round(&mut self, now: Instant) -> bool {
        if now < self.next_round() {
            return false;
        }
        self.last = now;
        self.started_one = true;
        self.due = None;
        true
    }
}

fn severity_code(label: &str) -> u8 {
    match Severity::from_label(label) {
        Severity::Unknown => 0,
        Severity::Negligible => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn severity_of(code: u8) -> Severity {
    match code {
        1 => Severity::Negligible,
        2 => Severity::Low,
        3 => Severity::Medium,
        4 => Severity::High,
        5 => Severity::Critical,
        _ => Severity::Unknown,
    }
}

/// One record as a wire entry (its worst CVEs only).
pub fn to_entry(digest: &BlobDigest, record: &ThreatRecord) -> ThreatEntry {
    ThreatEntry {
        blob: *digest.as_bytes(),
        reported_at: record.reported_at,
        milli_score: ((record.threat.score * 1000.0).round() as u32).min(MAX_MILLI_SCORE),
        cves_total: record.cves_total,
        cves: record
            .threat
            .cves
            .iter()
            .take(MAX_THREAT_CVES)
            .map(|c| ThreatCve {
                id: c.id.clone(),
                severity: severity_code(&c.severity),
                fixed: c.fixed,
            })
            .collect(),
    }
}

/// A wire entry as a record from `author`, its CVEs cut to `max_cves`.
pub fn from_entry(
    author: String,
    entry: &ThreatEntry,
    max_cves: usize,
) -> (BlobDigest, ThreatRecord) {
    let record = ThreatRecord {
        threat: LayerThreat {
            score: f64::from(entry.milli_score) / 1000.0,
            cves: entry
                .cves
                .iter()
                .take(max_cves)
                .map(|c| CveSummary {
                    id: c.id.clone(),
                    severity: severity_label(severity_of(c.severity)).to_owned(),
                    fixed: c.fixed,
                })
                .collect(),
        },
        cves_total: entry.cves_total,
        reported_at: entry.reported_at,
        source: RecordSource::Peer(author),
    };
    (BlobDigest::from_bytes(entry.blob), record)
}

/// Records as messages of at most [`MAX_THREAT_ENTRIES`] entries, blobs ascending in each.
pub fn to_messages(mut records: Vec<(BlobDigest, ThreatRecord)>) -> Vec<ThreatScores> {
    records.sort_by_key(|r| r.0);
    records.dedup_by(|a, b| a.0 == b.0);
    records
        .chunks(MAX_THREAT_ENTRIES)
        .map(|chunk| ThreatScores {
            entries: chunk.iter().map(|(d, r)| to_entry(d, r)).collect(),
        })
        .collect()
}

/// Publishes queued messages, paced to stay within every receiver's budget for this node.
pub async fn publisher(network: PeerNetwork, mut queue: mpsc::Receiver<ThreatScores>) {
    let mut tokens = f64::from(BURST);
    let mut at = Instant::now();
    while let Some(message) = queue.recv().await {
        loop {
            let now = Instant::now();
            tokens = (tokens + now.duration_since(at).as_secs_f64() / REFILL.as_secs_f64())
                .min(f64::from(BURST));
            at = now;
            if tokens >= 1.0 {
                break;
            }
            tokio::time::sleep(REFILL.mul_f64(1.0 - tokens)).await;
        }
        tokens -= 1.0;
        network.publish_threat(&message);
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::gossip::{GossipMessage as _, MAX_GOSSIP_TRANSMIT_BYTES};

    use super::super::book::{record_from_findings, ScoredFinding};
    use super::*;

    #[test]
    fn joins_bring_a_round_soon_but_rounds_keep_their_gap() {
        let secs = Duration::from_secs;
        let t = Instant::now();
        let mut schedule = RepublishSchedule::new(t);
        assert_eq!(schedule.next_round(), t + REPUBLISH_EVERY);
        assert!(!schedule.start_round(t + secs(1)));
        // A join: a round once members joining together have subscribed.
        schedule.member_joined(t + secs(1));
        schedule.member_joined(t + secs(2));
        let first = t + secs(1) + JOIN_SETTLE;
        assert_eq!(schedule.next_round(), first, "a later join keeps the round");
        assert!(!schedule.start_round(first - Duration::from_millis(1)));
        assert!(schedule.start_round(first));
        assert!(!schedule.start_round(first), "one round per join");
        // Joins right after a round wait for the gap.
        schedule.member_joined(first + secs(1));
        schedule.member_joined(first + secs(3));
        assert_eq!(schedule.next_round(), first + REPUBLISH_GAP);
        assert!(schedule.start_round(first + REPUBLISH_GAP));
        // Without joins, the periodic round.
        let second = first + REPUBLISH_GAP;
        assert_eq!(schedule.next_round(), second + REPUBLISH_EVERY);
        assert!(!schedule.start_round(second + REPUBLISH_EVERY - secs(1)));
        assert!(schedule.start_round(second + REPUBLISH_EVERY));
    }

    #[test]
    fn records_cross_the_wire_with_their_worst_cves_and_fit_a_message() {
        let findings: Vec<ScoredFinding> = (0..40)
            .map(|i| ScoredFinding {
                id: format!("CVE-2024-{i:05}"),
                severity: if i == 0 {
                    Severity::Critical
                } else {
                    Severity::Low
                },
                score: if i == 0 { 98.0 } else { 20.0 },
                fixed: i % 2 == 0,
            })
            .collect();
        let record = record_from_findings(&findings, 1_700_000_000, 64);
        let records: Vec<_> = (0..70u8)
            .map(|b| (BlobDigest::from_bytes([b; 32]), record.clone()))
            .collect();
        let messages = to_messages(records);
        assert_eq!(messages.len(), 3);
        for message in &messages {
            let payload = message.to_payload();
            assert!(payload.len() < MAX_GOSSIP_TRANSMIT_BYTES - 4096);
            assert_eq!(ThreatScores::from_payload(&payload).as_ref(), Ok(message));
        }
        let (digest, back) = from_entry("peer".into(), &messages[0].entries[0], 64);
        assert_eq!(digest, BlobDigest::from_bytes([0; 32]));
        assert_eq!(back.reported_at, record.reported_at);
        assert_eq!(back.cves_total, 40);
        assert_eq!(back.threat.cves.len(), MAX_THREAT_CVES);
        assert_eq!(back.threat.cves[0], record.threat.cves[0]);
        assert!((back.threat.score - record.threat.score).abs() < 0.001);
        assert_eq!(back.source, RecordSource::Peer("peer".into()));
    }
}
