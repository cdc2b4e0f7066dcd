//! Preheating: an operator (or a deploy pipeline) names images and regions, and the node has each
//! region fetch those images' blobs ahead of a rollout, through the peer network, with the origin
//! serving each blob once.
//!
//! `POST /preheat` (admin listener) validates the request and starts a job; `GET /preheat/{id}`
//! reports it ([`job::JobView`]). The job resolves each image through this node's own cache
//! (`pullthrough`, so only configured upstreams are contacted): every platform of an index, or the
//! ones named. Then, for each blob, one member of each chosen region is asked to fetch it: the
//! member of highest rendezvous score for the blob among the region's members (this node included
//! when it is in the region), the next one if that member fails or is busy. The node's own region
//! goes first and the other regions after it, so the later regions find the blob at a member and
//! take it from there; each member fetches through its normal pull path (peers and the blob's home
//! before the origin), verified and committed like a client's fetch. Asking a member is the
//! preheat protocol (`p2p::preheat`); this module is also what answers it ([`BlobWarmer`]).
//!
//! What it may touch: it fetches only through `pullthrough` and asks `p2p` only for members,
//! regions and the preheat protocol; it writes nothing but its in-memory job table.
//!
//! Bounds: a request names at most [`MAX_IMAGES`] images, [`MAX_REGIONS`] regions and
//! [`MAX_PLATFORMS`] platforms, in a body of at most [`MAX_BODY_BYTES`]; a job holds at most
//! [`MAX_BLOBS`] distinct blobs; at most [`MAX_JOBS_RUNNING`] jobs run at once and
//! [`MAX_JOBS_KEPT`] are remembered (the oldest finished go first); each job asks for
//! [`BLOBS_AT_ONCE`] blobs at a time; a node fetches at most [`FETCHES_AT_ONCE`] preheat blobs at
//! once, for itself and for members together, with at most [`FETCH_QUEUE`] waiting or running
//! (more are answered `Busy`, and the asker tries another member).
//!
//! **Invariant:** a preheat fetch is a pull-through fetch: it joins or starts the blob's one
//! flight, and nothing reaches the store that did not match its digest.

pub mod image;
pub mod job;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_proto::preheat::{self as wire, PreheatReport, PreheatRequest};
use shoal_proto::{BlobDigest, Reference, RepoName};
use tokio::sync::{watch, Semaphore};

use crate::p2p::{BlobWarmer, PeerNetwork};
use crate::placement::assign::rendezvous_score;
use crate::pullthrough::{FlightSource, PullThrough, Warmed};
use crate::upstream::Upstream;
use image::{choose_children, parse_image_ref, read_manifest, ImageError, ImageRef, Platform};
use job::{BlobKind, BlobSource, Job, JobView, ResolvedImage};

/// Images one request may name.
pub const MAX_IMAGES: usize = 32;
/// Regions one request may name.
pub const MAX_REGIONS: usize = 32;
/// Platforms one request may name.
pub const MAX_PLATFORMS: usize = 16;
/// Largest `POST /preheat` body.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// Distinct blobs one job may hold.
pub const MAX_BLOBS: usize = 4096;
/// Jobs running at once; a further request is refused with 429.
pub const MAX_JOBS_RUNNING: usize = 4;
/// Jobs remembered for `GET /preheat/{id}`.
pub const MAX_JOBS_KEPT: usize = 64;
/// Blobs one job has in progress at a time.
pub const BLOBS_AT_ONCE: usize = 4;
/// Preheat fetches one node runs at once (for itself and members together).
pub const FETCHES_AT_ONCE: usize = 4;
/// Preheat fetches one node holds, waiting or running; more are answered `Busy`.
pub const FETCH_QUEUE: usize = 32;
/// Members of a region asked for one blob before it counts as failed there.
const MEMBERS_TRIED: usize = 3;
/// How this node names itself in a job's entries.
const LOCAL: &str = "local";

/// The body of `POST /preheat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatBody {
    /// Image references, `registry/repository[:tag][@digest]`.
    pub images: Vec<String>,
    /// Regions to fill; none (and `all_regions` false) means this node's own region.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Fill every region this node knows of (its own and its members').
    #[serde(default)]
    pub all_regions: bool,
    /// Platforms of an index to preheat (`os/arch[/variant]`); none means every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// The answer of `POST /preheat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The job's id, for `GET /preheat/{id}`.
    pub id: String,
    /// The regions it fills.
    pub regions: Vec<String>,
}

/// Why a preheat request was refused (nothing was started).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreheatError {
    /// The body is not the JSON expected.
    #[error("the body is not a preheat request: {0}")]
    Body(String),
    /// A list is empty or too long.
    #[error("{what}: give 1 to {max}")]
    Count {
        /// Which list.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
    /// An image reference or platform is refused.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A region nobody announced.
    #[error("region {region:?} is not known here (known: {known})")]
    UnknownRegion {
        /// The region asked for.
        region: String,
        /// The regions known, comma-separated.
        known: String,
    },
    /// Both `regions` and `all_regions`.
    #[error("give regions or all_regions, not both")]
    RegionsAndAll,
    /// Too many jobs running.
    #[error("{MAX_JOBS_RUNNING} preheat jobs are running already; try again when one is done")]
    Busy,
}

impl PreheatError {
    fn status(&self) -> StatusCode {
        match self {
            PreheatError::Busy => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// What the preheat service uses.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The pull-through cache every fetch goes through.
    pub pull: PullThrough,
    /// The peer network, when there is one.
    pub network: Option<PeerNetwork>,
    /// The configured upstreams.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The upstream of references that name no registry.
    pub default_upstream: Option<String>,
    /// This node's region.
    pub region: String,
}

/// The preheat service: a cheap handle for the admin routes and the peer protocol.
#[derive(Clone)]
pub struct PreheatService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PreheatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreheatService").finish_non_exhaustive()
    }
}

struct Inner {
    parts: Parts,
    jobs: Mutex<Jobs>,
    fetch_slots: Arc<Semaphore>,
    fetch_queue: Arc<Semaphore>,
    id_seed: u32,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Jobs {
    order: VecDeque<String>,
    by_id: HashMap<String, Job>,
}

/// One distinct blob of a job and where to fetch it from.
#[derive(Debug, Clone)]
struct JobBlob {
    digest: BlobDigest,
    kind: BlobKind,
    size: u64,
    upstream: String,
    repo: RepoName,
}

/// A member of a region that may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Local,
    Peer(PeerId),
}

impl PreheatService {
    /// A service over `parts`.
    pub fn new(parts: Parts) -> PreheatService {
        let id_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        PreheatService {
            inner: Arc::new(Inner {
                parts,
                jobs: Mutex::default(),
                fetch_slots: Arc::new(Semaphore::new(FETCHES_AT_ONCE)),
                fetch_queue: Arc::new(Semaphore::new(FETCH_QUEUE)),
                id_seed,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Validates a request and starts its job. Nothing is started when it is refused.
    pub fn start(&self, body: PreheatBody) -> Result<Started, PreheatError> {
        let inner = &self.inner;
        if body.images.is_empty() || body.images.len() > MAX_IMAGES {
            return Err(PreheatError::Count {
                what: "images",
                max: MAX_IMAGES,
            });
        }
        if body.regions.len() > MAX_REGIONS {
            return Err(PreheatError::Count {
                what: "regions",
                max: MAX_REGIONS,
            });
        }
        if body.platforms.len() > MAX_PLATFORMS {
            return Err(PreheatError::Count {
                what: "platforms",
                max: MAX_PLATFORMS,
            });
        }
        let upstream_names = inner.parts.upstreams.keys().map(String::as_str);
        let images = body
            .images
            .iter()
            .map(|text| {
                parse_image_ref(
                    text,
                    upstream_names.clone(),
                    inner.parts.default_upstream.as_deref(),
                )
                .map(|image| (text.clone(), image))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let platforms = body
            .platforms
            .iter()
            .map(|p| Platform::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let regions = self.choose_regions(&body.regions, body.all_regions)?;

        let id = format!(
            "{:08x}{:06x}",
            inner.id_seed,
            inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut jobs = inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let running = jobs.by_id.values().filter(|j| !j.is_finished()).count();
            if running >= MAX_JOBS_RUNNING {
                return Err(PreheatError::Busy);
            }
            while jobs.order.len() >= MAX_JOBS_KEPT {
                let oldest_finished = jobs
                    .order
                    .iter()
                    .position(|id| jobs.by_id.get(id).is_none_or(Job::is_finished));
                let Some(position) = oldest_finished else {
                    break;
                };
                if let Some(gone) = jobs.order.remove(position) {
                    jobs.by_id.remove(&gone);
                }
            }
            jobs.order.push_back(id.clone());
            jobs.by_id
                .insert(id.clone(), Job::new(id.clone(), regions.clone()));
        }
        tracing::info!(job = %id, images = ?body.images, ?regions, "preheat started");
        let this = self.clone();
        let job_id = id.clone();
        tokio::spawn(async move { this.run_job(&job_id, images, platforms).await });
        Ok(Started { id, regions })
    }

    /// The job's view, if it is remembered.
    pub fn job(&self, id: &str) -> Option<JobView> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .get(id)
            .map(Job::view)
    }

    /// The regions to fill: this node's own first, then the others in the order asked (or by
    /// name, for all of them).
    fn choose_regions(&self, asked: &[String], all: bool) -> Result<Vec<String>, PreheatError> {
        let own = self.inner.parts.region.clone();
        let mut known: BTreeSet<String> = self
            .inner
            .parts
            .network
            .as_ref()
            .map(|network| {
                network
                    .members_by_region()
                    .into_iter()
                    .map(|(_, region)| region)
                    .collect()
            })
            .unwrap_or_default();
        known.remove(&own);
        if all && !asked.is_empty() {
            return Err(PreheatError::RegionsAndAll);
        }
        if all {
            return Ok(std::iter::once(own).chain(known).collect());
        }
        if asked.is_empty() {
            return Ok(vec![own]);
        }
        let mut chosen = Vec::new();
        for region in asked {
            if *region != own && !known.contains(region) {
                let known: Vec<&str> = std::iter::once(own.as_str())
                    .chain(known.iter().map(String::as_str))
                    .collect();
                return Err(PreheatError::UnknownRegion {
                    region: region.chars().take(64).collect(),
                    known: known.join(", "),
                });
            }
            if !chosen.contains(region) {
                chosen.push(region.clone());
            }
        }
        if let Some(at) = chosen.iter().position(|r| *r == own) {
            let own = chosen.remove(at);
            chosen.insert(0, own);
        }
        Ok(chosen)
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Job)) {
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.by_id.get_mut(id) {
            change(job);
        }
    }

    async fn run_job(&self, id: &str, images: Vec<(String, ImageRef)>, platforms: Vec<Platform>) {
        let mut resolved = Vec::new();
        let mut blobs: Vec<JobBlob> = Vec::new();
        let mut seen = HashSet::new();
        for (text, image) in images {
            match self.resolve(&image, &platforms).await {
                Ok((found, image_blobs)) => {
                    resolved.push(ResolvedImage {
                        reference: text,
                        digest: found.0.to_string(),
                        manifests: found.1.iter().map(ToString::to_string).collect(),
                    });
                    for (digest, kind, size) in image_blobs {
                        if blobs.len() >= MAX_BLOBS {
                            self.update(id, |job| {
                                job.error(format!(
                                    "more than {MAX_BLOBS} blobs; the rest are left out"
                                ))
                            });
                            break;
                        }
                        if seen.insert(digest) {
                            blobs.push(JobBlob {
                                digest,
                                kind,
                                size,
                                upstream: image.upstream.clone(),
                                repo: image.repo.clone(),
                            });
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(job = %id, image = %text, %reason, "preheat: image not resolved");
                    self.update(id, |job| job.error(format!("{text}: {reason}")));
                }
            }
        }
        if resolved.is_empty() {
            self.update(id, Job::resolution_ended);
            return;
        }
        let listed: Vec<_> = blobs.iter().map(|b| (b.digest, b.kind, b.size)).collect();
        let mut indices = Vec::new();
        let mut regions = Vec::new();
        self.update(id, |job| {
            indices = job.resolved(resolved, &listed);
            regions = job.view().regions;
        });
        futures::stream::iter(blobs.into_iter().zip(indices))
            .for_each_concurrent(BLOBS_AT_ONCE, |(blob, entries)| {
                let regions = regions.clone();
                async move {
                    let mut pairs = regions.into_iter().zip(entries);
                    // The first region (this node's own when chosen) fetches first, so the others
                    // find the blob at a member.
                    if let Some((region, entry)) = pairs.next() {
                        self.fill_region(id, entry, &region, &blob).await;
                    }
                    futures::future::join_all(pairs.map(|(region, entry)| {
                        let blob = &blob;
                        async move { self.fill_region(id, entry, &region, blob).await }
                    }))
                    .await;
                }
            })
            .await;
        if let Some(view) = self.job(id) {
            tracing::info!(job = %id, state = ?view.state, done = view.totals.done, failed = view.totals.failed, "preheat finished");
        }
    }

    /// Resolves an image through the cache: its digest, the image manifests chosen, their blobs.
    async fn resolve(
        &self,
        image: &ImageRef,
        platforms: &[Platform],
    ) -> Result<
        (
            (BlobDigest, Vec<BlobDigest>),
            Vec<(BlobDigest, BlobKind, u64)>,
        ),
        String,
    > {
        let upstream = self
            .inner
            .parts
            .upstreams
            .get(&image.upstream)
            .ok_or_else(|| format!("upstream {} is not configured", image.upstream))?;
        let pull = &self.inner.parts.pull;
        let top = pull
            .manifest(upstream, &image.repo, &image.reference, None)
            .await
            .map_err(|e| e.to_string())?;
        let named = read_manifest(&top.body).ok_or("the manifest is not a JSON object")?;
        let mut manifests = Vec::new();
        let mut blobs = Vec::new();
        let children = if named.index {
            let chosen = choose_children(&named.children, platforms);
            if chosen.is_empty() {
                return Err("no manifest of the index matches the platforms asked for".into());
            }
            chosen
        } else {
            Vec::new()
        };
        let mut push_blobs = |named: &image::Named| {
            if let Some((digest, size)) = named.config {
                blobs.push((digest, BlobKind::Config, size));
            }
            blobs.extend(
                named
                    .layers
                    .iter()
                    .map(|(digest, size)| (*digest, BlobKind::Layer, *size)),
            );
        };
        if named.index {
            for child in children {
                let reply = pull
                    .manifest(upstream, &image.repo, &Reference::Digest(child), None)
                    .await
                    .map_err(|e| format!("manifest {child}: {e}"))?;
                let child_named = read_manifest(&reply.body)
                    .filter(|n| !n.index)
                    .ok_or_else(|| format!("manifest {child} is not an image manifest"))?;
                push_blobs(&child_named);
                manifests.push(child);
            }
        } else {
            push_blobs(&named);
            manifests.push(top.digest);
        }
        Ok(((top.digest, manifests), blobs))
    }

    /// The members of `region` to ask for `digest`, best first: rendezvous order, this node
    /// included when it is in the region.
    fn members_for(&self, region: &str, digest: &BlobDigest) -> Vec<Member> {
        let parts = &self.inner.parts;
        let mut members: Vec<(u64, Member)> = Vec::new();
        let local_id = parts.network.as_ref().map(|n| n.local_peer_id().to_bytes());
        if parts.region == region {
            let score = local_id
                .as_ref()
                .map_or(u64::MAX, |id| rendezvous_score(digest.as_bytes(), id));
            members.push((score, Member::Local));
        }
        if let Some(network) = &parts.network {
            for (peer, peer_region) in network.members_by_region() {
                if peer_region == region {
                    let score = rendezvous_score(digest.as_bytes(), &peer.to_bytes());
                    members.push((score, Member::Peer(peer)));
                }
            }
        }
        members.sort_by_key(|m| std::cmp::Reverse(m.0));
        members.into_iter().map(|(_, m)| m).collect()
    }

    /// Has one member of `region` fetch `blob`, trying the next on failure; records it in entry
    /// `entry` of job `id`.
    async fn fill_region(&self, id: &str, entry: usize, region: &str, blob: &JobBlob) {
        let request = PreheatRequest::new(&blob.upstream, &blob.repo, blob.digest, blob.size);
        let mut last_error = format!("no member of region {region} is connected");
        for member in self
            .members_for(region, &blob.digest)
            .into_iter()
            .take(MEMBERS_TRIED)
        {
            let name = match member {
                Member::Local => LOCAL.to_owned(),
                Member::Peer(peer) => peer.to_string(),
            };
            self.update(id, |job| job.started(entry, name.clone()));
            let report = match member {
                Member::Local => self.warm_here(id, entry, request.clone()).await,
                Member::Peer(peer) => {
                    let Some(network) = &self.inner.parts.network else {
                        continue;
                    };
                    let mut on_progress =
                        |bytes: u64| self.update(id, |job| job.progress(entry, bytes));
                    match network
                        .preheat(peer, request.clone(), &mut on_progress)
                        .await
                    {
                        Ok(report) => report,
                        Err(error) => PreheatReport::failed(&error.to_string()),
                    }
                }
            };
            let outcome = match report {
                PreheatReport::AlreadyThere => Ok((BlobSource::AlreadyThere, blob.size)),
                PreheatReport::Fetched(wire::Fetched { source, bytes }) => Ok((
                    match source {
                        wire::BlobSource::Peers => BlobSource::Peers,
                        wire::BlobSource::Origin => BlobSource::Origin,
                        wire::BlobSource::PeersAndOrigin => BlobSource::PeersAndOrigin,
                    },
                    bytes,
                )),
                PreheatReport::Busy => Err(format!("{name} is busy")),
                PreheatReport::Failed(reason) => Err(format!("{name}: {reason}")),
                PreheatReport::Progress(_) => Err(format!("{name} sent no final report")),
            };
            match outcome {
                Ok(done) => {
                    tracing::info!(job = %id, digest = %blob.digest, region, member = %name, source = ?done.0, "preheated");
                    self.update(id, |job| job.finished(entry, Ok(done)));
                    return;
                }
                Err(reason) => {
                    tracing::warn!(job = %id, digest = %blob.digest, region, %reason, "preheat by a member failed; trying the next");
                    last_error = reason;
                }
            }
        }
        self.update(id, |job| job.finished(entry, Err(last_error)));
    }

    /// Fetches on this node for job `id`, forwarding progress to entry `entry`.
    async fn warm_here(&self, id: &str, entry: usize, request: PreheatRequest) -> PreheatReport {
        let (progress, mut bytes_done) = watch::channel(0u64);
        let fetch = self.inner.clone().warm(request, progress);
        tokio::pin!(fetch);
        loop {
            tokio::select! {
                report = &mut fetch => return report,
                Ok(()) = bytes_done.changed() => {
                    let bytes = *bytes_done.borrow_and_update();
                    self.update(id, |job| job.progress(entry, bytes));
                }
            }
        }
    }
}

impl Inner {
    /// Fetches the blob a request names through the pull path, within the node's preheat bounds.
    async fn warm(
        self: Arc<Self>,
        request: PreheatRequest,
        progress: watch::Sender<u64>,
    ) -> PreheatReport {
        let Ok(_queued) = self.fetch_queue.clone().try_acquire_owned() else {
            return PreheatReport::Busy;
        };
        let Ok(_slot) = self.fetch_slots.clone().acquire_owned().await else {
            return PreheatReport::failed("the node is stopping");
        };
        let Some(upstream) = self.parts.upstreams.get(&request.upstream) else {
            return PreheatReport::failed(&format!(
                "no upstream {} is configured on this member",
                request.upstream
            ));
        };
        let Ok(repo) = request.repo_name() else {
            return PreheatReport::failed("repository name outside the grammar");
        };
        let digest = request.digest();
        match self
            .parts
            .pull
            .warm_blob(upstream, &repo, digest, &progress)
            .await
        {
            Ok(Warmed::AlreadyThere) => PreheatReport::AlreadyThere,
            Ok(Warmed::Fetched { sources, bytes }) => PreheatReport::Fetched(wire::Fetched {
                source: wire_source(&sources),
                bytes,
            }),
            Err(error) => PreheatReport::failed(&error.to_string()),
        }
    }
}

/// Where a flight's bytes came from, as the preheat protocol says it. A flight that reports no
/// source counts as the origin's (the conservative answer).
fn wire_source(sources: &[FlightSource]) -> wire::BlobSource {
    let origin = sources.contains(&FlightSource::Origin);
    let peers = sources
        .iter()
        .any(|s| matches!(s, FlightSource::StoredPeers | FlightSource::InFlightPeer));
    match (peers, origin) {
        (true, true) => wire::BlobSource::PeersAndOrigin,
        (true, false) => wire::BlobSource::Peers,
        (false, _) => wire::BlobSource::Origin,
    }
}

impl BlobWarmer for PreheatService {
    fn warm(
        &self,
        request: PreheatRequest,
        progress: watch::Sender<u64>,
    ) -> BoxFuture<'static, PreheatReport> {
        Box::pin(self.inner.clone().warm(request, progress))
    }
}

/// The admin routes `POST /preheat` and `GET /preheat/{id}`.
pub fn admin_routes(service: PreheatService) -> Router {
    Router::new()
        .route("/preheat", post(create))
        .route("/preheat/{id}", get(show))
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

async fn create(State(service): State<PreheatService>, body: Bytes) -> Response {
    let body: PreheatBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &PreheatError::Body(e.to_string()).to_string(),
            )
        }
    };
    match service.start(body) {
        Ok(started) => json(StatusCode::ACCEPTED, &started),
        Err(refused) => error(refused.status(), &refused.to_string()),
    }
}

async fn show(State(service): State<PreheatService>, Path(id): Path<String>) -> Response {
    let well_formed = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    match well_formed.then(|| service.job(&id)).flatten() {
        Some(view) => json(StatusCode::OK, &view),
        None => error(StatusCode::NOT_FOUND, "no such preheat job"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_sources_map_to_what_the_protocol_reports() {
        use FlightSource::{InFlightPeer, Origin, StoredPeers};
        assert_eq!(wire_source(&[Origin]), wire::BlobSource::Origin);
        assert_eq!(wire_source(&[StoredPeers]), wire::BlobSource::Peers);
        assert_eq!(wire_source(&[InFlightPeer]), wire::BlobSource::Peers);
        assert_eq!(
            wire_source(&[StoredPeers, Origin]),
            wire::BlobSource::PeersAndOrigin
        );
        assert_eq!(wire_source(&[]), wire::BlobSource::Origin);
    }
}
