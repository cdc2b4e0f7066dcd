//! One blob being fetched from an upstream and ingested, shared by every request that wants it
//! meanwhile (single flight).
//!
//! The driver task appends network reads to `pending` as they arrive; a hashing thread appends
//! them to the flight's [`Spool`] (a file in the store's temporary area) and computes the
//! sha256; the ingest thread, at a lower CPU priority, reads the spool behind them, cuts, hashes
//! and writes the shards (see `spooling`). Memory keeps only the newest bytes
//! ([`MEMORY_WINDOW`](super::spooling::MEMORY_WINDOW)) and those not spooled yet; readers at any
//! offset are served from memory, from the shard files, or from the spool, so memory stays bounded
//! however many readers there are and however late they join, and the client's last byte waits
//! for the sha256, not for the ingest. The ingest may fall behind the source by at most the
//! spool's lag bound; then the source waits ([`Flight::source_may_go_on`]). The last byte is held
//! back until the sha256 has matched. The spool is dropped (its file removed) when the flight
//! commits or fails, or, passing through, when the flight is dropped.
//!
//! **Pass-through.** When the store cannot take the blob (a full disk, an I/O error, a read-only
//! file system, a closed store), the flight goes on without it: the source's bytes still reach
//! every reader from memory, the sha256 is still checked before the last byte, and nothing is
//! committed. The shard files written before the failure stay readable (the failed ingest is kept
//! until the flight is dropped, then removes them). Without the disk to spill to, memory is
//! bounded by a window ([`PASS_THROUGH_WINDOW`]): bytes every reader has passed are dropped, and
//! the source is not read further while the window is full, so the slowest reader sets the pace
//! (a reader that stops reading altogether is cut off by the HTTP write timeout, and then the
//! others go on). A request that would need bytes already dropped does not join the flight; it
//! starts a new fetch. Peers following the flight shard by shard get no shard beyond the last one
//! written and go on from another source.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use shoal_proto::BlobDigest;
use tokio::sync::watch;

use super::spooling::{yield_threshold, SpoolFeed, SpoolLedger};
use super::PullError;
use crate::store::{Ingest, Spool, StoredShard};

/// The most bytes a flight that passes its blob through (the store cannot take it) holds in
/// memory; its source waits while readers catch up.
pub const PASS_THROUGH_WINDOW: u64 = 16 << 20;

/// How a flight ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Verified and committed.
    Committed,
    /// Verified and sent to every reader, but not stored: the store could not take it.
    PassedThrough,
    /// Failed; nothing was stored.
    Failed(PullError),
}

/// Where a flight's bytes come from, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlightSource {
    /// The upstream registry.
    Origin,
    /// Peers holding the whole blob.
    StoredPeers,
    /// A peer that is itself still fetching the blob.
    InFlightPeer,
}

/// What a peer following a flight shard by shard may do next.
pub enum NextShard {
    /// Shard `index` is written.
    Ready(StoredShard),
    /// Not yet.
    Wait,
    /// The blob is verified and every shard has been handed out.
    End,
    /// The flight failed.
    Failed,
}

#[derive(Debug)]
struct FlightState {
    source: Option<FlightSource>,
    /// Every source the bytes came from so far, in order (at most one entry per kind).
    sources_seen: Vec<FlightSource>,
    /// `None` until the upstream has answered with a body.
    started: bool,
    total: Option<u64>,
    received: u64,
    /// Shards written so far, contiguous from offset 0.
    shards: Vec<StoredShard>,
    /// Bytes `pending_start..received`, not yet in a shard file.
    pending: VecDeque<Bytes>,
    pending_start: u64,
    /// The sha256 matched: every byte received may be released.
    verified: bool,
    /// The ingest verified the blob and reported every shard: peers following it shard by shard
    /// have had everything once they reach the end of `shards`.
    shards_complete: bool,
    outcome: Option<Outcome>,
    /// The store stopped taking the blob: bytes stay in memory only, within the window.
    passing_through: bool,
    /// The failed ingest, kept so that its shard files stay readable until the flight is dropped.
    kept_ingest: Option<Ingest>,
    /// Where each registered reader is (its cursor), by reader id.
    readers: HashMap<u64, u64>,
    next_reader: u64,
    /// The blob's raw bytes on disk while the flight stores it (see `spooling`).
    spool: Option<Arc<Spool>>,
    ledger: SpoolLedger,
    /// The ingest's feed and the pending bytes it may hold back while a client waits.
    feed: Option<(Arc<SpoolFeed>, u64)>,
    /// A peer asked for a shard of this flight: the ingest no longer yields.
    peer_followed: bool,
}

impl FlightState {
    /// The end of the bytes in shard files.
    fn shards_end(&self) -> u64 {
        self.shards
            .last()
            .map_or(0, |shard| shard.offset + u64::from(shard.len))
    }

    /// While passing through: drops the bytes every reader has passed. With a spool: drops the
    /// bytes the spool holds, but for the newest.
    fn trim(&mut self) {
        if self.spool.is_some() {
            let keep_from = self.ledger.memory_keep_from(self.received);
            self.drop_pending_below(keep_from);
        }
        if !self.passing_through {
            return;
        }
        let keep_from = self
            .readers
            .values()
            .copied()
            .min()
            .unwrap_or(self.received);
        self.drop_pending_below(keep_from);
    }

    /// Whether a reader starting at offset 0 finds every byte before `pending_start` in shard
    /// files or in the spool (a flight that stores its blob writes the shards of whatever the
    /// spool no longer holds; a flight passing through does not).
    fn start_is_readable(&self) -> bool {
        let shards_end = self.shards_end();
        if self.pending_start <= shards_end {
            return true;
        }
        if self.spool.is_none() {
            return false;
        }
        !self.passing_through || self.ledger.holds(shards_end, self.pending_start)
    }

    /// Drops the bytes before `keep_from` from memory.
    fn drop_pending_below(&mut self, keep_from: u64) {
        while self.pending_start < keep_from {
            let need = keep_from - self.pending_start;
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            if (front.len() as u64) <= need {
                let len = front.len() as u64;
                self.pending.pop_front();
                self.pending_start += len;
            } else {
                let _ = front.split_to(need as usize);
                self.pending_start += need;
            }
        }
    }
}

/// A blob in flight.
#[derive(Debug)]
pub struct Flight {
    pub(super) digest: BlobDigest,
    state: Mutex<FlightState>,
    changed: watch::Sender<u64>,
    /// Bumped when a reader moves or leaves (the source waits on it while passing through).
    progress: watch::Sender<u64>,
    /// A client waits for the bytes (it started or joined the flight): the ingest makes its
    /// shards durable only once the last byte is released (`store::Durability::AfterRelease`).
    client_waiting: AtomicBool,
}

/// A response reading a flight: its cursor bounds what a flight passing through may drop.
#[derive(Debug)]
pub struct FlightReader {
    flight: Arc<Flight>,
    id: u64,
}

impl FlightReader {
    /// The flight read.
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// The reader needs nothing before `cursor` any more.
    pub fn advance(&self, cursor: u64) {
        self.flight.reader_moved(self.id, Some(cursor));
    }
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        self.flight.reader_moved(self.id, None);
    }
}

/// What a reader may do next.
pub enum Next {
    /// Bytes at the reader's cursor.
    Bytes(Bytes),
    /// Bytes at the reader's cursor are in this file range.
    File(StoredShard, u64, u64),
    /// Bytes at the reader's cursor are in this range of the spool; once read, they may be sent
    /// only if [`Flight::spool_read_still_good`] says so.
    Spool(Arc<Spool>, std::ops::Range<u64>),
    /// Nothing yet: wait for a change.
    Wait,
    /// The stream ended at the reader's cursor.
    End,
    /// The flight failed.
    Failed(PullError),
}

impl Flight {
    pub(super) fn new(digest: BlobDigest) -> Arc<Self> {
        Arc::new(Self {
            digest,
            state: Mutex::new(FlightState {
                source: None,
                sources_seen: Vec::new(),
                started: false,
                total: None,
                received: 0,
                shards: Vec::new(),
                pending: VecDeque::new(),
                pending_start: 0,
                verified: false,
                shards_complete: false,
                outcome: None,
                passing_through: false,
                kept_ingest: None,
                readers: HashMap::new(),
                next_reader: 0,
                spool: None,
                ledger: SpoolLedger::new(0),
                feed: None,
                peer_followed: false,
            }),
            changed: watch::channel(0).0,
            progress: watch::channel(0).0,
            client_waiting: AtomicBool::new(false),
        })
    }

    /// A client waits for this flight's bytes: its ingest defers durability until the last byte
    /// is released, from its next shard on.
    /// Its ingest also yields the CPU to the client's path (see `spooling::SpoolFeed`).
    pub(super) fn client_waits(&self) {
        self.client_waiting.store(true, Ordering::SeqCst);
        let state = self.state();
        if let (Some((feed, threshold)), false) = (&state.feed, state.peer_followed) {
            feed.yield_to_client(*threshold);
        }
    }

    /// Whether a client waits for this flight's bytes.
    pub(super) fn has_waiting_client(&self) -> bool {
        self.client_waiting.load(Ordering::SeqCst)
    }

    /// Registers a reader at offset 0, unless bytes it would need are gone already (a flight
    /// passing through its blob drops what its readers have passed); then the request must start
    /// a new fetch.
    pub(super) fn join(self: &Arc<Self>) -> Option<FlightReader> {
        let mut state = self.state();
        let lost_bytes = !state.start_is_readable();
        if lost_bytes || matches!(state.outcome, Some(Outcome::PassedThrough)) {
            return None;
        }
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert(id, 0);
        Some(FlightReader {
            flight: self.clone(),
            id,
        })
    }

    /// Whether the store stopped taking this blob.
    pub(super) fn passing_through(&self) -> bool {
        self.state().passing_through
    }

    /// The store cannot take the blob: go on from memory only. `ingest` is the failed ingest,
    /// kept until the flight is dropped so that its shard files stay readable.
    pub(super) fn pass_through(&self, ingest: Option<Ingest>) {
        let mut state = self.state();
        state.passing_through = true;
        state.ledger.stop();
        if ingest.is_some() {
            state.kept_ingest = ingest;
        }
        state.trim();
        drop(state);
        self.notify();
    }

    /// The flight stores its blob through `spool`, whose ingest, fed by `feed`, may fall
    /// `lag_bound` bytes behind the source.
    pub(super) fn attach_spool(&self, spool: Arc<Spool>, lag_bound: u64, feed: Arc<SpoolFeed>) {
        let mut state = self.state();
        state.spool = Some(spool);
        state.ledger = SpoolLedger::new(lag_bound);
        let threshold = yield_threshold(lag_bound);
        if self.has_waiting_client() && !state.peer_followed {
            feed.yield_to_client(threshold);
        }
        state.feed = Some((feed, threshold));
    }

    /// The spool holds the blob's bytes up to `end`: memory drops what it no longer needs.
    pub(super) fn spooled_to(&self, end: u64) {
        let mut state = self.state();
        state.ledger.appended(end);
        state.trim();
        drop(state);
        self.notify();
    }

    /// Appends to the spool stopped (an append failed): memory keeps every byte not spooled.
    pub(super) fn stop_spooling(&self) {
        self.state().ledger.stop();
    }

    /// The ingest wrote shard files for every byte before `written`: frees the spool's range
    /// behind them, in whole steps (no read of it starts from now on).
    pub(super) fn free_spool_up_to(&self, written: u64) {
        let (spool, range) = {
            let mut state = self.state();
            let Some(spool) = state.spool.clone() else {
                return;
            };
            let Some(range) = state.ledger.free_up_to(written) else {
                return;
            };
            (spool, range)
        };
        spool.punch(range.start, range.end - range.start);
    }

    /// Whether a spool read of `range` that [`next`](Self::next) allowed may be sent: no part of
    /// it was freed while it ran.
    pub fn spool_read_still_good(&self, range: &std::ops::Range<u64>) -> bool {
        self.state().ledger.read_still_good(range)
    }

    /// Whether the source may be read further: the ingest is less than the spool's lag bound
    /// behind it (always, without a spool or once the blob passes through).
    pub(super) fn source_may_go_on(&self) -> bool {
        let state = self.state();
        if state.spool.is_none() || state.passing_through {
            return true;
        }
        state.ledger.source_may_go_on(state.received)
    }

    /// The ingest has read the spool up to `end` (the source waits on this).
    pub(super) fn ingest_read_to(&self, end: u64) {
        self.state().ledger.ingest_read_to(end);
        self.notify();
    }

    /// While passing through, waits until `len` more bytes fit in the window (or every reader has
    /// read everything received). Returns `false` when no reader is left to send them to.
    pub(super) async fn wait_for_room(&self, len: u64) -> bool {
        let mut progress = self.progress.subscribe();
        loop {
            progress.borrow_and_update();
            {
                let state = self.state();
                if state.readers.is_empty() {
                    return false;
                }
                let held = state.received - state.pending_start;
                let behind = state
                    .readers
                    .values()
                    .any(|&cursor| cursor < state.received);
                if !state.passing_through || held + len <= PASS_THROUGH_WINDOW || !behind {
                    return true;
                }
            }
            if progress.changed().await.is_err() {
                return false;
            }
        }
    }

    fn reader_moved(&self, id: u64, cursor: Option<u64>) {
        let mut state = self.state();
        match cursor {
            Some(cursor) => {
                if let Some(at) = state.readers.get_mut(&id) {
                    *at = cursor;
                }
            }
            None => {
                state.readers.remove(&id);
            }
        }
        state.trim();
        drop(state);
        self.progress
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    fn state(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver that wakes on every change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records where the bytes come from (again when the source changes).
    pub(super) fn set_source(&self, source: FlightSource) {
        {
            let mut state = self.state();
            state.source = Some(source);
            if !state.sources_seen.contains(&source) {
                state.sources_seen.push(source);
            }
        }
        self.notify();
    }

    /// Every source the bytes came from so far, also after the flight ended.
    pub fn sources_seen(&self) -> Vec<FlightSource> {
        self.state().sources_seen.clone()
    }

    /// Where the bytes come from, once decided; `Some(None)` if the flight ended first.
    pub fn source(&self) -> Option<Option<FlightSource>> {
        let state = self.state();
        if state.passing_through {
            return Some(None);
        }
        match (state.source, &state.outcome) {
            (Some(source), None) => Some(Some(source)),
            (_, Some(_)) => Some(None),
            (None, None) => None,
        }
    }

    /// How the flight ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        self.state().outcome.clone()
    }

    /// The blob's length, if known.
    pub fn total(&self) -> Option<u64> {
        self.state().total
    }

    /// For a peer following the flight: shard `index`, once written.
    pub fn shard(&self, index: usize) -> NextShard {
        let mut state = self.state();
        if !state.peer_followed {
            // The peer needs shard files as they come, not after the client's last byte.
            state.peer_followed = true;
            if let Some((feed, _)) = &state.feed {
                feed.peer_follows();
            }
        }
        if let Some(Outcome::Failed(_)) = &state.outcome {
            return NextShard::Failed;
        }
        if let Some(shard) = state.shards.get(index) {
            return NextShard::Ready(shard.clone());
        }
        if state.shards_complete {
            return NextShard::End;
        }
        // No shard file will follow: the follower goes on from another source.
        if state.passing_through {
            return NextShard::Failed;
        }
        NextShard::Wait
    }

    pub(super) fn start(&self, total: Option<u64>) {
        let mut state = self.state();
        state.started = true;
        state.total = total;
        drop(state);
        self.notify();
    }

    pub(super) fn push(&self, bytes: Bytes) {
        let mut state = self.state();
        state.received += bytes.len() as u64;
        state.pending.push_back(bytes);
        state.trim();
        drop(state);
        self.notify();
    }

    pub(super) fn add_shards(&self, shards: Vec<StoredShard>) {
        if shards.is_empty() {
            return;
        }
        let mut state = self.state();
        if state.passing_through {
            // Shards reported after the failure are not kept by anything: ignore them.
            return;
        }
        for shard in shards {
            let flushed = shard.offset + u64::from(shard.len);
            state.shards.push(shard);
            state.drop_pending_below(flushed);
        }
        drop(state);
        // Readers waiting for bytes the spool no longer holds find them in the new files.
        self.notify();
    }

    /// The ingest verified the blob's sha256 and has reported every shard.
    pub(super) fn mark_verified(&self) {
        let mut state = self.state();
        state.verified = true;
        state.shards_complete = true;
        drop(state);
        self.notify();
    }

    /// The sha256 of every byte received matched: the last byte may be released. Peers
    /// following shard by shard wait for [`mark_verified`](Self::mark_verified).
    pub(super) fn mark_digest_matched(&self) {
        self.state().verified = true;
        self.notify();
    }

    pub(super) fn finish(&self, outcome: Outcome) {
        let mut state = self.state();
        // A blob passed through is still being read from memory; otherwise nothing more is read
        // from it (committed: every byte is in a shard file; failed: nothing is read).
        if let Outcome::Failed(_) = outcome {
            state.kept_ingest = None;
        }
        if !matches!(outcome, Outcome::PassedThrough) {
            state.pending.clear();
            // Committed: every byte is in a shard file; failed: nothing is read. The spool's
            // file goes with its last holder (a read in progress ends first).
            state.spool = None;
            state.ledger.stop();
        }
        state.outcome = Some(outcome);
        state.started = true;
        drop(state);
        self.notify();
    }

    /// `Some(total)` once the upstream answered (total may be unknown), or the failure if it failed
    /// before that; `None` while still connecting.
    pub fn header_state(&self) -> Option<Result<Option<u64>, PullError>> {
        let state = self.state();
        match &state.outcome {
            Some(Outcome::Failed(error)) if state.received == 0 => Some(Err(error.clone())),
            _ if state.started => Some(Ok(state.total.or(match state.outcome {
                Some(Outcome::Committed | Outcome::PassedThrough) => Some(state.received),
                _ => None,
            }))),
            _ => None,
        }
    }

    /// What a reader at `cursor` (wanting bytes before `end`, if known) gets next.
    pub fn next(&self, cursor: u64, end: Option<u64>) -> Next {
        let state = self.state();
        if let Some(Outcome::Failed(error)) = &state.outcome {
            return Next::Failed(error.clone());
        }
        let verified = state.verified;
        let end = end.or(if verified { Some(state.received) } else { None });
        if end.is_some_and(|end| cursor >= end) {
            return Next::End;
        }
        // Hold back the last byte until the digest has matched.
        let complete = state.total.is_some_and(|t| state.received >= t) || state.total.is_none();
        let holdback = u64::from(!verified && complete);
        let readable = state
            .received
            .saturating_sub(holdback)
            .min(end.unwrap_or(u64::MAX));
        if cursor >= readable {
            return Next::Wait;
        }
        if cursor >= state.pending_start {
            let mut offset = state.pending_start;
            for piece in &state.pending {
                let piece_end = offset + piece.len() as u64;
                if cursor < piece_end {
                    let from = (cursor - offset) as usize;
                    let to = (piece_end.min(readable) - offset) as usize;
                    return Next::Bytes(piece.slice(from..to));
                }
                offset = piece_end;
            }
            return Next::Wait;
        }
        let index = state
            .shards
            .partition_point(|s| s.offset + u64::from(s.len) <= cursor);
        let Some(shard) = state.shards.get(index) else {
            if let (Some(spool), Some(range)) =
                (&state.spool, state.ledger.readable(cursor, readable))
            {
                return Next::Spool(spool.clone(), range);
            }
            if state.passing_through {
                return Next::Failed(PullError::Internal(
                    "bytes no longer held by a flight passing through".into(),
                ));
            }
            return Next::Wait;
        };
        let shard_end = shard.offset + u64::from(shard.len);
        Next::File(
            shard.clone(),
            cursor - shard.offset,
            shard_end.min(readable) - cursor,
        )
    }
}

/// Reads `len` bytes at `offset` of a shard file written by this flight (blocking).
pub fn read_file_range(shard: &StoredShard, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let mut file = std::fs::File::open(&shard.path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buffer = vec![0u8; len as usize];
    file.read_exact(&mut buffer)?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use shoal_proto::ShardHash;

    use super::*;

    fn flight() -> Arc<Flight> {
        Flight::new(BlobDigest::from_bytes([7; 32]))
    }

    fn bytes_of(next: Next) -> Bytes {
        match next {
            Next::Bytes(bytes) => bytes,
            _ => panic!("expected bytes"),
        }
    }

    #[test]
    fn a_flight_passing_through_holds_at_most_its_window_and_waits_for_its_slowest_reader() {
        let flight = flight();
        let fast = flight.join().unwrap();
        let slow = flight.join().unwrap();
        flight.start(None);
        flight.pass_through(None);
        let piece = Bytes::from(vec![1u8; 1 << 20]);
        let mut pushed = 0u64;
        while flight.wait_for_room(piece.len() as u64).now_or_never() == Some(true) {
            flight.push(piece.clone());
            pushed += piece.len() as u64;
            fast.advance(pushed);
            assert!(pushed <= PASS_THROUGH_WINDOW);
        }
        assert_eq!(pushed, PASS_THROUGH_WINDOW);
        // The slow reader moves: there is room again, and what both passed is dropped.
        slow.advance(pushed / 2);
        assert_eq!(
            flight.wait_for_room(piece.len() as u64).now_or_never(),
            Some(true)
        );
        assert_eq!(flight.state().pending_start, pushed / 2);
        assert_eq!(bytes_of(flight.next(pushed / 2, None)), piece);
        // A request arriving now would need bytes already dropped: it does not join.
        assert!(flight.join().is_none());
        // With every reader gone there is nobody to send the rest to.
        drop((fast, slow));
        assert_eq!(flight.wait_for_room(1).now_or_never(), Some(false));
    }

    #[test]
    fn a_flight_that_stores_never_waits_for_its_readers() {
        let flight = flight();
        let _stalled = flight.join().unwrap();
        flight.start(None);
        flight.push(Bytes::from(vec![0u8; 2 * PASS_THROUGH_WINDOW as usize]));
        assert_eq!(flight.wait_for_room(1 << 20).now_or_never(), Some(true));
    }

    #[test]
    fn a_blob_passed_through_keeps_its_last_byte_until_verified_and_stays_readable_after() {
        let flight = flight();
        let reader = flight.join().unwrap();
        flight.start(Some(10));
        flight.pass_through(None);
        flight.push(Bytes::from_static(b"0123456789"));
        assert_eq!(&bytes_of(flight.next(0, Some(10)))[..], b"012345678");
        assert!(matches!(flight.next(9, Some(10)), Next::Wait));
        flight.mark_verified();
        flight.finish(Outcome::PassedThrough);
        assert_eq!(&bytes_of(flight.next(9, Some(10)))[..], b"9");
        assert!(matches!(flight.next(10, Some(10)), Next::End));
        assert!(matches!(flight.header_state(), Some(Ok(Some(10)))));
        reader.advance(10);
        // Done: nothing joins a flight whose blob was not stored.
        assert!(flight.join().is_none());
    }

    #[test]
    fn a_matched_digest_releases_the_last_byte_while_peers_still_wait_for_the_last_shards() {
        let flight = flight();
        let _reader = flight.join().unwrap();
        flight.start(Some(10));
        flight.push(Bytes::from_static(b"0123456789"));
        let shard = |offset, len, byte| StoredShard {
            offset,
            len,
            path: "/nonexistent".into(),
            hash: ShardHash::from_bytes([byte; 32]),
        };
        flight.add_shards(vec![shard(0, 4, 1)]);
        assert!(matches!(flight.next(9, Some(10)), Next::Wait));
        flight.mark_digest_matched();
        assert_eq!(&bytes_of(flight.next(9, Some(10)))[..], b"9");
        // The ingest has not written the last shard yet: a follower waits for it, not the end.
        assert!(matches!(flight.shard(1), NextShard::Wait));
        flight.add_shards(vec![shard(4, 6, 2)]);
        assert!(matches!(flight.shard(1), NextShard::Ready(_)));
        assert!(matches!(flight.shard(2), NextShard::Wait));
        flight.mark_verified();
        assert!(matches!(flight.shard(2), NextShard::End));
    }

    #[test]
    fn a_late_joiner_reads_the_start_from_shard_files_and_the_rest_from_memory() {
        let flight = flight();
        let _first = flight.join().unwrap();
        flight.start(Some(10));
        flight.push(Bytes::from_static(b"0123456789"));
        flight.add_shards(vec![StoredShard {
            offset: 0,
            len: 6,
            path: "/shard-0".into(),
            hash: ShardHash::from_bytes([1; 32]),
        }]);
        // Joining after the first shard left memory: the start comes from its file.
        let late = flight.join().expect("a storing flight takes late joiners");
        match flight.next(0, None) {
            Next::File(shard, offset, len) => {
                assert_eq!(shard.path, std::path::PathBuf::from("/shard-0"));
                assert_eq!((offset, len), (0, 6));
            }
            _ => panic!("expected the shard file"),
        }
        late.advance(6);
        // The rest is in memory, without its last byte until the digest matched.
        assert_eq!(&bytes_of(flight.next(6, Some(10)))[..], b"678");
        flight.mark_digest_matched();
        assert_eq!(&bytes_of(flight.next(9, Some(10)))[..], b"9");
        assert!(matches!(flight.next(10, Some(10)), Next::End));
    }

    #[test]
    fn a_source_failing_mid_body_fails_every_reader_and_every_follower_and_never_ends_cleanly() {
        let flight = flight();
        let reader = flight.join().unwrap();
        flight.start(Some(10));
        flight.set_source(FlightSource::Origin);
        flight.push(Bytes::from_static(b"01234"));
        assert_eq!(&bytes_of(flight.next(0, Some(10)))[..], b"01234");
        reader.advance(5);
        flight.finish(Outcome::Failed(PullError::UpstreamUnavailable(
            "connection reset".into(),
        )));
        // Readers get an error, never an end: their responses are aborted, not cut short.
        assert!(matches!(flight.next(5, Some(10)), Next::Failed(_)));
        assert!(matches!(flight.next(0, Some(10)), Next::Failed(_)));
        // Peers following it are told it failed, and it is no longer offered.
        assert!(matches!(flight.shard(0), NextShard::Failed));
        assert_eq!(flight.source(), Some(None));
        // Bytes had been sent: the header was good, the failure comes in the body.
        assert!(matches!(flight.header_state(), Some(Ok(Some(10)))));
    }

    #[test]
    fn a_flight_failing_before_its_first_byte_fails_the_header() {
        let flight = flight();
        let _reader = flight.join().unwrap();
        assert!(flight.header_state().is_none(), "still connecting");
        flight.finish(Outcome::Failed(PullError::NotFound));
        assert!(matches!(
            flight.header_state(),
            Some(Err(PullError::NotFound))
        ));
    }

    #[test]
    fn a_cancelled_reader_no_longer_holds_bytes_of_a_flight_passing_through() {
        let flight = flight();
        let stays = flight.join().unwrap();
        let leaves = flight.join().unwrap();
        flight.start(None);
        flight.pass_through(None);
        flight.push(Bytes::from(vec![1u8; 100]));
        stays.advance(100);
        // The one that left early still pins its bytes until it is gone.
        assert_eq!(flight.state().pending_start, 0);
        drop(leaves);
        assert_eq!(flight.state().pending_start, 100);
        // The flight goes on for the reader that stayed.
        flight.push(Bytes::from(vec![2u8; 10]));
        assert_eq!(
            bytes_of(flight.next(100, None)).len(),
            9,
            "the last byte held back"
        );
        drop(stays);
        assert_eq!(flight.wait_for_room(1).now_or_never(), Some(false));
    }

    #[test]
    fn peers_following_a_flight_that_stops_storing_get_no_shard_beyond_the_last_written() {
        let flight = flight();
        let _reader = flight.join().unwrap();
        flight.start(Some(100));
        flight.set_source(FlightSource::Origin);
        flight.push(Bytes::from(vec![0u8; 60]));
        flight.add_shards(vec![StoredShard {
            offset: 0,
            len: 40,
            path: "/nonexistent".into(),
            hash: ShardHash::from_bytes([1; 32]),
        }]);
        assert!(matches!(flight.shard(1), NextShard::Wait));
        assert_eq!(flight.source(), Some(Some(FlightSource::Origin)));
        flight.pass_through(None);
        assert!(matches!(flight.shard(0), NextShard::Ready(_)));
        assert!(matches!(flight.shard(1), NextShard::Failed));
        // No longer offered to peers.
        assert_eq!(flight.source(), Some(None));
        // Readers still get the bytes after the shard from memory.
        assert_eq!(bytes_of(flight.next(40, None)).len(), 20);
    }

    const MIB: usize = 1 << 20;

    /// A flight storing its blob through a spool, with `len` bytes pushed and spooled in 1 MiB
    /// reads, as the driver and the spooling thread do it.
    fn spooling_flight(
        dir: &std::path::Path,
        len: usize,
        lag_bound: u64,
    ) -> (Arc<Flight>, Arc<Spool>, Vec<u8>) {
        let flight = flight();
        let spool = Arc::new(Spool::create(dir.join("spool")).unwrap());
        flight.attach_spool(spool.clone(), lag_bound, Arc::new(SpoolFeed::default()));
        flight.start(Some(len as u64));
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        for piece in data.chunks(MIB) {
            flight.push(Bytes::copy_from_slice(piece));
            spool.append(piece).unwrap();
            flight.spooled_to(spool.len());
        }
        (flight, spool, data)
    }

    #[test]
    fn a_waiting_client_makes_the_ingest_yield_until_a_peer_follows() {
        use crate::pullthrough::spooling::FeedStep;
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(dir.path().join("spool")).unwrap());
        // The client came before the spool: the yield starts when the feed is attached.
        let flight = flight();
        flight.client_waits();
        let feed = Arc::new(SpoolFeed::default());
        flight.attach_spool(spool.clone(), 80, feed.clone());
        feed.spooled(0, 10, None);
        assert!(feed.try_next(100).is_none(), "yields to the client");
        assert!(matches!(flight.shard(0), NextShard::Wait));
        assert!(
            matches!(feed.try_next(100), Some(FeedStep::Read(_))),
            "a following peer needs the shard files now"
        );

        // A flight ahead of demand ingests at once until a client joins.
        let flight = self::flight();
        let feed = Arc::new(SpoolFeed::default());
        flight.attach_spool(spool, 80, feed.clone());
        feed.spooled(0, 10, None);
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(_))));
        flight.client_waits();
        feed.spooled(10, 10, None);
        assert!(feed.try_next(100).is_none());
    }

    fn shard_at(offset: u64, len: u32) -> StoredShard {
        StoredShard {
            offset,
            len,
            path: format!("/shard-{offset}").into(),
            hash: ShardHash::from_bytes([1; 32]),
        }
    }

    /// Reads at `cursor` as a reader would: bytes from memory or the spool, the shard's path and
    /// offset for a file.
    fn read_at(flight: &Flight, cursor: u64) -> Result<Bytes, (std::path::PathBuf, u64)> {
        match flight.next(cursor, None) {
            Next::Bytes(bytes) => Ok(bytes),
            Next::Spool(spool, range) => {
                let bytes = spool
                    .read_at(range.start, (range.end - range.start) as usize)
                    .unwrap();
                assert!(flight.spool_read_still_good(&range));
                Ok(bytes)
            }
            Next::File(shard, offset, _) => Err((shard.path, offset)),
            _ => panic!("expected bytes at {cursor}"),
        }
    }

    #[test]
    fn a_reader_at_any_offset_gets_the_right_bytes_while_the_ingest_lags_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (flight, _spool, data) = spooling_flight(dir.path(), 20 * MIB, 1 << 40);
        // Memory holds only the newest window; everything else comes from the spool.
        let pending_start = flight.state().pending_start;
        assert_eq!(
            pending_start,
            (20 * MIB) as u64 - super::super::spooling::MEMORY_WINDOW
        );
        for cursor in [0, 1, 3 * MIB + 17, pending_start as usize - 1, 19 * MIB] {
            let bytes = read_at(&flight, cursor as u64).unwrap();
            assert!(!bytes.is_empty());
            assert_eq!(
                &bytes[..],
                &data[cursor..cursor + bytes.len()],
                "at {cursor}"
            );
        }
        // A late reader can always join: the spool keeps every byte the shards do not.
        assert!(flight.join().is_some());
        // The ingest wrote shards up to 9 MiB and freed the spool's first 8: those bytes now come
        // from the shard files, the rest still from the spool.
        flight.add_shards(vec![shard_at(0, 9 * MIB as u32)]);
        flight.free_spool_up_to(9 * MIB as u64);
        assert_eq!(read_at(&flight, 5).unwrap_err(), ("/shard-0".into(), 5));
        let bytes = read_at(&flight, 9 * MIB as u64).unwrap();
        assert_eq!(&bytes[..], &data[9 * MIB..9 * MIB + bytes.len()]);
        assert!(flight.join().is_some());
    }

    #[test]
    fn a_spool_read_overtaken_by_a_free_of_its_range_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (flight, _spool, _) = spooling_flight(dir.path(), 20 * MIB, 1 << 40);
        let Next::Spool(_, range) = flight.next(9 * MIB as u64, None) else {
            panic!("expected the spool");
        };
        // The ingest races ahead and frees past the read's start before it is sent.
        flight.free_spool_up_to(17 * MIB as u64);
        assert!(!flight.spool_read_still_good(&range));
        // Asked again, the reader waits for the shards' files instead of reading freed bytes.
        assert!(matches!(flight.next(9 * MIB as u64, None), Next::Wait));
        flight.add_shards(vec![shard_at(0, 17 * MIB as u32)]);
        assert!(matches!(flight.next(9 * MIB as u64, None), Next::File(..)));
    }

    #[test]
    fn the_source_waits_while_the_ingest_is_the_lag_bound_behind_and_not_once_passing_through() {
        let dir = tempfile::tempdir().unwrap();
        let (flight, _spool, _) = spooling_flight(dir.path(), 16 * MIB, 16 * MIB as u64);
        assert!(!flight.source_may_go_on());
        // The ingest reads its first piece: the source may go on.
        flight.ingest_read_to(MIB as u64);
        assert!(flight.source_may_go_on());
        flight.push(Bytes::from(vec![0u8; MIB]));
        assert!(!flight.source_may_go_on());
        // The store fails: no ingest sets the pace any more (the window does).
        flight.pass_through(None);
        assert!(flight.source_may_go_on());
    }

    #[test]
    fn the_last_byte_is_released_by_the_digest_while_the_ingest_still_reads_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (flight, spool, data) = spooling_flight(dir.path(), 12 * MIB, 1 << 40);
        let last = (12 * MIB - 1) as u64;
        assert!(matches!(flight.next(last, None), Next::Wait));
        flight.mark_digest_matched();
        assert_eq!(&read_at(&flight, last).unwrap()[..], &data[12 * MIB - 1..]);
        assert!(matches!(flight.next(last + 1, None), Next::End));
        // No shard is written yet: peers following shard by shard wait, nothing is committed,
        // and the spool stays until the flight ends.
        assert!(matches!(flight.shard(0), NextShard::Wait));
        assert!(flight.outcome().is_none());
        assert!(spool.path().exists());
        flight.add_shards(vec![shard_at(0, 12 * MIB as u32)]);
        flight.mark_verified();
        flight.finish(Outcome::Committed);
        // Committed: everything comes from the shard files, and the flight let go of the spool.
        assert_eq!(read_at(&flight, 0).unwrap_err(), ("/shard-0".into(), 0));
        assert_eq!(Arc::strong_count(&spool), 1);
        let path = spool.path().to_path_buf();
        drop(spool);
        assert!(!path.exists());
    }

    #[test]
    fn a_flight_passing_through_keeps_serving_what_its_spool_holds_and_refuses_joiners_it_cannot_serve(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (flight, _spool, data) = spooling_flight(dir.path(), 20 * MIB, 1 << 40);
        let reader = flight.join().unwrap();
        flight.add_shards(vec![shard_at(0, 9 * MIB as u32)]);
        flight.free_spool_up_to(9 * MIB as u64);
        flight.pass_through(None);
        // The spool still holds 8 MiB onwards, and the shards reach 9: a joiner could read it all.
        assert!(flight.join().is_some());
        let bytes = read_at(&flight, 10 * MIB as u64).unwrap();
        assert_eq!(&bytes[..], &data[10 * MIB..10 * MIB + bytes.len()]);
        drop(reader);
        // A spool freed beyond the shards the flight knows leaves a gap no joiner could read once
        // no more shards will come: then a request starts a new fetch instead.
        let other = tempfile::tempdir().unwrap();
        let (flight, _spool, _) = spooling_flight(other.path(), 20 * MIB, 1 << 40);
        let _reader = flight.join().unwrap();
        flight.add_shards(vec![shard_at(0, 9 * MIB as u32)]);
        flight.free_spool_up_to(17 * MIB as u64);
        assert!(
            flight.join().is_some(),
            "storing: the shards up to 17 MiB will be reported"
        );
        flight.pass_through(None);
        assert!(flight.join().is_none());
        assert!(matches!(
            flight.next(10 * MIB as u64, None),
            Next::Failed(_)
        ));
    }
}
