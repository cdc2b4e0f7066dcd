//! Rebuilds, as a cache does them: Shoal builds no images, so a rebuild of `upstream/repo:tag` is
//! the seed's shadow rebuild and switchover. The tag is re-resolved at the upstream (bypassing
//! the cached tag); when it names a new digest, the new version's blobs are fetched into every
//! region that holds the old one (the shadow) while every node keeps answering the tag with the
//! old digest (the hold), and only when every such region holds them all does the tag move to
//! the new digest on every node (the switchover). No region ever serves a half-present release.
//!
//! `POST /images/{ref}/rebuild` starts one and `GET /images/{ref}/rebuild` reports it
//! ([`job::RebuildView`]); `threat.auto_rebuild` starts one through [`RebuildRequests`].
//!
//! Pieces: [`job`] is the pure state machine of one rebuild (events, explicit `now`, the next
//! step); [`holds`] is the table of held tags every node keeps (pure, bounded, expiring,
//! persisted), which `pullthrough` reads on the manifest path ([`crate::pullthrough::HeldTags`]);
//! this module is the shell. The shadow is a preheat (`crate::preheat`): one job per round for
//! the new digest (the platforms of the old index's cached children), into the regions that hold
//! the old version (this node's own, and those of members that announced or provide any of its
//! blobs); the preheat job's per-region entries are the progress. A round that leaves blobs
//! missing is followed by another, until the deadline (`rebuild.hold_secs`).
//!
//! Between nodes: the hold, the switchover and a release travel as
//! [`shoal_proto::gossip::TagNews`] on `shoal/rebuild/1` (members only, a budget per author,
//! size-bounded; see `p2p::rebuild`); the starter publishes the hold again every
//! [`REPUBLISH_EVERY`] while shadowing, and the switchover three times, so a node that missed one
//! message catches up. A node that hears of a switchover fetches the new manifest by digest
//! (verified) and points its tag at it, recorded as already stale: a member's word never makes a
//! tag fresh, so the next pull asks the upstream again and, while the upstream is down, serves
//! the new digest from the cache.
//!
//! What it may touch: the upstream only through `pullthrough` (one tag resolution, manifests by
//! digest), blobs only through the preheat service, the store only through `pullthrough`'s tag
//! and manifest records, and its own `rebuild/holds.json`.
//!
//! **Invariant:** the tag moves to the new digest only after every region that held the old
//! version holds every blob of the new one; until then (and after a failure) every node answers
//! the tag with the old digest, for at most `rebuild.hold_secs`.

pub mod config;
pub mod holds;
pub mod job;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_proto::gossip::TagNews;
use shoal_proto::{BlobDigest, Reference, RepoName};

use crate::p2p::PeerNetwork;
use crate::preheat::image::{parse_image_ref, read_manifest, ImageError, Platform};
use crate::preheat::{PreheatBody, PreheatService};
use crate::pullthrough::{ManifestReply, PullError, PullThrough};
use crate::threat::{RebuildRequest, RebuildRequests};
use crate::upstream::Upstream;
pub use config::{FileRebuild, RebuildConfig};
use holds::{Applied, HoldEntry, Phase, TagHolds};
use job::{RebuildJob, RebuildView, Step};

/// Largest `POST /images/{ref}/rebuild` body (it takes none; an empty JSON object is accepted).
pub const MAX_BODY_BYTES: usize = 1024;
/// Rebuilds shadowing at once; a further one is refused with 429.
pub const MAX_RUNNING: usize = 8;
/// Rebuilds remembered for `GET` (the oldest finished go first).
pub const MAX_KEPT: usize = 256;
/// How often the starter publishes a hold again while shadowing.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(15);
/// How often a running shadow round's progress is read.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The pause between a round that left blobs missing (or could not start) and the next.
const ROUND_PAUSE: Duration = Duration::from_secs(5);
/// Blobs of the old version whose DHT providers are asked for (to find the regions holding it).
const PROVIDER_LOOKUPS: usize = 8;
/// How long a provider lookup may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a rebuild was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    /// The reference is malformed or names no configured upstream.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The reference names a digest; only a tag can move.
    #[error("{0:?} names a digest; a rebuild moves a tag: name it as registry/repository:tag")]
    ByDigest(String),
    /// The body is not empty nor an empty JSON object.
    #[error("the body is not a rebuild request (send none, or {{}}): {0}")]
    Body(String),
    /// The body is over the limit.
    #[error("the body is over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// This node never cached the tag: there is no old version to hold.
    #[error(
        "{0} is not cached on this node: nothing to rebuild (pull it through this node first)"
    )]
    NotCached(String),
    /// The upstream has no such tag.
    #[error("the upstream has no {0}")]
    UpstreamNotFound(String),
    /// The upstream could not be asked, or refused.
    #[error("the upstream could not resolve {image}: {reason}")]
    Upstream {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// Too many rebuilds running.
    #[error("{MAX_RUNNING} rebuilds are running already; try again when one is done")]
    Busy,
    /// The node could not read or write its own records.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RebuildError {
    fn status(&self) -> StatusCode {
        match self {
            RebuildError::NotCached(_) | RebuildError::UpstreamNotFound(_) => StatusCode::NOT_FOUND,
            RebuildError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RebuildError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            RebuildError::Busy => StatusCode::TOO_MANY_REQUESTS,
            RebuildError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The body `POST /images/{ref}/rebuild` accepts: none, or an empty JSON object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildBody {}

/// What the rebuild service uses.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The pull-through cache (tag resolution, manifests, tag records).
    pub pull: PullThrough,
    /// The peer network, when there is one.
    pub network: Option<PeerNetwork>,
    /// The configured upstreams.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The upstream of references that name no registry.
    pub default_upstream: Option<String>,
    /// This node's region.
    pub region: String,
    /// The preheat service the shadow runs on.
    pub preheat: PreheatService,
    /// The node's held tags.
    pub holds: TagHolds,
    /// `[rebuild]`.
    pub config: RebuildConfig,
}

/// The rebuild service: a cheap handle for the admin routes, the threat hook and gossip.
#[derive(Clone)]
pub struct RebuildService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RebuildService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebuildService").finish_non_exhaustive()
    }
}

struct Inner {
    parts: Parts,
    jobs: Mutex<Jobs>,
    /// One start at a time, so two requests for one tag cannot both start a rebuild.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Jobs {
    order: VecDeque<String>,
    by_key: HashMap<String, RebuildJob>,
}

/// An image named for a rebuild: always a tag.
#[derive(Debug, Clone)]
struct TagRef {
    upstream: String,
    repo: RepoName,
    tag: String,
}

impl TagRef {
    fn key(&self) -> String {
        holds::tag_key(&self.upstream, self.repo.as_str(), &self.tag)
    }
}

/// What a rebuild with a new digest needs to run.
struct Shadow {
    tag: TagRef,
    old: BlobDigest,
    new: ManifestReply,
    platforms: Vec<Platform>,
    started_at: u64,
    deadline: u64,
}

fn now_secs() -> u64 {
    crate::store::now_ms() / 1000
}

impl RebuildService {
    /// A service over `parts`.
    pub fn new(parts: Parts) -> RebuildService {
        RebuildService {
            inner: Arc::new(Inner {
                parts,
                jobs: Mutex::default(),
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Subscribes to members' rebuild news.
    pub fn listen(&self) {
        if let Some(network) = &self.inner.parts.network {
            network.set_tag_news(Arc::new(self.clone()));
        }
    }

    fn parse(&self, text: &str) -> Result<TagRef, RebuildError> {
        let parts = &self.inner.parts;
        let image = parse_image_ref(
            text,
            parts.upstreams.keys().map(String::as_str),
            parts.default_upstream.as_deref(),
        )?;
        match image.reference {
            Reference::Tag(tag) => Ok(TagRef {
                upstream: image.upstream,
                repo: image.repo,
                tag,
            }),
            Reference::Digest(_) => Err(RebuildError::ByDigest(text.chars().take(128).collect())),
        }
    }

    /// The rebuild of `text`, as this node knows it: its own job, else a member's hold.
    pub fn view(&self, text: &str) -> Result<Option<RebuildView>, RebuildError> {
        let tag = self.parse(text)?;
        let key = tag.key();
        let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.by_key.get(&key) {
            return Ok(Some(job.view()));
        }
        drop(jobs);
        Ok(self
            .inner
            .parts
            .holds
            .entry(&key)
            .map(|entry| view_of_hold(&key, &entry)))
    }

    /// Re-resolves the tag upstream and, on a new digest, starts the rebuild. Answers the view
    /// and whether a rebuild runs (started now or already running).
    pub async fn start(&self, text: &str) -> Result<(RebuildView, bool), RebuildError> {
        let tag = self.parse(text)?;
        let key = tag.key();
        let _starting = self.inner.starting.lock().await;
        {
            let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(job) = jobs.by_key.get(&key).filter(|j| !j.is_finished()) {
                return Ok((job.view(), true));
            }
            let running = jobs.by_key.values().filter(|j| !j.is_finished()).count();
            if running >= MAX_RUNNING {
                return Err(RebuildError::Busy);
            }
        }
        let parts = &self.inner.parts;
        let upstream = parts
            .upstreams
            .get(&tag.upstream)
            .ok_or_else(|| RebuildError::Internal(format!("upstream {} vanished", tag.upstream)))?;
        let old = parts
            .pull
            .cached_tag(&tag.upstream, &tag.repo, &tag.tag)
            .map_err(|e| RebuildError::Internal(e.to_string()))?
            .ok_or_else(|| RebuildError::NotCached(key.clone()))?;
        let new = parts
            .pull
            .resolve_tag_upstream(upstream, &tag.repo, &tag.tag)
            .await
            .map_err(|error| match error {
                PullError::NotFound => RebuildError::UpstreamNotFound(key.clone()),
                other => RebuildError::Upstream {
                    image: key.clone(),
                    reason: other.to_string(),
                },
            })?;
        let now = now_secs();
        if new.digest == old {
            tracing::info!(tag = %key, digest = %old, "rebuild: no new digest upstream; nothing changed");
            let job = RebuildJob::no_change(key.clone(), old, now);
            let view = job.view();
            self.remember(key, job);
            return Ok((view, false));
        }
        let (old_blobs, platforms) = self.old_version(&old);
        let regions = self.regions_holding(&old_blobs).await;
        let deadline = now.saturating_add(parts.config.hold.as_secs());
        let job = RebuildJob::shadowing(key.clone(), old, new.digest, regions, now, deadline);
        let view = job.view();
        tracing::info!(tag = %key, %old, new = %new.digest, regions = ?job.regions(), "rebuild: new digest upstream; shadowing");
        let shadow = Shadow {
            tag,
            old,
            new,
            platforms,
            started_at: now,
            deadline,
        };
        self.publish(&shadow, Phase::Held);
        self.remember(key.clone(), job);
        let this = self.clone();
        tokio::spawn(async move { this.run(key, shadow).await });
        Ok((view, true))
    }

    fn remember(&self, key: String, job: RebuildJob) {
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.by_key.insert(key.clone(), job).is_none() {
            jobs.order.push_back(key);
        }
        while jobs.order.len() > MAX_KEPT {
            let oldest_finished = jobs
                .order
                .iter()
                .position(|k| jobs.by_key.get(k).is_none_or(RebuildJob::is_finished));
            let Some(position) = oldest_finished else {
                break;
            };
            if let Some(gone) = jobs.order.remove(position) {
                jobs.by_key.remove(&gone);
            }
        }
    }

    fn update<T>(&self, key: &str, change: impl FnOnce(&mut RebuildJob) -> T) -> Option<T> {
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.by_key.get_mut(key).map(change)
    }

    /// The old version's blobs (config and layers of each image manifest cached here) and, for an
    /// index, the platforms of its children cached here (none: every platform).
    fn old_version(&self, old: &BlobDigest) -> (Vec<BlobDigest>, Vec<Platform>) {
        let store = self.inner.parts.pull.store();
        let Some(top) = store
            .manifest(old)
            .ok()
            .flatten()
            .and_then(|m| read_manifest(&m.body))
        else {
            return (Vec::new(), Vec::new());
        };
        let blobs_of = |named: &crate::preheat::image::Named| {
            named
                .config
                .iter()
                .chain(named.layers.iter())
                .map(|(digest, _)| *digest)
                .collect::<Vec<_>>()
        };
        if !top.index {
            return (blobs_of(&top), Vec::new());
        }
        let mut blobs = Vec::new();
        let mut platforms = BTreeSet::new();
        for (child, platform) in &top.children {
            let Some(named) = store
                .manifest(child)
                .ok()
                .flatten()
                .and_then(|m| read_manifest(&m.body))
            else {
                continue;
            };
            blobs.extend(blobs_of(&named));
            if let Some(platform) = platform {
                platforms.insert(platform.clone());
            }
        }
        (blobs, platforms.into_iter().collect())
    }

    /// The regions that hold the old version: this node's own, then those of members that
    /// announced any of its blobs or provide one of the first [`PROVIDER_LOOKUPS`] in the DHT.
    async fn regions_holding(&self, old_blobs: &[BlobDigest]) -> Vec<String> {
        let parts = &self.inner.parts;
        let mut regions = vec![parts.region.clone()];
        let Some(network) = &parts.network else {
            return regions;
        };
        let region_of: HashMap<PeerId, String> = network.members_by_region().into_iter().collect();
        let mut holders: BTreeSet<PeerId> = old_blobs
            .iter()
            .flat_map(|digest| network.announced_holders(digest))
            .filter(|holding| holding.complete)
            .map(|holding| holding.peer)
            .collect();
        let lookups = old_blobs
            .iter()
            .take(PROVIDER_LOOKUPS)
            .map(|digest| network.find_providers(*digest, PROVIDER_TIMEOUT));
        holders.extend(
            futures::future::join_all(lookups)
                .await
                .into_iter()
                .flatten(),
        );
        let others: BTreeSet<&String> = holders
            .iter()
            .filter_map(|peer| region_of.get(peer))
            .filter(|region| **region != parts.region)
            .collect();
        regions.extend(others.into_iter().cloned());
        regions
    }

    /// Tells the members (and this node's own table) where the rebuild is.
    fn publish(&self, shadow: &Shadow, phase: Phase) {
        let entry = HoldEntry {
            upstream: shadow.tag.upstream.clone(),
            repo: shadow.tag.repo.to_string(),
            tag: shadow.tag.tag.clone(),
            old: shadow.old,
            new: shadow.new.digest,
            phase,
            started_at: shadow.started_at,
            expires_at: shadow.deadline,
            author: "local".into(),
        };
        let news = holds::to_news(&entry);
        self.inner.parts.holds.apply(entry, now_secs());
        if let Some(network) = &self.inner.parts.network {
            network.publish_tag_news(&news);
        }
    }

    /// Runs a rebuild's shadow rounds until the switchover or the deadline.
    async fn run(&self, key: String, shadow: Shadow) {
        let image = format!(
            "{}/{}@{}",
            shadow.tag.upstream, shadow.tag.repo, shadow.new.digest
        );
        let platforms: Vec<String> = shadow.platforms.iter().map(ToString::to_string).collect();
        let mut published_at = tokio::time::Instant::now();
        loop {
            let step = self.update(&key, |job| job.next(now_secs()));
            match step {
                Some(Step::Shadow) => {}
                Some(Step::SwitchOver) => return self.switch_over(&key, &shadow),
                Some(Step::GiveUp) => {
                    return self.give_up(
                        &key,
                        &shadow,
                        "the shadow did not complete by the deadline",
                    )
                }
                Some(Step::Done) | None => return,
            }
            let regions = self
                .update(&key, |job| {
                    job.round_started();
                    job.regions()
                })
                .unwrap_or_default();
            let body = PreheatBody {
                images: vec![image.clone()],
                regions,
                all_regions: false,
                platforms: platforms.clone(),
            };
            match self.inner.parts.preheat.start(body) {
                Ok(started) => loop {
                    tokio::time::sleep(POLL_EVERY).await;
                    if published_at.elapsed() >= REPUBLISH_EVERY {
                        self.publish(&shadow, Phase::Held);
                        published_at = tokio::time::Instant::now();
                    }
                    let Some(view) = self.inner.parts.preheat.job(&started.id) else {
                        break;
                    };
                    let finished = matches!(
                        view.state,
                        crate::preheat::job::JobState::Done | crate::preheat::job::JobState::Failed
                    );
                    let mut present: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
                    for entry in &view.blobs {
                        let counts = present.entry(entry.region.as_str()).or_default();
                        counts.1 += 1;
                        if entry.state == crate::preheat::job::BlobState::Done {
                            counts.0 += 1;
                        }
                    }
                    self.update(&key, |job| {
                        for (region, (done, total)) in &present {
                            job.region_progress(region, *done, *total);
                        }
                        if finished {
                            for error in view.errors.iter().take(4) {
                                job.error(error.clone());
                            }
                        }
                    });
                    if finished || now_secs() >= shadow.deadline {
                        break;
                    }
                },
                Err(refused) => {
                    tracing::warn!(tag = %key, %refused, "rebuild: shadow round not started; trying again");
                    self.update(&key, |job| job.error(format!("shadow round: {refused}")));
                }
            }
            if self.update(&key, |job| job.next(now_secs())) == Some(Step::Shadow) {
                tokio::time::sleep(ROUND_PAUSE).await;
                self.publish(&shadow, Phase::Held);
                published_at = tokio::time::Instant::now();
            }
        }
    }

    fn switch_over(&self, key: &str, shadow: &Shadow) {
        let parts = &self.inner.parts;
        let tag = &shadow.tag;
        if let Err(error) =
            parts
                .pull
                .point_tag(&tag.upstream, &tag.repo, &tag.tag, &shadow.new, true)
        {
            tracing::warn!(tag = %key, %error, "rebuild: the tag could not be moved here");
            return self.give_up(key, shadow, &format!("the tag could not be moved: {error}"));
        }
        self.publish(shadow, Phase::Switched);
        self.update(key, |job| job.switched(now_secs()));
        tracing::info!(tag = %key, new = %shadow.new.digest, "rebuild: switched over");
        // Again a little later, for members that missed the first message.
        if let Some(network) = parts.network.clone() {
            let entry = parts.holds.entry(key);
            tokio::spawn(async move {
                for pause in [Duration::from_secs(2), Duration::from_secs(10)] {
                    tokio::time::sleep(pause).await;
                    if let Some(entry) = &entry {
                        network.publish_tag_news(&holds::to_news(entry));
                    }
                }
            });
        }
    }

    fn give_up(&self, key: &str, shadow: &Shadow, reason: &str) {
        tracing::warn!(tag = %key, reason, "rebuild failed; releasing the hold");
        self.publish(shadow, Phase::Released);
        self.update(key, |job| job.failed(reason.to_owned(), now_secs()));
    }

    /// A member's switchover: fetch the new manifest by digest (verified) and point the tag at it.
    async fn follow_switch(&self, entry: HoldEntry) {
        let parts = &self.inner.parts;
        let key = holds::tag_key(&entry.upstream, &entry.repo, &entry.tag);
        let (Some(upstream), Ok(repo)) = (
            parts.upstreams.get(&entry.upstream),
            entry.repo.parse::<RepoName>(),
        ) else {
            tracing::debug!(tag = %key, "rebuild news for an upstream not configured here");
            return;
        };
        let reply = parts
            .pull
            .manifest(upstream, &repo, &Reference::Digest(entry.new), None)
            .await;
        let pointed = reply.and_then(|reply| {
            parts
                .pull
                .point_tag(&entry.upstream, &repo, &entry.tag, &reply, false)
        });
        match pointed {
            Ok(()) => {
                tracing::info!(tag = %key, new = %entry.new, author = %entry.author, "rebuild: a member switched the tag over")
            }
            Err(error) => {
                tracing::warn!(tag = %key, new = %entry.new, %error, "rebuild: a member switched the tag over, but its manifest could not be fetched; the tag follows its TTL")
            }
        }
    }
}

/// A member's rebuild, as this node's hold table shows it.
fn view_of_hold(key: &str, entry: &HoldEntry) -> RebuildView {
    let (state, message) = match entry.phase {
        Phase::Held => (
            job::RebuildState::Shadowing,
            format!("held at the old digest by the rebuild of {}", entry.author),
        ),
        Phase::Switched => (
            job::RebuildState::Switched,
            format!("switched over by the rebuild of {}", entry.author),
        ),
        Phase::Released => (
            job::RebuildState::Failed,
            format!(
                "the rebuild of {} failed; the hold was lifted",
                entry.author
            ),
        ),
    };
    RebuildView {
        image: key.to_owned(),
        state,
        message,
        old_digest: Some(entry.old.to_string()),
        new_digest: Some(entry.new.to_string()),
        regions: Vec::new(),
        started_at: entry.started_at,
        finished_at: None,
        deadline: entry.expires_at,
        rounds: 0,
        errors: Vec::new(),
    }
}

impl crate::p2p::rebuild::RebuildNews for RebuildService {
    fn received(&self, author: PeerId, news: TagNews) -> bool {
        let entry = holds::from_news(news, author.to_string());
        let key = holds::tag_key(&entry.upstream, &entry.repo, &entry.tag);
        let applied = self.inner.parts.holds.apply(entry.clone(), now_secs());
        match applied {
            Applied::Ignored => return false,
            Applied::Held => {
                tracing::info!(tag = %key, old = %entry.old, %author, "rebuild: a member holds the tag at the old digest")
            }
            Applied::Released => {
                tracing::info!(tag = %key, %author, "rebuild: a member released its hold")
            }
            Applied::Switched => {
                let this = self.clone();
                tokio::spawn(async move { this.follow_switch(entry).await });
            }
        }
        true
    }
}

impl RebuildService {
    /// The cached tags of `registry/repo` that name `digest`, itself or as a child of their
    /// index (a report may name an image by the manifest it scanned), at most
    /// [`MAX_TAGS_PER_REQUEST`], in key order. Blocking: reads the store's tag records.
    fn cached_tags_naming(
        &self,
        registry: &str,
        repo: &RepoName,
        digest: BlobDigest,
    ) -> Vec<String> {
        let store = self.inner.parts.pull.store();
        let prefix = format!("{registry}/{repo}:");
        let Ok(tags) = store.tags(MAX_TAGS_SCANNED) else {
            return Vec::new();
        };
        tags.into_iter()
            .filter_map(|(key, record)| {
                let tag = key.strip_prefix(&prefix)?.to_owned();
                let named = BlobDigest::from_bytes(record.digest);
                let names_it = named == digest
                    || store
                        .manifest(&named)
                        .ok()
                        .flatten()
                        .and_then(|m| read_manifest(&m.body))
                        .is_some_and(|m| m.index && m.children.iter().any(|(c, _)| *c == digest));
                names_it.then_some(tag)
            })
            .take(MAX_TAGS_PER_REQUEST)
            .collect()
    }
}

/// Tag records read to find the tags naming a digest.
const MAX_TAGS_SCANNED: usize = 50_000;
/// Tags one `threat.auto_rebuild` request rebuilds at most.
const MAX_TAGS_PER_REQUEST: usize = 4;

impl RebuildRequests for RebuildService {
    fn request(&self, request: RebuildRequest) {
        tracing::info!(image = %request.image, fixable = request.fixable, worst_score = request.worst_score, "threat.auto_rebuild: rebuild requested by a threat report");
        let this = self.clone();
        tokio::spawn(async move {
            let image = &request.image;
            let tags = match (&image.tag, image.digest) {
                (Some(tag), _) => vec![tag.clone()],
                (None, Some(digest)) => {
                    let (finder, registry, repo) =
                        (this.clone(), image.registry.clone(), image.repo.clone());
                    tokio::task::spawn_blocking(move || {
                        finder.cached_tags_naming(&registry, &repo, digest)
                    })
                    .await
                    .unwrap_or_default()
                }
                (None, None) => Vec::new(),
            };
            if tags.is_empty() {
                tracing::warn!(image = %image, "threat.auto_rebuild: no cached tag names this image; a rebuild moves a tag, so nothing was started");
                return;
            }
            for tag in tags {
                let text = format!("{}/{}:{tag}", image.registry, image.repo);
                match this.start(&text).await {
                    Ok((view, _)) => {
                        tracing::info!(image = %text, state = ?view.state, "threat.auto_rebuild: {}", view.message)
                    }
                    Err(refused) => {
                        tracing::warn!(image = %text, %refused, "threat.auto_rebuild: rebuild not started")
                    }
                }
            }
        });
    }
}

/// The admin routes `POST /images/{ref}/rebuild` and `GET /images/{ref}/rebuild`.
pub fn admin_routes(service: RebuildService) -> Router {
    Router::new()
        .route("/images/{*rest}", get(show).post(create))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_string(value).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// The image of `/images/{ref}/rebuild`; `None` for any other path under `/images/`.
fn image_of(rest: &str) -> Option<&str> {
    rest.strip_suffix("/rebuild")
        .filter(|image| !image.is_empty())
}

fn no_such_route() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: use /images/{ref}/rebuild",
    )
}

async fn create(
    State(service): State<RebuildService>,
    Path(rest): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(image) = image_of(&rest) else {
        return no_such_route();
    };
    let checked = match body {
        Err(_) => Err(RebuildError::BodyTooLarge),
        Ok(body) if body.is_empty() => Ok(()),
        Ok(body) => serde_json::from_slice::<RebuildBody>(&body)
            .map(|_| ())
            .map_err(|e| RebuildError::Body(e.to_string())),
    };
    if let Err(refused) = checked {
        return error(refused.status(), &refused.to_string());
    }
    match service.start(image).await {
        Ok((view, true)) => json(StatusCode::ACCEPTED, &view),
        Ok((view, false)) => json(StatusCode::OK, &view),
        Err(refused) => error(refused.status(), &refused.to_string()),
    }
}

async fn show(State(service): State<RebuildService>, Path(rest): Path<String>) -> Response {
    let Some(image) = image_of(&rest) else {
        return no_such_route();
    };
    match service.view(image) {
        Ok(Some(view)) => json(StatusCode::OK, &view),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no rebuild of this image is known here",
        ),
        Err(refused) => error(refused.status(), &refused.to_string()),
    }
}

/// The `threat.auto_rebuild` hook, bound to the rebuild service once it exists (threat intake is
/// set up before the preheat service the rebuild runs on). A request before the binding, which a
/// running node never makes, is logged and dropped.
#[derive(Debug, Default)]
pub struct RebuildHook {
    service: std::sync::OnceLock<RebuildService>,
}

impl RebuildHook {
    /// Sends requests to `service` from now on (the first binding stays).
    pub fn bind(&self, service: RebuildService) {
        let _ = self.service.set(service);
    }
}

impl RebuildRequests for RebuildHook {
    fn request(&self, request: RebuildRequest) {
        match self.service.get() {
            Some(service) => service.request(request),
            None => {
                tracing::warn!(image = %request.image, "threat.auto_rebuild: the rebuild service is not running yet; request dropped")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rebuild_route_exists_under_images() {
        assert_eq!(
            image_of("127.0.0.1:5000/team/app:v1/rebuild"),
            Some("127.0.0.1:5000/team/app:v1")
        );
        assert!(image_of("127.0.0.1:5000/team/app:v1").is_none());
        assert!(image_of("/rebuild").is_none());
        assert!(image_of("rebuild").is_none());
    }

    #[test]
    fn refusals_map_to_client_errors_except_the_upstream_and_the_node() {
        assert_eq!(
            RebuildError::ByDigest("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            RebuildError::NotCached("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            RebuildError::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(RebuildError::Busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            RebuildError::Upstream {
                image: "x".into(),
                reason: "down".into()
            }
            .status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
