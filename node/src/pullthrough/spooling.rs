//! How a flight that stores its blob lets the client's path run ahead of the ingest: the pure
//! bookkeeping of the flight's spool ([`SpoolLedger`]), the ordered list of what the ingest reads
//! from it ([`SpoolSegments`], behind the blocking [`SpoolFeed`]), the check that it reads back
//! what was appended ([`ReadBackChecks`]), and the ingest thread's lower CPU priority.
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
//! While a client waits and no peer follows the flight, the ingest takes nothing until the lag
//! nears its bound or the source ends ([`SpoolFeed::yield_to_client`]): its CPU would otherwise
//! come out of the client's path whenever that path blocked for a moment.
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
/// The most new bytes the ingest maps from the spool at once to cut them (the mapping also holds
/// the uncut end of the last window, under one maximum shard).
pub const INGEST_WINDOW: u64 = 16 << 20;
/// The ingest maps a window only once this many bytes wait to be cut (or the source ended), so
/// a feed of small appends does not map the same uncut bytes again and again. At most half the
/// lag bound's floor, so the source never waits for the ingest to reach it.
pub const INGEST_WINDOW_MIN: u64 = 8 << 20;
const _: () = assert!(INGEST_WINDOW_MIN <= SPOOL_MIN_LAG / 2);

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
    /// The sum of the queued lengths, kept as they come and go: the feed asks on every wake.
    pending: u64,
}

impl SpoolSegments {
    /// Bytes `offset..offset + len` are spooled; `shard` as in [`Segment::shard`].
    pub fn push(&mut self, offset: u64, len: u64, shard: Option<ShardHash>) {
        if len == 0 {
            return;
        }
        self.pending += len;
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
            let whole = self.queue.pop_front()?;
            self.pending -= whole.len;
            return Some(whole);
        }
        let piece = Segment {
            offset: front.offset,
            len: max,
            shard: None,
        };
        front.offset += max;
        front.len -= max;
        self.pending -= max;
        Some(piece)
    }

    /// The bytes spooled and not taken yet.
    pub fn pending(&self) -> u64 {
        self.pending
    }
}

/// While a client waits, the ingest takes nothing until this many bytes are pending (or the source
/// ended): an eighth of the lag bound short of it, so the source never waits on a yielding ingest.
pub fn yield_threshold(lag_bound: u64) -> u64 {
    lag_bound - lag_bound / 8
}

/// The XXH3-64 of one append to the spool, taken from the bytes the client's path appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolCheck {
    /// Where the append started.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The XXH3-64 of its bytes.
    pub xxh3: u64,
}

impl SpoolCheck {
    /// The check of `bytes` appended at `offset`.
    pub fn of(offset: u64, bytes: &[u8]) -> Self {
        Self {
            offset,
            len: bytes.len() as u64,
            xxh3: xxhash_rust::xxh3::xxh3_64(bytes),
        }
    }
}

/// Why the bytes the ingest read back from the spool are not the bytes appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadBackError {
    #[error("the spool read back at {at} was expected at {expected}")]
    OutOfOrder { at: u64, expected: u64 },
    #[error("the spool read back at {at} has no record of its append")]
    Unrecorded { at: u64 },
    #[error("the spool's append at {offset} ({len} bytes) reads back different bytes")]
    Differs { offset: u64, len: u64 },
    #[error("the spool read back ends at {read} where {appended} bytes were appended")]
    Short { read: u64, appended: u64 },
}

/// Checks that what the ingest reads back from the spool is exactly what the client's path
/// appended, in order, with no gap, append by append: XXH3-64 per append instead of a second
/// SHA-256 of the whole blob. The spool is this process's own file on local disk; the check is
/// against its corruption (a torn or lost write, a range freed by mistake), which a 64-bit
/// hash catches but for a chance of 2^-64 per append. What the client got is still the source's
/// bytes checked by SHA-256, and every shard is still BLAKE3-hashed from the bytes read back.
#[derive(Default)]
pub struct ReadBackChecks {
    expected: VecDeque<SpoolCheck>,
    /// The hash of the bytes read back so far of the front append.
    current: xxhash_rust::xxh3::Xxh3,
    /// How many bytes of the front append were read back.
    into_front: u64,
    /// Where the next read must start.
    at: u64,
}

impl std::fmt::Debug for ReadBackChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBackChecks")
            .field("expected", &self.expected.len())
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl ReadBackChecks {
    /// The spool's appends in the order they were made.
    pub fn expect(&mut self, checks: impl IntoIterator<Item = SpoolCheck>) {
        self.expected.extend(checks);
    }

    /// The ingest read `bytes` back from the spool at `offset`.
    pub fn read(&mut self, offset: u64, mut bytes: &[u8]) -> Result<(), ReadBackError> {
        if offset != self.at {
            return Err(ReadBackError::OutOfOrder {
                at: offset,
                expected: self.at,
            });
        }
        while !bytes.is_empty() {
            let Some(front) = self.expected.front().copied() else {
                return Err(ReadBackError::Unrecorded { at: self.at });
            };
            let take = (front.len - self.into_front).min(bytes.len() as u64) as usize;
            let whole_append = self.into_front == 0 && take as u64 == front.len;
            let digest = if whole_append {
                // The common case: hashed in place, not through the streaming hasher's buffer.
                Some(xxhash_rust::xxh3::xxh3_64(&bytes[..take]))
            } else {
                self.current.update(&bytes[..take]);
                (self.into_front + take as u64 == front.len).then(|| self.current.digest())
            };
            bytes = &bytes[take..];
            self.into_front += take as u64;
            self.at += take as u64;
            if let Some(digest) = digest {
                if digest != front.xxh3 {
                    return Err(ReadBackError::Differs {
                        offset: front.offset,
                        len: front.len,
                    });
                }
                self.expected.pop_front();
                self.current.reset();
                self.into_front = 0;
            }
        }
        Ok(())
    }

    /// Every append was read back whole: `appended` bytes in all.
    pub fn finish(&self, appended: u64) -> Result<(), ReadBackError> {
        if self.at != appended || !self.expected.is_empty() {
            return Err(ReadBackError::Short {
                read: self.at,
                appended,
            });
        }
        Ok(())
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
    /// The checks of the appends made since the ingest last took them.
    checks: Vec<SpoolCheck>,
    end: Option<BlobDigest>,
    failed: Option<StoreError>,
    closed: bool,
    /// Set while a client waits and no peer follows: the ingest takes nothing until this many
    /// bytes are pending or the source ended.
    yield_until: Option<u64>,
    /// A peer follows the flight shard by shard: the ingest never yields again.
    followed: bool,
}

impl FeedState {
    /// Whether the ingest holds back from `pending` bytes: it yields to a waiting client, the
    /// source has not ended or failed, and the lag is still short of the threshold.
    fn yielding(&self) -> bool {
        match self.yield_until {
            Some(threshold) => {
                self.end.is_none()
                    && self.failed.is_none()
                    && !self.closed
                    && self.segments.pending() < threshold
            }
            None => false,
        }
    }

    /// The next step, or `None` to wait.
    fn step(&mut self, max: u64) -> Option<FeedStep> {
        if let Some(error) = self.failed.take() {
            return Some(FeedStep::SpoolFailed(error));
        }
        if self.yielding() {
            return None;
        }
        if let Some(segment) = self.segments.take(max) {
            return Some(FeedStep::Read(segment));
        }
        if let Some(actual) = self.end {
            return Some(FeedStep::End(actual));
        }
        if self.closed {
            return Some(FeedStep::Abandoned);
        }
        None
    }
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

    /// Bytes `offset..offset + len` are in the spool (tests of the feed's order; the node uses
    /// [`spooled_checked`](Self::spooled_checked)).
    #[cfg(test)]
    pub fn spooled(&self, offset: u64, len: u64, shard: Option<ShardHash>) {
        self.changed(|state| state.segments.push(offset, len, shard));
    }

    /// `bytes` were appended to the spool at `offset`: the ingest reads them back and checks them
    /// against `check` (see [`ReadBackChecks`]).
    pub fn spooled_checked(&self, offset: u64, bytes: &[u8], shard: Option<ShardHash>) {
        let check = SpoolCheck::of(offset, bytes);
        self.changed(|state| {
            state.segments.push(offset, check.len, shard);
            state.checks.push(check);
        });
    }

    /// For the ingest: the checks of the appends made since the last call, in order.
    pub fn take_checks(&self, into: &mut ReadBackChecks) {
        let checks = std::mem::take(&mut self.state().checks);
        into.expect(checks);
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

    /// A client waits for the blob: unless a peer follows, the ingest yields the CPU to the
    /// client's path until `threshold` bytes are pending or the source ends.
    pub fn yield_to_client(&self, threshold: u64) {
        self.changed(|state| {
            if !state.followed {
                state.yield_until = Some(threshold);
            }
        });
    }

    /// A peer follows the flight shard by shard and needs the shard files as they come: the
    /// ingest stops yielding for good.
    pub fn peer_follows(&self) {
        self.changed(|state| {
            state.followed = true;
            state.yield_until = None;
        });
    }

    /// The next step if there is one now, without waiting.
    #[cfg(test)]
    pub fn try_next(&self, max: u64) -> Option<FeedStep> {
        self.state().step(max)
    }

    /// For the ingest thread: waits for the next step, reading at most `max` bytes to cut at once.
    pub fn next(&self, max: u64) -> FeedStep {
        let mut state = self.state();
        loop {
            if let Some(step) = state.step(max) {
                return step;
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
        assert_eq!(segments.pending(), 85);
        assert_eq!(segments.take(12), Some(seg(0, 12, None)));
        assert_eq!(segments.pending(), 73, "a piece leaves the rest pending");
        assert_eq!(segments.take(100), Some(seg(12, 18, None)));
        // A shard is taken whole whatever the piece size, so its hash still names its bytes.
        assert_eq!(segments.take(12), Some(seg(30, 50, Some(hash))));
        assert_eq!(segments.take(12), Some(seg(80, 5, None)));
        assert_eq!(segments.take(12), None);
        assert_eq!(segments.pending(), 0);
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

    fn checked(feed: &SpoolFeed, offset: u64, bytes: &[u8]) -> ReadBackChecks {
        feed.spooled_checked(offset, bytes, None);
        let mut checks = ReadBackChecks::default();
        feed.take_checks(&mut checks);
        checks
    }

    #[test]
    fn bytes_read_back_as_appended_pass_in_pieces_of_any_size() {
        let feed = SpoolFeed::default();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut checks = ReadBackChecks::default();
        for (i, piece) in data.chunks(300).enumerate() {
            feed.spooled_checked(i as u64 * 300, piece, None);
        }
        feed.take_checks(&mut checks);
        // Read back in pieces that straddle the appends, then append by append.
        let mut whole = ReadBackChecks::default();
        whole.expect((0..4).map(|i| {
            SpoolCheck::of(
                i * 300,
                &data[i as usize * 300..][..300.min(1000 - i as usize * 300)],
            )
        }));
        for (i, piece) in data.chunks(128).enumerate() {
            checks.read(i as u64 * 128, piece).unwrap();
        }
        checks.finish(1000).unwrap();
        for (i, piece) in data.chunks(300).enumerate() {
            whole.read(i as u64 * 300, piece).unwrap();
        }
        whole.finish(1000).unwrap();
    }

    #[test]
    fn a_changed_byte_a_gap_or_a_short_read_back_is_refused() {
        let feed = SpoolFeed::default();
        let mut changed = checked(&feed, 0, b"hello world");
        assert_eq!(
            changed.read(0, b"hello_world"),
            Err(ReadBackError::Differs { offset: 0, len: 11 })
        );

        let mut gap = checked(&SpoolFeed::default(), 0, b"hello world");
        gap.read(0, b"hello").unwrap();
        assert!(matches!(
            gap.read(6, b"world"),
            Err(ReadBackError::OutOfOrder { at: 6, expected: 5 })
        ));

        let mut short = checked(&SpoolFeed::default(), 0, b"hello world");
        short.read(0, b"hello").unwrap();
        assert!(matches!(short.finish(11), Err(ReadBackError::Short { .. })));

        let mut beyond = checked(&SpoolFeed::default(), 0, b"hi");
        assert_eq!(
            beyond.read(0, b"hi!"),
            Err(ReadBackError::Unrecorded { at: 2 })
        );
    }

    #[test]
    fn while_a_client_waits_the_ingest_takes_nothing_until_the_lag_nears_its_bound() {
        let feed = SpoolFeed::default();
        feed.yield_to_client(yield_threshold(80));
        assert_eq!(yield_threshold(80), 70);
        feed.spooled(0, 60, None);
        assert!(feed.try_next(100).is_none(), "60 of 70 pending: yields");
        feed.spooled(60, 10, None);
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(s)) if s.len == 70));
        // Once caught up it yields again: the lag stays just under the bound.
        feed.spooled(70, 5, None);
        assert!(feed.try_next(100).is_none());
    }

    #[test]
    fn a_yielding_ingest_takes_everything_once_the_source_ends_or_fails() {
        let feed = SpoolFeed::default();
        feed.yield_to_client(1000);
        feed.spooled(0, 10, None);
        assert!(feed.try_next(100).is_none());
        feed.end(BlobDigest::from_bytes([1; 32]));
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(s)) if s.len == 10));
        assert!(matches!(feed.try_next(100), Some(FeedStep::End(_))));

        let feed = SpoolFeed::default();
        feed.yield_to_client(1000);
        feed.spooled(0, 10, None);
        feed.fail(StoreError::Closed);
        assert!(matches!(feed.try_next(100), Some(FeedStep::SpoolFailed(_))));

        let feed = SpoolFeed::default();
        feed.yield_to_client(1000);
        feed.spooled(0, 10, None);
        feed.close();
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(_))));
        assert!(matches!(feed.try_next(100), Some(FeedStep::Abandoned)));
    }

    #[test]
    fn a_following_peer_ends_the_yield_for_good() {
        let feed = SpoolFeed::default();
        feed.yield_to_client(1000);
        feed.spooled(0, 10, None);
        assert!(feed.try_next(100).is_none());
        feed.peer_follows();
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(_))));
        // A client arriving after the peer does not bring the yield back.
        feed.yield_to_client(1000);
        feed.spooled(10, 10, None);
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(_))));
    }

    #[test]
    fn without_a_waiting_client_the_ingest_takes_bytes_at_once() {
        let feed = SpoolFeed::default();
        feed.spooled(0, 1, None);
        assert!(matches!(feed.try_next(100), Some(FeedStep::Read(_))));
        assert!(feed.try_next(100).is_none(), "nothing left: waits");
    }

    #[test]
    fn a_yielding_ingest_thread_wakes_when_the_threshold_is_reached() {
        let feed = std::sync::Arc::new(SpoolFeed::default());
        feed.yield_to_client(50);
        let reader = {
            let feed = feed.clone();
            std::thread::spawn(move || match feed.next(1000) {
                FeedStep::Read(segment) => segment.len,
                other => panic!("unexpected {other:?}"),
            })
        };
        for offset in (0..50).step_by(10) {
            feed.spooled(offset, 10, None);
        }
        assert_eq!(reader.join().unwrap(), 50);
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
