//! How a flight that stores its blob lets the client's path run ahead of the ingest: the pure
//! bookkeeping of the flight's spool ([`SpoolLedger`]), the ordered list of what the ingest reads
//! from it ([`SpoolSegments`], behind the blocking [`SpoolFeed`]), and the ingest thread's lower
//! CPU priority.
//!
//! The client's critical path is: network read, append to the spool, SHA-256, serve. The ingest
//! (cut, BLAKE3, shard writes, commit) reads the spool behind it on a thread of lower priority,
//! so on a busy machine the client's work goes first and the ingest takes what is left. Three
//! bounds keep that honest:
//! - the ingest may fall at most a lag bound behind the source ([`lag_bound`]); beyond it the
//!   driver waits, so a sustained stream of pulls degrades to the ingest's pace, never to an
//!   unbounded spool;
//! - memory holds only the newest bytes ([`MEMORY_WINDOW`]) and those not in the spool yet;
//! - the spool's ranges the ingest has written to shard files are freed as it goes
//!   ([`SpoolLedger::free_up_to`]), so the blob takes about its own size on disk.
//!
//! **Invariant:** a range of the spool is read by a reader only if it was appended and not
//! freed when the read began, and the read is discarded if a free of that range began while it
//! ran ([`SpoolLedger::read_still_good`]): freed ranges read as zeros and are never served.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use shoal_proto::{BlobDigest, ShardHash};

use crate::store::StoreError;

/// The most bytes the ingest may fall behind the source before the source waits.
pub const SPOOL_MAX_LAG: u64 = 256 << 20;
/// The lag allowed however little spare disk there is (about what the ingest's own queues held
/// before the spool).
pub const SPOOL_MIN_LAG: u64 = 16 << 20;
/// The newest bytes of a flight kept in memory as well as in the spool, so that readers keeping
/// up with the source do not read the file.
pub const MEMORY_WINDOW: u64 = 8 << 20;
/// Spool ranges are freed in aligned steps of this size (one `fallocate` per step).
pub const FREE_STEP: u64 = 8 << 20;
/// The most bytes one reader reads from the spool at once.
pub const SPOOL_READ_MAX: u64 = 1 << 20;
/// The most bytes the ingest reads from the spool at once to cut them.
pub const INGEST_READ_PIECE: u64 = 1 << 20;

/// How far the ingest may fall behind the source: [`SPOOL_MAX_LAG`], or less when the file
/// system's free space (`available`, if known) beyond the blob's own shards (`blob_len`, if
/// known) is smaller; never below [`SPOOL_MIN_LAG`].
pub fn lag_bound(blob_len: Option<u64>, available: Option<u64>) -> u64 {
    let spare = available.map_or(u64::MAX, |free| free.saturating_sub(blob_len.unwrap_or(0)));
    SPOOL_MAX_LAG.min(spare).max(SPOOL_MIN_LAG)
}

/// What a flight knows of its spool: how much is in it, how much is freed, how far the source
/// may run ahead of the ingest. Pure: the flight calls it under its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolLedger {
    /// Bytes `0..spooled` are in the spool file.
    spooled: u64,
    /// Bytes `0..freed` are freed or being freed: never read from the spool again.
    freed: u64,
    /// The ingest has read bytes `0..ingest_read` from the spool.
    ingest_read: u64,
    /// Appends stopped (the blob passes through, or an append failed).
    stopped: bool,
    lag_bound: u64,
}

impl SpoolLedger {
    /// An empty spool whose ingest may fall `lag_bound` bytes behind.
    pub fn new(lag_bound: u64) -> Self {
        Self {
            spooled: 0,
            freed: 0,
            ingest_read: 0,
            stopped: false,
            lag_bound,
        }
    }

    /// The spool now holds bytes up to `end`.
    pub fn appended(&mut self, end: u64) {
        if !self.stopped {
            self.spooled = self.spooled.max(end);
        }
    }

    /// No more appends: what is spooled stays readable until the spool is dropped.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The ingest has read the spool up to `end`.
    pub fn ingest_read_to(&mut self, end: u64) {
        self.ingest_read = self.ingest_read.max(end);
    }

    /// Whether the source may be read further, with `received` bytes read. The ingest's pace is
    /// what it has read, not what it has written: the shards it has yet to report are bounded by
    /// its own queues, and it reports them only as it reads more, so waiting on them could wait
    /// for ever. Once appends stopped the ingest no longer sets the pace.
    pub fn source_may_go_on(&self, received: u64) -> bool {
        self.stopped || received.saturating_sub(self.ingest_read) < self.lag_bound
    }

    /// The first byte memory must still hold, with `received` bytes read: everything before it
    /// is in the spool, and the newest [`MEMORY_WINDOW`] bytes stay in memory too.
    pub fn memory_keep_from(&self, received: u64) -> u64 {
        self.spooled.min(received.saturating_sub(MEMORY_WINDOW))
    }

    /// The range a reader at `cursor` may read from the spool, ending at `limit` at the latest
    /// (and after at most [`SPOOL_READ_MAX`] bytes); `None` if the spool does not hold `cursor`.
    pub fn readable(&self, cursor: u64, limit: u64) -> Option<Range<u64>> {
        let end = self
            .spooled
            .min(limit)
            .min(cursor.saturating_add(SPOOL_READ_MAX));
        (cursor >= self.freed && cursor < end).then_some(cursor..end)
    }

    /// Whether a read of `range` that [`readable`](Self::readable) allowed is still good now
    /// that it has run: no free of any of its bytes began meanwhile.
    pub fn read_still_good(&self, range: &Range<u64>) -> bool {
        self.freed <= range.start
    }

    /// Whether a reader can find every byte from `from` on in the spool (none freed, all
    /// appended up to `to`).
    pub fn holds(&self, from: u64, to: u64) -> bool {
        self.freed <= from && to <= self.spooled
    }

    /// The ingest has written shard files for every byte before `written`: the range to free now,
    /// if a whole [`FREE_STEP`] is due, aligned to the step. Marks it freed before the caller
    /// frees it, so no read of it starts (or is trusted) from here on.
    pub fn free_up_to(&mut self, written: u64) -> Option<Range<u64>> {
        let end = written.min(self.spooled) / FREE_STEP * FREE_STEP;
        if end < self.freed + FREE_STEP {
            return None;
        }
        let range = self.freed..end;
        self.freed = end;
        Some(range)
    }
}

/// One stretch of the spool for the ingest to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where it starts in the spool.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Set when the stretch is one shard cut by a peer with this store's settings, whose BLAKE3
    /// was checked: stored as it is. Otherwise the bytes are cut like origin bytes.
    pub shard: Option<ShardHash>,
}

/// The ordered stretches of the spool the ingest has yet to read. Bytes to cut that follow each
/// other merge into one stretch, so the list stays short however many network reads fed it.
#[derive(Debug, Default)]
pub struct SpoolSegments {
    queue: VecDeque<Segment>,
}

impl SpoolSegments {
    /// Bytes `offset..offset + len` are spooled; `shard` as in [`Segment::shard`].
    pub fn push(&mut self, offset: u64, len: u64, shard: Option<ShardHash>) {
        if len == 0 {
            return;
        }
        if shard.is_none() {
            if let Some(last) = self.queue.back_mut() {
                if last.shard.is_none() && last.offset + last.len == offset {
                    last.len += len;
                    return;
                }
            }
        }
        self.queue.push_back(Segment { offset, len, shard });
    }

    /// The next stretch to read: a whole shard, or at most `max` bytes to cut.
    pub fn take(&mut self, max: u64) -> Option<Segment> {
        let front = self.queue.front_mut()?;
        if front.shard.is_some() || front.len <= max {
            return self.queue.pop_front();
        }
        let piece = Segment {
            offset: front.offset,
            len: max,
            shard: None,
        };
        front.offset += max;
        front.len -= max;
        Some(piece)
    }
}

/// What the ingest does next.
#[derive(Debug)]
pub enum FeedStep {
    /// Read and store this stretch of the spool.
    Read(Segment),
    /// Every byte was read: the end of the blob, with the sha256 the source's bytes had.
    End(BlobDigest),
    /// The spool could not be written: the store cannot take the blob.
    SpoolFailed(StoreError),
    /// The driver gave up.
    Abandoned,
}

#[derive(Debug, Default)]
struct FeedState {
    segments: SpoolSegments,
    end: Option<BlobDigest>,
    failed: Option<StoreError>,
    closed: bool,
}

/// The blocking hand-over between the thread that spools the source's bytes and the ingest
/// thread that reads them.
#[derive(Debug, Default)]
pub struct SpoolFeed {
    state: Mutex<FeedState>,
    ready: Condvar,
    /// The ingest thread ended, whichever way.
    ingest_ended: AtomicBool,
}

impl SpoolFeed {
    fn state(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, change: impl FnOnce(&mut FeedState)) {
        change(&mut self.state());
        self.ready.notify_all();
    }

    /// Bytes `offset..offset + len` are in the spool.
    pub fn spooled(&self, offset: u64, len: u64, shard: Option<ShardHash>) {
        self.changed(|state| state.segments.push(offset, len, shard));
    }

    /// Every byte is spooled; `actual` is their sha256.
    pub fn end(&self, actual: BlobDigest) {
        self.changed(|state| state.end = Some(actual));
    }

    /// Appending to the spool failed.
    pub fn fail(&self, error: StoreError) {
        self.changed(|state| {
            if state.failed.is_none() {
                state.failed = Some(error);
            }
        });
    }

    /// The driver is done with the feed: without an end, the ingest is abandoned.
    pub fn close(&self) {
        self.changed(|state| state.closed = true);
    }

    /// For the ingest thread: waits for the next step, reading at most `max` bytes to cut at once.
    pub fn next(&self, max: u64) -> FeedStep {
        let mut state = self.state();
        loop {
            if let Some(error) = state.failed.take() {
                return FeedStep::SpoolFailed(error);
            }
            if let Some(segment) = state.segments.take(max) {
                return FeedStep::Read(segment);
            }
            if let Some(actual) = state.end {
                return FeedStep::End(actual);
            }
            if state.closed {
                return FeedStep::Abandoned;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The ingest thread ended.
    pub fn ingest_ended(&self) {
        self.ingest_ended.store(true, Ordering::SeqCst);
    }

    /// Whether the ingest thread ended.
    pub fn has_ingest_ended(&self) -> bool {
        self.ingest_ended.load(Ordering::SeqCst)
    }
}

/// The nice value of the ingest threads: a low priority, so that the client's path (network
/// reads, spool appends, SHA-256, sends) and other processes' work go first on a busy machine.
pub const INGEST_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`INGEST_NICE`] for the rest of its life (threads
/// it starts inherit it). Only for a thread of its own: a thread cannot raise its priority back
/// without privileges, so a pooled thread must never call this.
pub fn lower_this_threads_priority() {
    // Linux keeps the nice value per thread: this changes only the calling thread's.
    let this_thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(this_thread), INGEST_NICE) {
        tracing::debug!(%error, "cannot lower the ingest thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_source_waits_once_the_ingest_is_the_lag_bound_behind_and_goes_on_when_it_catches_up() {
        let mut ledger = SpoolLedger::new(64 * MIB);
        assert!(ledger.source_may_go_on(63 * MIB));
        assert!(!ledger.source_may_go_on(64 * MIB));
        ledger.ingest_read_to(1);
        assert!(ledger.source_may_go_on(64 * MIB));
        ledger.ingest_read_to(240 * MIB);
        assert!(ledger.source_may_go_on(300 * MIB));
        assert!(!ledger.source_may_go_on(304 * MIB));
        // Once the spool stopped (the blob passes through) the ingest no longer sets the pace.
        ledger.stop();
        assert!(ledger.source_may_go_on(1 << 40));
    }

    #[test]
    fn the_lag_bound_shrinks_with_the_spare_disk_but_never_below_the_floor() {
        assert_eq!(lag_bound(Some(100 * MIB), None), SPOOL_MAX_LAG);
        assert_eq!(lag_bound(None, Some(1 << 40)), SPOOL_MAX_LAG);
        assert_eq!(lag_bound(Some(100 * MIB), Some(164 * MIB)), 64 * MIB);
        assert_eq!(lag_bound(Some(100 * MIB), Some(50 * MIB)), SPOOL_MIN_LAG);
    }

    #[test]
    fn memory_keeps_only_the_newest_window_and_what_is_not_spooled_yet() {
        let mut ledger = SpoolLedger::new(SPOOL_MAX_LAG);
        // Nothing spooled: memory keeps everything.
        assert_eq!(ledger.memory_keep_from(40 * MIB), 0);
        ledger.appended(30 * MIB);
        // Spooled up to 30 MiB of 40 read: what is not spooled stays, and so does the window.
        assert_eq!(ledger.memory_keep_from(40 * MIB), 30 * MIB);
        ledger.appended(40 * MIB);
        assert_eq!(ledger.memory_keep_from(40 * MIB), 40 * MIB - MEMORY_WINDOW);
        // Appends never move the spool backwards.
        ledger.appended(10 * MIB);
        assert!(ledger.holds(0, 40 * MIB));
    }

    #[test]
    fn a_reader_reads_any_spooled_offset_not_freed_and_no_further_than_its_limit() {
        let mut ledger = SpoolLedger::new(SPOOL_MAX_LAG);
        assert_eq!(ledger.readable(0, u64::MAX), None);
        ledger.appended(20 * MIB);
        assert_eq!(ledger.readable(0, u64::MAX), Some(0..SPOOL_READ_MAX));
        assert_eq!(ledger.readable(5, 100), Some(5..100));
        assert_eq!(
            ledger.readable(20 * MIB - 10, u64::MAX),
            Some(20 * MIB - 10..20 * MIB)
        );
        assert_eq!(ledger.readable(20 * MIB, u64::MAX), None);
        assert_eq!(ledger.readable(100, 100), None);
        // The ingest wrote shards up to 17 MiB: the first 16 (two whole steps) are freed.
        assert_eq!(ledger.free_up_to(17 * MIB), Some(0..16 * MIB));
        assert_eq!(ledger.readable(MIB, u64::MAX), None);
        assert_eq!(
            ledger.readable(16 * MIB, u64::MAX),
            Some(16 * MIB..17 * MIB)
        );
        assert!(ledger.holds(16 * MIB, 20 * MIB));
        assert!(!ledger.holds(15 * MIB, 20 * MIB));
        assert!(!ledger.holds(16 * MIB, 21 * MIB));
    }

    #[test]
    fn a_read_that_raced_a_free_of_its_range_is_not_trusted() {
        let mut ledger = SpoolLedger::new(SPOOL_MAX_LAG);
        ledger.appended(40 * MIB);
        let read = ledger.readable(9 * MIB, u64::MAX).unwrap();
        assert!(ledger.read_still_good(&read));
        // A free up to 8 MiB leaves the read alone; one that reaches into it does not.
        assert_eq!(ledger.free_up_to(9 * MIB), Some(0..8 * MIB));
        assert!(ledger.read_still_good(&read));
        assert_eq!(ledger.free_up_to(16 * MIB), Some(8 * MIB..16 * MIB));
        assert!(!ledger.read_still_good(&read));
    }

    #[test]
    fn the_spool_is_freed_only_behind_the_shards_in_whole_steps_and_never_beyond_what_it_holds() {
        let mut ledger = SpoolLedger::new(SPOOL_MAX_LAG);
        ledger.appended(12 * MIB);
        assert_eq!(ledger.free_up_to(7 * MIB), None, "less than a step");
        // Shards written beyond the spool (cannot be, but never free what was not appended).
        assert_eq!(ledger.free_up_to(30 * MIB), Some(0..8 * MIB));
        assert_eq!(ledger.free_up_to(30 * MIB), None);
        ledger.appended(40 * MIB);
        assert_eq!(ledger.free_up_to(30 * MIB), Some(8 * MIB..24 * MIB));
        assert_eq!(ledger.readable(20 * MIB, u64::MAX), None);
        assert_eq!(
            ledger.readable(24 * MIB, u64::MAX),
            Some(24 * MIB..25 * MIB)
        );
    }

    #[test]
    fn bytes_to_cut_merge_and_are_read_in_pieces_while_peer_shards_stay_whole() {
        let mut segments = SpoolSegments::default();
        let hash = ShardHash::from_bytes([3; 32]);
        segments.push(0, 10, None);
        segments.push(10, 20, None);
        segments.push(30, 0, None);
        segments.push(30, 50, Some(hash));
        segments.push(80, 5, None);
        let seg = |offset, len, shard| Segment { offset, len, shard };
        assert_eq!(segments.take(12), Some(seg(0, 12, None)));
        assert_eq!(segments.take(100), Some(seg(12, 18, None)));
        // A shard is taken whole whatever the piece size, so its hash still names its bytes.
        assert_eq!(segments.take(12), Some(seg(30, 50, Some(hash))));
        assert_eq!(segments.take(12), Some(seg(80, 5, None)));
        assert_eq!(segments.take(12), None);
    }

    #[test]
    fn the_feed_hands_over_every_segment_before_the_end_and_a_failure_before_either() {
        let feed = SpoolFeed::default();
        feed.spooled(0, 10, None);
        feed.end(BlobDigest::from_bytes([1; 32]));
        assert!(matches!(feed.next(100), FeedStep::Read(s) if s.len == 10));
        assert!(matches!(feed.next(100), FeedStep::End(_)));

        let feed = SpoolFeed::default();
        feed.spooled(0, 10, None);
        feed.fail(StoreError::Closed);
        assert!(matches!(feed.next(100), FeedStep::SpoolFailed(_)));

        let feed = SpoolFeed::default();
        feed.close();
        assert!(matches!(feed.next(100), FeedStep::Abandoned));
    }

    #[test]
    fn the_ingest_thread_waits_for_bytes_spooled_by_another() {
        let feed = std::sync::Arc::new(SpoolFeed::default());
        let reader = {
            let feed = feed.clone();
            std::thread::spawn(move || {
                let mut read = 0;
                loop {
                    match feed.next(4) {
                        FeedStep::Read(segment) => read += segment.len,
                        FeedStep::End(_) => return read,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        };
        for offset in (0..100).step_by(10) {
            feed.spooled(offset, 10, None);
        }
        feed.end(BlobDigest::from_bytes([1; 32]));
        assert_eq!(reader.join().unwrap(), 100);
    }
}
