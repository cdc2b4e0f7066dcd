//! Tags held at a digest until a rebuild's switchover: the table every node keeps, whoever started
//! the rebuild.
//!
//! [`HoldTable`] is pure (time comes in as `now`, seconds since the Unix epoch): one entry per tag
//! key (`upstream/repository:tag`, as the manifest cache keys tags), in one of three phases
//! ([`TagPhase`]): *held* (the manifest path serves the old digest for the tag, whatever its TTL
//! and the upstream say, until the entry expires), *switched* or *released* (finished: kept only
//! until the hold would have expired, so a late or replayed `held` of the same rebuild cannot
//! hold the tag again). News of a later rebuild (greater `started_at`) replaces an entry; within
//! one rebuild a later phase does.
//!
//! Bounds: at most [`MAX_HOLDS`] entries (finished and expired ones make room first; a new hold
//! that finds the table full of live holds is refused, never one already kept); an entry lives at
//! most the node's own `rebuild.hold_secs` past the moment it was taken, however long its author
//! asked for, so no member (and no stuck rebuild) can pin a tag for longer.
//!
//! [`TagHolds`] is the shared, persisted handle: the table behind a mutex, written to
//! `rebuild/holds.json` (tmp, fsync, rename, directory fsync) after every change and read back,
//! every entry checked again, at start.
//!
//! **Invariant:** while a tag is held, the manifest path answers the tag with the held digest
//! only; a hold ends at its expiry at the latest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_proto::gossip::{TagNews, TagPhase};
use shoal_proto::{BlobDigest, RepoName};

/// Tags held (or recently finished) at most.
pub const MAX_HOLDS: usize = 4096;

/// One tag's rebuild, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldEntry {
    /// The upstream's name.
    pub upstream: String,
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// The digest served while held.
    #[serde(with = "digest_text")]
    pub old: BlobDigest,
    /// The digest after the switchover.
    #[serde(with = "digest_text")]
    pub new: BlobDigest,
    /// Where the rebuild is.
    pub phase: Phase,
    /// When the rebuild started (its author's clock, seconds since the Unix epoch).
    pub started_at: u64,
    /// When the entry lapses (this node's clock).
    pub expires_at: u64,
    /// Who said so: `local`, or the author's peer id.
    pub author: String,
}

/// A digest as `sha256:<hex>` on disk, checked when read.
mod digest_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use shoal_proto::BlobDigest;

    pub fn serialize<S: Serializer>(digest: &BlobDigest, to: S) -> Result<S::Ok, S::Error> {
        to.collect_str(digest)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<BlobDigest, D::Error> {
        let text = String::deserialize(from)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// [`TagPhase`] as it is written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serve `old` until expiry or later news.
    Held,
    /// The tag moved to `new`.
    Switched,
    /// The rebuild failed; the tag is left as it was.
    Released,
}

impl From<TagPhase> for Phase {
    fn from(phase: TagPhase) -> Self {
        match phase {
            TagPhase::Held => Phase::Held,
            TagPhase::Switched => Phase::Switched,
            TagPhase::Released => Phase::Released,
        }
    }
}

impl From<Phase> for TagPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Held => TagPhase::Held,
            Phase::Switched => TagPhase::Switched,
            Phase::Released => TagPhase::Released,
        }
    }
}

/// What applying news did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing: older than what the table has, already lapsed, or the table is full.
    Ignored,
    /// The tag is held now.
    Held,
    /// The tag moved to the new digest: the caller points the tag at it.
    Switched,
    /// The hold was lifted.
    Released,
}

/// The tag key of an entry: the manifest cache's.
pub fn tag_key(upstream: &str, repo: &str, tag: &str) -> String {
    format!("{upstream}/{repo}:{tag}")
}

/// The table of held tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldTable {
    entries: BTreeMap<String, HoldEntry>,
}

impl HoldTable {
    /// Applies news about a tag at `now`: `max_hold_secs` caps how long from `now` an entry may
    /// live.
    pub fn apply(&mut self, mut entry: HoldEntry, now: u64, max_hold_secs: u64) -> Applied {
        entry.expires_at = entry.expires_at.min(now.saturating_add(max_hold_secs));
        if entry.expires_at <= now || entry.old == entry.new {
            return Applied::Ignored;
        }
        let key = tag_key(&entry.upstream, &entry.repo, &entry.tag);
        if let Some(known) = self.entries.get(&key) {
            let order = |e: &HoldEntry| (e.started_at, e.phase, *e.new.as_bytes());
            if order(known) >= order(&entry) {
                return Applied::Ignored;
            }
        } else if self.entries.len() >= MAX_HOLDS {
            self.prune(now);
            if self.entries.len() >= MAX_HOLDS {
                // Make room among finished rebuilds only, the oldest first; live holds stay.
                let finished = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.phase != Phase::Held)
                    .min_by_key(|(_, e)| e.started_at)
                    .map(|(k, _)| k.clone());
                match finished {
                    Some(gone) => {
                        self.entries.remove(&gone);
                    }
                    None => return Applied::Ignored,
                }
            }
        }
        let applied = match entry.phase {
            Phase::Held => Applied::Held,
            Phase::Switched => Applied::Switched,
            Phase::Released => Applied::Released,
        };
        self.entries.insert(key, entry);
        applied
    }

    /// The digest `key` is held at, at `now`, if it is.
    pub fn held(&self, key: &str, now: u64) -> Option<BlobDigest> {
        self.entries
            .get(key)
            .filter(|e| e.phase == Phase::Held && now < e.expires_at)
            .map(|e| e.old)
    }

    /// The entry of `key`, whatever its phase.
    pub fn entry(&self, key: &str) -> Option<&HoldEntry> {
        self.entries.get(key)
    }

    /// Drops the entries that lapsed by `now`; true when any did.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|_, e| now < e.expires_at);
        self.entries.len() != before
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A table read from disk, every entry checked again (grammar, digests differ, key matches),
    /// at most [`MAX_HOLDS`]; what fails is dropped.
    pub fn checked(self) -> HoldTable {
        let entries = self
            .entries
            .into_iter()
            .filter(|(key, e)| {
                shoal_proto::oci::is_valid_registry_host(&e.upstream)
                    && e.repo.parse::<RepoName>().is_ok()
                    && shoal_proto::oci::is_valid_tag(&e.tag)
                    && e.old != e.new
                    && *key == tag_key(&e.upstream, &e.repo, &e.tag)
            })
            .take(MAX_HOLDS)
            .collect();
        HoldTable { entries }
    }
}

/// An entry as gossip carries it.
pub fn to_news(entry: &HoldEntry) -> TagNews {
    TagNews {
        upstream: entry.upstream.clone(),
        repo: entry.repo.clone(),
        tag: entry.tag.clone(),
        old: *entry.old.as_bytes(),
        new: *entry.new.as_bytes(),
        phase: entry.phase.into(),
        started_at: entry.started_at,
        expires_at: entry.expires_at,
    }
}

/// News from `author` as an entry (checked by `proto` on decode).
pub fn from_news(news: TagNews, author: String) -> HoldEntry {
    HoldEntry {
        upstream: news.upstream,
        repo: news.repo,
        tag: news.tag,
        old: BlobDigest::from_bytes(news.old),
        new: BlobDigest::from_bytes(news.new),
        phase: news.phase.into(),
        started_at: news.started_at,
        expires_at: news.expires_at,
        author,
    }
}

/// The node's hold table, shared and persisted.
#[derive(Debug, Clone)]
pub struct TagHolds {
    inner: Arc<Mutex<HoldTable>>,
    /// Serialises writes; each writes the table as it is when it runs, so the last is the newest.
    writing: Arc<Mutex<()>>,
    dir: PathBuf,
    max_hold_secs: u64,
}

impl TagHolds {
    /// Opens (or creates) `data_dir/rebuild/` and reads `holds.json`; an unreadable file is
    /// logged and replaced by an empty table (a lost hold only means the tag follows its TTL).
    pub fn open(data_dir: &Path, max_hold_secs: u64) -> std::io::Result<TagHolds> {
        let dir = data_dir.join("rebuild");
        std::fs::create_dir_all(&dir)?;
        let table = match std::fs::read(dir.join("holds.json")) {
            Ok(bytes) if bytes.len() <= 16 << 20 => {
                match serde_json::from_slice::<HoldTable>(&bytes) {
                    Ok(table) => table.checked(),
                    Err(error) => {
                        tracing::warn!(%error, "rebuild/holds.json unreadable; starting without holds");
                        HoldTable::default()
                    }
                }
            }
            Ok(_) => {
                tracing::warn!("rebuild/holds.json too large; starting without holds");
                HoldTable::default()
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HoldTable::default(),
            Err(error) => return Err(error),
        };
        let mut table = table;
        table.prune(crate::store::now_ms() / 1000);
        Ok(TagHolds {
            inner: Arc::new(Mutex::new(table)),
            writing: Arc::default(),
            dir,
            max_hold_secs,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HoldTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an entry at `now` and writes the table when it changed: on a blocking task when
    /// called inside the runtime (the swarm task calls this), else at once.
    pub fn apply(&self, entry: HoldEntry, now: u64) -> Applied {
        let applied = self.table().apply(entry, now, self.max_hold_secs);
        if applied != Applied::Ignored {
            self.persist();
        }
        applied
    }

    fn persist(&self) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let this = self.clone();
                runtime.spawn_blocking(move || this.write_latest());
            }
            Err(_) => self.write_latest(),
        }
    }

    fn write_latest(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.table().clone();
        self.write(&snapshot);
    }

    /// The digest `key` is held at now, if it is.
    pub fn held(&self, key: &str, now: u64) -> Option<BlobDigest> {
        self.table().held(key, now)
    }

    /// The entry of `key`, whatever its phase.
    pub fn entry(&self, key: &str) -> Option<HoldEntry> {
        self.table().entry(key).cloned()
    }

    /// Drops lapsed entries and writes the table when any did.
    pub fn prune(&self, now: u64) {
        let pruned = self.table().prune(now);
        if pruned {
            self.persist();
        }
    }

    fn write(&self, table: &HoldTable) {
        let written = serde_json::to_vec(table)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                crate::placement::write_durably(
                    &self.dir.join("holds.json.tmp"),
                    &self.dir.join("holds.json"),
                    &bytes,
                )
            });
        if let Err(error) = written {
            tracing::warn!(%error, "rebuild/holds.json not written; the holds stay in memory");
        }
    }
}

impl crate::pullthrough::HeldTags for TagHolds {
    fn held_digest(&self, key: &str) -> Option<BlobDigest> {
        self.held(key, crate::store::now_ms() / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(phase: Phase, started_at: u64, expires_at: u64) -> HoldEntry {
        HoldEntry {
            upstream: "reg.example".into(),
            repo: "team/app".into(),
            tag: "v1".into(),
            old: BlobDigest::from_bytes([1; 32]),
            new: BlobDigest::from_bytes([2; 32]),
            phase,
            started_at,
            expires_at,
            author: "local".into(),
        }
    }

    const KEY: &str = "reg.example/team/app:v1";

    #[test]
    fn a_hold_serves_the_old_digest_until_it_expires_or_switches() {
        let mut table = HoldTable::default();
        assert_eq!(
            table.apply(entry(Phase::Held, 100, 200), 100, 3600),
            Applied::Held
        );
        assert_eq!(table.held(KEY, 150), Some(BlobDigest::from_bytes([1; 32])));
        assert_eq!(table.held(KEY, 200), None, "expired");
        assert_eq!(table.held("reg.example/team/app:v2", 150), None);
        assert_eq!(
            table.apply(entry(Phase::Switched, 100, 200), 150, 3600),
            Applied::Switched
        );
        assert_eq!(table.held(KEY, 150), None);
        // A replayed hold of the same rebuild does not hold the tag again.
        assert_eq!(
            table.apply(entry(Phase::Held, 100, 200), 160, 3600),
            Applied::Ignored
        );
        assert_eq!(table.held(KEY, 160), None);
        // A later rebuild does.
        assert_eq!(
            table.apply(entry(Phase::Held, 170, 300), 170, 3600),
            Applied::Held
        );
        assert!(table.held(KEY, 170).is_some());
        // News of an earlier rebuild changes nothing.
        assert_eq!(
            table.apply(entry(Phase::Released, 100, 300), 170, 3600),
            Applied::Ignored
        );
        assert!(table.prune(300));
        assert!(table.is_empty());
    }

    #[test]
    fn no_author_holds_a_tag_longer_than_this_node_allows() {
        let mut table = HoldTable::default();
        table.apply(entry(Phase::Held, 100, u64::MAX), 100, 60);
        assert!(table.held(KEY, 159).is_some());
        assert_eq!(table.held(KEY, 160), None);
        assert_eq!(
            table.apply(entry(Phase::Held, 1, 50), 100, 60),
            Applied::Ignored
        );
    }

    #[test]
    fn a_full_table_makes_room_among_finished_rebuilds_only() {
        let mut table = HoldTable::default();
        for i in 0..MAX_HOLDS {
            let mut held = entry(Phase::Held, 10, 1000);
            held.tag = format!("t{i}");
            assert_eq!(table.apply(held, 10, 3600), Applied::Held);
        }
        let mut more = entry(Phase::Held, 20, 1000);
        more.tag = "more".into();
        assert_eq!(table.apply(more.clone(), 20, 3600), Applied::Ignored);
        assert_eq!(table.len(), MAX_HOLDS);
        let mut done = entry(Phase::Switched, 10, 1000);
        done.tag = "t0".into();
        assert_eq!(table.apply(done, 20, 3600), Applied::Switched);
        assert_eq!(table.apply(more, 20, 3600), Applied::Held);
        assert_eq!(table.len(), MAX_HOLDS);
        assert!(table.held("reg.example/team/app:more", 20).is_some());
        assert!(table.entry("reg.example/team/app:t0").is_none());
    }

    #[test]
    fn holds_survive_a_restart_and_bad_entries_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let holds = TagHolds::open(dir.path(), 3600).unwrap();
        let now = crate::store::now_ms() / 1000;
        assert_eq!(
            holds.apply(entry(Phase::Held, now, now + 100), now),
            Applied::Held
        );
        let again = TagHolds::open(dir.path(), 3600).unwrap();
        assert_eq!(again.held(KEY, now), Some(BlobDigest::from_bytes([1; 32])));

        let mut bad = HoldTable::default();
        let mut broken = entry(Phase::Held, now, now + 100);
        broken.repo = "Not A Repo".into();
        bad.entries
            .insert(tag_key("reg.example", "Not A Repo", "v1"), broken);
        let mut moved = entry(Phase::Held, now, now + 100);
        moved.tag = "v9".into();
        bad.entries.insert(KEY.into(), moved);
        assert!(bad.checked().is_empty());

        std::fs::write(dir.path().join("rebuild/holds.json"), b"{not json").unwrap();
        let reset = TagHolds::open(dir.path(), 3600).unwrap();
        assert_eq!(reset.held(KEY, now), None);
    }
}
