//! Threat: scanner reports in, a score per layer out, shared with peers, read by placement's plan
//! and eviction (and by lifecycle when it is wired in).
//!
//! What it owns: the [`book::ThreatBook`] (one record per layer: a 0-100 score from
//! `shoal_policy::threat`'s scoring, its CVEs with severity and whether a fix exists, the report's
//! time; bounded, merged newest-report-wins), its file (`threat/book.json` in the data directory,
//! replaced atomically), the admin routes `POST /threat/reports` and `GET /threat/layers/{digest}`
//! ([`http`]), the intake of a report ([`intake`]: parse, find the image, map DiffIDs to blob
//! digests through the image config read through the cache), the gossip of records
//! (`shoal/threat/1`, see `shoal_proto::gossip::ThreatScores`) and the rebuild hook
//! ([`rebuild`]).
//!
//! What it may touch: it reads the store (is a layer cached) and fetches only through
//! `pullthrough` (the image's manifest and config, like a client pull, only from configured
//! upstreams); it publishes through `p2p`. It never writes the store.
//!
//! **Invariant:** a report that is refused changes nothing: the book is changed only after the
//! whole report was read, parsed, and mapped.
//! **Invariant:** the book file is replaced atomically (temporary file, fsync, rename), so a crash
//! leaves the previous or the new book, never a torn one; an unreadable file starts an empty book.

pub mod book;
pub mod config;
pub mod gossip;
pub mod http;
pub mod intake;
pub mod rebuild;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shoal_policy::threat::parse_report;
use shoal_proto::BlobDigest;
use tokio::sync::watch;

pub use book::{CveSummary, LayerThreat, ThreatBook, ThreatRecord};
pub use config::{FileThreat, ThreatConfig, ThreatConfigError};
pub use rebuild::{RebuildRequest, RebuildRequests};

use book::{BookLimits, BookSnapshot, Merged};
use intake::{IntakeError, ResolvedImage};

use crate::p2p::PeerNetwork;
use crate::pullthrough::PullThrough;
use crate::store::ShardStore;
use crate::upstream::Upstream;

/// Largest book file read at start.
pub const MAX_BOOK_FILE_BYTES: u64 = 512 << 20;
/// How often a changed book is written.
const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

/// Why threat could not start.
#[derive(Debug, thiserror::Error)]
pub enum ThreatError {
    /// The state directory could not be created.
    #[error("threat state {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What threat runs over.
#[derive(Debug)]
pub struct Parts {
    /// Its settings.
    pub config: ThreatConfig,
    /// The data directory (the book lives in `threat/`).
    pub data_dir: PathBuf,
    /// The store, to tell cached layers.
    pub store: ShardStore,
    /// The pull-through cache the image's manifest and config are read through.
    pub pull: PullThrough,
    /// The configured upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The peer network, if any.
    pub network: Option<PeerNetwork>,
    /// Where `threat.auto_rebuild` sends its requests.
    pub rebuild: Arc<dyn RebuildRequests>,
}

struct Inner {
    config: ThreatConfig,
    book: Mutex<ThreatBook>,
    dir: PathBuf,
    store: ShardStore,
    pull: PullThrough,
    upstreams: BTreeMap<String, Upstream>,
    network: Option<PeerNetwork>,
    rebuild: Arc<dyn RebuildRequests>,
    /// One import at a time: at most one report body in memory.
    importing: tokio::sync::Mutex<()>,
    /// Messages for the gossip publisher (none without a peer network).
    publish: Option<tokio::sync::mpsc::Sender<shoal_proto::gossip::ThreatScores>>,
    /// The publisher's receiving end, until [`Threats::start`] takes it.
    publish_queue: Mutex<Option<tokio::sync::mpsc::Receiver<shoal_proto::gossip::ThreatScores>>>,
    changes: AtomicU64,
    written: AtomicU64,
    /// A member subscribed to the threat topic (the republish task wakes).
    member_joined: tokio::sync::Notify,
}

/// The running threat subsystem: a cheap handle.
#[derive(Clone)]
pub struct Threats {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Threats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threats")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// One layer in an import's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedLayer {
    /// The blob digest.
    pub digest: String,
    /// Its score 0-100.
    pub score: f64,
    /// Its distinct CVEs in the report.
    pub cves: u32,
    /// Of those, with a fixed version.
    pub fixable: usize,
    /// This node caches it now (if not, the score is kept for when it arrives).
    pub cached: bool,
    /// The book took the record (false: it already had one from a newer or equal report).
    pub taken: bool,
}

/// The answer to `POST /threat/reports`.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// `trivy` or `grype`.
    pub scanner: &'static str,
    /// The image, as found on a configured upstream (none: mapped by the report's own digests).
    pub image: Option<String>,
    /// The image manifest read.
    pub image_manifest: Option<String>,
    /// The report's time (seconds since the epoch), the merge's order.
    pub reported_at: u64,
    /// Layers whose record the book took.
    pub layers_scored: usize,
    /// Layers the book already had a newer or equal record of.
    pub layers_unchanged: usize,
    /// Scored layers not cached here yet (their scores are kept for when they arrive).
    pub layers_pending: Vec<String>,
    /// Distinct CVEs over the layers.
    pub cves: usize,
    /// Findings whose layer could not be mapped to a blob digest.
    pub findings_unmapped: usize,
    /// Findings the report gives no layer for.
    pub findings_without_layer: usize,
    /// A rebuild of the image was requested (`threat.auto_rebuild`).
    pub rebuild_requested: bool,
    /// Every layer recorded.
    pub layers: Vec<ImportedLayer>,
}

fn now_secs() -> u64 {
    crate::placement::now_secs()
}

impl Threats {
    /// Loads the book (an unreadable or invalid file is logged and an empty book started: scores
    /// are hints, never a reason not to serve).
    pub fn open(parts: Parts) -> Result<Threats, ThreatError> {
        let Parts {
            config,
            data_dir,
            store,
            pull,
            upstreams,
            network,
            rebuild,
        } = parts;
        let dir = data_dir.join("threat");
        std::fs::create_dir_all(&dir).map_err(|source| ThreatError::Io {
            path: dir.clone(),
            source,
        })?;
        let limits = BookLimits {
            max_layers: config.max_layers,
            max_cves_per_layer: config.max_cves_per_layer,
        };
        let held = |d: &BlobDigest| matches!(store.shard_map(d), Ok(Some(_)));
        let book = match read_book_file(&dir.join("book.json")) {
            Ok(None) => ThreatBook::new(limits),
            Ok(Some(snapshot)) => {
                let (book, skipped) = ThreatBook::restore(limits, snapshot, now_secs(), &held);
                tracing::info!(layers = book.len(), skipped, "threat book restored");
                book
            }
            Err(error) => {
                tracing::warn!(%error, "threat book unreadable; starting empty");
                ThreatBook::new(limits)
            }
        };
        let (publish, publish_queue) = match &network {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(gossip::PUBLISH_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Ok(Threats {
            inner: Arc::new(Inner {
                config,
                book: Mutex::new(book),
                dir,
                store,
                pull,
                upstreams,
                network,
                rebuild,
                importing: tokio::sync::Mutex::new(()),
                publish,
                publish_queue: Mutex::new(publish_queue),
                changes: AtomicU64::new(0),
                written: AtomicU64::new(0),
                member_joined: tokio::sync::Notify::new(),
            }),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ThreatBook> {
        self.inner.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self, digest: &BlobDigest) -> bool {
        matches!(self.inner.store.shard_map(digest), Ok(Some(_)))
    }

    /// The settings.
    pub fn config(&self) -> &ThreatConfig {
        &self.inner.config
    }

    /// The score and CVEs of `layer`, if any report or peer scored it.
    pub fn threat_of(&self, layer: &BlobDigest) -> Option<LayerThreat> {
        self.book().threat_of(layer)
    }

    /// The 0-100 score of `layer` (0 when unscored).
    pub fn score(&self, layer: &BlobDigest) -> f64 {
        self.book().score(layer)
    }

    /// The full record of `layer`.
    pub fn record(&self, layer: &BlobDigest) -> Option<ThreatRecord> {
        self.book().record(layer).cloned()
    }

    /// Layers with a record.
    pub fn len(&self) -> usize {
        self.book().len()
    }

    /// No layer has a record.
    pub fn is_empty(&self) -> bool {
        self.book().is_empty()
    }

    /// Imports one report (see [`intake`]): nothing changes unless it is read and mapped whole.
    pub async fn import(&self, bytes: &[u8]) -> Result<ImportSummary, IntakeError> {
        if bytes.len() > self.inner.config.max_report_bytes {
            return Err(IntakeError::TooLarge {
                limit: self.inner.config.max_report_bytes,
            });
        }
        let report = parse_report(bytes)?;
        let facts = report::image_facts(bytes);
        let image = self.resolve(&facts).await?;
        let grouped = intake::group_findings(&report, image.as_ref());
        let now = now_secs();
        let reported_at = facts.scanned_at.unwrap_or(now).min(now);
        let records = intake::records_for(
            &grouped,
            image.as_ref(),
            reported_at,
            self.inner.config.max_cves_per_layer,
        );
        if records.is_empty() {
            let names: Vec<String> = facts.names.iter().map(|n| n.to_string()).collect();
            let configured: Vec<&str> = self.inner.upstreams.keys().map(String::as_str).collect();
            return Err(IntakeError::NothingMapped(format!(
                "{} findings, {} without a layer, {} with a layer no image config maps; the report names the image as {names:?}, and none of those is on a configured upstream ({configured:?})",
                report.findings.len(),
                report.without_layer,
                grouped.unmapped,
            )));
        }
        let held: BTreeMap<BlobDigest, bool> = records.keys().map(|d| (*d, self.held(d))).collect();
        let mut layers = Vec::new();
        let mut taken_records = Vec::new();
        let mut cves = std::collections::BTreeSet::new();
        {
            let mut book = self.book();
            for (digest, record) in &records {
                let merged = book.merge(now, *digest, record.clone(), &|d| self.held(d));
                let taken = matches!(merged, Ok(Merged::Taken));
                if let Err(error) = merged {
                    tracing::warn!(%digest, %error, "threat record refused");
                }
                if taken {
                    taken_records.push((*digest, record.clone()));
                }
                cves.extend(
                    grouped
                        .per_layer
                        .get(digest)
                        .into_iter()
                        .flatten()
                        .map(|f| f.id.clone()),
                );
                layers.push(ImportedLayer {
                    digest: digest.to_string(),
                    score: record.threat.score,
                    cves: record.cves_total,
                    fixable: record.threat.cves.iter().filter(|c| c.fixed).count(),
                    cached: held[digest],
                    taken,
                });
            }
        }
        if !taken_records.is_empty() {
            self.inner.changes.fetch_add(1, Ordering::Relaxed);
            self.persist_soon().await;
        }
        let fixable: std::collections::BTreeSet<&str> = grouped
            .per_layer
            .values()
            .flatten()
            .filter(|f| f.fixed)
            .map(|f| f.id.as_str())
            .collect();
        let worst_score = records.values().map(|r| r.threat.score).fold(0.0, f64::max);
        let rebuild_requested = match (&image, self.inner.config.auto_rebuild) {
            (Some(image), true) if !fixable.is_empty() => {
                self.inner.rebuild.request(RebuildRequest {
                    image: image.name.clone(),
                    fixable: fixable.len(),
                    worst_score,
                });
                true
            }
            _ => false,
        };
        let summary = ImportSummary {
            scanner: intake::scanner_name(report.scanner),
            image: image.as_ref().map(|i| i.name.to_string()),
            image_manifest: image.as_ref().map(|i| i.manifest.to_string()),
            reported_at,
            layers_scored: layers.iter().filter(|l| l.taken).count(),
            layers_unchanged: layers.iter().filter(|l| !l.taken).count(),
            layers_pending: layers
                .iter()
                .filter(|l| !l.cached)
                .map(|l| l.digest.clone())
                .collect(),
            cves: cves.len(),
            findings_unmapped: grouped.unmapped,
            findings_without_layer: report.without_layer,
            rebuild_requested,
            layers,
        };
        tracing::info!(
            scanner = summary.scanner,
            image = ?summary.image,
            scored = summary.layers_scored,
            unchanged = summary.layers_unchanged,
            pending = summary.layers_pending.len(),
            cves = summary.cves,
            "threat report imported"
        );
        self.publish(taken_records);
        Ok(summary)
    }

    /// The image the report scanned, read through the cache, when one of its names is on a
    /// configured upstream; `None` when none is (the report's own layer digests are used then).
    async fn resolve(
        &self,
        facts: &report::ImageFacts,
    ) -> Result<Option<ResolvedImage>, IntakeError> {
        let Some((name, upstream)) = facts
            .names
            .iter()
            .find_map(|n| Some((n, self.inner.upstreams.get(&n.registry)?)))
        else {
            return Ok(None);
        };
        intake::resolve_image(&self.inner.pull, upstream, name, facts.manifest_digest)
            .await
            .map(Some)
    }

    /// Tells peers about records this node took (gossip; see [`Threats::merge_from_peer`]).
    fn publish(&self, records: Vec<(BlobDigest, ThreatRecord)>) {
        let Some(queue) = &self.inner.publish else {
            return;
        };
        for message in gossip::to_messages(records) {
            if queue.try_send(message).is_err() {
                tracing::warn!("threat gossip queue full; records not published to peers");
                return;
            }
        }
    }

    /// Publishes this node's newest records again (at most [`gossip::REPUBLISH_RECORDS`]), for
    /// members that joined after they were first published; returns how many were queued.
    pub fn republish(&self) -> usize {
        let records = self.book().newest(gossip::REPUBLISH_RECORDS, &|_, _| true);
        let count = records.len();
        if count > 0 {
            tracing::debug!(records = count, "threat records published again");
            self.publish(records);
        }
        count
    }

    /// Publishes again whenever [`gossip::RepublishSchedule`] says so, until `stop`.
    async fn republish_on_schedule(self, mut stop: watch::Receiver<bool>) {
        let mut schedule = gossip::RepublishSchedule::new(tokio::time::Instant::now().into_std());
        loop {
            let wake = tokio::time::Instant::from_std(schedule.next_round());
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = self.inner.member_joined.notified() => {
                    schedule.member_joined(tokio::time::Instant::now().into_std());
                }
                () = tokio::time::sleep_until(wake) => {
                    if schedule.start_round(tokio::time::Instant::now().into_std()) {
                        self.republish();
                    }
                }
            }
        }
    }

    /// Merges records a peer published (see [`gossip`]); true when any was new here.
    pub fn merge_from_peer(
        &self,
        author: String,
        scores: &shoal_proto::gossip::ThreatScores,
    ) -> bool {
        let now = now_secs();
        let max_cves = self.inner.config.max_cves_per_layer;
        let mut taken = 0usize;
        {
            let mut book = self.book();
            for entry in &scores.entries {
                let (digest, record) = gossip::from_entry(author.clone(), entry, max_cves);
                match book.merge(now, digest, record, &|d| self.held(d)) {
                    Ok(Merged::Taken) => taken += 1,
                    Ok(Merged::Stale) => {}
                    Err(error) => {
                        tracing::debug!(%author, %digest, %error, "threat record from a peer refused")
                    }
                }
            }
        }
        if taken > 0 {
            self.inner.changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%author, taken, entries = scores.entries.len(), "threat scores from a peer merged");
        }
        taken > 0
    }

    /// Writes the book now (from a blocking task), so an import is on disk when it is answered;
    /// a failure is logged and the periodic writer tries again.
    async fn persist_soon(&self) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "threat book not written; will retry"),
            Err(error) => tracing::warn!(%error, "threat book writer failed"),
        }
    }

    /// Writes the book if it changed since the last write (blocking).
    pub fn persist(&self) -> std::io::Result<()> {
        let changes = self.inner.changes.load(Ordering::Relaxed);
        if changes == self.inner.written.load(Ordering::Relaxed) {
            return Ok(());
        }
        let snapshot = self.book().snapshot();
        let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
        crate::placement::write_durably(
            &self.inner.dir.join("book.json.tmp"),
            &self.inner.dir.join("book.json"),
            &bytes,
        )?;
        self.inner.written.store(changes, Ordering::Relaxed);
        Ok(())
    }

    /// Starts the periodic writer (it writes once more when `stop` turns true) and, with a peer
    /// network, the gossip publisher, and subscribes the book to peers' threat gossip.
    pub fn start(&self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        if let Some(network) = &self.inner.network {
            network.set_threat_news(Arc::new(self.clone()));
            let queue = self
                .inner
                .publish_queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(queue) = queue {
                let publisher = tokio::spawn(gossip::publisher(network.clone(), queue));
                let mut stopped = stop.clone();
                tokio::spawn(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                    publisher.abort();
                });
                tokio::spawn(self.clone().republish_on_schedule(stop.clone()));
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERSIST_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                    _ = tick.tick() => this.persist_soon().await,
                }
            }
            this.persist_soon().await;
        })
    }
}

impl crate::p2p::threat::ThreatNews for Threats {
    fn received(&self, author: libp2p::PeerId, scores: shoal_proto::gossip::ThreatScores) -> bool {
        self.merge_from_peer(author.to_string(), &scores)
    }

    fn member_subscribed(&self, peer: libp2p::PeerId) {
        tracing::debug!(%peer, "a member subscribed to threat gossip");
        self.inner.member_joined.notify_one();
    }
}

fn read_book_file(path: &std::path::Path) -> Result<Option<BookSnapshot>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_BOOK_FILE_BYTES {
        return Err(format!("{len} bytes, at most {MAX_BOOK_FILE_BYTES} read"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}
