//! The peer network: one libp2p swarm per node (QUIC and TCP + noise + yamux, both listened on,
//! the one used to each member chosen by `transport`; Kademlia, identify, ping, and raw streams
//! for Shoal's own protocols).
//!
//! Owns the node's peer identity (a key created once in the data directory, mode 0600), the
//! membership proof (`membership`), provider records in the DHT (one per committed blob, keyed
//! by its digest, counted in `record_store`), gossip among members (`gossip`: announcements of
//! the whole blobs a member holds and drops, kept in `holdings`), the bootstrap through the first
//! member and its retries (`discovery`), the shard transfer protocol on both sides
//! (`transfer`) and the manifest lookup protocol on both sides (`manifests`). It reads the disk
//! only through [`ShardStore`] (shard maps and verified shards) and [`ManifestSource`] (the
//! manifest cache, implemented by `pullthrough`) and never writes it: a blob or manifest fetched
//! from a peer is verified and cached by `pullthrough`, which decides when to ask peers at all. It
//! speaks no HTTP and never contacts an upstream (an upstream's name is only a label in a request).
//!
//! The swarm lives in one task that owns it; a cloneable [`PeerNetwork`] sends it commands over a
//! bounded channel. Until a peer has proved that it holds the network key, it is not added to the
//! routing table, its Kademlia requests are dropped unanswered (`gate`), its provider records
//! are not stored, it gets and gives no gossip (`gossip`) and its transfer and manifest streams are
//! refused; a peer that fails the proof, or does not give it within [`PROOF_DEADLINE`], is
//! disconnected.

mod accept;
mod address_book;
mod claims;
mod demand;
mod discovery;
mod followers;
mod gate;
mod gossip;
mod holdings;
mod home;
mod limits;
mod manifests;
mod membership;
mod peers;
pub mod preheat;
pub mod rebuild;
mod record_store;
mod rehoming;
mod secure;
pub mod shaping;
pub mod threat;
mod transfer;
mod transport;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore as _};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    gossipsub, identify, identity, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol,
};
use shoal_proto::gossip::{Announcement, GossipMessage, Topic};
use shoal_proto::wire::ManifestRequest;
use shoal_proto::{BlobDigest, Reference, RepoName};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::store::ShardStore;

pub use claims::{LEASE as CLAIM_LEASE, RENEW_EVERY as RENEW_CLAIM_EVERY};
pub use gossip::{gossipsub_config, GOSSIP_PROTOCOL_PREFIX};
pub use holdings::AnnouncedHolding;
pub use home::HOME_TTL;
pub use limits::{ConnectionLimits, UnprovenLimitExceeded};
pub use manifests::{CachedManifest, ManifestFetchError, ManifestSource};
pub use peers::PeerInfo;
pub use preheat::{BlobWarmer, PreheatRequestError};
pub use transfer::{
    InFlightBlob, InFlightBlobs, InFlightShard, NextFrame, Offer, PeerAnswer, ShardStream,
    TransferError,
};

pub use transport::{transport_of, Transport};

use address_book::AddressBook;
use holdings::Holdings;
use peers::PeerTable;
use record_store::CountedStore;

/// The membership proof's protocol.
pub const MEMBERSHIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/membership/1");
/// The shard transfer protocol.
pub const SHARDS_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/shards/1");
/// The manifest lookup protocol.
pub const MANIFESTS_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/manifests/1");
/// The preheat protocol (a member asks another to fetch a blob; see `shoal_proto::preheat`).
pub const PREHEAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/preheat/1");
/// Shoal's Kademlia protocol (a network of its own, apart from any public DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1");
/// How long a connected peer has to prove membership before it is disconnected.
pub const PROOF_DEADLINE: Duration = Duration::from_secs(10);
/// Why a request was not sent.
const NOT_READY: &str = "the peer did not become a member in time";
/// How long a peer that sent bad bytes is not asked again.
pub const AVOID_FOR: Duration = Duration::from_secs(600);
/// The identity key's file name in the data directory.
pub const IDENTITY_FILE: &str = "p2p-identity.key";

/// The shared secret that makes a Shoal network: derived from the key file's contents.
#[derive(Clone)]
pub struct NetworkKey([u8; 32]);

impl NetworkKey {
    /// Derives the key from a key file's contents (at least 32 bytes of secret material).
    pub fn derive(material: &[u8]) -> Self {
        Self(blake3::derive_key("shoal network key v1", material))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

/// Settings of the peer network, validated by `config`.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Where the swarm listens (at least one address; QUIC and TCP by default).
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start.
    pub bootstrap: Vec<Multiaddr>,
    /// This node's region (announced in identify; placement uses it later).
    pub region: String,
    /// The network key.
    pub network_key: NetworkKey,
    /// When set, only these peers may join, key or not (a peer left out is refused like one that
    /// failed the proof); `None` admits every holder of the key.
    pub allowed_peers: Option<BTreeSet<PeerId>>,
    /// TESTING ONLY: egress cap and added latency for served transfers (off by default).
    pub shaping: shaping::ShapingConfig,
    /// How many connections peers may open (see `limits`).
    pub limits: ConnectionLimits,
}

/// Why the peer network could not start.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The identity key could not be read or created.
    #[error("peer identity {path}: {message}")]
    Identity {
        /// The key file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The transports could not be set up.
    #[error("setting up the transports: {0}")]
    Transport(String),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// The cause.
        message: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // The limits come first, so that they refuse a connection before any other behaviour sees it.
    limits: libp2p::connection_limits::Behaviour,
    unproven: limits::UnprovenGuard,
    kad: gate::MembersOnly,
    gossip: gossip::MembersOnlyGossip,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Provide(BlobDigest),
    StopProviding(BlobDigest),
    FindProviders(BlobDigest, oneshot::Sender<Vec<PeerId>>),
    /// An iterative lookup of the members closest to the blob's key.
    ClosestPeers(BlobDigest, oneshot::Sender<Vec<PeerId>>),
    Publish(Topic, Vec<u8>),
    /// The peer's proof checked out: serve its requests from now on. Answered once the peer table
    /// says so (or `false` when the allowlist refuses it), so that the proof exchange only lets
    /// the peer know it is in after it is.
    Admit(PeerId, oneshot::Sender<bool>),
    /// Both ends have admitted each other: ask the peer things too (routing table, bootstrap,
    /// gossip).
    Proved(PeerId),
    /// Connect to the peer if not connected (its proof follows).
    Dial(PeerId),
    FailedProof(PeerId, String),
    ProofDeadline(PeerId),
    Disconnect(PeerId),
}

/// A handle to the peer network; cheap to clone.
#[derive(Clone)]
pub struct PeerNetwork {
    local: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    avoid: Arc<Mutex<HashMap<PeerId, Instant>>>,
    peers: PeerTable,
    holdings: Arc<Mutex<Holdings>>,
    demand: Arc<Mutex<demand::RegionalDemand>>,
    threat_news: ThreatSink,
    tag_news: TagNewsSink,
    store: ShardStore,
    metrics: Arc<Metrics>,
    region: String,
    in_flight: transfer::InFlightSlot,
    claims: claims::Claims,
    homes: Arc<Mutex<home::HomeCache>>,
    warmer: preheat::WarmerSlot,
    /// Whether bootstrap peers were configured: then a view with no member is one not yet built.
    expects_members: bool,
}

/// Where threat scores from peers go, once the node's threat book is set up.
type ThreatSink = Arc<std::sync::OnceLock<Arc<dyn threat::ThreatNews>>>;
/// Where rebuild news from peers goes, once the node's rebuild service is set up.
type TagNewsSink = Arc<std::sync::OnceLock<Arc<dyn rebuild::RebuildNews>>>;

/// Longest wait for a closest-peers lookup; past it, the members connected now decide the home.
const HOME_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Candidates for a blob's home that may fail to prove the key before the next is taken.
const HOME_CANDIDATES: usize = 3;

impl std::fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNetwork")
            .field("local", &self.local)
            .finish()
    }
}

impl PeerNetwork {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Announces in the DHT that this node holds `digest`. Never waits: if the swarm is too busy
    /// the announcement is dropped (the blob is announced again at the next start).
    pub fn provide(&self, digest: BlobDigest) {
        if self.commands.try_send(Command::Provide(digest)).is_err() {
            tracing::debug!(%digest, "swarm busy; provider record not announced");
        }
    }

    /// Withdraws this node's provider record for `digest` (a fetch it announced failed).
    pub fn stop_providing(&self, digest: BlobDigest) {
        let _ = self.commands.try_send(Command::StopProviding(digest));
    }

    /// Lets peers follow the blobs this node is fetching (and ask it to fetch a blob whose home it
    /// is). Until this is called, peers are offered committed blobs only.
    pub fn serve_in_flight(&self, blobs: Arc<dyn InFlightBlobs>) {
        let _ = self.in_flight.set(blobs);
    }

    /// As the blob's home, records that this node fetches `digest` from the origin, unless a
    /// member claimed it first: then the member of its tree to follow instead.
    pub fn claim_locally(&self, digest: BlobDigest) -> Option<PeerId> {
        let region = Some(self.region.clone());
        match self
            .claims
            .claim(digest, self.local, region, Instant::now())
        {
            claims::Claim::Granted => None,
            claims::Claim::Held(holder) => Some(holder),
        }
    }

    /// Renews this node's place in `digest`'s tree at the blob's home (its claim when
    /// `from_origin`, else its place as a follower): called every [`RENEW_CLAIM_EVERY`] while a
    /// fetch of the blob runs, so the home knows it still fetches without being connected to it
    /// (see `claims`). A failed renewal is only logged: the lease then runs out, as for a member
    /// that went away.
    pub async fn renew_claim(&self, digest: BlobDigest, from_origin: bool) {
        let home = self.find_home(digest).await;
        if home == self.local {
            let renewal = if from_origin {
                claims::Renewal::FromOrigin
            } else {
                claims::Renewal::Following
            };
            let region = Some(self.region.clone());
            self.claims
                .renew(digest, self.local, renewal, region, Instant::now());
            return;
        }
        let request = shoal_proto::wire::ShardRequest {
            blob: *digest.as_bytes(),
            shards: shoal_proto::wire::ShardSet::Bitfield(Vec::new()),
            map: shoal_proto::wire::MapWanted::HashOnly,
            claim: if from_origin {
                shoal_proto::wire::ClaimAsk::StillFetchingFromOrigin
            } else {
                shoal_proto::wire::ClaimAsk::StillFollowing
            },
        };
        match self.request(home, request).await {
            Err(TransferError::NotHere) => {}
            Ok(_) => {
                tracing::debug!(%digest, %home, "the home answered a renewal with more than NotHere")
            }
            Err(error) => {
                tracing::debug!(%digest, %home, %error, "could not renew the claim at the blob's home")
            }
        }
    }

    /// The blob's home among this node and the members connected now: the one whose peer id is
    /// closest to the blob's DHT key. Only as good as this node's view; [`Self::find_home`] looks
    /// beyond it.
    pub fn home_among_connected(&self, digest: BlobDigest) -> PeerId {
        home::closest_first(
            &digest,
            std::iter::once(self.local).chain(self.peers.members()),
        )
        .first()
        .copied()
        .unwrap_or(self.local)
    }

    /// The blob's home: the member closest to the blob's DHT key (XOR distance), found by an
    /// iterative Kademlia lookup of the closest peers rather than among the members this node
    /// happens to be connected to, so that nodes with different connections agree on it, and
    /// nodes missing the same blob at once all ask the same one, which records who fetches it
    /// (see `home` and `claims`). Cached for [`HOME_TTL`]. A candidate that is not yet connected
    /// is dialled and must prove the key; if the lookup fails, the connected members decide.
    pub async fn find_home(&self, digest: BlobDigest) -> PeerId {
        let cached = self
            .homes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest, Instant::now());
        if let Some(home) = cached {
            if home == self.local || self.peers.is_ready(&home) || self.ready(home).await {
                return home;
            }
            // Gone since: look again.
            self.homes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(&digest);
        }
        if self.expects_members && self.peers.members().is_empty() {
            // Just started (or cut off): with no member in view this node would be every blob's
            // home and grant claims the real home grants too. Wait a little for the first.
            let until = Instant::now() + home::FIRST_MEMBER_WAIT;
            while self.peers.members().is_empty() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let (reply, answer) = oneshot::channel();
        let found = if self
            .commands
            .send(Command::ClosestPeers(digest, reply))
            .await
            .is_ok()
        {
            tokio::time::timeout(HOME_LOOKUP_TIMEOUT, answer)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let Some(found) = found else {
            tracing::debug!(%digest, "closest-peers lookup failed; the home is chosen among connected members");
            return self.home_among_connected(digest);
        };
        let found_len = found.len();
        // A peer this node avoids (it sent bad bytes) is still the home if it is the closest: its
        // claims are not its bytes, and every node must find the same home whatever bytes it got
        // (a home skipped by some nodes only would grant the blob a second time).
        let candidates = home::closest_first(
            &digest,
            found
                .into_iter()
                .chain(self.peers.members())
                .chain(std::iter::once(self.local)),
        );
        let mut may_dial = HOME_CANDIDATES;
        let mut home = None;
        for candidate in candidates {
            if candidate == self.local || self.peers.is_ready(&candidate) {
                home = Some(candidate);
                break;
            }
            if may_dial == 0 {
                break;
            }
            may_dial -= 1;
            if self.ready(candidate).await {
                home = Some(candidate);
                break;
            }
            tracing::debug!(%digest, %candidate, "candidate home did not prove the key; trying the next");
        }
        let home = home.unwrap_or_else(|| self.home_among_connected(digest));
        // A home chosen with no member in view is not kept: the next miss looks again.
        if found_len > 0 || !self.peers.members().is_empty() {
            self.homes.lock().unwrap_or_else(|p| p.into_inner()).insert(
                digest,
                home,
                Instant::now(),
            );
        }
        tracing::info!(%digest, %home, looked_up = found_len, members = self.peers.members().len(), "blob's home looked up");
        home
    }

    /// Closes this node's connections to `peer` (it is dialled again when it is needed).
    pub fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.try_send(Command::Disconnect(peer));
    }

    /// Announces `digest`, waiting for room in the swarm's queue (for the start-up sweep).
    pub async fn provide_waiting(&self, digest: BlobDigest) {
        let _ = self.commands.send(Command::Provide(digest)).await;
    }

    /// Peers that provide `digest`, from the DHT, best first; excludes this node and peers being
    /// avoided. Empty if none answer within `timeout`.
    pub async fn find_providers(&self, digest: BlobDigest, timeout: Duration) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::FindProviders(digest, reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let peers = tokio::time::timeout(timeout, answer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut avoid = self.avoid.lock().unwrap_or_else(|p| p.into_inner());
        avoid.retain(|_, until| *until > Instant::now());
        peers
            .into_iter()
            .filter(|peer| *peer != self.local && !avoid.contains_key(peer))
            .collect()
    }

    /// Tells every member over gossip what this node holds of a blob (the whole blob on commit,
    /// nothing any more on eviction; blobs being downloaded are not announced, see
    /// `shoal_proto::gossip`). Never waits: if the swarm is too busy the announcement is
    /// dropped and counted (`shoal_p2p_gossip_unpublished_total`).
    pub fn announce(&self, announcement: Announcement) {
        self.publish(&announcement);
    }

    /// Announces that this node holds the whole of `digest`, committed in its store (reads the
    /// shard count from the store's index; nothing is announced if the blob is not there).
    pub fn announce_held(&self, digest: BlobDigest) {
        match self.store.shard_map(&digest) {
            Ok(Some(map)) => {
                self.announce(Announcement::complete(digest, map.shards.len() as u32));
            }
            Ok(None) => tracing::debug!(%digest, "not in the store; nothing to announce"),
            Err(error) => tracing::warn!(%digest, %error, "cannot read the shard map to announce"),
        }
    }

    /// Tells every member this node's demand (its top layers by forecast, with its region). Never
    /// waits, like [`Self::announce`].
    pub fn publish_demand(&self, summary: &shoal_proto::gossip::DemandSummary) {
        self.publish(summary);
    }

    /// Tells every member threat records this node took from a report it imported. Never waits,
    /// like [`Self::announce`].
    pub fn publish_threat(&self, scores: &shoal_proto::gossip::ThreatScores) {
        self.publish(scores);
    }

    /// Where threat scores from members go (set once; later calls are ignored).
    pub fn set_threat_news(&self, news: Arc<dyn threat::ThreatNews>) {
        let _ = self.threat_news.set(news);
    }

    /// Tells every member where a rebuild of a tag is (held, switched, released). Never waits,
    /// like [`Self::announce`].
    pub fn publish_tag_news(&self, news: &shoal_proto::gossip::TagNews) {
        self.publish(news);
    }

    /// Where rebuild news from members goes (set once; later calls are ignored).
    pub fn set_tag_news(&self, news: Arc<dyn rebuild::RebuildNews>) {
        let _ = self.tag_news.set(news);
    }

    /// Forecast pulls per region and blob that members (this node's own summaries excluded)
    /// published within `max_age`.
    pub fn regional_demand(
        &self,
        max_age: Duration,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<BlobDigest, f64>> {
        self.demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_region(Instant::now(), max_age)
    }

    fn publish<M: GossipMessage>(&self, message: &M) {
        let command = Command::Publish(M::TOPIC, message.to_payload());
        if self.commands.try_send(command).is_err() {
            self.metrics.p2p_gossip_unpublished.inc();
            tracing::debug!(
                topic = M::TOPIC.name(),
                "swarm busy; gossip message dropped"
            );
        }
    }

    /// Connected members that announced holding shards of `digest` over gossip, complete
    /// holders first, then by most shards held; excludes peers being avoided. A hint, not a
    /// proof: the DHT's providers ([`PeerNetwork::find_providers`]) are the other source.
    pub fn announced_holders(&self, digest: &BlobDigest) -> Vec<AnnouncedHolding> {
        let holders = self
            .holdings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holders(digest);
        let mut avoid = self.avoid.lock().unwrap_or_else(|p| p.into_inner());
        avoid.retain(|_, until| *until > Instant::now());
        holders
            .into_iter()
            .filter(|holding| holding.peer != self.local && !avoid.contains_key(&holding.peer))
            .collect()
    }

    /// Disconnects `peer` and stops asking it for [`AVOID_FOR`] (it sent bytes that failed
    /// verification).
    pub fn avoid(&self, peer: PeerId) {
        tracing::warn!(%peer, "peer sent bad bytes; disconnecting and avoiding it");
        self.avoid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now() + AVOID_FOR);
        let _ = self.commands.try_send(Command::Disconnect(peer));
    }

    /// Whether this node is avoiding `peer` now (it sent bytes that failed verification).
    pub fn is_avoided(&self, peer: &PeerId) -> bool {
        self.avoid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Members connected now.
    pub fn members(&self) -> Vec<PeerId> {
        self.peers.members()
    }

    /// What is known of a connected peer.
    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.peers.info(peer)
    }

    /// Orders `candidates` best first: same region, least loaded by this node's requests, lowest
    /// RTT.
    pub fn rank(&self, candidates: &[PeerId]) -> Vec<PeerId> {
        self.peers.rank(candidates, &self.region)
    }

    /// Members connected now that are not being avoided, best first (see [`Self::rank`]).
    pub fn members_to_ask(&self) -> Vec<PeerId> {
        let mut members = self.members();
        {
            let mut avoid = self.avoid.lock().unwrap_or_else(|p| p.into_inner());
            avoid.retain(|_, until| *until > Instant::now());
            members.retain(|peer| !avoid.contains_key(peer));
        }
        self.rank(&members)
    }

    /// Asks `peer` for a manifest from its cache: `reference` in `repo` of the registry
    /// `upstream` (the name containerd sends as `ns`). `None` if the peer has none cached. A
    /// returned manifest's bytes hash to its digest, which for a request by digest is the one
    /// asked for; a tag's answer carries when the peer's upstream resolved it.
    pub async fn fetch_manifest(
        &self,
        peer: PeerId,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<CachedManifest>, ManifestFetchError> {
        if !self.ready(peer).await {
            return Err(ManifestFetchError::Open(NOT_READY.into()));
        }
        manifests::fetch_manifest(
            self.control.clone(),
            peer,
            ManifestRequest::new(upstream, repo, reference),
            self.peers.begin_request(peer),
        )
        .await
    }

    /// Serves members' preheat requests with `warmer` from now on (until then they are answered
    /// with a failure).
    pub fn serve_preheat(&self, warmer: Arc<dyn BlobWarmer>) {
        let _ = self.warmer.set(warmer);
    }

    /// Members connected now with the region each announced (members that announced none are
    /// left out: they cannot be placed in a region).
    pub fn members_by_region(&self) -> Vec<(PeerId, String)> {
        self.peers
            .members()
            .into_iter()
            .filter_map(|peer| Some((peer, self.peers.info(&peer)?.region?)))
            .collect()
    }

    /// Asks `peer` to fetch the blob `request` names through its own pull path; `on_progress`
    /// hears the bytes it has done. Returns its final report.
    pub async fn preheat(
        &self,
        peer: PeerId,
        request: shoal_proto::preheat::PreheatRequest,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<shoal_proto::preheat::PreheatReport, PreheatRequestError> {
        if !self.ready(peer).await {
            return Err(PreheatRequestError::Open(NOT_READY.into()));
        }
        preheat::request(
            self.control.clone(),
            peer,
            request,
            on_progress,
            self.peers.begin_request(peer),
        )
        .await
    }

    /// Whether `peer` may be asked things, connecting to it and waiting for both ends of the
    /// membership proof (at most [`PROOF_DEADLINE`]) if need be. A request sent earlier would be
    /// refused: the peer serves only members it has admitted.
    async fn ready(&self, peer: PeerId) -> bool {
        if self.peers.is_ready(&peer) {
            return true;
        }
        let _ = self.commands.send(Command::Dial(peer)).await;
        self.peers.wait_ready(&peer, PROOF_DEADLINE).await
    }

    /// Sends `request` to `peer`; the answer carries the stream its shards follow on.
    pub async fn request(
        &self,
        peer: PeerId,
        request: shoal_proto::wire::ShardRequest,
    ) -> Result<PeerAnswer, TransferError> {
        if !self.ready(peer).await {
            return Err(TransferError::Open(NOT_READY.into()));
        }
        transfer::request(
            self.control.clone(),
            peer,
            request,
            None,
            self.peers.begin_request(peer),
        )
        .await
    }
}

/// Reads the node's identity key from the data directory, creating it (mode 0600) the first time.
pub fn load_or_create_identity(data_dir: &Path) -> Result<identity::Keypair, P2pError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = data_dir.join(IDENTITY_FILE);
    let failed = |message: String| P2pError::Identity {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)
                .map_err(|e| failed(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(failed(format!(
                    "mode {:o} lets others read the key; chmod 600 it",
                    mode & 0o777
                )));
            }
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| failed(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = identity::Keypair::generate_ed25519();
            let encoded = keypair
                .to_protobuf_encoding()
                .map_err(|e| failed(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| failed(e.to_string()))?;
            file.write_all(&encoded)
                .and_then(|()| file.sync_all())
                .map_err(|e| failed(e.to_string()))?;
            tracing::info!(peer = %keypair.public().to_peer_id(), path = %path.display(), "new peer identity created");
            Ok(keypair)
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Starts the swarm: listens, dials the bootstrap peers and serves the membership, transfer and
/// manifest protocols (manifests from `manifests`) until `stop` turns true. Returns the handle and
/// the first address each listen address bound, in the configured order, with this node's
/// `/p2p/<peer id>` appended.
pub async fn start(
    config: P2pConfig,
    data_dir: &Path,
    store: ShardStore,
    manifests: Arc<dyn ManifestSource>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(PeerNetwork, Vec<Multiaddr>, tokio::task::JoinHandle<()>), P2pError> {
    let keypair = load_or_create_identity(data_dir)?;
    let members = PeerTable::default();
    let local = keypair.public().to_peer_id();
    let agent = format!(
        "shoald/{} region={}",
        env!("CARGO_PKG_VERSION"),
        config.region
    );
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            // TLS with AES-GCM first, noise for nodes of earlier releases (see `secure`).
            (secure::Config::new, noise::Config::new),
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            // Only peers that proved membership enter the routing table, and only their
            // provider records are stored.
            kad_config
                .set_kbucket_inserts(kad::BucketInserts::Manual)
                .set_record_filtering(kad::StoreInserts::FilterBoth)
                .set_query_timeout(Duration::from_secs(10));
            let store = MemoryStore::with_config(
                local,
                MemoryStoreConfig {
                    max_provided_keys: 1 << 20,
                    max_records: 1 << 16,
                    ..MemoryStoreConfig::default()
                },
            );
            let store = CountedStore::new(local, store);
            let mut kad = kad::Behaviour::with_config(local, store, kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            let gossip = gossip::MembersOnlyGossip::new(key, members.clone())?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                limits: config.limits.libp2p_behaviour(),
                unproven: limits::UnprovenGuard::new(config.limits, members.clone()),
                kad: gate::MembersOnly::new(kad, members.clone(), metrics.clone()),
                gossip,
                identify: identify::Behaviour::new(
                    identify::Config::new("/shoal/1".into(), key.public())
                        .with_agent_version(agent.clone()),
                ),
                ping: ping::Behaviour::default(),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    let listening = listen_all(&mut swarm, &config.listen).await?;
    let listening: Vec<Multiaddr> = listening
        .into_iter()
        .map(|addr| addr.with(Protocol::P2p(local)))
        .collect();
    let shown: Vec<String> = listening.iter().map(ToString::to_string).collect();
    tracing::info!(peer = %local, addr = %shown.join(" "), region = %config.region, "peer network listening");

    let mut control = swarm.behaviour().stream.new_control();
    let (commands, command_rx) = mpsc::channel(256);
    let holdings = Arc::new(Mutex::new(Holdings::default()));
    let demand = Arc::new(Mutex::new(demand::RegionalDemand::default()));
    let threat_news = ThreatSink::default();
    let tag_news = TagNewsSink::default();
    let network = PeerNetwork {
        local,
        commands: commands.clone(),
        control: control.clone(),
        avoid: Arc::default(),
        peers: members.clone(),
        holdings: holdings.clone(),
        demand: demand.clone(),
        threat_news: threat_news.clone(),
        tag_news: tag_news.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        region: config.region.clone(),
        in_flight: Arc::default(),
        claims: claims::Claims::default(),
        homes: Arc::default(),
        warmer: Arc::default(),
        expects_members: !config.bootstrap.is_empty(),
    };
    let key = Arc::new(config.network_key.clone());
    let membership_incoming = control
        .accept(MEMBERSHIP_PROTOCOL)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let shards_incoming = control
        .accept(SHARDS_PROTOCOL)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let manifests_incoming = control
        .accept(MANIFESTS_PROTOCOL)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let preheat_incoming = control
        .accept(PREHEAT_PROTOCOL)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    tokio::spawn(membership::answer_proofs(
        membership_incoming,
        key.clone(),
        local,
        commands.clone(),
        stop.clone(),
    ));
    if config.shaping.is_enabled() {
        tracing::warn!(
            egress_bytes_per_sec = config.shaping.egress_bytes_per_sec.map_or(0, |r| r.get()),
            latency = %config.shaping.latency_list(),
            flip_served_bytes = config.shaping.flip_served_bytes,
            "TESTING ONLY network shaping is on: served transfers are delayed and paced"
        );
    }
    tokio::spawn(transfer::serve(
        shards_incoming,
        transfer::Serving {
            members: members.clone(),
            store,
            in_flight: network.in_flight.clone(),
            shaping: shaping::Shaping::new(&config.shaping, &config.region),
            claims: network.claims.clone(),
            followers: followers::Followers::default(),
            local,
            metrics: metrics.clone(),
        },
        stop.clone(),
    ));
    tokio::spawn(manifests::serve(
        manifests_incoming,
        members.clone(),
        manifests,
        metrics.clone(),
        stop.clone(),
    ));
    tokio::spawn(preheat::serve(
        preheat_incoming,
        members.clone(),
        network.warmer.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    for addr in &config.bootstrap {
        if let Err(error) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
        }
    }
    let allowed_peers = config.allowed_peers.clone();
    let mut task = SwarmTask {
        swarm,
        local,
        key,
        control,
        members,
        holdings,
        demand,
        threat_news,
        threat_budgets: threat::AuthorBudgets::default(),
        tag_news,
        tag_news_budgets: threat::AuthorBudgets::default(),
        metrics,
        commands,
        addresses: AddressBook::new(config.limits.max_established as usize),
        transports: transport::TransportBook::new(config.limits.max_established as usize),
        region: config.region.clone(),
        lookups: HashMap::new(),
        closest: HashMap::new(),
        allowed_peers,
        bootstrap_retry: discovery::BootstrapRetry::default(),
    };
    let handle = tokio::spawn(async move {
        let mut command_rx = command_rx;
        loop {
            // Lazy: the timer exists only while a retry is due, not on every turn of the loop.
            let bootstrap_due = task.bootstrap_retry.due_at();
            let bootstrap_timer = async {
                if let Some(at) = bootstrap_due {
                    tokio::time::sleep_until(at.into()).await;
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(command) = command_rx.recv() => task.on_command(command),
                event = task.swarm.select_next_some() => task.on_event(event),
                () = bootstrap_timer, if bootstrap_due.is_some() => task.bootstrap_if_due(),
            }
            task.update_network_gauges();
        }
        tracing::debug!("peer network stopped");
    });
    Ok((network, listening, handle))
}

/// Listens on every address of `addresses` and waits until each has bound (at most 10 s in all);
/// returns the first address each bound, in their order.
async fn listen_all(
    swarm: &mut libp2p::Swarm<Behaviour>,
    addresses: &[Multiaddr],
) -> Result<Vec<Multiaddr>, P2pError> {
    if addresses.is_empty() {
        return Err(P2pError::Transport(
            "no listen address configured".to_owned(),
        ));
    }
    let mut listeners = Vec::with_capacity(addresses.len());
    for addr in addresses {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        listeners.push(id);
    }
    let mut bound: Vec<Option<Multiaddr>> = vec![None; addresses.len()];
    let failed_at = |id: libp2p::core::transport::ListenerId, message: String| {
        let index = listeners.iter().position(|l| *l == id).unwrap_or(0);
        P2pError::Listen {
            addr: addresses[index].clone(),
            message,
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while bound.iter().any(Option::is_none) {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    if let Some(index) = listeners.iter().position(|l| *l == listener_id) {
                        bound[index].get_or_insert(address);
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    return Err(failed_at(listener_id, error.to_string()));
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    return Err(failed_at(
                        listener_id,
                        format!("listener closed: {reason:?}"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await;
    match waited {
        Ok(Ok(())) => Ok(bound.into_iter().flatten().collect()),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let index = bound.iter().position(Option::is_none).unwrap_or(0);
            Err(P2pError::Listen {
                addr: addresses[index].clone(),
                message: "no address within 10 s".to_owned(),
            })
        }
    }
}

struct SwarmTask {
    swarm: libp2p::Swarm<Behaviour>,
    local: PeerId,
    key: Arc<NetworkKey>,
    control: libp2p_stream::Control,
    members: PeerTable,
    holdings: Arc<Mutex<Holdings>>,
    demand: Arc<Mutex<demand::RegionalDemand>>,
    threat_news: ThreatSink,
    threat_budgets: threat::AuthorBudgets,
    tag_news: TagNewsSink,
    tag_news_budgets: threat::AuthorBudgets,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    /// Addresses learned per connected peer, added to the routing table once the peer proved
    /// membership.
    addresses: AddressBook,
    lookups: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// Closest-peers lookups under way, for `find_home`.
    closest: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// The configured allowlist of peer ids, if any.
    allowed_peers: Option<BTreeSet<PeerId>>,
    /// Each connected peer's connections, region and listen addresses, for the transport rule.
    transports: transport::TransportBook,
    /// This node's region.
    region: String,
    /// When to bootstrap again after a self-lookup no peer answered.
    bootstrap_retry: discovery::BootstrapRetry,
}

impl SwarmTask {
    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        self.addresses.remember(peer, addr.clone());
        if self.members.is_member(&peer) {
            self.swarm.behaviour_mut().kad.kad.add_address(&peer, addr);
        }
    }

    /// Carries out the transport rule's step for `peer` (see `transport`): dials it over the
    /// transport its region calls for, or closes this node's connections to it over the other one.
    fn apply_transport_rule(&mut self, peer: PeerId) {
        let proved = self.members.is_ready(&peer);
        match self.transports.step(&peer, &self.region, proved) {
            transport::Step::Nothing => {}
            transport::Step::Dial(addresses) => {
                self.transports.dialled_wanted(&peer);
                let wanted = addresses
                    .first()
                    .and_then(transport_of)
                    .map(Transport::name);
                tracing::debug!(%peer, transport = ?wanted, ?addresses, "dialling the member over the transport its region calls for");
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addresses)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build();
                if let Err(error) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, %error, "cannot dial the member over the wanted transport; keeping its connection");
                }
            }
            transport::Step::Close(connections) => {
                for connection in connections {
                    tracing::debug!(%peer, %connection, "closing the connection over the other transport");
                    self.swarm.close_connection(connection);
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Provide(digest) => {
                let key = kad::RecordKey::new(digest.as_bytes());
                if let Err(error) = self.swarm.behaviour_mut().kad.kad.start_providing(key) {
                    tracing::warn!(%digest, %error, "cannot record provider");
                }
            }
            Command::StopProviding(digest) => {
                let key = kad::RecordKey::new(digest.as_bytes());
                self.swarm.behaviour_mut().kad.kad.stop_providing(&key);
            }
            Command::Publish(topic, payload) => {
                match self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .gossip
                    .publish(gossip::ident(topic), payload)
                {
                    Ok(_) => self.metrics.p2p_gossip_published.inc(),
                    Err(error) => {
                        // Usually no member is connected yet; the DHT still has the record.
                        self.metrics.p2p_gossip_unpublished.inc();
                        tracing::debug!(topic = topic.name(), %error, "gossip message not published");
                    }
                }
            }
            Command::FindProviders(digest, reply) => {
                let key = kad::RecordKey::new(digest.as_bytes());
                let id = self.swarm.behaviour_mut().kad.kad.get_providers(key);
                self.lookups.insert(id, (reply, HashSet::new()));
            }
            Command::ClosestPeers(digest, reply) => {
                let key = digest.as_bytes().to_vec();
                let id = self.swarm.behaviour_mut().kad.kad.get_closest_peers(key);
                self.closest.insert(id, reply);
            }
            Command::Admit(peer, admitted) if !self.allowed(&peer) => {
                self.refuse_unlisted(peer);
                let _ = admitted.send(false);
            }
            Command::Proved(peer) if !self.allowed(&peer) => self.refuse_unlisted(peer),
            Command::Admit(peer, admitted) => {
                self.members.set_member(peer);
                // Kademlia requests it sent before this moment were held, not dropped.
                self.swarm.behaviour_mut().kad.member_admitted(peer);
                let _ = admitted.send(true);
            }
            Command::Proved(peer) => {
                let span = tracing::info_span!("peer", %peer);
                let _enter = span.enter();
                let newly = self.members.set_ready(peer);
                for addr in self.addresses.addresses(&peer).to_vec() {
                    self.swarm.behaviour_mut().kad.kad.add_address(&peer, addr);
                }
                // The first member is the way in: look ourselves up through it, which connects
                // us to the members it knows (they prove membership in turn).
                if newly && self.members.member_count() == 1 {
                    let _ = self.swarm.behaviour_mut().kad.kad.bootstrap();
                }
                self.swarm.behaviour_mut().gossip.member_proved(peer);
                self.update_member_gauge();
                tracing::info!("peer proved membership");
                self.apply_transport_rule(peer);
            }
            // Membership is proved per peer id (the transport authenticated the id), not per
            // connection: an exchange that failed because its connection closed meanwhile (the
            // transport rule replaces a connection right after the proof) undoes nothing. A peer
            // that disconnects altogether is forgotten and proves again.
            Command::FailedProof(peer, reason) if self.members.is_ready(&peer) => {
                tracing::debug!(%peer, %reason, "a proof exchange failed after the peer had proved membership; it stays a member");
            }
            Command::FailedProof(peer, reason) => {
                let span = tracing::warn_span!("peer", %peer);
                let _enter = span.enter();
                self.metrics.p2p_failed_proofs.inc();
                tracing::warn!(%reason, "peer failed the membership proof; disconnecting");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Dial(peer) => {
                if !self.swarm.is_connected(&peer) {
                    if let Err(error) = self.swarm.dial(peer) {
                        tracing::debug!(%peer, %error, "cannot dial peer");
                    }
                }
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::ProofDeadline(peer) => {
                if !self.members.is_member(&peer) && self.swarm.is_connected(&peer) {
                    self.metrics.p2p_failed_proofs.inc();
                    tracing::warn!(%peer, "peer did not prove membership in time; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    /// The gauges read from the swarm: open connections, routing table entries, provider
    /// records, announced holdings. Cheap enough to refresh after every event.
    fn update_network_gauges(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let connections = self
            .swarm
            .network_info()
            .connection_counters()
            .num_established();
        self.metrics
            .p2p_connections
            .store(u64::from(connections), Relaxed);
        let (quic, tcp) = self.transports.counts();
        self.metrics.p2p_connections_quic.store(quic, Relaxed);
        self.metrics.p2p_connections_tcp.store(tcp, Relaxed);
        let kad = &mut self.swarm.behaviour_mut().kad.kad;
        let routing_peers: usize = kad.kbuckets().map(|bucket| bucket.num_entries()).sum();
        self.metrics
            .p2p_routing_table_peers
            .store(routing_peers as u64, Relaxed);
        let providers = kad.store_mut().provider_counts();
        self.metrics
            .p2p_provider_records_local
            .store(providers.local as u64, Relaxed);
        self.metrics
            .p2p_provider_records_remote
            .store(providers.remote as u64, Relaxed);
        let holdings = self
            .holdings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.metrics
            .p2p_announced_holdings
            .store(holdings as u64, Relaxed);
    }

    /// Whether the allowlist, if there is one, lists `peer`.
    fn allowed(&self, peer: &PeerId) -> bool {
        self.allowed_peers
            .as_ref()
            .is_none_or(|allowed| allowed.contains(peer))
    }

    fn refuse_unlisted(&mut self, peer: PeerId) {
        self.on_command(Command::FailedProof(
            peer,
            "it holds the network key but is not in allowed_peers".into(),
        ));
    }

    fn update_member_gauge(&self) {
        let n = self.members.member_count() as u64;
        self.metrics
            .p2p_members
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = match &endpoint {
                    libp2p::core::ConnectedPoint::Dialer { address, .. } => address.clone(),
                    libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } => {
                        send_back_addr.clone()
                    }
                };
                let link = transport::Link {
                    id: connection_id,
                    transport: transport_of(&addr),
                    dialled_here: endpoint.is_dialer(),
                    identified: false,
                };
                tracing::debug!(peer = %peer_id, %connection_id, transport = ?link.transport.map(Transport::name), dialled_here = link.dialled_here, "connection established");
                self.transports.connected(peer_id, link);
                self.remember(peer_id, addr);
                if self.members.is_member(&peer_id) {
                    self.apply_transport_rule(peer_id);
                    return;
                }
                if endpoint.is_dialer() {
                    tokio::spawn(membership::prove(
                        self.control.clone(),
                        self.key.clone(),
                        self.local,
                        peer_id,
                        self.commands.clone(),
                    ));
                }
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(PROOF_DEADLINE).await;
                    let _ = commands.send(Command::ProofDeadline(peer_id)).await;
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.transports.disconnected(&peer_id, connection_id);
                if num_established > 0 {
                    return;
                }
                if self.members.remove(&peer_id) {
                    tracing::info!(peer = %peer_id, "member disconnected");
                }
                self.addresses.forget(&peer_id);
                let forgotten = self
                    .holdings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget_peer(&peer_id);
                if forgotten > 0 {
                    tracing::debug!(peer = %peer_id, forgotten, "announced holdings forgotten");
                }
                self.update_member_gauge();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                let region = peers::region_from_agent(&info.agent_version);
                if let Some(region) = &region {
                    self.members.set_region(peer_id, region.clone());
                }
                self.transports.identified(
                    peer_id,
                    connection_id,
                    region,
                    info.listen_addrs.clone(),
                );
                for addr in info.listen_addrs {
                    self.remember(peer_id, addr);
                }
                self.apply_transport_rule(peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                self.metrics.p2p_refused_connections.inc();
                tracing::debug!(remote = %send_back_addr, %cause, "inbound connection refused by a limit");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.members.set_rtt(peer, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Subscribed {
                peer_id,
                topic,
            })) if topic == gossip::ident(Topic::Threat).hash()
                && self.members.is_member(&peer_id) =>
            {
                if let Some(news) = self.threat_news.get() {
                    news.member_subscribed(peer_id);
                }
            }
            _ => {}
        }
    }

    /// On a signed `Dropped`, removes the author's provider record for the blob from this node's
    /// DHT store: the author evicted it, so lookups stop naming it before the record expires.
    fn withdraw_provider(&mut self, announcement: &Announcement, author: PeerId) {
        if let Announcement::Dropped { blob } = announcement {
            let key = kad::RecordKey::new(blob);
            self.swarm
                .behaviour_mut()
                .kad
                .kad
                .store_mut()
                .remove_provider(&key, &author);
        }
    }

    /// Judges a gossip message, acts on it, and tells gossipsub whether to forward it.
    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let span = tracing::debug_span!("peer", peer = %source);
        let _enter = span.enter();
        self.metrics.p2p_gossip_received.inc();
        let verdict = match gossip::judge(&source, &message, &self.members) {
            Err(reason) => {
                self.metrics.p2p_gossip_rejected.inc();
                tracing::debug!(author = ?message.source, reason, "gossip message rejected");
                gossipsub::MessageAcceptance::Reject
            }
            Ok(judged) => match judged.message {
                gossip::Received::Announcement(announcement) if judged.author_connected => {
                    let applied = self
                        .holdings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(judged.author, judged.sequence, &announcement);
                    tracing::debug!(author = %judged.author, blob = %announcement.blob_digest(), ?applied, "announcement");
                    if applied == holdings::Applied::Removed {
                        self.withdraw_provider(&announcement, judged.author);
                    }
                    match applied {
                        holdings::Applied::Stale => gossipsub::MessageAcceptance::Ignore,
                        holdings::Applied::Recorded | holdings::Applied::Removed => {
                            gossipsub::MessageAcceptance::Accept
                        }
                    }
                }
                // News from a member this node has no connection to: passed on, not recorded
                // (this node could not fetch from it without dialling it first).
                gossip::Received::Announcement(announcement) => {
                    self.withdraw_provider(&announcement, judged.author);
                    gossipsub::MessageAcceptance::Accept
                }
                // Demand counts wherever its author is: it is what lets a node plan copies for
                // regions it has no client in.
                gossip::Received::Demand(summary) => {
                    let taken = self
                        .demand
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(judged.author, judged.sequence, summary, Instant::now());
                    match taken {
                        demand::Taken::Recorded => gossipsub::MessageAcceptance::Accept,
                        demand::Taken::Ignored => gossipsub::MessageAcceptance::Ignore,
                    }
                }
                // Threat counts wherever its author is, like demand; an author over its budget is
                // ignored, and news that changed nothing here is not forwarded.
                gossip::Received::Threat(scores) => {
                    let within = self.threat_budgets.take(judged.author, Instant::now());
                    let news = self.threat_news.get().filter(|_| within);
                    match news {
                        Some(news) if news.received(judged.author, scores) => {
                            gossipsub::MessageAcceptance::Accept
                        }
                        _ => {
                            tracing::debug!(author = %judged.author, within, "threat scores ignored");
                            gossipsub::MessageAcceptance::Ignore
                        }
                    }
                }
                // Rebuild news counts wherever its author is (every node serves the tag); judged
                // like threat: a budget per author, forwarded only when it changed something.
                gossip::Received::Rebuild(news) => {
                    let within = self.tag_news_budgets.take(judged.author, Instant::now());
                    let sink = self.tag_news.get().filter(|_| within);
                    match sink {
                        Some(sink) if sink.received(judged.author, news) => {
                            gossipsub::MessageAcceptance::Accept
                        }
                        _ => {
                            tracing::debug!(author = %judged.author, within, "tag news ignored");
                            gossipsub::MessageAcceptance::Ignore
                        }
                    }
                }
            },
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .gossip
            .report_message_validation_result(&id, &source, verdict);
    }

    /// Starts the bootstrap `bootstrap_retry` says is due, if one is.
    fn bootstrap_if_due(&mut self) {
        if !self.bootstrap_retry.take_due(Instant::now()) {
            return;
        }
        match self.swarm.behaviour_mut().kad.kad.bootstrap() {
            Ok(_) => tracing::debug!("bootstrapping again: no peer answered the last self-lookup"),
            Err(kad::NoKnownPeers()) => self.bootstrap_retry.give_up(),
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            // The first step of a bootstrap is the lookup of this node's own id, the one that
            // finds its neighbours; the later steps refresh farther buckets.
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(_),
                stats,
                step,
                ..
            } if step.count.get() == 1 => {
                let answered = stats.num_successes() > 0;
                if !answered {
                    tracing::debug!(
                        asked = stats.num_requests(),
                        "no peer answered the bootstrap's self-lookup; it is tried again"
                    );
                }
                self.bootstrap_retry
                    .on_self_lookup(answered, Instant::now());
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } if self.members.is_member(&record.provider) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kad
                    .store_mut()
                    .add_provider(record);
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                ..
            } => {
                let Some(reply) = self.closest.remove(&id) else {
                    return;
                };
                // A lookup that timed out still names the closest peers it reached.
                let peers = match result {
                    Ok(kad::GetClosestPeersOk { peers, .. })
                    | Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let _ = reply.send(peers.into_iter().map(|info| info.peer_id).collect());
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => {
                let Some((_, found)) = self.lookups.get_mut(&id) else {
                    return;
                };
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    found.extend(providers.into_iter().filter(|p| *p != self.local));
                }
                // Answer as soon as someone has it; a lookup needs one holder, not all of them.
                if !found.is_empty() || step.last {
                    if let Some((reply, found)) = self.lookups.remove(&id) {
                        let _ = reply.send(found.into_iter().collect());
                    }
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn identity_is_created_once_with_mode_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_identity(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(P2pError::Identity { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"not a key").unwrap();
        assert!(load_or_create_identity(dir.path()).is_err());
    }

    #[test]
    fn network_keys_differ_by_material_and_never_print() {
        let a = NetworkKey::derive(&[1; 32]);
        let b = NetworkKey::derive(&[2; 32]);
        assert_ne!(a.bytes(), b.bytes());
        assert_eq!(format!("{a:?}"), "NetworkKey(..)");
    }
}
