//! The preheat protocol's messages: one member asks another to fetch a blob through its normal
//! pull path ahead of a rollout, and hears how it goes.
//!
//! ## Goals and non-goals
//!
//! Goals: let the node that took an operator's preheat job have each chosen region fetch an
//! image's blobs, with progress, through the fetching node's own pull-through path (so peers and
//! the blob's home are asked before the origin, and the origin serves each blob once network-wide).
//! Non-goals: moving bytes (the fetching node gets them the usual way, shard transfer or its
//! upstream), trusting the asker with anything but a blob digest and where it comes from (the
//! fetching node contacts only its own configured upstreams and verifies every byte).
//!
//! ## Message flow
//!
//! Protocol `/shoal/preheat/1`, one stream per blob, requester first, in the framing of
//! [`crate::wire`]:
//!
//! ```text
//! requester                                fetcher
//!   ── PreheatRequest { upstream, repo, blob, size } ──▶
//!   ◀──── PreheatReport::Progress(bytes_done)       (zero or more, a few per second at most)
//!   ◀──── PreheatReport::AlreadyThere | Fetched { source, bytes } | Busy | Failed(reason)
//! ```
//!
//! The last report ends the stream. `upstream` is the registry host name as containerd sends it
//! in `ns`; a fetcher that has no such upstream configured answers `Failed` and contacts nothing.
//! `Busy` says the fetcher's preheat queue is full: ask another member or later.
//!
//! ## Limits
//!
//! * [`PreheatRequest`]: at most [`MAX_PREHEAT_REQUEST_BYTES`]; upstream and repository in their
//!   grammars, `size` at most [`MAX_BLOB_BYTES`].
//! * [`PreheatReport`]: at most [`MAX_PREHEAT_REPORT_BYTES`]; a failure's reason 1 to
//!   [`MAX_REASON_BYTES`] bytes.

use crate::digest::BlobDigest;
use crate::limits::{MAX_BLOB_BYTES, MAX_REGISTRY_HOST_BYTES, MAX_REPO_NAME_BYTES};
use crate::oci::{is_valid_registry_host, RepoName};
use crate::wire::{wire_message, Kind, WireError, HEADER_LEN};

/// Longest reason a failure report carries.
pub const MAX_REASON_BYTES: usize = 256;
/// Largest preheat request (header included).
pub const MAX_PREHEAT_REQUEST_BYTES: usize =
    HEADER_LEN + 96 + MAX_REGISTRY_HOST_BYTES + MAX_REPO_NAME_BYTES;
/// Largest preheat report (header included).
pub const MAX_PREHEAT_REPORT_BYTES: usize = HEADER_LEN + 64 + MAX_REASON_BYTES;

/// Asks a member to fetch one blob through its pull path.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PreheatRequest {
    /// The registry host the blob belongs to, as containerd names it in `ns`.
    pub upstream: String,
    /// The repository, in the OCI grammar.
    pub repo: String,
    /// The blob's sha256.
    pub blob: [u8; 32],
    /// The blob's length as its manifest gives it.
    pub size: u64,
}

impl PreheatRequest {
    /// A request for `blob` of `repo` at `upstream`.
    pub fn new(upstream: &str, repo: &RepoName, blob: BlobDigest, size: u64) -> Self {
        Self {
            upstream: upstream.to_owned(),
            repo: repo.to_string(),
            blob: *blob.as_bytes(),
            size,
        }
    }

    /// The repository as a typed value (never an error after a successful decode).
    pub fn repo_name(&self) -> Result<RepoName, WireError> {
        self.repo
            .parse()
            .map_err(|_| WireError::Invalid("repository name outside the grammar"))
    }

    /// The blob's digest.
    pub fn digest(&self) -> BlobDigest {
        BlobDigest::from_bytes(self.blob)
    }

    fn check_rules(&self) -> Result<(), WireError> {
        if !is_valid_registry_host(&self.upstream) {
            return Err(WireError::Invalid("upstream is not a registry host name"));
        }
        if self.size > MAX_BLOB_BYTES {
            return Err(WireError::Invalid("blob length over the limit"));
        }
        self.repo_name().map(|_| ())
    }
}

/// Where a fetched blob's bytes came from, as the fetcher's pull path reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BlobSource {
    /// Other members only.
    Peers,
    /// The origin registry only.
    Origin,
    /// Members first, the rest from the origin.
    PeersAndOrigin,
}

/// A blob fetched for a preheat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Fetched {
    /// Where the bytes came from.
    pub source: BlobSource,
    /// The blob's length.
    pub bytes: u64,
}

/// What the fetcher says about a [`PreheatRequest`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum PreheatReport {
    /// Still fetching; bytes of the blob verified so far.
    Progress(u64),
    /// The blob was already stored (final).
    AlreadyThere,
    /// Fetched, verified and committed (final).
    Fetched(Fetched),
    /// The fetcher's preheat queue is full; nothing was started (final).
    Busy,
    /// The fetch failed; nothing was stored (final). Why, in one sentence.
    Failed(String),
}

impl PreheatReport {
    /// Whether this report ends the stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, PreheatReport::Progress(_))
    }

    /// A failure, its reason cut to [`MAX_REASON_BYTES`] (at a character boundary).
    pub fn failed(reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = if end == 0 { "failed" } else { &reason[..end] };
        PreheatReport::Failed(reason.to_owned())
    }

    fn check_rules(&self) -> Result<(), WireError> {
        match self {
            PreheatReport::Progress(bytes) | PreheatReport::Fetched(Fetched { bytes, .. })
                if *bytes > MAX_BLOB_BYTES =>
            {
                Err(WireError::Invalid("byte count over the blob limit"))
            }
            PreheatReport::Failed(reason)
                if reason.is_empty() || reason.len() > MAX_REASON_BYTES =>
            {
                Err(WireError::Invalid("failure reason length out of range"))
            }
            _ => Ok(()),
        }
    }
}

wire_message!(
    PreheatRequest,
    Kind::PreheatRequest,
    MAX_PREHEAT_REQUEST_BYTES,
    PreheatRequest::check_rules
);
wire_message!(
    PreheatReport,
    Kind::PreheatReport,
    MAX_PREHEAT_REPORT_BYTES,
    PreheatReport::check_rules
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_len, WireMessage as _, PREFIX_LEN};

    fn body(frame: &[u8]) -> &[u8] {
        &frame[PREFIX_LEN..]
    }

    #[test]
    fn requests_and_reports_round_trip_within_their_limits() {
        let repo: RepoName = "a/"
            .repeat(MAX_REPO_NAME_BYTES / 2 - 1)
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let request = PreheatRequest::new(
            &"h".repeat(MAX_REGISTRY_HOST_BYTES),
            &repo,
            BlobDigest::from_bytes([3; 32]),
            MAX_BLOB_BYTES,
        );
        let encoded = request.encode();
        assert!(encoded.len() - PREFIX_LEN <= MAX_PREHEAT_REQUEST_BYTES);
        assert_eq!(PreheatRequest::decode(body(&encoded)).unwrap(), request);

        for report in [
            PreheatReport::Progress(7),
            PreheatReport::AlreadyThere,
            PreheatReport::Fetched(Fetched {
                source: BlobSource::PeersAndOrigin,
                bytes: MAX_BLOB_BYTES,
            }),
            PreheatReport::Busy,
            PreheatReport::failed(&"é".repeat(MAX_REASON_BYTES)),
        ] {
            let encoded = report.encode();
            assert!(encoded.len() - PREFIX_LEN <= MAX_PREHEAT_REPORT_BYTES);
            assert_eq!(PreheatReport::decode(body(&encoded)).unwrap(), report);
        }
        assert!(check_len::<PreheatReport>(MAX_PREHEAT_REPORT_BYTES + 1).is_err());
        assert!(check_len::<PreheatRequest>(MAX_PREHEAT_REQUEST_BYTES + 1).is_err());
    }

    #[test]
    fn out_of_grammar_requests_and_reports_are_refused() {
        let repo: RepoName = "test/app".parse().unwrap();
        let good = PreheatRequest::new("reg.example", &repo, BlobDigest::from_bytes([1; 32]), 5);
        let bad_host = PreheatRequest {
            upstream: "reg example/x".into(),
            ..good.clone()
        };
        let bad_repo = PreheatRequest {
            repo: "Test/App".into(),
            ..good.clone()
        };
        let too_big = PreheatRequest {
            size: MAX_BLOB_BYTES + 1,
            ..good
        };
        for request in [bad_host, bad_repo, too_big] {
            assert!(PreheatRequest::decode(body(&request.encode())).is_err());
        }
        let empty_reason = PreheatReport::Failed(String::new());
        assert!(PreheatReport::decode(body(&empty_reason.encode())).is_err());
        let wrong_kind = PreheatReport::Busy.encode();
        assert!(PreheatRequest::decode(body(&wrong_kind)).is_err());
        assert!(PreheatReport::Busy.is_final());
        assert!(!PreheatReport::Progress(0).is_final());
    }
}
