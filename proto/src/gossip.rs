//! The gossip messages: what members tell every other member without being asked.
//!
//! ## Goals and non-goals
//!
//! Goals: let every member learn, within a few gossip rounds, which members hold which shards of
//! which blob, without asking the DHT; make room for later kinds of news (usage, threat) as new
//! topics and message kinds, decoded and dispatched by the same code. Every payload is bounded and
//! validated before anything is believed or forwarded. Non-goals: completeness (a member that
//! joins late hears only what is announced after it joined; the DHT's provider records stay the
//! complete source), ordering beyond the author's sequence numbers, trust in what a holding
//! claims (the shard transfer verifies every byte it moves).
//!
//! ## Topics
//!
//! One gossipsub topic per kind of news, named `shoal/<name>/<version>` ([`Topic`]). Now:
//! `shoal/announce/1` carries [`Announcement`]s; `shoal/demand/1` carries [`DemandSummary`]s
//! (each node's top [`MAX_DEMAND_ENTRIES`] layers by forecast, with its region, once per plan);
//! `shoal/threat/1` carries [`ThreatScores`] (threat records of at most [`MAX_THREAT_ENTRIES`]
//! layers, each with its report's time, score and worst [`MAX_THREAT_CVES`] CVEs, published when a
//! node imports a scanner report; receivers keep, per layer, the record of the newest report);
//! `shoal/rebuild/1` carries [`TagNews`] (one tag of one upstream repository: held at its old
//! digest while a rebuild's shadow is fetched, then switched to the new digest, or released when
//! the rebuild failed; receivers keep, per tag, the news of the newest rebuild).
//!
//! ## Payload
//!
//! A gossip payload is a frame body of the peer wire format ([`crate::wire`]) without the length
//! prefix (gossipsub delimits messages itself):
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SHWR"
//! 4       2     format version, little endian (currently 1)
//! 6       1     message kind: 10 = Announcement, 11 = DemandSummary, 12 = ThreatScores,
//!                     13 = TagNews
//! 7       1     reserved, zero
//! 8       N-8   rkyv archive of the message (validated with bytecheck on decode)
//! ```
//!
//! The payload's length is checked against the message's limit before anything is copied.
//!
//! ## Message flow
//!
//! ```text
//! member A                     gossipsub mesh (members only)                member B
//!   commits blob X ── Holds { X, shard_count, All } ─────────────────────▶ holdings[X] += A
//!   evicts X       ── Dropped { X } ─────────────────────────────────────▶ holdings[X] -= A
//! ```
//!
//! Messages are signed by their author's peer identity (gossipsub's strict mode: author, sequence
//! number and signature are required). A newer `Holds` for the same blob and author replaces the
//! older one; a `Dropped` removes it.
//!
//! Partial holdings: the format can say that the author holds some shards (`Holds` with a
//! bitfield), and receivers validate and record such news, but a node announces only whole blobs
//! (on commit) and drops (on eviction). A blob still being downloaded is found otherwise: its
//! flight publishes a DHT provider record as soon as its source is known, and a member asking for
//! it is streamed every shard in order as it arrives (an in-flight answer of `crate::wire`). The
//! transfer protocol has no way to ask a member for some shards of a blob it has not committed,
//! so a bitfield of such shards would not help assembly.
//!
//! ## Limits
//!
//! * An [`Announcement`] is at most [`MAX_ANNOUNCEMENT_BYTES`]; a bitfield at most
//!   [`MAX_ANNOUNCED_BITFIELD_BYTES`] (262,144 shards, 256 GiB of blob at the default 1 MiB
//!   average). A holder of a larger partial blob announces a prefix of its bitfield, which is
//!   still true.
//! * A gossipsub transmission (one RPC, with signature, key and control messages) is at most
//!   [`MAX_GOSSIP_TRANSMIT_BYTES`].

use crate::digest::BlobDigest;
use crate::limits::MAX_SHARDS_PER_MAP;
use crate::wire::{wire_message, Kind, ShardSet, WireError, WireMessage, HEADER_LEN, PREFIX_LEN};

/// Largest bitfield an [`Announcement::Holds`] may carry.
pub const MAX_ANNOUNCED_BITFIELD_BYTES: usize = 32 * 1024;
/// Largest encoded [`Announcement`] (header included).
pub const MAX_ANNOUNCEMENT_BYTES: usize = HEADER_LEN + 128 + MAX_ANNOUNCED_BITFIELD_BYTES;
/// Largest gossipsub transmission accepted or sent: one announcement with room for the
/// signature, the author's key, the topic and control messages.
pub const MAX_GOSSIP_TRANSMIT_BYTES: usize = 64 * 1024;

/// A gossip topic: one per kind of news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Which members hold which shards of which blob ([`Announcement`]).
    Announce,
    /// How much demand each region forecasts for its most wanted layers ([`DemandSummary`]).
    Demand,
    /// Threat scores of layers from scanner reports ([`ThreatScores`]).
    Threat,
    /// Tags held at a digest during a rebuild, and their switchovers ([`TagNews`]).
    Rebuild,
}

impl Topic {
    /// Every topic a node subscribes to.
    pub const ALL: [Topic; 4] = [
        Topic::Announce,
        Topic::Demand,
        Topic::Threat,
        Topic::Rebuild,
    ];

    /// The topic's name on the network.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Announce => "shoal/announce/1",
            Topic::Demand => "shoal/demand/1",
            Topic::Threat => "shoal/threat/1",
            Topic::Rebuild => "shoal/rebuild/1",
        }
    }

    /// The topic with this name, if this build knows it.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|topic| topic.name() == name)
    }
}

/// A message published on a gossip topic.
pub trait GossipMessage: WireMessage {
    /// The topic it travels on.
    const TOPIC: Topic;

    /// The payload to publish: the frame body, without the length prefix.
    fn to_payload(&self) -> Vec<u8> {
        let mut frame = self.encode();
        frame.drain(..PREFIX_LEN);
        frame
    }

    /// Decodes a received payload (length, header, archive and rules checked, in that order).
    fn from_payload(payload: &[u8]) -> Result<Self, WireError> {
        Self::decode(payload)
    }
}

pub use announcement::Announcement;

// rkyv's derive generates the archived twin's variant fields without docs; they mirror the
// documented fields here.
#[allow(missing_docs)]
mod announcement {
    use crate::wire::ShardSet;

    /// News about what the author holds.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum Announcement {
        /// The author holds some or all shards of a blob (nodes announce whole, committed blobs
        /// only; see the module docs on partial holdings).
        Holds {
            /// SHA-256 of the blob.
            blob: [u8; 32],
            /// How many shards the blob's shard map lists (1 to [`crate::limits::MAX_SHARDS_PER_MAP`]).
            shard_count: u32,
            /// The shards held: [`ShardSet::All`] for the whole blob, or a bitfield with at least one
            /// bit set and none at or past `shard_count`.
            shards: ShardSet,
        },
        /// The author no longer holds the blob (it was evicted).
        Dropped {
            /// SHA-256 of the blob.
            blob: [u8; 32],
        },
    }
}

impl Announcement {
    /// The author holds the whole of `blob`.
    pub fn complete(blob: BlobDigest, shard_count: u32) -> Self {
        Announcement::Holds {
            blob: *blob.as_bytes(),
            shard_count,
            shards: ShardSet::All,
        }
    }

    /// The author holds the shards of `blob` in `held`, normalised: bits at or past
    /// `shard_count` cleared, a full bitfield sent as [`ShardSet::All`], trailing empty bytes
    /// trimmed, and a bitfield longer than [`MAX_ANNOUNCED_BITFIELD_BYTES`] cut to that (a prefix
    /// of what is held is still true). `None` if that leaves nothing to announce.
    pub fn holds(blob: BlobDigest, shard_count: u32, held: &ShardSet) -> Option<Self> {
        let count = shard_count as usize;
        if count == 0 || count > MAX_SHARDS_PER_MAP {
            return None;
        }
        let shards = match held {
            ShardSet::All => ShardSet::All,
            ShardSet::Bitfield(bits) => {
                let mut bits = bits[..bits.len().min(count.div_ceil(8))].to_vec();
                if !count.is_multiple_of(8) {
                    if let Some(last) = bits.get_mut(count / 8) {
                        *last &= (1u8 << (count % 8)) - 1;
                    }
                }
                let full = bits.len() == count.div_ceil(8)
                    && (0..count).all(|i| bits[i / 8] & (1 << (i % 8)) != 0);
                if full {
                    ShardSet::All
                } else {
                    bits.truncate(MAX_ANNOUNCED_BITFIELD_BYTES);
                    while bits.last() == Some(&0) {
                        bits.pop();
                    }
                    if bits.is_empty() {
                        return None;
                    }
                    ShardSet::Bitfield(bits)
                }
            }
        };
        Some(Announcement::Holds {
            blob: *blob.as_bytes(),
            shard_count,
            shards,
        })
    }

    /// The author no longer holds `blob`.
    pub fn dropped(blob: BlobDigest) -> Self {
        Announcement::Dropped {
            blob: *blob.as_bytes(),
        }
    }

    /// The blob the announcement is about.
    pub fn blob_digest(&self) -> BlobDigest {
        match self {
            Announcement::Holds { blob, .. } | Announcement::Dropped { blob } => {
                BlobDigest::from_bytes(*blob)
            }
        }
    }

    fn check_rules(&self) -> Result<(), WireError> {
        let Announcement::Holds {
            shard_count,
            shards,
            ..
        } = self
        else {
            return Ok(());
        };
        let count = *shard_count as usize;
        if count == 0 || count > MAX_SHARDS_PER_MAP {
            return Err(WireError::Invalid("shard count out of range"));
        }
        let ShardSet::Bitfield(bits) = shards else {
            return Ok(());
        };
        if bits.len() > MAX_ANNOUNCED_BITFIELD_BYTES || bits.len() > count.div_ceil(8) {
            return Err(WireError::Invalid("bitfield longer than the blob's shards"));
        }
        if bits.iter().all(|byte| *byte == 0) {
            return Err(WireError::Invalid("announcement holds no shard"));
        }
        if !count.is_multiple_of(8) && bits.len() == count.div_ceil(8) {
            let past_end = bits[count / 8] >> (count % 8);
            if past_end != 0 {
                return Err(WireError::Invalid("bit set past the last shard"));
            }
        }
        Ok(())
    }
}

wire_message!(
    Announcement,
    Kind::Announcement,
    MAX_ANNOUNCEMENT_BYTES,
    Announcement::check_rules
);

impl GossipMessage for Announcement {
    const TOPIC: Topic = Topic::Announce;
}

/// Most layers one [`DemandSummary`] lists.
pub const MAX_DEMAND_ENTRIES: usize = 256;
/// Longest region name in a [`DemandSummary`].
pub const MAX_REGION_BYTES: usize = 64;
/// Largest encoded [`DemandSummary`] (header included).
pub const MAX_DEMAND_SUMMARY_BYTES: usize =
    HEADER_LEN + 64 + MAX_REGION_BYTES + MAX_DEMAND_ENTRIES * 40;

pub use demand::{DemandEntry, DemandSummary};

// As for `announcement`: the archived twins' fields mirror the documented ones.
#[allow(missing_docs)]
mod demand {
    /// One layer of a [`DemandSummary`].
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct DemandEntry {
        /// SHA-256 of the blob.
        pub blob: [u8; 32],
        /// Forecast pulls over the author's planning horizon, in thousandths (at least 1).
        pub milli_pulls: u32,
    }

    /// The layers the author forecasts the most pulls of, and its region: what a region's nodes
    /// add up to plan copies for demand they did not see themselves.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct DemandSummary {
        /// The author's region (1 to [`super::MAX_REGION_BYTES`] of a-z, 0-9, -).
        pub region: String,
        /// At most [`super::MAX_DEMAND_ENTRIES`] layers, blobs in strictly ascending order.
        pub entries: Vec<DemandEntry>,
    }
}

impl DemandSummary {
    /// A summary of the `MAX_DEMAND_ENTRIES` layers of highest forecast among `forecasts`
    /// (forecast pulls; those below a thousandth, or not finite, are left out).
    pub fn top(region: &str, forecasts: impl IntoIterator<Item = (BlobDigest, f64)>) -> Self {
        let mut all: Vec<(BlobDigest, u32)> = forecasts
            .into_iter()
            .filter(|(_, f)| f.is_finite())
            .map(|(d, f)| (d, (f * 1000.0).min(u32::MAX as f64) as u32))
            .filter(|(_, m)| *m >= 1)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(MAX_DEMAND_ENTRIES);
        all.sort_by_key(|e| e.0);
        DemandSummary {
            region: region.to_owned(),
            entries: all
                .into_iter()
                .map(|(d, milli_pulls)| DemandEntry {
                    blob: *d.as_bytes(),
                    milli_pulls,
                })
                .collect(),
        }
    }

    fn check_rules(&self) -> Result<(), WireError> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= MAX_REGION_BYTES
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(WireError::Invalid("bad region name"));
        }
        if self.entries.len() > MAX_DEMAND_ENTRIES {
            return Err(WireError::Invalid("too many demand entries"));
        }
        if self.entries.iter().any(|e| e.milli_pulls == 0) {
            return Err(WireError::Invalid("demand entry without demand"));
        }
        if self.entries.windows(2).any(|w| w[0].blob >= w[1].blob) {
            return Err(WireError::Invalid(
                "demand entries not in ascending blob order",
            ));
        }
        Ok(())
    }
}

wire_message!(
    DemandSummary,
    Kind::DemandSummary,
    MAX_DEMAND_SUMMARY_BYTES,
    DemandSummary::check_rules
);

impl GossipMessage for DemandSummary {
    const TOPIC: Topic = Topic::Demand;
}

/// Most layers one [`ThreatScores`] lists.
pub const MAX_THREAT_ENTRIES: usize = 32;
/// Most CVEs one [`ThreatEntry`] lists (the worst of the layer's).
pub const MAX_THREAT_CVES: usize = 16;
/// Longest CVE or advisory id in a [`ThreatCve`].
pub const MAX_THREAT_CVE_ID_BYTES: usize = 48;
/// Highest [`ThreatEntry::milli_score`]: a score of 100.
pub const MAX_MILLI_SCORE: u32 = 100_000;
/// Highest [`ThreatCve::severity`] (critical).
pub const MAX_SEVERITY: u8 = 5;
/// Largest encoded [`ThreatScores`] (header included).
pub const MAX_THREAT_SCORES_BYTES: usize =
    HEADER_LEN + 64 + MAX_THREAT_ENTRIES * (96 + MAX_THREAT_CVES * (MAX_THREAT_CVE_ID_BYTES + 24));

pub use threat::{ThreatCve, ThreatEntry, ThreatScores};

// As for `announcement`: the archived twins' fields mirror the documented ones.
#[allow(missing_docs)]
mod threat {
    /// One vulnerability of a [`ThreatEntry`].
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct ThreatCve {
        /// CVE or advisory id (1 to [`super::MAX_THREAT_CVE_ID_BYTES`] of ASCII letters, digits,
        /// `-`, `_`, `.`, `:`).
        pub id: String,
        /// 0 unknown, 1 negligible, 2 low, 3 medium, 4 high, 5 critical.
        pub severity: u8,
        /// A fixed version exists.
        pub fixed: bool,
    }

    /// One layer's threat record.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct ThreatEntry {
        /// SHA-256 of the blob.
        pub blob: [u8; 32],
        /// When the scan was made, seconds since the Unix epoch (the merge's order).
        pub reported_at: u64,
        /// The score 0-100 in thousandths (at most [`super::MAX_MILLI_SCORE`]).
        pub milli_score: u32,
        /// How many CVEs the report named for the layer (at least `cves.len()`).
        pub cves_total: u32,
        /// The worst CVEs, at most [`super::MAX_THREAT_CVES`].
        pub cves: Vec<ThreatCve>,
    }

    /// Threat records of layers, from a scanner report the author imported.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct ThreatScores {
        /// At most [`super::MAX_THREAT_ENTRIES`] layers, blobs in strictly ascending order.
        pub entries: Vec<ThreatEntry>,
    }
}

/// Whether `id` is a vulnerability id a [`ThreatCve`] may carry.
pub fn valid_threat_cve_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_THREAT_CVE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl ThreatScores {
    fn check_rules(&self) -> Result<(), WireError> {
        if self.entries.is_empty() || self.entries.len() > MAX_THREAT_ENTRIES {
            return Err(WireError::Invalid("threat entries out of range"));
        }
        if self.entries.windows(2).any(|w| w[0].blob >= w[1].blob) {
            return Err(WireError::Invalid(
                "threat entries not in ascending blob order",
            ));
        }
        for entry in &self.entries {
            if entry.milli_score > MAX_MILLI_SCORE {
                return Err(WireError::Invalid("threat score above 100"));
            }
            if entry.cves.len() > MAX_THREAT_CVES || (entry.cves_total as usize) < entry.cves.len()
            {
                return Err(WireError::Invalid("bad CVE count"));
            }
            for cve in &entry.cves {
                if !valid_threat_cve_id(&cve.id) {
                    return Err(WireError::Invalid("bad vulnerability id"));
                }
                if cve.severity > MAX_SEVERITY {
                    return Err(WireError::Invalid("bad severity"));
                }
            }
        }
        Ok(())
    }
}

wire_message!(
    ThreatScores,
    Kind::ThreatScores,
    MAX_THREAT_SCORES_BYTES,
    ThreatScores::check_rules
);

impl GossipMessage for ThreatScores {
    const TOPIC: Topic = Topic::Threat;
}

/// Largest encoded [`TagNews`] (header included).
pub const MAX_TAG_NEWS_BYTES: usize = HEADER_LEN
    + 128
    + crate::limits::MAX_REGISTRY_HOST_BYTES
    + crate::limits::MAX_REPO_NAME_BYTES
    + crate::limits::MAX_TAG_BYTES;

pub use tag_news::{TagNews, TagPhase};

// As for `announcement`: the archived twins' fields mirror the documented ones.
#[allow(missing_docs)]
mod tag_news {
    /// Where a rebuild of a tag is, as its author says.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        PartialOrd,
        Ord,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
    )]
    pub enum TagPhase {
        /// The new version is being fetched into every region: serve `old` for the tag until
        /// `expires_at` or later news.
        Held,
        /// Every region holds the new version: the tag moves to `new`.
        Switched,
        /// The rebuild failed: the hold is lifted, the tag is left as it was.
        Released,
    }

    /// News about one tag's rebuild.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct TagNews {
        /// The upstream's registry host name, as containerd sends it in `ns`.
        pub upstream: String,
        /// The repository, in the OCI grammar.
        pub repo: String,
        /// The tag, in the OCI grammar.
        pub tag: String,
        /// SHA-256 of the manifest the tag named before the rebuild (served while held).
        pub old: [u8; 32],
        /// SHA-256 of the manifest the upstream names now (the tag's digest after the switch).
        pub new: [u8; 32],
        /// Where the rebuild is.
        pub phase: TagPhase,
        /// When the rebuild started, seconds since the Unix epoch (news of a later rebuild of the
        /// same tag wins).
        pub started_at: u64,
        /// When a hold lapses by itself, seconds since the Unix epoch (at or after `started_at`).
        pub expires_at: u64,
    }
}

impl TagNews {
    fn check_rules(&self) -> Result<(), WireError> {
        if !crate::oci::is_valid_registry_host(&self.upstream) {
            return Err(WireError::Invalid("upstream is not a registry host name"));
        }
        if self.repo.parse::<crate::oci::RepoName>().is_err() {
            return Err(WireError::Invalid("repository name outside the grammar"));
        }
        if !crate::oci::is_valid_tag(&self.tag) {
            return Err(WireError::Invalid("tag outside the grammar"));
        }
        if self.old == self.new {
            return Err(WireError::Invalid("a rebuild names two different digests"));
        }
        if self.expires_at < self.started_at {
            return Err(WireError::Invalid("a hold expires before it started"));
        }
        Ok(())
    }
}

wire_message!(
    TagNews,
    Kind::TagNews,
    MAX_TAG_NEWS_BYTES,
    TagNews::check_rules
);

impl GossipMessage for TagNews {
    const TOPIC: Topic = Topic::Rebuild;
}

#[cfg(test)]
mod tag_news_tests {
    use super::*;

    fn news() -> TagNews {
        TagNews {
            upstream: "a".repeat(crate::limits::MAX_REGISTRY_HOST_BYTES),
            repo: "r".repeat(crate::limits::MAX_REPO_NAME_BYTES),
            tag: "t".repeat(crate::limits::MAX_TAG_BYTES),
            old: [1; 32],
            new: [2; 32],
            phase: TagPhase::Held,
            started_at: 10,
            expires_at: 3_610,
        }
    }

    #[test]
    fn the_largest_news_fits_and_round_trips() {
        let news = news();
        let payload = news.to_payload();
        assert!(payload.len() <= MAX_TAG_NEWS_BYTES);
        assert_eq!(TagNews::from_payload(&payload), Ok(news));
        assert_eq!(Topic::from_name("shoal/rebuild/1"), Some(Topic::Rebuild));
    }

    #[test]
    fn bad_news_is_refused() {
        let bad: [&dyn Fn(&mut TagNews); 6] = [
            &|n| n.upstream = "bad host/".into(),
            &|n| n.repo = "Upper/Case".into(),
            &|n| n.tag = "-tag".into(),
            &|n| n.new = n.old,
            &|n| n.expires_at = n.started_at - 1,
            &|n| n.upstream = String::new(),
        ];
        for change in bad {
            let mut news = news();
            change(&mut news);
            assert!(
                TagNews::from_payload(&news.to_payload()).is_err(),
                "{news:?}"
            );
        }
        let threat = ThreatScores {
            entries: vec![ThreatEntry {
                blob: [0; 32],
                reported_at: 0,
                milli_score: 0,
                cves_total: 0,
                cves: vec![],
            }],
        };
        assert!(TagNews::from_payload(&threat.to_payload()).is_err());
    }
}

#[cfg(test)]
mod threat_tests {
    use super::*;

    fn full_entry(blob: u8) -> ThreatEntry {
        ThreatEntry {
            blob: [blob; 32],
            reported_at: u64::MAX,
            milli_score: MAX_MILLI_SCORE,
            cves_total: u32::MAX,
            cves: (0..MAX_THREAT_CVES)
                .map(|i| ThreatCve {
                    id: format!("{i:0>48}"),
                    severity: MAX_SEVERITY,
                    fixed: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_full_message_fits_and_round_trips() {
        let scores = ThreatScores {
            entries: (0..MAX_THREAT_ENTRIES as u8).map(full_entry).collect(),
        };
        let payload = scores.to_payload();
        assert!(
            payload.len() <= MAX_THREAT_SCORES_BYTES,
            "{}",
            payload.len()
        );
        assert!(payload.len() < MAX_GOSSIP_TRANSMIT_BYTES - 4096);
        assert_eq!(ThreatScores::from_payload(&payload), Ok(scores));
        assert_eq!(Topic::from_name("shoal/threat/1"), Some(Topic::Threat));
    }

    #[test]
    fn bad_messages_are_refused() {
        let with = |f: &dyn Fn(&mut ThreatEntry)| {
            let mut entry = full_entry(1);
            f(&mut entry);
            ThreatScores {
                entries: vec![entry],
            }
        };
        for (bad, why) in [
            (
                ThreatScores { entries: vec![] },
                "threat entries out of range",
            ),
            (
                ThreatScores {
                    entries: vec![full_entry(2), full_entry(1)],
                },
                "threat entries not in ascending blob order",
            ),
            (
                with(&|e| e.milli_score = MAX_MILLI_SCORE + 1),
                "threat score above 100",
            ),
            (with(&|e| e.cves_total = 1), "bad CVE count"),
            (
                with(&|e| e.cves[0].id = "CVE 1".into()),
                "bad vulnerability id",
            ),
            (
                with(&|e| e.cves[0].id = String::new()),
                "bad vulnerability id",
            ),
            (with(&|e| e.cves[0].severity = 6), "bad severity"),
        ] {
            assert_eq!(
                ThreatScores::from_payload(&bad.to_payload()),
                Err(WireError::Invalid(why))
            );
        }
        let demand = DemandSummary::top("eu", []).to_payload();
        assert!(ThreatScores::from_payload(&demand).is_err());
    }
}

#[cfg(test)]
mod demand_tests {
    use super::*;

    #[test]
    fn a_full_summary_fits_and_round_trips() {
        let forecasts = (0..1000u32).map(|i| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            (BlobDigest::from_bytes(bytes), f64::from(i) + 0.5)
        });
        let summary = DemandSummary::top("eu-west-1", forecasts);
        assert_eq!(summary.entries.len(), MAX_DEMAND_ENTRIES);
        assert!(summary.entries.iter().all(|e| e.milli_pulls >= 744_500));
        let payload = summary.to_payload();
        assert!(payload.len() <= MAX_DEMAND_SUMMARY_BYTES);
        assert!(payload.len() < MAX_GOSSIP_TRANSMIT_BYTES - 4096);
        assert_eq!(DemandSummary::from_payload(&payload), Ok(summary));
    }

    #[test]
    fn bad_summaries_are_refused() {
        let entry = |b: u8, m| DemandEntry {
            blob: [b; 32],
            milli_pulls: m,
        };
        for (bad, why) in [
            (
                DemandSummary {
                    region: "".into(),
                    entries: vec![],
                },
                "bad region name",
            ),
            (
                DemandSummary {
                    region: "EU".into(),
                    entries: vec![],
                },
                "bad region name",
            ),
            (
                DemandSummary {
                    region: "eu".into(),
                    entries: vec![entry(1, 0)],
                },
                "demand entry without demand",
            ),
            (
                DemandSummary {
                    region: "eu".into(),
                    entries: vec![entry(2, 1), entry(1, 1)],
                },
                "demand entries not in ascending blob order",
            ),
            (
                DemandSummary {
                    region: "eu".into(),
                    entries: vec![entry(1, 1), entry(1, 1)],
                },
                "demand entries not in ascending blob order",
            ),
        ] {
            assert_eq!(
                DemandSummary::from_payload(&bad.to_payload()),
                Err(WireError::Invalid(why))
            );
        }
        assert_eq!(Topic::from_name("shoal/demand/1"), Some(Topic::Demand));
        let announcement = Announcement::dropped(BlobDigest::from_bytes([1; 32])).to_payload();
        assert!(DemandSummary::from_payload(&announcement).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(byte: u8) -> BlobDigest {
        BlobDigest::from_bytes([byte; 32])
    }

    proptest! {
        #[test]
        fn announcements_round_trip(
            blob in any::<u8>(),
            shard_count in 1u32..100_000,
            indices in proptest::collection::vec(0usize..100_000, 0..64),
        ) {
            let held = ShardSet::from_indices(indices.iter().copied());
            if let Some(holds) = Announcement::holds(digest(blob), shard_count, &held) {
                prop_assert_eq!(Announcement::from_payload(&holds.to_payload()), Ok(holds.clone()));
                let Announcement::Holds { shards, .. } = &holds else { unreachable!() };
                // Normalising keeps exactly the held shards below the count.
                for i in 0..shard_count as usize {
                    prop_assert_eq!(shards.contains(i), held.contains(i), "shard {}", i);
                }
            } else {
                prop_assert!(indices.iter().all(|i| *i >= shard_count as usize));
            }
            let complete = Announcement::complete(digest(blob), shard_count);
            prop_assert_eq!(Announcement::from_payload(&complete.to_payload()), Ok(complete));
            let dropped = Announcement::dropped(digest(blob));
            prop_assert_eq!(Announcement::from_payload(&dropped.to_payload()), Ok(dropped));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..2_000),
            kind in prop_oneof![Just(10u8), any::<u8>()],
        ) {
            let _ = Announcement::from_payload(&bytes);
            let mut with_header = b"SHWR\x01\x00".to_vec();
            with_header.extend_from_slice(&[kind, 0]);
            with_header.extend_from_slice(&bytes);
            let _ = Announcement::from_payload(&with_header);
        }
    }

    #[test]
    fn full_bitfields_become_all_and_large_ones_are_cut_to_a_prefix() {
        let all_ten = ShardSet::from_indices(0..10);
        assert_eq!(
            Announcement::holds(digest(1), 10, &all_ten),
            Some(Announcement::complete(digest(1), 10))
        );
        assert_eq!(Announcement::holds(digest(1), 0, &all_ten), None);
        assert_eq!(
            Announcement::holds(digest(1), 10, &ShardSet::from_indices([12])),
            None
        );
        let count = (MAX_ANNOUNCED_BITFIELD_BYTES * 8 + 100) as u32;
        let most = ShardSet::from_indices(1..count as usize);
        let cut = Announcement::holds(digest(1), count, &most).unwrap();
        let payload = cut.to_payload();
        assert!(payload.len() <= MAX_ANNOUNCEMENT_BYTES);
        assert!(payload.len() < MAX_GOSSIP_TRANSMIT_BYTES - 1024);
        let Announcement::Holds { shards, .. } = Announcement::from_payload(&payload).unwrap()
        else {
            panic!("not a Holds");
        };
        assert!(!shards.contains(0));
        assert!(shards.contains(MAX_ANNOUNCED_BITFIELD_BYTES * 8 - 1));
        assert!(!shards.contains(MAX_ANNOUNCED_BITFIELD_BYTES * 8));
    }

    #[test]
    fn rules_and_header_are_checked() {
        let encode = |announcement: &Announcement| announcement.to_payload();
        let holds = |shard_count, shards| Announcement::Holds {
            blob: [2; 32],
            shard_count,
            shards,
        };
        for (bad, why) in [
            (holds(0, ShardSet::All), "shard count out of range"),
            (
                holds(MAX_SHARDS_PER_MAP as u32 + 1, ShardSet::All),
                "shard count out of range",
            ),
            (
                holds(3, ShardSet::Bitfield(vec![0])),
                "announcement holds no shard",
            ),
            (
                holds(3, ShardSet::Bitfield(vec![0b1000])),
                "bit set past the last shard",
            ),
            (
                holds(8, ShardSet::Bitfield(vec![1, 1])),
                "bitfield longer than the blob's shards",
            ),
        ] {
            assert_eq!(
                Announcement::from_payload(&encode(&bad)),
                Err(WireError::Invalid(why))
            );
        }
        assert!(
            Announcement::from_payload(&encode(&holds(3, ShardSet::Bitfield(vec![0b101])))).is_ok()
        );
        let mut wrong_kind = encode(&Announcement::dropped(digest(3)));
        wrong_kind[6] = Kind::Request as u8;
        assert!(matches!(
            Announcement::from_payload(&wrong_kind),
            Err(WireError::Kind { expected: 10, .. })
        ));
        assert!(matches!(
            Announcement::from_payload(&vec![0; MAX_ANNOUNCEMENT_BYTES + 1]),
            Err(WireError::Length { .. })
        ));
        assert_eq!(Topic::from_name("shoal/announce/1"), Some(Topic::Announce));
        assert_eq!(Topic::from_name("shoal/announce/2"), None);
    }
}
