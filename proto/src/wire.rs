//! The peer protocols' messages: membership proof, shard transfer and manifest lookup (the
//! preheat protocol's messages, in the same framing, are in [`crate::preheat`]).
//!
//! ## Goals and non-goals
//!
//! Goals: move a blob's shards from a peer that holds them to a peer that wants them, and a cached
//! manifest (by digest, or what a tag resolved to) from a peer's cache to a peer whose upstream is
//! unavailable, over one authenticated, multiplexed stream per request (the node runs them over
//! libp2p QUIC streams), with every length checked before memory is allocated for it, so a hostile
//! peer can cost a receiver at most one bounded frame. Non-goals: trusting a peer (the receiver
//! checks every shard's BLAKE3 against the shard map and the whole blob's sha256 before anything is
//! committed or completed, and a manifest's sha256 against its digest), compression (layers are
//! gzip already), encryption (the transport does it).
//!
//! ## Framing
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       4     body length N, little endian (header + archive), checked against the
//!               message's limit before the body is read
//! 4       4     magic "SHWR"
//! 8       2     format version, little endian (currently 1)
//! 10      1     message kind (see [`Kind`])
//! 11      1     reserved, zero
//! 12      N-8   rkyv archive of the message (validated with bytecheck on decode)
//! ```
//!
//! A [`ShardFrame`] is followed on the stream by exactly `len` raw shard bytes (not framed again).
//!
//! ## Message flow
//!
//! Membership (protocol `/shoal/membership/1`, opened by the dialer of a connection right after it
//! is established; see ARCHITECTURE.md for the threat model):
//!
//! ```text
//! dialer                                   listener
//!   ── Challenge { nonce_d } ──────────────▶
//!   ◀───────────────────── Challenge { nonce_l }
//!   ── Proof { mac(dialer) } ──────────────▶   verified, or logged and disconnected
//!   ◀────────────────────── Proof { mac(listener) }
//! ```
//!
//! `mac(role)` is BLAKE3 keyed by the network key over a domain string, the role, both peer ids
//! (prover first) and both nonces ([`membership_mac`]). The listener answers only its own nonce
//! before the dialer has proved itself.
//!
//! Transfer (protocol `/shoal/shards/1`, one stream per request, requester first):
//!
//! ```text
//! requester                                holder
//!   ── ShardRequest { blob, shards, map, claim } ──▶
//!   ◀──── ShardAnswer::Map(map) | MapHash(h) | InFlight(header) | Claimed(peer) | NotHere
//!   ◀──── ShardFrame { index, len, hash } + len bytes   (once per wanted shard, in index order)
//!   ◀──── ShardFrame { len: 0 }                          (in-flight answers only: the end)
//! ```
//!
//! A re-homing request (`claim` `WhoElseFetches`) carries one more frame right after it, the
//! member that failed the requester:
//!
//! ```text
//! requester                                home
//!   ── ShardRequest { blob, claim: WhoElseFetches } ──▶
//!   ── FailedMember { peer } ───────────────────────▶
//!   ◀──── ShardAnswer::Claimed(peer) | NotHere
//! ```
//!
//! * A holder with the whole blob answers with its shard map (`map: Full`) or only the map's
//!   BLAKE3 (`map: HashOnly`, when the requester already has a map from another holder and only
//!   needs to know the two agree), then sends the wanted shards. A requester spreads a blob's
//!   shards over several holders this way, each request naming a few shards in a bitfield.
//! * A holder still fetching the blob answers `InFlight` and streams every shard from the first,
//!   in order, as it gets them, then an end frame (`len` 0) once the blob has matched its digest
//!   at the holder. A holder offers this only once its own source is decided, and a source is
//!   decided once, so in-flight chains never loop. A holder whose fetch already has as many
//!   followers as it serves answers `Claimed(peer)` with one of them instead: the requester follows
//!   that member, lower in the same tree.
//! * `claim` asks the blob's home (the member closest to the blob's key) to coordinate: if it
//!   neither holds nor fetches the blob, it answers `Claimed(peer)` when another member already
//!   said it is fetching the blob (the requester follows that member: the claimant or a follower
//!   the home placed it under), or `NotHere` after recording the requester as the one that fetches
//!   it from the origin. Nodes that miss the same blob at the same time thus share one origin
//!   fetch. The home never fetches for anyone.
//! * The claimant and every member the home placed renew their place while they fetch (`claim`
//!   `StillFetchingFromOrigin` or `StillFollowing`, no shards wanted): the home answers `NotHere` at
//!   once and sends nothing else. A place not renewed for the home's lease lapses, so the home
//!   learns that a member went away without being connected to it.
//! * A member whose parent (or the holder whose map led) failed it mid-blob asks the home again
//!   with `claim` `WhoElseFetches` and names that member in a [`FailedMember`] frame: the home
//!   answers only from its record of the blob's tree (never with its own copy or flight), with
//!   another live member of the tree to follow (`Claimed`), never the failed one, or `NotHere`
//!   when none is left (the requester fetches the rest from the origin). The home does not drop
//!   the failed member for the others on one member's word. Members that predate this request
//!   refuse it (its claim is an unknown variant to them, which the archive check rejects), and
//!   the requester then asks with `WhoFetches` as before.
//!
//! A holder that cannot send a shard (for example it failed verification on its disk) closes the
//! stream; the requester treats a short stream as a failed peer. Frame hashes are checked by the
//! requester on arrival; they prove nothing about the blob until its sha256 matches.
//!
//! Manifests (protocol `/shoal/manifests/1`, one stream per request, requester first; asked only
//! when the requester's upstream is unavailable and its own cache cannot answer):
//!
//! ```text
//! requester                                holder
//!   ── ManifestRequest { upstream, repo, reference } ──▶   answered from the holder's cache only
//!   ◀──── ManifestAnswer::Found(FoundManifest { media_type, digest, body, tag_fetched_at_ms })
//!         | ManifestAnswer::NotHere
//! ```
//!
//! `reference` is a tag or a digest, in the OCI grammar; `upstream` is the registry host name as
//! containerd sends it in `ns`. For a digest, `digest` must equal it; for a tag, `digest` is what
//! the tag resolved to and `tag_fetched_at_ms` when the holder's upstream said so (milliseconds
//! since the Unix epoch; possibly older than the holder's tag lifetime). In both cases the
//! requester checks that the sha256 of `body` is `digest` before it caches or serves anything.
//!
//! ## Limits
//!
//! * [`ShardRequest`]: at most [`MAX_REQUEST_BYTES`] (the bitfield of the largest shard map).
//! * A peer id in `Claimed` or [`FailedMember`]: 1 to [`MAX_PEER_ID_BYTES`].
//! * [`ShardAnswer`]: at most [`MAX_ANSWER_BYTES`] (the largest shard map plus slack).
//! * [`ShardFrame`], [`Challenge`], [`Proof`]: at most [`MAX_SMALL_BYTES`]; a shard's bytes at most
//!   [`MAX_SHARD_BYTES`] and exactly the length its shard map entry gives.
//! * [`ManifestRequest`]: at most [`MAX_MANIFEST_REQUEST_BYTES`]; each field in its grammar.
//! * [`ManifestAnswer`]: at most [`MAX_MANIFEST_ANSWER_BYTES`]; the body 1 to
//!   [`MAX_MANIFEST_BYTES`] bytes (the node's own manifest limit), the media type 1 to
//!   [`MAX_MEDIA_TYPE_BYTES`] printable ASCII bytes.

use crate::digest::BlobDigest;
use crate::limits::{
    MAX_MANIFEST_BYTES, MAX_MEDIA_TYPE_BYTES, MAX_REGISTRY_HOST_BYTES, MAX_REPO_NAME_BYTES,
    MAX_SHARDS_PER_MAP, MAX_SHARD_BYTES, MAX_SHARD_MAP_BYTES, MAX_TAG_BYTES,
};
use crate::oci::{is_valid_registry_host, Reference, RepoName};
use crate::shard_map::ShardMap;
use rkyv::util::AlignedVec;

const MAGIC: &[u8; 4] = b"SHWR";
/// The wire format version this build speaks (2: map hashes, in-flight answers, claims and hashed
/// frames).
pub const WIRE_VERSION: u16 = 2;
/// Bytes of the header inside a frame body (magic, version, kind, reserved).
pub const HEADER_LEN: usize = 8;
/// Bytes of the length prefix before every frame body.
pub const PREFIX_LEN: usize = 4;

/// Longest peer id (a multihash of a public key) in a [`ShardAnswer::Claimed`].
pub const MAX_PEER_ID_BYTES: usize = 64;
/// Largest encoded [`ShardRequest`] body.
pub const MAX_REQUEST_BYTES: usize = HEADER_LEN + 256 + MAX_SHARDS_PER_MAP / 8;
/// Largest encoded [`ShardAnswer`] body.
pub const MAX_ANSWER_BYTES: usize = HEADER_LEN + 256 + MAX_SHARD_MAP_BYTES;
/// Largest encoded body of the fixed-size messages.
pub const MAX_SMALL_BYTES: usize = HEADER_LEN + 128;
/// Longest manifest reference: a tag, or `sha256:` and 64 hex digits, whichever is longer.
const MAX_REFERENCE_BYTES: usize = if MAX_TAG_BYTES > 71 {
    MAX_TAG_BYTES
} else {
    71
};
/// Largest encoded [`ManifestRequest`] body: its three strings at their limits plus the archive's
/// fixed part.
pub const MAX_MANIFEST_REQUEST_BYTES: usize =
    HEADER_LEN + 64 + MAX_REGISTRY_HOST_BYTES + MAX_REPO_NAME_BYTES + MAX_REFERENCE_BYTES;
/// Largest encoded [`ManifestAnswer`] body: the largest manifest, the longest media type and the
/// archive's fixed part.
pub const MAX_MANIFEST_ANSWER_BYTES: usize =
    HEADER_LEN + 128 + MAX_MEDIA_TYPE_BYTES + MAX_MANIFEST_BYTES as usize;

/// Domain separation for the membership MAC.
const MEMBERSHIP_DOMAIN: &[u8] = b"shoal membership proof v1";

/// The kinds of message, as written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Challenge`].
    Challenge = 1,
    /// [`Proof`].
    Proof = 2,
    /// [`ShardRequest`].
    Request = 3,
    /// [`ShardAnswer`].
    Answer = 4,
    /// [`ShardFrame`].
    Frame = 5,
    /// [`FailedMember`] (after a [`ShardRequest`] whose claim is [`ClaimAsk::WhoElseFetches`]).
    FailedMember = 6,
    /// [`ManifestRequest`].
    ManifestRequest = 8,
    /// [`ManifestAnswer`].
    ManifestAnswer = 9,
    /// [`crate::gossip::Announcement`] (a gossip payload, not a stream frame).
    Announcement = 10,
    /// [`crate::gossip::DemandSummary`] (a gossip payload, not a stream frame).
    DemandSummary = 11,
    /// [`crate::gossip::ThreatScores`] (a gossip payload, not a stream frame).
    ThreatScores = 12,
    /// [`crate::gossip::TagNews`] (a gossip payload, not a stream frame).
    TagNews = 13,
    /// [`crate::preheat::PreheatRequest`].
    PreheatRequest = 20,
    /// [`crate::preheat::PreheatReport`].
    PreheatReport = 21,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body is shorter than its header or longer than the message's limit.
    #[error("frame of {len} bytes is outside {HEADER_LEN}..={max} for this message")]
    Length {
        /// The announced or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Wrong magic number.
    #[error("not a Shoal wire frame (bad magic)")]
    Magic,
    /// A version this build does not speak.
    #[error("wire format version {0} is not supported (this build speaks {WIRE_VERSION})")]
    Version(u16),
    /// A different message than the one expected at this point of the flow.
    #[error("expected message kind {expected}, got {actual}")]
    Kind {
        /// The kind the flow expects.
        expected: u8,
        /// The kind received.
        actual: u8,
    },
    /// The archive failed structural validation.
    #[error("malformed message: {0}")]
    Archive(String),
    /// The message decoded but breaks a rule (for example a bitfield longer than the limit).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// A fresh random value from one side of the membership proof.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Challenge {
    /// 32 random bytes.
    pub nonce: [u8; 32],
}

/// One side's proof that it holds the network key.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Proof {
    /// [`membership_mac`] for the sender's role.
    pub mac: [u8; 32],
}

/// Which shards of a blob a request wants.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ShardSet {
    /// Every shard of the blob.
    All,
    /// Shard `i` is wanted when bit `i % 8` of byte `i / 8` is set; bits past the end are clear.
    Bitfield(Vec<u8>),
}

impl ShardSet {
    /// Whether shard `index` is wanted.
    pub fn contains(&self, index: usize) -> bool {
        match self {
            ShardSet::All => true,
            ShardSet::Bitfield(bits) => bits
                .get(index / 8)
                .is_some_and(|byte| byte & (1 << (index % 8)) != 0),
        }
    }

    /// A bitfield holding `indices`.
    pub fn from_indices(indices: impl IntoIterator<Item = usize>) -> Self {
        let mut bits = Vec::new();
        for index in indices {
            if bits.len() <= index / 8 {
                bits.resize(index / 8 + 1, 0);
            }
            bits[index / 8] |= 1 << (index % 8);
        }
        ShardSet::Bitfield(bits)
    }
}

/// How much of its shard map a holder of the whole blob sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MapWanted {
    /// The whole map.
    Full,
    /// Only the BLAKE3 of the map's encoding ([`ShardMap::encode`]).
    HashOnly,
}

/// A request for some shards of one blob.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardRequest {
    /// SHA-256 of the blob.
    pub blob: [u8; 32],
    /// The shards wanted.
    pub shards: ShardSet,
    /// How much of the map to send back.
    pub map: MapWanted,
    /// What the requester asks of the blob's home, if anything (see the module docs).
    pub claim: ClaimAsk,
}

/// What a [`ShardRequest`] asks of the blob's home about who fetches the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClaimAsk {
    /// Nothing: a plain request to a holder.
    NoClaim,
    /// Who fetches the blob, when nobody holds it; the requester fetches it if nobody does.
    WhoFetches,
    /// The requester still fetches the blob from the origin: renew its claim (its lease).
    StillFetchingFromOrigin,
    /// The requester still fetches the blob from the member it was placed under: renew its place.
    StillFollowing,
    /// Who fetches the blob other than the member named in the [`FailedMember`] frame that
    /// follows this request, which failed the requester mid-blob: the home places the requester
    /// under another live member of the blob's tree, or lets it fetch the rest from the origin.
    /// Added last, so that the other variants encode as before; members that predate it refuse
    /// the request.
    WhoElseFetches,
}

/// The member that failed a re-homing requester (sent right after a [`ShardRequest`] whose claim
/// is [`ClaimAsk::WhoElseFetches`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FailedMember {
    /// The member's peer id bytes (1 to [`MAX_PEER_ID_BYTES`]).
    pub peer: Vec<u8>,
}

impl ClaimAsk {
    /// Whether the request only renews a lease at the home (answered `NotHere`, nothing sent).
    pub fn is_renewal(self) -> bool {
        matches!(
            self,
            ClaimAsk::StillFetchingFromOrigin | ClaimAsk::StillFollowing
        )
    }
}

impl ShardRequest {
    /// The blob's digest as a typed value.
    pub fn blob_digest(&self) -> BlobDigest {
        BlobDigest::from_bytes(self.blob)
    }
}

/// The holder's answer to a [`ShardRequest`], before any shard bytes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ShardAnswer {
    /// The holder has the whole blob; this is its shard map (validated on decode, still untrusted:
    /// only the blob's sha256 proves it).
    Map(ShardMap),
    /// The holder has the whole blob and its map's encoding has this BLAKE3.
    MapHash([u8; 32]),
    /// The holder is fetching the blob: every shard follows in order as it arrives, then an end
    /// frame.
    InFlight(InFlightHeader),
    /// Ask this member (its peer id's bytes) instead: it fetches the blob or follows a member
    /// that does (the answer of a blob's home, or of a holder whose followers are full).
    Claimed(Vec<u8>),
    /// The holder does not have the blob (after a claim: the requester is now the one that
    /// fetches it).
    NotHere,
}

/// What a holder still fetching a blob says before its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InFlightHeader {
    /// The blob's length, if the holder's source said.
    pub blob_len: Option<u64>,
    /// The chunking the holder cuts the blob with (a requester with the same settings can store
    /// the shards as they come instead of cutting them again).
    pub chunking: crate::shard_map::ChunkingParams,
}

/// The header of one shard's bytes on a transfer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardFrame {
    /// The shard's index in the blob's shard map.
    pub index: u32,
    /// How many raw bytes follow (at most [`MAX_SHARD_BYTES`]); 0 ends an in-flight answer.
    pub len: u32,
    /// The BLAKE3 of the bytes that follow.
    pub hash: [u8; 32],
}

impl ShardFrame {
    /// The frame that ends an in-flight answer after `count` shards.
    pub fn end(count: u32) -> Self {
        Self {
            index: count,
            len: 0,
            hash: [0; 32],
        }
    }

    /// Whether this frame ends an in-flight answer.
    pub fn is_end(&self) -> bool {
        self.len == 0
    }
}

/// A request for one manifest from a peer's cache.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ManifestRequest {
    /// The registry host the manifest belongs to, as containerd names it in `ns`.
    pub upstream: String,
    /// The repository, in the OCI grammar.
    pub repo: String,
    /// A tag or a digest, in the OCI grammar.
    pub reference: String,
}

impl ManifestRequest {
    /// A request for `reference` in `repo` of `upstream`.
    pub fn new(upstream: &str, repo: &RepoName, reference: &Reference) -> Self {
        Self {
            upstream: upstream.to_owned(),
            repo: repo.to_string(),
            reference: reference.to_string(),
        }
    }

    /// The repository and reference as typed values; an error if either breaks the grammar (never
    /// after a successful decode, which checks them).
    pub fn parse(&self) -> Result<(RepoName, Reference), WireError> {
        let repo = self
            .repo
            .parse()
            .map_err(|_| WireError::Invalid("repository name outside the grammar"))?;
        let reference = self
            .reference
            .parse()
            .map_err(|_| WireError::Invalid("reference outside the grammar"))?;
        Ok((repo, reference))
    }
}

/// A manifest from a holder's cache. Untrusted until the sha256 of `body` matched `digest`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FoundManifest {
    /// The `Content-Type` the manifest is served with.
    pub media_type: String,
    /// SHA-256 of `body`: the requested digest, or what the requested tag resolved to.
    pub digest: [u8; 32],
    /// The manifest's exact bytes.
    pub body: Vec<u8>,
    /// For a tag: when the holder's upstream resolved it, in milliseconds since the Unix epoch.
    /// `None` for a request by digest.
    pub tag_fetched_at_ms: Option<u64>,
}

impl FoundManifest {
    /// The manifest's digest as a typed value.
    pub fn digest(&self) -> BlobDigest {
        BlobDigest::from_bytes(self.digest)
    }
}

/// The holder's answer to a [`ManifestRequest`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ManifestAnswer {
    /// The holder has the manifest cached.
    Found(FoundManifest),
    /// The holder has nothing cached for the request.
    NotHere,
}

fn check_manifest_request(request: &ManifestRequest) -> Result<(), WireError> {
    if !is_valid_registry_host(&request.upstream) {
        return Err(WireError::Invalid("upstream is not a registry host name"));
    }
    request.parse().map(|_| ())
}

fn check_manifest_answer(answer: &ManifestAnswer) -> Result<(), WireError> {
    let ManifestAnswer::Found(FoundManifest {
        media_type, body, ..
    }) = answer
    else {
        return Ok(());
    };
    if media_type.is_empty()
        || media_type.len() > MAX_MEDIA_TYPE_BYTES
        || !media_type.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(WireError::Invalid("media type out of range"));
    }
    if body.is_empty() || body.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(WireError::Invalid("manifest length out of range"));
    }
    Ok(())
}

/// A message with a byte layout on the peer wire.
pub trait WireMessage: Sized {
    /// The kind written in the header.
    const KIND: Kind;
    /// The largest body (header included) accepted for this message.
    const MAX_BYTES: usize;

    /// Semantic checks after the archive decoded.
    fn check(&self) -> Result<(), WireError> {
        Ok(())
    }

    /// The frame: length prefix, header and archive.
    fn encode(&self) -> Vec<u8>;

    /// Decodes a frame body (without the length prefix).
    fn decode(body: &[u8]) -> Result<Self, WireError>;

    /// Decodes the archive of a frame body whose length and header were checked.
    fn decode_archive(archive: &AlignedVec<16>) -> Result<Self, WireError>;
}

/// Checks a frame's announced body length against `M`'s limit, before anything is allocated.
pub fn check_len<M: WireMessage>(len: usize) -> Result<(), WireError> {
    if !(HEADER_LEN..=M::MAX_BYTES).contains(&len) {
        return Err(WireError::Length {
            len,
            max: M::MAX_BYTES,
        });
    }
    Ok(())
}

/// Reads a frame's length prefix.
pub fn body_len(prefix: [u8; PREFIX_LEN]) -> usize {
    u32::from_le_bytes(prefix) as usize
}

pub(crate) fn frame(kind: Kind, archive: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + archive.len()) as u32;
    let mut out = Vec::with_capacity(PREFIX_LEN + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(archive);
    out
}

/// Checks a frame body's header (magic, version, kind) for message `M`.
fn check_header<M: WireMessage>(header: &[u8; HEADER_LEN]) -> Result<(), WireError> {
    if &header[0..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    if header[6] != M::KIND as u8 {
        return Err(WireError::Kind {
            expected: M::KIND as u8,
            actual: header[6],
        });
    }
    Ok(())
}

/// Checks the header and returns the archive, aligned for rkyv.
pub(crate) fn open<M: WireMessage>(body: &[u8]) -> Result<AlignedVec<16>, WireError> {
    check_len::<M>(body.len())?;
    let header: &[u8; HEADER_LEN] = body[..HEADER_LEN].try_into().expect("length checked");
    check_header::<M>(header)?;
    let mut aligned = AlignedVec::<16>::with_capacity(body.len() - HEADER_LEN);
    aligned.extend_from_slice(&body[HEADER_LEN..]);
    Ok(aligned)
}

/// Reads one frame body of message `M` piece by piece as it arrives from a stream, so that what a
/// peer announces costs the receiver nothing until the bytes are there: the body length is checked
/// against `M`'s limit first, the header as soon as its bytes arrived, and the buffer grows with
/// the bytes received (never past the announced length, at most twice what arrived), straight into
/// the aligned buffer the archive is decoded from (no second copy).
pub struct BodyReader<M> {
    /// Body bytes (header included) still to come.
    remaining: usize,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    archive: AlignedVec<16>,
    archive_len: usize,
    message: std::marker::PhantomData<fn() -> M>,
}

impl<M: WireMessage> std::fmt::Debug for BodyReader<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("remaining", &self.remaining)
            .field("buffered", &self.archive.len())
            .finish()
    }
}

impl<M: WireMessage> BodyReader<M> {
    /// Starts reading the body whose length `prefix` announces; an error if it is outside `M`'s
    /// limits (nothing is allocated then).
    pub fn new(prefix: [u8; PREFIX_LEN]) -> Result<Self, WireError> {
        let len = body_len(prefix);
        check_len::<M>(len)?;
        Ok(Self {
            remaining: len,
            header: [0; HEADER_LEN],
            header_filled: 0,
            archive: AlignedVec::new(),
            archive_len: len - HEADER_LEN,
            message: std::marker::PhantomData,
        })
    }

    /// Body bytes still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Bytes of memory the reader holds for the archive now.
    pub fn buffered_capacity(&self) -> usize {
        self.archive.capacity()
    }

    /// Takes the next bytes of the body (at most [`Self::remaining`]).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WireError> {
        if bytes.len() > self.remaining {
            return Err(WireError::Invalid("more bytes than the frame announced"));
        }
        self.remaining -= bytes.len();
        if self.header_filled < HEADER_LEN {
            let take = bytes.len().min(HEADER_LEN - self.header_filled);
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&bytes[..take]);
            self.header_filled += take;
            bytes = &bytes[take..];
            if self.header_filled == HEADER_LEN {
                check_header::<M>(&self.header)?;
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let needed = self.archive.len() + bytes.len();
        if needed > self.archive.capacity() {
            // Double at most, and never past the announced length.
            let target = needed
                .max(self.archive.capacity() * 2)
                .min(self.archive_len);
            self.archive.reserve_exact(target - self.archive.len());
        }
        self.archive.extend_from_slice(bytes);
        Ok(())
    }

    /// The decoded message, once every announced byte has come.
    pub fn finish(self) -> Result<M, WireError> {
        if self.remaining > 0 || self.header_filled < HEADER_LEN {
            return Err(WireError::Invalid("the frame is incomplete"));
        }
        M::decode_archive(&self.archive)
    }
}

macro_rules! wire_message {
    ($ty:ty, $kind:expr, $max:expr, $check:expr) => {
        impl $crate::wire::WireMessage for $ty {
            const KIND: $crate::wire::Kind = $kind;
            const MAX_BYTES: usize = $max;

            fn check(&self) -> Result<(), $crate::wire::WireError> {
                #[allow(clippy::redundant_closure_call)]
                ($check)(self)
            }

            fn encode(&self) -> Vec<u8> {
                let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
                    .expect("serialising plain data to memory cannot fail");
                $crate::wire::frame(Self::KIND, &archive)
            }

            fn decode(body: &[u8]) -> Result<Self, $crate::wire::WireError> {
                let aligned = $crate::wire::open::<Self>(body)?;
                Self::decode_archive(&aligned)
            }

            fn decode_archive(
                archive: &rkyv::util::AlignedVec<16>,
            ) -> Result<Self, $crate::wire::WireError> {
                let message = rkyv::from_bytes::<Self, rkyv::rancor::Error>(archive)
                    .map_err(|e| $crate::wire::WireError::Archive(e.to_string()))?;
                message.check()?;
                Ok(message)
            }
        }
    };
}
pub(crate) use wire_message;

wire_message!(
    Challenge,
    Kind::Challenge,
    MAX_SMALL_BYTES,
    |_: &Challenge| Ok(())
);
wire_message!(Proof, Kind::Proof, MAX_SMALL_BYTES, |_: &Proof| Ok(()));
wire_message!(
    ShardRequest,
    Kind::Request,
    MAX_REQUEST_BYTES,
    |r: &ShardRequest| {
        if let ShardSet::Bitfield(bits) = &r.shards {
            if bits.len() > MAX_SHARDS_PER_MAP / 8 {
                return Err(WireError::Invalid(
                    "bitfield longer than the largest shard map",
                ));
            }
        }
        Ok(())
    }
);
wire_message!(
    ShardAnswer,
    Kind::Answer,
    MAX_ANSWER_BYTES,
    |a: &ShardAnswer| match a {
        ShardAnswer::Map(map) => map
            .validate()
            .map_err(|_| WireError::Invalid("inconsistent shard map")),
        ShardAnswer::InFlight(InFlightHeader {
            blob_len: Some(len),
            ..
        }) if *len > crate::limits::MAX_BLOB_BYTES => {
            Err(WireError::Invalid("blob length over the limit"))
        }
        ShardAnswer::Claimed(peer) if peer.is_empty() || peer.len() > MAX_PEER_ID_BYTES => {
            Err(WireError::Invalid("peer id length out of range"))
        }
        _ => Ok(()),
    }
);
wire_message!(
    FailedMember,
    Kind::FailedMember,
    MAX_SMALL_BYTES,
    |m: &FailedMember| {
        if m.peer.is_empty() || m.peer.len() > MAX_PEER_ID_BYTES {
            Err(WireError::Invalid("peer id length out of range"))
        } else {
            Ok(())
        }
    }
);
wire_message!(
    ShardFrame,
    Kind::Frame,
    MAX_SMALL_BYTES,
    |f: &ShardFrame| {
        if f.len > MAX_SHARD_BYTES {
            Err(WireError::Invalid("shard length out of range"))
        } else {
            Ok(())
        }
    }
);

wire_message!(
    ManifestRequest,
    Kind::ManifestRequest,
    MAX_MANIFEST_REQUEST_BYTES,
    check_manifest_request
);
wire_message!(
    ManifestAnswer,
    Kind::ManifestAnswer,
    MAX_MANIFEST_ANSWER_BYTES,
    check_manifest_answer
);

/// Which side of a connection a membership proof is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that opened the connection.
    Dialer,
    /// The side that accepted it.
    Listener,
}

/// The membership MAC: BLAKE3 keyed by `network_key` over the domain, the prover's role, both
/// peer ids (prover first, length-prefixed) and both nonces (dialer's first). Binding the peer
/// ids, which the transport authenticates, ties the proof to this connection's two ends; the
/// fresh nonces stop replays.
pub fn membership_mac(
    network_key: &[u8; 32],
    role: Role,
    prover: &[u8],
    verifier: &[u8],
    dialer_nonce: &[u8; 32],
    listener_nonce: &[u8; 32],
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(network_key);
    hasher.update(MEMBERSHIP_DOMAIN);
    hasher.update(&[role as u8]);
    for id in [prover, verifier] {
        hasher.update(&(id.len() as u64).to_le_bytes());
        hasher.update(id);
    }
    hasher.update(dialer_nonce);
    hasher.update(listener_nonce);
    *hasher.finalize().as_bytes()
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_map::{ChunkingParams, ShardEntry};
    use proptest::prelude::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().unwrap());
        assert_eq!(len, frame.len() - PREFIX_LEN);
        &frame[PREFIX_LEN..]
    }

    fn map(lengths: &[u32]) -> ShardMap {
        let mut offset = 0;
        let shards = lengths
            .iter()
            .map(|&len| {
                let entry = ShardEntry {
                    hash: [len as u8; 32],
                    offset,
                    len,
                };
                offset += u64::from(len);
                entry
            })
            .collect();
        ShardMap {
            blob: [3; 32],
            blob_len: offset,
            chunking: ChunkingParams {
                min: 1,
                avg: 2,
                max: 4,
            },
            shards,
        }
    }

    proptest! {
        #[test]
        fn messages_round_trip(
            blob in any::<[u8; 32]>(),
            indices in proptest::collection::vec(0usize..5000, 0..50),
            lengths in proptest::collection::vec(1u32..1_000_000, 0..50),
            index in any::<u32>(),
            len in 1u32..=MAX_SHARD_BYTES,
        ) {
            let request = ShardRequest {
                blob,
                shards: ShardSet::from_indices(indices.iter().copied()),
                map: MapWanted::HashOnly,
                claim: ClaimAsk::WhoFetches,
            };
            prop_assert_eq!(ShardRequest::decode(body(&request.encode())), Ok(request.clone()));
            for i in &indices {
                prop_assert!(request.shards.contains(*i));
            }
            let answer = ShardAnswer::Map(map(&lengths));
            prop_assert_eq!(ShardAnswer::decode(body(&answer.encode())), Ok(answer));
            let frame = ShardFrame { index, len, hash: blob };
            prop_assert_eq!(ShardFrame::decode(body(&frame.encode())), Ok(frame));
            let answer = ShardAnswer::InFlight(InFlightHeader {
                blob_len: Some(u64::from(len)),
                chunking: ChunkingParams { min: 1, avg: 2, max: 4 },
            });
            prop_assert_eq!(ShardAnswer::decode(body(&answer.encode())), Ok(answer));
            let proof = Proof { mac: blob };
            prop_assert_eq!(Proof::decode(body(&proof.encode())), Ok(proof));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), kind in 1u8..=9) {
            let _ = ShardRequest::decode(&bytes);
            let _ = ShardAnswer::decode(&bytes);
            let _ = ShardFrame::decode(&bytes);
            let _ = Challenge::decode(&bytes);
            let _ = Proof::decode(&bytes);
            let _ = ManifestRequest::decode(&bytes);
            let _ = ManifestAnswer::decode(&bytes);
            let mut with_header = b"SHWR\x02\x00".to_vec();
            with_header.extend_from_slice(&[kind, 0]);
            with_header.extend_from_slice(&bytes);
            let _ = ShardRequest::decode(&with_header);
            let _ = ShardAnswer::decode(&with_header);
            let _ = ShardFrame::decode(&with_header);
            let _ = Challenge::decode(&with_header);
            let _ = Proof::decode(&with_header);
            let _ = ManifestRequest::decode(&with_header);
            let _ = ManifestAnswer::decode(&with_header);
        }

        #[test]
        fn manifest_messages_round_trip(
            upstream in "[a-z0-9.:-]{1,40}",
            repo in "[a-z0-9]{1,20}(/[a-z0-9]{1,20}){0,3}",
            tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
            digest in any::<[u8; 32]>(),
            manifest in proptest::collection::vec(any::<u8>(), 1..2000),
            fetched_at in proptest::option::of(any::<u64>()),
        ) {
            let repo: RepoName = repo.parse().unwrap();
            for reference in [Reference::Tag(tag.clone()), Reference::Digest(BlobDigest::from_bytes(digest))] {
                let request = ManifestRequest::new(&upstream, &repo, &reference);
                let decoded = ManifestRequest::decode(body(&request.encode())).unwrap();
                prop_assert_eq!(decoded.parse().unwrap(), (repo.clone(), reference));
                prop_assert_eq!(decoded, request);
            }
            let answer = ManifestAnswer::Found(FoundManifest {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest,
                body: manifest,
                tag_fetched_at_ms: fetched_at,
            });
            prop_assert_eq!(ManifestAnswer::decode(body(&answer.encode())), Ok(answer));
        }

        /// Any field that breaks its grammar is refused at decode, whatever else the message holds.
        #[test]
        fn manifest_requests_outside_the_grammar_are_refused(
            upstream in "[a-z]{1,10}",
            bad in "[^a-z0-9]{1,10}",
        ) {
            let good_repo = "team/app".to_owned();
            for (upstream, repo, reference) in [
                (format!("{upstream}/{bad}"), good_repo.clone(), "latest".to_owned()),
                (upstream.clone(), format!("{bad}/../x"), "latest".to_owned()),
                (upstream.clone(), good_repo.clone(), format!(".{bad}")),
                (upstream.clone(), good_repo.clone(), format!("sha256:{bad}")),
            ] {
                let request = ManifestRequest { upstream, repo, reference };
                prop_assert!(matches!(
                    ManifestRequest::decode(body(&request.encode())),
                    Err(WireError::Invalid(_))
                ));
            }
        }
    }

    proptest! {
        #[test]
        fn a_body_read_in_pieces_decodes_like_a_whole(
            lengths in proptest::collection::vec(1u32..1_000_000, 0..300),
            cuts in proptest::collection::vec(1usize..5000, 1..20),
        ) {
            let answer = ShardAnswer::Map(map(&lengths));
            let encoded = answer.encode();
            let mut reader =
                BodyReader::<ShardAnswer>::new(encoded[..PREFIX_LEN].try_into().unwrap()).unwrap();
            let mut rest = &encoded[PREFIX_LEN..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at((*cut).min(rest.len()));
                reader.feed(piece).unwrap();
                rest = after;
            }
            prop_assert_eq!(reader.remaining(), 0);
            prop_assert_eq!(reader.finish(), Ok(answer));
        }
    }

    #[test]
    fn an_announced_length_costs_only_the_bytes_that_arrived() {
        // A member announces the largest answer and sends a few bytes: the reader holds memory for
        // what arrived, not for what was announced.
        let prefix = (MAX_ANSWER_BYTES as u32).to_le_bytes();
        let mut reader = BodyReader::<ShardAnswer>::new(prefix).unwrap();
        let frame = ShardAnswer::Map(map(&[10, 20])).encode();
        reader.feed(&frame[PREFIX_LEN..]).unwrap();
        reader.feed(&[0; 1000]).unwrap();
        assert!(reader.buffered_capacity() <= 2 * frame.len() + 2000);
        assert_eq!(
            reader.remaining(),
            MAX_ANSWER_BYTES - (frame.len() - PREFIX_LEN) - 1000
        );
        assert!(reader.finish().is_err());

        // Too long an announcement is refused before anything is allocated.
        let over = (MAX_ANSWER_BYTES as u32 + 1).to_le_bytes();
        assert!(matches!(
            BodyReader::<ShardAnswer>::new(over),
            Err(WireError::Length { .. })
        ));
        // A wrong header is refused as soon as its bytes are in, before any archive byte.
        let mut reader = BodyReader::<ShardAnswer>::new(prefix).unwrap();
        assert_eq!(reader.feed(b"SHWQ\x02\x00\x04\x00"), Err(WireError::Magic));
        assert!(matches!(
            BodyReader::<ShardFrame>::new(prefix),
            Err(WireError::Length { .. })
        ));
        // Bytes past the announced length are refused.
        let small = ShardFrame::end(3).encode();
        let mut reader =
            BodyReader::<ShardFrame>::new(small[..PREFIX_LEN].try_into().unwrap()).unwrap();
        let mut too_many = small[PREFIX_LEN..].to_vec();
        too_many.push(0);
        assert!(reader.feed(&too_many).is_err());
    }

    #[test]
    fn manifest_messages_at_their_limits_fit() {
        let repo: RepoName = ["a".repeat(127), "b".repeat(127)]
            .join("/")
            .parse()
            .unwrap();
        let request = ManifestRequest::new(
            &"h".repeat(MAX_REGISTRY_HOST_BYTES),
            &repo,
            &Reference::Tag("t".repeat(MAX_TAG_BYTES)),
        );
        let encoded = request.encode();
        assert!(encoded.len() - PREFIX_LEN <= MAX_MANIFEST_REQUEST_BYTES);
        assert_eq!(ManifestRequest::decode(body(&encoded)), Ok(request));

        let largest = ManifestAnswer::Found(FoundManifest {
            media_type: "m".repeat(MAX_MEDIA_TYPE_BYTES),
            digest: [1; 32],
            body: vec![b'{'; MAX_MANIFEST_BYTES as usize],
            tag_fetched_at_ms: Some(u64::MAX),
        });
        let encoded = largest.encode();
        assert!(encoded.len() - PREFIX_LEN <= MAX_MANIFEST_ANSWER_BYTES);
        assert_eq!(ManifestAnswer::decode(body(&encoded)), Ok(largest));
        assert!(check_len::<ManifestAnswer>(MAX_MANIFEST_ANSWER_BYTES + 1).is_err());
        assert!(check_len::<ManifestRequest>(MAX_MANIFEST_REQUEST_BYTES + 1).is_err());

        let too_long = ManifestAnswer::Found(FoundManifest {
            media_type: "m".into(),
            digest: [1; 32],
            body: vec![b'{'; MAX_MANIFEST_BYTES as usize + 1],
            tag_fetched_at_ms: None,
        });
        assert!(ManifestAnswer::decode(body(&too_long.encode())).is_err());
        for (media_type, len) in [("", 2), ("a b", 2), ("a\nb", 2), ("m", 0)] {
            let bad = ManifestAnswer::Found(FoundManifest {
                media_type: media_type.into(),
                digest: [1; 32],
                body: vec![b'{'; len],
                tag_fetched_at_ms: None,
            });
            assert!(
                matches!(
                    ManifestAnswer::decode(body(&bad.encode())),
                    Err(WireError::Invalid(_))
                ),
                "{media_type:?} {len}"
            );
        }
        let not_here = ManifestAnswer::NotHere;
        assert_eq!(
            ManifestAnswer::decode(body(&not_here.encode())),
            Ok(not_here)
        );
        assert!(matches!(
            ManifestAnswer::decode(body(&ShardAnswer::NotHere.encode())),
            Err(WireError::Kind {
                expected: 9,
                actual: 4
            })
        ));
    }

    #[test]
    fn limits_and_kinds_are_checked() {
        assert!(check_len::<ShardFrame>(MAX_SMALL_BYTES + 1).is_err());
        assert!(check_len::<ShardAnswer>(HEADER_LEN - 1).is_err());
        assert!(check_len::<ShardRequest>(MAX_REQUEST_BYTES).is_ok());
        let proof = Proof { mac: [1; 32] }.encode();
        assert!(matches!(
            Challenge::decode(&proof[PREFIX_LEN..]),
            Err(WireError::Kind { .. })
        ));
        let end = ShardFrame::end(7);
        assert!(ShardFrame::decode(body(&end.encode())).unwrap().is_end());
        let oversized = ShardFrame {
            index: 0,
            len: MAX_SHARD_BYTES + 1,
            hash: [0; 32],
        };
        assert_eq!(
            ShardFrame::decode(body(&oversized.encode())),
            Err(WireError::Invalid("shard length out of range"))
        );
        let claimed = |peer: Vec<u8>| ShardAnswer::Claimed(peer).encode();
        assert!(ShardAnswer::decode(body(&claimed(vec![1; 38]))).is_ok());
        assert!(ShardAnswer::decode(body(&claimed(Vec::new()))).is_err());
        assert!(ShardAnswer::decode(body(&claimed(vec![1; MAX_PEER_ID_BYTES + 1]))).is_err());
        let mut bad = map(&[10, 20]);
        bad.blob_len = 31;
        let encoded = ShardAnswer::Map(bad).encode();
        assert!(ShardAnswer::decode(body(&encoded)).is_err());
    }

    #[test]
    fn membership_mac_binds_key_role_ids_and_nonces() {
        let key = [9; 32];
        let base = membership_mac(&key, Role::Dialer, b"a", b"b", &[1; 32], &[2; 32]);
        assert_eq!(
            base,
            membership_mac(&key, Role::Dialer, b"a", b"b", &[1; 32], &[2; 32])
        );
        for other in [
            membership_mac(&[8; 32], Role::Dialer, b"a", b"b", &[1; 32], &[2; 32]),
            membership_mac(&key, Role::Listener, b"a", b"b", &[1; 32], &[2; 32]),
            membership_mac(&key, Role::Dialer, b"b", b"a", &[1; 32], &[2; 32]),
            membership_mac(&key, Role::Dialer, b"a", b"b", &[3; 32], &[2; 32]),
        ] {
            assert!(!mac_eq(&base, &other));
        }
    }

    #[test]
    fn a_request_without_a_renewal_encodes_as_the_claim_flag_it_replaced() {
        // The request's last field used to be `claim: bool`; members not yet upgraded still send
        // it, and must read a plain request or a claim the same way.
        #[derive(rkyv::Archive, rkyv::Serialize)]
        struct FlagRequest {
            blob: [u8; 32],
            shards: ShardSet,
            map: MapWanted,
            claim: bool,
        }
        for (flag, ask) in [(false, ClaimAsk::NoClaim), (true, ClaimAsk::WhoFetches)] {
            let old = FlagRequest {
                blob: [7; 32],
                shards: ShardSet::from_indices([1, 4]),
                map: MapWanted::Full,
                claim: flag,
            };
            let new = ShardRequest {
                blob: [7; 32],
                shards: ShardSet::from_indices([1, 4]),
                map: MapWanted::Full,
                claim: ask,
            };
            let old = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
            let new = rkyv::to_bytes::<rkyv::rancor::Error>(&new).unwrap();
            assert_eq!(&old[..], &new[..]);
        }
        // A renewal is refused by such members rather than read as something else.
        let renewal = ShardRequest {
            blob: [7; 32],
            shards: ShardSet::Bitfield(Vec::new()),
            map: MapWanted::HashOnly,
            claim: ClaimAsk::StillFollowing,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&renewal).unwrap();
        assert!(rkyv::access::<ArchivedFlagRequest, rkyv::rancor::Error>(&bytes).is_err());
    }

    /// `ClaimAsk` as it was before `WhoElseFetches`, as members not yet upgraded decode it.
    #[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    enum ClaimAskBeforeRehoming {
        NoClaim,
        WhoFetches,
        StillFetchingFromOrigin,
        StillFollowing,
    }

    #[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    struct RequestBeforeRehoming {
        blob: [u8; 32],
        shards: ShardSet,
        map: MapWanted,
        claim: ClaimAskBeforeRehoming,
    }

    #[test]
    fn plain_requests_claims_and_renewals_encode_as_before_re_homing_requests_existed() {
        for (old_ask, ask) in [
            (ClaimAskBeforeRehoming::NoClaim, ClaimAsk::NoClaim),
            (ClaimAskBeforeRehoming::WhoFetches, ClaimAsk::WhoFetches),
            (
                ClaimAskBeforeRehoming::StillFetchingFromOrigin,
                ClaimAsk::StillFetchingFromOrigin,
            ),
            (
                ClaimAskBeforeRehoming::StillFollowing,
                ClaimAsk::StillFollowing,
            ),
        ] {
            for shards in [ShardSet::All, ShardSet::from_indices([0, 5, 9])] {
                let old = RequestBeforeRehoming {
                    blob: [5; 32],
                    shards: shards.clone(),
                    map: MapWanted::HashOnly,
                    claim: old_ask,
                };
                let new = ShardRequest {
                    blob: [5; 32],
                    shards,
                    map: MapWanted::HashOnly,
                    claim: ask,
                };
                let old = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
                let encoded = new.encode();
                assert_eq!(&old[..], &encoded[PREFIX_LEN + HEADER_LEN..]);
                assert_eq!(ShardRequest::decode(&encoded[PREFIX_LEN..]), Ok(new));
            }
        }
    }

    #[test]
    fn a_member_that_predates_re_homing_requests_refuses_one_rather_than_misreading_it() {
        let request = ShardRequest {
            blob: [5; 32],
            shards: ShardSet::Bitfield(Vec::new()),
            map: MapWanted::Full,
            claim: ClaimAsk::WhoElseFetches,
        };
        let encoded = request.encode();
        let archive = &encoded[PREFIX_LEN + HEADER_LEN..];
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(archive);
        assert!(
            rkyv::from_bytes::<RequestBeforeRehoming, rkyv::rancor::Error>(&aligned).is_err(),
            "an older member would read the re-homing request as another one"
        );
        // This build reads it back.
        assert_eq!(ShardRequest::decode(&encoded[PREFIX_LEN..]), Ok(request));
    }

    #[test]
    fn a_failed_member_frame_round_trips_and_its_peer_id_is_bounded() {
        let named = FailedMember { peer: vec![3; 38] };
        let encoded = named.encode();
        assert_eq!(FailedMember::decode(&encoded[PREFIX_LEN..]), Ok(named));
        for peer in [Vec::new(), vec![3; MAX_PEER_ID_BYTES + 1]] {
            let encoded = FailedMember { peer }.encode();
            assert!(FailedMember::decode(&encoded[PREFIX_LEN..]).is_err());
        }
        // Not to be taken for any other message.
        let encoded = FailedMember { peer: vec![3; 38] }.encode();
        assert!(ShardRequest::decode(&encoded[PREFIX_LEN..]).is_err());
    }
}
