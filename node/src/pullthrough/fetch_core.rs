//! The decisions of one blob fetch, apart from its I/O: which source to ask next when one fails,
//! when to ask it, whether the fetch must give up, and what its end means (stored, passed through,
//! or failed, and whom to blame).
//!
//! [`FetchCore`] is a state machine in the style of quinn-proto: the driver in `blobs` (the thin
//! async shell) tells it what happened (the source opened, bytes arrived, the origin's body broke,
//! a request to the origin failed, the peers gave up, the ingest ended) with an explicit `now`, and
//! carries out the [`Step`] it answers. It does no I/O and reads no clock, so its unit tests play
//! the orderings that matter deterministically: a source failing mid-body, the origin down for a
//! while and back, a parent dying mid-blob, a peer's bytes failing the sha256 at the end, the store
//! failing mid-ingest.
//!
//! **Origin outages.** Bytes already received are only worth something if the fetch can finish
//! them: a fetch that gives up on the first refused connection throws away what it has and the
//! next request fetches the whole blob again. So once a fetch holds bytes, a failing origin is
//! asked again with a growing pause ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) for up to
//! [`OUTAGE_PATIENCE`] from the first failure; only an answer that is not an outage (denied, not
//! found, no Range support) or an outage longer than that fails the fetch. A fetch with no bytes
//! yet fails at once, as before: nothing is lost, and its clients retry.

use std::ops::Range;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::limits::MAX_BLOB_BYTES;

use super::PullError;

/// How long a fetch that holds bytes keeps asking an unavailable origin to resume, from the first
/// failure of an outage.
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(30);
/// The first pause before asking an unavailable origin again.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between two asks of an unavailable origin.
pub const RETRY_MAX: Duration = Duration::from_secs(4);
/// Times in a row the origin's body may break before any new byte arrives.
pub const BREAKS_WITHOUT_PROGRESS: u32 = 3;
/// Times one fetch may look for a new parent after the peer it followed went away.
pub const MAX_REHOMES: u32 = 2;

/// Where the fetch's bytes come from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreSource {
    /// The upstream registry.
    Origin,
    /// Peers; `accountable` is the peer whose shard map (or stream) says what the bytes are.
    Peers {
        /// Blamed if the sha256 does not match.
        accountable: PeerId,
    },
}

/// How an origin request or body failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginFailure {
    /// Unreachable, a transport error, a 5xx or 429: the origin may be back soon.
    Unavailable(String),
    /// Any other answer (not found, denied, invalid): asking again will not help.
    Refused(PullError),
}

impl OriginFailure {
    /// Classifies an upstream error.
    pub fn from_upstream(error: crate::upstream::UpstreamError) -> Self {
        if error.is_unavailable() {
            OriginFailure::Unavailable(error.to_string())
        } else {
            OriginFailure::Refused(error.into())
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the origin for `range` (the whole blob when `None`), not before `at`.
    FetchOrigin {
        /// The bytes wanted.
        range: Option<Range<u64>>,
        /// When to send the request (`now`, or later after a failure).
        at: Instant,
    },
    /// The peer followed went away (it did not lie): ask the blob's home for another parent
    /// before going to the origin. Its bytes start again at offset 0; the core keeps only what
    /// this fetch does not have yet ([`FetchCore::new_part`]).
    Rehome {
        /// The peer that went away, not to be followed again.
        gone: PeerId,
    },
    /// The blob's length is needed to resume: ask the origin for it (`HEAD`), not before `at`.
    AskLength {
        /// When to send the request.
        at: Instant,
    },
    /// Give up: nothing is stored, the flight fails with this error.
    Fail(PullError),
}

/// How the ingest ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestEnd {
    /// Committed, with its length.
    Committed(u64),
    /// The store failed (or never took the blob): the driver verified the bytes itself.
    NotStored,
    /// The ingest's own sha256 check failed.
    DigestMismatch,
    /// The ingest failed otherwise.
    Failed(String),
}

/// What the fetch came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified; `stored` says whether it was committed (else only passed through).
    Complete {
        /// The blob's length.
        len: u64,
        /// Where its bytes came from: `"origin"`, `"peer"` or `"peer+origin"`.
        source: &'static str,
        /// Committed to the store.
        stored: bool,
    },
    /// The bytes do not make the blob. `blame` is the peer whose map decided them, to avoid;
    /// `None` means the origin sent them.
    Mismatch {
        /// The peer to avoid, if a peer's bytes were used.
        blame: Option<PeerId>,
    },
    /// The ingest failed for another reason.
    Failed(PullError),
}

/// The state of one blob fetch; see the module docs.
#[derive(Debug)]
pub struct FetchCore {
    total: Option<u64>,
    received: u64,
    /// The peer whose bytes are in this ingest, if any.
    peer_used: Option<PeerId>,
    /// Whether any bytes came from the origin.
    origin_used: bool,
    /// Body breaks since the last byte arrived.
    breaks_without_progress: u32,
    /// When the current origin outage began (the first failure since bytes last arrived).
    outage_since: Option<Instant>,
    /// The pause before the next ask of an unavailable origin.
    next_pause: Duration,
    /// What the last origin request asked for.
    asked: Asked,
    /// Re-homes so far.
    rehomes: u32,
    /// Where the current peer source is in the blob: its pieces start at 0 after a re-home.
    peer_position: u64,
}

/// An origin request, as remembered to repeat it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// The blob from this offset to its end (`None`: the whole blob, no Range).
    Blob(Option<Range<u64>>),
    /// The blob's length.
    Length,
    /// A gap before shards that arrived from peers.
    Gap(Range<u64>),
}

impl Default for FetchCore {
    fn default() -> Self {
        Self::new()
    }
}

impl FetchCore {
    /// A fetch that has not chosen its source yet.
    pub fn new() -> Self {
        FetchCore {
            total: None,
            received: 0,
            peer_used: None,
            origin_used: false,
            breaks_without_progress: 0,
            outage_since: None,
            next_pause: RETRY_FIRST,
            asked: Asked::Blob(None),
            rehomes: 0,
            peer_position: 0,
        }
    }

    /// The blob's length, if known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The peer blamed if the sha256 fails (the one whose bytes are in the ingest).
    #[cfg(test)]
    pub fn peer_used(&self) -> Option<PeerId> {
        self.peer_used
    }

    /// The first source answered, with the blob's length if it said.
    pub fn opened(&mut self, source: CoreSource, total: Option<u64>) -> Result<(), PullError> {
        if total.is_some_and(|len| len > MAX_BLOB_BYTES) {
            return Err(PullError::UpstreamInvalid(format!(
                "blob larger than {MAX_BLOB_BYTES} bytes"
            )));
        }
        self.total = total;
        self.switch_to(source);
        Ok(())
    }

    fn switch_to(&mut self, source: CoreSource) {
        match source {
            CoreSource::Origin => self.origin_used = true,
            // The first peer whose map decided the bytes is the one blamed for a mismatch.
            CoreSource::Peers { accountable } => {
                self.peer_used.get_or_insert(accountable);
            }
        }
    }

    /// A piece of `len` bytes came from the current peer source: the part of it (a range within
    /// the piece) this fetch does not have yet. All of it, unless the fetch re-homed: then the
    /// new parent's first pieces repeat bytes already received, and are dropped or cut.
    pub fn new_part(&mut self, len: u64) -> Range<u64> {
        let start = self.peer_position;
        self.peer_position += len;
        let from = self.received.saturating_sub(start).min(len);
        from..len
    }

    /// The peers left `range` of the blob for the origin: the part this fetch does not have yet
    /// (empty when it had all of it before a re-home).
    pub fn new_gap(&mut self, range: Range<u64>) -> Range<u64> {
        self.peer_position = self.peer_position.max(range.end);
        range.start.max(self.received).min(range.end)..range.end
    }

    /// `len` more bytes arrived (from the current source, or an origin gap fill when
    /// `from_origin`). Fails when they run past the blob's length.
    pub fn bytes_arrived(&mut self, len: u64, from_origin: bool) -> Result<(), PullError> {
        if self.total.is_some_and(|t| self.received + len > t) {
            return Err(PullError::UpstreamInvalid(
                "source sent more bytes than the blob's length".into(),
            ));
        }
        self.received += len;
        self.origin_used |= from_origin;
        if len > 0 {
            self.breaks_without_progress = 0;
            self.outage_since = None;
            self.next_pause = RETRY_FIRST;
        }
        Ok(())
    }

    /// The origin's body broke after `received` bytes: resume with a Range request, or fail.
    pub fn origin_body_broke(&mut self, now: Instant, error: OriginFailure) -> Step {
        self.breaks_without_progress += 1;
        let Some(total) = self.total else {
            return Step::Fail(failure_error(error));
        };
        if self.breaks_without_progress > BREAKS_WITHOUT_PROGRESS {
            return Step::Fail(failure_error(error));
        }
        self.ask_origin(Some(self.received..total), now)
    }

    /// A request to the origin (`asked`, from the last [`Step::FetchOrigin`]) got no body: ask
    /// again later while the outage is young and the fetch holds bytes, else fail.
    pub fn origin_request_failed(&mut self, now: Instant, error: OriginFailure) -> Step {
        let reason = match error {
            OriginFailure::Refused(error) => return Step::Fail(error),
            OriginFailure::Unavailable(reason) => reason,
        };
        if self.received == 0 {
            // Nothing to lose: fail now, the clients retry.
            return Step::Fail(PullError::UpstreamUnavailable(reason));
        }
        let since = *self.outage_since.get_or_insert(now);
        let at = now + self.next_pause;
        if at.saturating_duration_since(since) > OUTAGE_PATIENCE {
            return Step::Fail(PullError::UpstreamUnavailable(format!(
                "{reason} (the origin stayed unavailable for {OUTAGE_PATIENCE:?})"
            )));
        }
        self.next_pause = (self.next_pause * 2).min(RETRY_MAX);
        match &self.asked {
            Asked::Length => Step::AskLength { at },
            Asked::Blob(range) => Step::FetchOrigin {
                range: range.clone(),
                at,
            },
            Asked::Gap(range) => Step::FetchOrigin {
                range: Some(range.clone()),
                at,
            },
        }
    }

    /// The peers left a gap before shards that did arrive: the driver asks the origin for
    /// `range` (and asks again as [`Self::origin_request_failed`] says).
    pub fn gap_requested(&mut self, range: Range<u64>) {
        self.asked = Asked::Gap(range);
    }

    /// The origin answered the last request; `partial` when it honoured a Range. A range asked
    /// for and answered whole cannot be used.
    pub fn origin_answered(&mut self, partial: bool) -> Result<(), PullError> {
        if matches!(&self.asked, Asked::Blob(Some(_))) && !partial {
            return Err(PullError::UpstreamUnavailable(
                "the upstream does not support Range, needed to resume".into(),
            ));
        }
        self.switch_to(CoreSource::Origin);
        Ok(())
    }

    /// The peers cannot send the rest; `failed` is the peer that failed (the one followed, or the
    /// holder whose map the fetch used), and whether it misbehaved (sent bytes it must not).
    /// Returns the peer to avoid and what to do: look for another source among the peers without
    /// it (at most [`MAX_REHOMES`] times), else go on from the origin where the peers stopped.
    pub fn peers_failed(
        &mut self,
        now: Instant,
        failed: Option<(PeerId, bool)>,
    ) -> (Option<PeerId>, Step) {
        let Some((peer, misbehaved)) = failed else {
            return (None, self.origin_for_the_rest(now));
        };
        let avoid = misbehaved.then_some(peer);
        if self.rehomes < MAX_REHOMES {
            self.rehomes += 1;
            return (avoid, Step::Rehome { gone: peer });
        }
        (avoid, self.origin_for_the_rest(now))
    }

    /// The home found another parent (`accountable`, saying the blob is `total` long): go on
    /// from it. `false` when its length contradicts what is known (then [`Self::rehome_failed`]).
    pub fn rehomed(&mut self, accountable: PeerId, total: Option<u64>) -> bool {
        match (self.total, total) {
            (Some(known), Some(said)) if known != said => return false,
            (None, Some(said)) if said > MAX_BLOB_BYTES || said < self.received => return false,
            (None, Some(said)) => self.total = Some(said),
            _ => {}
        }
        self.peer_position = 0;
        self.switch_to(CoreSource::Peers { accountable });
        true
    }

    /// No other parent: go on from the origin where the peers stopped.
    pub fn rehome_failed(&mut self, now: Instant) -> Step {
        self.origin_for_the_rest(now)
    }

    fn origin_for_the_rest(&mut self, now: Instant) -> Step {
        // Going on needs the blob's length; a parent whose origin sent none could not say it.
        match self.total {
            None if self.received > 0 => {
                self.asked = Asked::Length;
                Step::AskLength { at: now }
            }
            total => {
                let rest = total
                    .filter(|_| self.received > 0)
                    .map(|t| self.received..t);
                self.ask_origin(rest, now)
            }
        }
    }

    /// The origin said the blob's length (after [`Step::AskLength`]).
    pub fn length_known(&mut self, now: Instant, total: Option<u64>) -> Step {
        let Some(total) = total else {
            return Step::Fail(PullError::UpstreamUnavailable(
                "peers failed mid-blob and the origin does not say the blob's length".into(),
            ));
        };
        if total > MAX_BLOB_BYTES || total < self.received {
            return Step::Fail(PullError::UpstreamInvalid(format!(
                "the origin says the blob is {total} bytes long, after {} were received",
                self.received
            )));
        }
        self.total = Some(total);
        self.ask_origin(Some(self.received..total), now)
    }

    fn ask_origin(&mut self, range: Option<Range<u64>>, now: Instant) -> Step {
        self.asked = Asked::Blob(range.clone());
        Step::FetchOrigin { range, at: now }
    }

    /// The source is done and the ingest ended: what the fetch came to. `digest_matched` is the
    /// driver's own sha256 check of every byte it passed on.
    pub fn finished(&mut self, digest_matched: bool, ingest: IngestEnd) -> Verdict {
        let source = match (self.peer_used.is_some(), self.origin_used) {
            (true, true) => "peer+origin",
            (true, false) => "peer",
            (false, _) => "origin",
        };
        match ingest {
            IngestEnd::Committed(len) => Verdict::Complete {
                len,
                source,
                stored: true,
            },
            IngestEnd::NotStored if digest_matched => Verdict::Complete {
                len: self.received,
                source,
                stored: false,
            },
            IngestEnd::NotStored | IngestEnd::DigestMismatch => Verdict::Mismatch {
                blame: self.peer_used.take(),
            },
            IngestEnd::Failed(error) => Verdict::Failed(PullError::Internal(error)),
        }
    }
}

fn failure_error(error: OriginFailure) -> PullError {
    match error {
        OriginFailure::Unavailable(reason) => PullError::UpstreamUnavailable(reason),
        OriginFailure::Refused(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn down() -> OriginFailure {
        OriginFailure::Unavailable("connection refused".into())
    }

    fn from_origin(total: u64) -> FetchCore {
        let mut core = FetchCore::new();
        core.opened(CoreSource::Origin, Some(total)).unwrap();
        core
    }

    #[test]
    fn a_body_that_breaks_mid_blob_resumes_where_it_stopped() {
        let now = t0();
        let mut core = from_origin(1000);
        core.bytes_arrived(400, false).unwrap();
        assert_eq!(
            core.origin_body_broke(now, down()),
            Step::FetchOrigin {
                range: Some(400..1000),
                at: now
            }
        );
        core.origin_answered(true).unwrap();
        core.bytes_arrived(600, false).unwrap();
        assert_eq!(
            core.finished(true, IngestEnd::Committed(1000)),
            Verdict::Complete {
                len: 1000,
                source: "origin",
                stored: true
            }
        );
    }

    #[test]
    fn an_origin_that_ignores_the_range_of_a_resume_fails_the_fetch() {
        let mut core = from_origin(1000);
        core.bytes_arrived(400, false).unwrap();
        core.origin_body_broke(t0(), down());
        assert!(matches!(
            core.origin_answered(false),
            Err(PullError::UpstreamUnavailable(_))
        ));
    }

    #[test]
    fn an_origin_down_for_a_few_seconds_is_waited_for_with_growing_pauses() {
        let start = t0();
        let mut core = from_origin(1000);
        core.bytes_arrived(400, false).unwrap();
        core.origin_body_broke(start, down());
        let mut now = start;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            match core.origin_request_failed(now, down()) {
                Step::FetchOrigin { range, at } => {
                    assert_eq!(range, Some(400..1000), "always the same rest");
                    pauses.push(at - now);
                    now = at;
                }
                other => panic!("gave up too early: {other:?}"),
            }
        }
        assert_eq!(pauses[0], RETRY_FIRST);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), RETRY_MAX);
        // The origin is back: the fetch goes on and a later outage starts a new patience.
        core.origin_answered(true).unwrap();
        core.bytes_arrived(100, false).unwrap();
        now += Duration::from_secs(60);
        core.origin_body_broke(now, down());
        assert_eq!(
            core.origin_request_failed(now, down()),
            Step::FetchOrigin {
                range: Some(500..1000),
                at: now + RETRY_FIRST
            }
        );
    }

    #[test]
    fn an_outage_longer_than_the_patience_fails_the_fetch() {
        let start = t0();
        let mut core = from_origin(1000);
        core.bytes_arrived(1, false).unwrap();
        core.origin_body_broke(start, down());
        let mut now = start;
        let failed_at = loop {
            match core.origin_request_failed(now, down()) {
                Step::FetchOrigin { at, .. } => now = at,
                Step::Fail(PullError::UpstreamUnavailable(_)) => break now,
                other => panic!("{other:?}"),
            }
        };
        assert!(failed_at - start <= OUTAGE_PATIENCE);
        assert!(failed_at - start + RETRY_MAX > OUTAGE_PATIENCE);
    }

    #[test]
    fn a_fetch_without_bytes_fails_at_once_when_the_origin_is_down() {
        let mut core = FetchCore::new();
        assert!(matches!(
            core.origin_request_failed(t0(), down()),
            Step::Fail(PullError::UpstreamUnavailable(_))
        ));
    }

    #[test]
    fn a_refusal_is_not_waited_for() {
        let mut core = from_origin(1000);
        core.bytes_arrived(10, false).unwrap();
        core.origin_body_broke(t0(), down());
        assert_eq!(
            core.origin_request_failed(t0(), OriginFailure::Refused(PullError::NotFound)),
            Step::Fail(PullError::NotFound)
        );
    }

    #[test]
    fn a_body_that_keeps_breaking_without_progress_fails() {
        let now = t0();
        let mut core = from_origin(1000);
        core.bytes_arrived(10, false).unwrap();
        for _ in 0..BREAKS_WITHOUT_PROGRESS {
            assert!(matches!(
                core.origin_body_broke(now, down()),
                Step::FetchOrigin { .. }
            ));
        }
        assert!(matches!(core.origin_body_broke(now, down()), Step::Fail(_)));
    }

    #[test]
    fn a_body_of_unknown_length_that_breaks_cannot_resume() {
        let mut core = FetchCore::new();
        core.opened(CoreSource::Origin, None).unwrap();
        core.bytes_arrived(10, false).unwrap();
        assert!(matches!(
            core.origin_body_broke(t0(), down()),
            Step::Fail(_)
        ));
    }

    #[test]
    fn more_bytes_than_the_blob_is_long_fail_and_an_oversized_blob_is_refused() {
        let mut core = from_origin(10);
        core.bytes_arrived(10, false).unwrap();
        assert!(core.bytes_arrived(1, false).is_err());
        assert!(FetchCore::new()
            .opened(CoreSource::Origin, Some(MAX_BLOB_BYTES + 1))
            .is_err());
    }

    #[test]
    fn a_parent_dying_mid_blob_sends_the_fetch_to_the_origin_for_the_rest_only() {
        let parent = PeerId::random();
        let now = t0();
        let mut core = FetchCore::new();
        core.opened(
            CoreSource::Peers {
                accountable: parent,
            },
            Some(1000),
        )
        .unwrap();
        core.bytes_arrived(700, false).unwrap();
        let (avoid, step) = core.peers_failed(now, None);
        assert_eq!(avoid, None);
        assert_eq!(
            step,
            Step::FetchOrigin {
                range: Some(700..1000),
                at: now
            }
        );
        core.origin_answered(true).unwrap();
        core.bytes_arrived(300, false).unwrap();
        assert_eq!(
            core.finished(true, IngestEnd::Committed(1000)),
            Verdict::Complete {
                len: 1000,
                source: "peer+origin",
                stored: true
            }
        );
    }

    #[test]
    fn a_parent_that_never_knew_the_length_makes_the_fetch_ask_the_origin_for_it() {
        let parent = PeerId::random();
        let now = t0();
        let mut core = FetchCore::new();
        core.opened(
            CoreSource::Peers {
                accountable: parent,
            },
            None,
        )
        .unwrap();
        core.bytes_arrived(700, false).unwrap();
        assert_eq!(core.peers_failed(now, None).1, Step::AskLength { at: now });
        // The origin is down when asked for the length: asked again later.
        assert_eq!(
            core.origin_request_failed(now, down()),
            Step::AskLength {
                at: now + RETRY_FIRST
            }
        );
        assert_eq!(
            core.length_known(now, Some(1000)),
            Step::FetchOrigin {
                range: Some(700..1000),
                at: now
            }
        );
        let mut lost = FetchCore::new();
        lost.opened(
            CoreSource::Peers {
                accountable: parent,
            },
            None,
        )
        .unwrap();
        lost.bytes_arrived(700, false).unwrap();
        lost.peers_failed(now, None);
        assert!(matches!(lost.length_known(now, None), Step::Fail(_)));
        assert!(matches!(lost.length_known(now, Some(699)), Step::Fail(_)));
    }

    #[test]
    fn a_lying_holder_is_avoided_and_the_blob_asked_of_other_peers_before_the_origin() {
        let liar = PeerId::random();
        let now = t0();
        let mut core = FetchCore::new();
        core.opened(CoreSource::Peers { accountable: liar }, Some(1000))
            .unwrap();
        let (avoid, step) = core.peers_failed(now, Some((liar, true)));
        assert_eq!(avoid, Some(liar));
        assert_eq!(step, Step::Rehome { gone: liar });
        // Nobody else has it: the whole blob from the origin, nothing having arrived.
        assert_eq!(
            core.rehome_failed(now),
            Step::FetchOrigin {
                range: None,
                at: now
            }
        );
    }

    #[test]
    fn a_parent_that_went_away_is_replaced_through_the_home_and_its_repeat_bytes_are_dropped() {
        let (dead, next) = (PeerId::random(), PeerId::random());
        let now = t0();
        let mut core = FetchCore::new();
        core.opened(CoreSource::Peers { accountable: dead }, Some(1000))
            .unwrap();
        for len in [300, 400] {
            assert_eq!(core.new_part(len), 0..len);
            core.bytes_arrived(len, false).unwrap();
        }
        let (avoid, step) = core.peers_failed(now, Some((dead, false)));
        assert_eq!(avoid, None, "a parent that went away did not lie");
        assert_eq!(step, Step::Rehome { gone: dead });
        assert!(core.rehomed(next, Some(1000)));
        // The new parent starts at 0, cut differently: 500 repeated, then 250 of which the last
        // 50 are new, then new bytes.
        assert!(core.new_part(500).is_empty());
        let part = core.new_part(250);
        assert_eq!(part, 200..250);
        core.bytes_arrived(part.end - part.start, false).unwrap();
        assert_eq!(core.new_part(250), 0..250);
        core.bytes_arrived(250, false).unwrap();
        assert_eq!(core.received(), 1000);
        // Blame stays with the first map's peer.
        assert_eq!(core.peer_used(), Some(dead));
    }

    #[test]
    fn re_homing_is_bounded_and_then_the_origin_sends_the_rest() {
        let now = t0();
        let mut core = FetchCore::new();
        let first = PeerId::random();
        core.opened(CoreSource::Peers { accountable: first }, Some(100))
            .unwrap();
        core.bytes_arrived(10, false).unwrap();
        let mut parent = first;
        for _ in 0..MAX_REHOMES {
            assert_eq!(
                core.peers_failed(now, Some((parent, false))).1,
                Step::Rehome { gone: parent }
            );
            parent = PeerId::random();
            assert!(core.rehomed(parent, Some(100)));
        }
        assert_eq!(
            core.peers_failed(now, Some((parent, false))).1,
            Step::FetchOrigin {
                range: Some(10..100),
                at: now
            }
        );
    }

    #[test]
    fn a_new_parent_that_disagrees_on_the_length_is_not_followed() {
        let now = t0();
        let mut core = from_origin(100);
        core.bytes_arrived(10, false).unwrap();
        assert!(!core.rehomed(PeerId::random(), Some(99)));
        assert_eq!(
            core.rehome_failed(now),
            Step::FetchOrigin {
                range: Some(10..100),
                at: now
            }
        );
    }

    #[test]
    fn a_gap_already_received_before_a_re_home_is_not_fetched_again() {
        let mut core = FetchCore::new();
        core.opened(
            CoreSource::Peers {
                accountable: PeerId::random(),
            },
            Some(100),
        )
        .unwrap();
        core.bytes_arrived(50, false).unwrap();
        assert!(core.rehomed(PeerId::random(), Some(100)));
        assert!(core.new_gap(0..40).is_empty());
        assert_eq!(core.new_gap(40..60), 50..60);
        core.bytes_arrived(10, true).unwrap();
        assert_eq!(core.new_part(40), 0..40);
    }

    #[test]
    fn a_sha256_mismatch_at_the_end_blames_the_peer_whose_map_was_used() {
        let peer = PeerId::random();
        let mut core = FetchCore::new();
        core.opened(CoreSource::Peers { accountable: peer }, Some(10))
            .unwrap();
        core.bytes_arrived(10, false).unwrap();
        assert_eq!(
            core.finished(false, IngestEnd::DigestMismatch),
            Verdict::Mismatch { blame: Some(peer) }
        );
        let mut origin = from_origin(10);
        origin.bytes_arrived(10, false).unwrap();
        assert_eq!(
            origin.finished(false, IngestEnd::DigestMismatch),
            Verdict::Mismatch { blame: None }
        );
    }

    #[test]
    fn a_store_that_fails_mid_ingest_passes_the_blob_through_only_if_it_matches() {
        let mut core = from_origin(10);
        core.bytes_arrived(10, false).unwrap();
        assert_eq!(
            core.finished(true, IngestEnd::NotStored),
            Verdict::Complete {
                len: 10,
                source: "origin",
                stored: false
            }
        );
        let mut bad = from_origin(10);
        bad.bytes_arrived(10, false).unwrap();
        assert_eq!(
            bad.finished(false, IngestEnd::NotStored),
            Verdict::Mismatch { blame: None }
        );
    }

    #[test]
    fn a_gap_fill_refused_by_a_down_origin_asks_for_the_same_gap_again() {
        let peer = PeerId::random();
        let now = t0();
        let mut core = FetchCore::new();
        core.opened(CoreSource::Peers { accountable: peer }, Some(100))
            .unwrap();
        core.bytes_arrived(10, false).unwrap();
        core.gap_requested(10..30);
        assert_eq!(
            core.origin_request_failed(now, down()),
            Step::FetchOrigin {
                range: Some(10..30),
                at: now + RETRY_FIRST
            }
        );
    }

    #[test]
    fn gaps_filled_from_the_origin_count_as_origin_bytes() {
        let peer = PeerId::random();
        let mut core = FetchCore::new();
        core.opened(CoreSource::Peers { accountable: peer }, Some(10))
            .unwrap();
        core.bytes_arrived(4, true).unwrap();
        core.bytes_arrived(6, false).unwrap();
        assert!(matches!(
            core.finished(true, IngestEnd::Committed(10)),
            Verdict::Complete {
                source: "peer+origin",
                ..
            }
        ));
    }
}
