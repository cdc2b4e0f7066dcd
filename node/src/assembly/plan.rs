//! The decisions of a parallel fetch from holders of a whole blob, as a state machine driven by
//! events and an explicit `now` (no I/O, no clock, no tasks): which shards to ask of which holder,
//! when a late batch is hedged, which copy of a shard wins, when a holder is dropped, which gaps
//! go to the origin, and how much is held for reordering. [`super::ParallelFetch`] is its shell: it
//! carries out the [`Action`]s, feeds back what the requests report and waits until the
//! [`Step::Wait`] deadline.
//!
//! **Invariant:** the shards held for reordering never span more than [`REORDER_BYTES`] of the
//! blob from the next shard to hand on (plus one batch that starts there), because nothing past
//! that is requested until the reader has caught up.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use shoal_proto::{ShardHash, ShardMap};

use super::{Piece, BATCH_BYTES, MAX_ORIGIN_FILL, PER_PEER, WINDOW};

/// How long the batch the reader waits for may take before it is also asked of another holder,
/// until batch times have been measured; then four times the median, at least [`MIN_HEDGE`].
pub const FIRST_HEDGE: Duration = Duration::from_secs(2);
/// The shortest hedging delay.
pub const MIN_HEDGE: Duration = Duration::from_millis(300);
/// Failed requests (streams refused or broken, timeouts) after which a holder is dropped from a
/// blob's plan. A holder that sends bad bytes, or lacks the blob, is dropped at once.
pub const HOLDER_FAILURES: u32 = 3;
/// How far past the next shard to hand on shards are requested: what is held for reordering.
pub const REORDER_BYTES: u64 = WINDOW as u64 * BATCH_BYTES;

/// One request, as the plan and its shell name it.
pub type BatchId = u64;

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `peer` for the shards `shards`; what it reports carries `id`.
    Request {
        /// The request's id.
        id: BatchId,
        /// The holder asked.
        peer: PeerId,
        /// The shards asked for, by index.
        shards: Range<usize>,
        /// It asks again for shards that are late elsewhere.
        hedge: bool,
    },
    /// Stop request `id`: its shards came by another request.
    Cancel(BatchId),
    /// `peer` sent bytes it must not have: the node avoids it.
    Avoid(PeerId),
}

/// How a request failed, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The holder sent something it must not (a bad hash, a frame that breaks the map).
    Misbehaved,
    /// The holder does not have the blob (with this layout).
    NotHere,
    /// The stream was refused, broke or went quiet.
    Failed,
}

/// What the reader gets next.
#[derive(Debug)]
pub enum Step {
    /// The next piece of the blob.
    Piece(Piece),
    /// Every shard has been handed on.
    Finished,
    /// Nothing yet: wait for an event, or until the deadline (then step again).
    Wait(Option<Instant>),
    /// No holder is left and nothing arrived ahead; carries the last failure.
    NoPeersLeft(String),
}

/// A request open to a holder: shards `next..end` still to come.
#[derive(Debug)]
struct OpenBatch {
    peer: PeerId,
    next: usize,
    end: usize,
    started: Instant,
}

/// The plan of one blob's parallel fetch (see the module docs).
#[derive(Debug)]
pub struct ParallelPlan {
    map: ShardMap,
    /// Holders still usable, best first.
    holders: Vec<PeerId>,
    /// Shard ranges not yet requested (or to request again), in blob order.
    pending: VecDeque<Range<usize>>,
    open: BTreeMap<BatchId, OpenBatch>,
    next_id: BatchId,
    /// Shards arrived ahead of the one being waited for.
    arrived: BTreeMap<usize, (Bytes, ShardHash)>,
    arrived_bytes: u64,
    /// The next shard to hand on.
    next_shard: usize,
    /// Batch completion times, for the hedging delay.
    batch_times: Vec<Duration>,
    /// Shards whose wait has been hedged already.
    hedged: HashSet<usize>,
    /// Failed requests per holder.
    failures: HashMap<PeerId, u32>,
    last_failure: String,
    actions: VecDeque<Action>,
}

impl ParallelPlan {
    /// A plan for `map`'s shards from `holders` (best first; `map_source` first of all), cut into
    /// batches of about [`BATCH_BYTES`].
    pub fn new(map: ShardMap, map_source: PeerId, holders: &[PeerId]) -> Self {
        let mut pending = VecDeque::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (index, entry) in map.shards.iter().enumerate() {
            bytes += u64::from(entry.len);
            if bytes >= BATCH_BYTES {
                pending.push_back(start..index + 1);
                start = index + 1;
                bytes = 0;
            }
        }
        if start < map.shards.len() {
            pending.push_back(start..map.shards.len());
        }
        let mut ranked = vec![map_source];
        ranked.extend(holders.iter().copied().filter(|p| *p != map_source));
        Self {
            map,
            holders: ranked,
            pending,
            open: BTreeMap::new(),
            next_id: 0,
            arrived: BTreeMap::new(),
            arrived_bytes: 0,
            next_shard: 0,
            batch_times: Vec::new(),
            hedged: HashSet::new(),
            failures: HashMap::new(),
            last_failure: String::new(),
            actions: VecDeque::new(),
        }
    }

    /// The shard map the plan follows.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// Bytes of shards held for reordering now.
    pub fn reorder_bytes(&self) -> u64 {
        self.arrived_bytes
    }

    /// Holders still usable, best first.
    pub fn holders(&self) -> &[PeerId] {
        &self.holders
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Shard `index` arrived on request `id` (checked against the map by the shell). The first
    /// copy of a shard wins; later copies are dropped.
    pub fn on_shard(&mut self, id: BatchId, index: usize, bytes: Bytes, hash: ShardHash) {
        if let Some(batch) = self.open.get_mut(&id) {
            batch.next = batch.next.max(index + 1);
        }
        if index >= self.next_shard && !self.arrived.contains_key(&index) {
            self.arrived_bytes += bytes.len() as u64;
            self.arrived.insert(index, (bytes, hash));
        }
    }

    /// Request `id` sent every shard it asked for.
    pub fn on_done(&mut self, id: BatchId, now: Instant) {
        let Some(batch) = self.open.remove(&id) else {
            return;
        };
        self.batch_times
            .push(now.saturating_duration_since(batch.started));
        // A hedged copy of the same shards is no longer needed.
        let redundant: Vec<BatchId> = self
            .open
            .iter()
            .filter(|(_, other)| other.end == batch.end)
            .map(|(id, _)| *id)
            .collect();
        for other in redundant {
            self.open.remove(&other);
            self.actions.push_back(Action::Cancel(other));
        }
    }

    /// Request `id` failed after the shards it already reported; `reason` is kept for the error
    /// the reader gets if every holder fails.
    pub fn on_failed(&mut self, id: BatchId, failure: Failure, reason: String) {
        let Some(batch) = self.open.remove(&id) else {
            return;
        };
        let peer = batch.peer;
        if failure == Failure::Misbehaved {
            self.actions.push_back(Action::Avoid(peer));
        }
        self.last_failure = format!("{peer}: {reason}");
        // A stream can be refused when many open at once; a holder gets a few chances unless it
        // lied or does not have the blob.
        let failures = self.failures.entry(peer).or_default();
        *failures += 1;
        if failure != Failure::Failed || *failures >= HOLDER_FAILURES {
            self.holders.retain(|p| *p != peer);
        }
        // Ask again for what it did not deliver, unless another request brings it.
        let missing = batch.next.max(self.next_shard)..batch.end;
        let covered = self
            .open
            .values()
            .any(|other| other.next <= missing.start && other.end >= missing.end);
        if !missing.is_empty() && !covered {
            self.pending.push_front(missing);
        }
    }

    /// What the reader gets now: the next piece, or how long to wait for news. Requests and
    /// hedges due by `now` are queued as actions.
    pub fn step(&mut self, now: Instant) -> Step {
        loop {
            if self.next_shard >= self.map.shards.len() {
                return Step::Finished;
            }
            if let Some((bytes, hash)) = self.arrived.remove(&self.next_shard) {
                self.arrived_bytes -= bytes.len() as u64;
                self.next_shard += 1;
                return Step::Piece(Piece::Shard(bytes, hash));
            }
            self.fill_window(now);
            if self.open.is_empty() {
                // No holder left. Shards that did arrive further on are kept: only the gap before
                // them goes to the origin. With nothing further on, the caller takes the rest
                // from the origin in one request.
                return match self.arrived.keys().next() {
                    Some(&next_arrived) => {
                        Step::Piece(Piece::FromOrigin(self.origin_fill(next_arrived)))
                    }
                    None => Step::NoPeersLeft(self.last_failure.clone()),
                };
            }
            let waiting_since = self
                .open
                .values()
                .filter(|b| b.next <= self.next_shard && self.next_shard < b.end)
                .map(|b| b.started)
                .min();
            let deadline = match waiting_since {
                Some(at) if !self.hedged.contains(&self.next_shard) => {
                    Some(at + self.hedge_delay())
                }
                _ => None,
            };
            match deadline {
                Some(deadline) if deadline <= now => self.hedge(now),
                _ => return Step::Wait(deadline),
            }
        }
    }

    fn open_to(&self, peer: PeerId) -> usize {
        self.open.values().filter(|b| b.peer == peer).count()
    }

    /// The usable holder with the fewest open requests (best ranked on ties), other than `not`.
    fn pick(&self, not: Option<PeerId>) -> Option<PeerId> {
        self.holders
            .iter()
            .copied()
            .filter(|peer| Some(*peer) != not)
            .map(|peer| (self.open_to(peer), peer))
            .filter(|(open, _)| *open < PER_PEER)
            .min_by_key(|(open, _)| *open)
            .map(|(_, peer)| peer)
    }

    fn hedge_delay(&self) -> Duration {
        if self.batch_times.len() < 3 {
            return FIRST_HEDGE;
        }
        let mut times = self.batch_times.clone();
        times.sort();
        (times[times.len() / 2] * 4).max(MIN_HEDGE)
    }

    fn request(&mut self, peer: PeerId, shards: Range<usize>, hedge: bool, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            OpenBatch {
                peer,
                next: shards.start,
                end: shards.end,
                started: now,
            },
        );
        self.actions.push_back(Action::Request {
            id,
            peer,
            shards,
            hedge,
        });
    }

    /// Requests pending ranges, in blob order, while the window, the reorder bound and the
    /// holders allow.
    fn fill_window(&mut self, now: Instant) {
        let window_end = self.map.shards[self.next_shard].offset + REORDER_BYTES;
        while self.open.len() < WINDOW {
            let Some(range) = self.pending.front().cloned() else {
                return;
            };
            // Shards the reader already has (from the origin) are not asked for again.
            let range = range.start.max(self.next_shard)..range.end;
            if range.is_empty() {
                self.pending.pop_front();
                continue;
            }
            // The batch the reader waits for is always asked; later ones only within the bound.
            if range.start > self.next_shard && self.map.shards[range.end - 1].end() > window_end {
                return;
            }
            let Some(peer) = self.pick(None) else { return };
            self.pending.pop_front();
            self.request(peer, range, false, now);
        }
    }

    /// The byte range of the shards from the next one up to `next_arrived` (at most
    /// [`MAX_ORIGIN_FILL`] bytes, at least one shard), which the reader fetches from the origin.
    fn origin_fill(&mut self, next_arrived: usize) -> Range<u64> {
        let start = self.map.shards[self.next_shard].offset;
        let mut end = start;
        while self.next_shard < next_arrived {
            let entry = self.map.shards[self.next_shard];
            if end > start && entry.end() - start > MAX_ORIGIN_FILL {
                break;
            }
            end = entry.end();
            self.next_shard += 1;
        }
        start..end
    }

    /// Asks another holder for the late shard and the rest of its batch; the first copy wins.
    fn hedge(&mut self, now: Instant) {
        self.hedged.insert(self.next_shard);
        let Some(late) = self
            .open
            .values()
            .find(|b| b.next <= self.next_shard && self.next_shard < b.end)
        else {
            return;
        };
        let (busy, end) = (late.peer, late.end);
        if let Some(peer) = self.pick(Some(busy)) {
            self.request(peer, self.next_shard..end, true, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::{ChunkingParams, ShardEntry};

    use super::*;

    /// A map of `count` shards of `len` bytes each, shard `i` filled with byte `i`.
    fn map(count: usize, len: u32) -> ShardMap {
        let shards = (0..count)
            .map(|i| ShardEntry {
                hash: *blake3::hash(&shard_bytes(i, len)).as_bytes(),
                offset: i as u64 * u64::from(len),
                len,
            })
            .collect();
        ShardMap {
            blob: [1; 32],
            blob_len: count as u64 * u64::from(len),
            chunking: ChunkingParams {
                min: 1,
                avg: len,
                max: len,
            },
            shards,
        }
    }

    fn shard_bytes(index: usize, len: u32) -> Vec<u8> {
        vec![index as u8; len as usize]
    }

    const MIB: u32 = 1 << 20;

    fn requests(plan: &mut ParallelPlan) -> Vec<(BatchId, PeerId, Range<usize>, bool)> {
        let mut out = Vec::new();
        while let Some(action) = plan.poll_action() {
            if let Action::Request {
                id,
                peer,
                shards,
                hedge,
            } = action
            {
                out.push((id, peer, shards, hedge));
            }
        }
        out
    }

    /// Feeds request `id`'s shards `shards` and its end.
    fn deliver(plan: &mut ParallelPlan, id: BatchId, shards: Range<usize>, now: Instant) {
        for index in shards {
            let bytes = shard_bytes(index, MIB);
            let hash = ShardHash::from_bytes(*blake3::hash(&bytes).as_bytes());
            plan.on_shard(id, index, bytes.into(), hash);
        }
        plan.on_done(id, now);
    }

    fn take_shard(plan: &mut ParallelPlan, now: Instant) -> Bytes {
        match plan.step(now) {
            Step::Piece(Piece::Shard(bytes, _)) => bytes,
            other => panic!("expected a shard, got {other:?}"),
        }
    }

    #[test]
    fn batches_go_out_window_wide_spread_over_the_holders() {
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let mut plan = ParallelPlan::new(map(64, MIB), peers[0], &peers);
        let now = Instant::now();
        assert!(matches!(plan.step(now), Step::Wait(Some(_))));
        let sent = requests(&mut plan);
        assert_eq!(sent.len(), WINDOW);
        for peer in &peers {
            let to_peer = sent.iter().filter(|(_, p, _, _)| p == peer).count();
            assert!((1..=PER_PEER).contains(&to_peer));
        }
        // In blob order, four 1 MiB shards per batch.
        for (n, (_, _, shards, hedge)) in sent.iter().enumerate() {
            assert_eq!(*shards, n * 4..n * 4 + 4);
            assert!(!hedge);
        }
    }

    #[test]
    fn a_late_batch_is_hedged_at_its_deadline_and_the_first_copy_wins() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut plan = ParallelPlan::new(map(4, MIB), a, &[a, b]);
        let start = Instant::now();
        let Step::Wait(Some(deadline)) = plan.step(start) else {
            panic!("the reader waits with a hedging deadline");
        };
        assert_eq!(deadline, start + FIRST_HEDGE);
        let sent = requests(&mut plan);
        assert_eq!(sent.len(), 1);
        let (first, first_peer, _, _) = sent[0].clone();
        // Just before the deadline nothing more is asked.
        assert!(matches!(
            plan.step(deadline - Duration::from_millis(1)),
            Step::Wait(_)
        ));
        assert!(requests(&mut plan).is_empty());
        // At the deadline the same shards are asked of the other holder, once.
        assert!(matches!(plan.step(deadline), Step::Wait(None)));
        let hedges = requests(&mut plan);
        assert_eq!(hedges.len(), 1);
        let (second, second_peer, shards, hedge) = hedges[0].clone();
        assert!(hedge);
        assert_ne!(second_peer, first_peer);
        assert_eq!(shards, 0..4);
        assert!(matches!(
            plan.step(deadline + FIRST_HEDGE),
            Step::Wait(None)
        ));
        assert!(requests(&mut plan).is_empty());

        // The hedge answers first: its copy is handed on, the late request is cancelled, and the
        // late copy that still arrives is dropped.
        deliver(
            &mut plan,
            second,
            0..4,
            deadline + Duration::from_millis(10),
        );
        assert_eq!(plan.poll_action(), Some(Action::Cancel(first)));
        let late = shard_bytes(0, MIB);
        let late_hash = ShardHash::from_bytes([0; 32]);
        plan.on_shard(first, 0, late.into(), late_hash);
        for index in 0..4 {
            let Step::Piece(Piece::Shard(bytes, hash)) = plan.step(deadline) else {
                panic!("shard {index} is ready");
            };
            assert_eq!(bytes[0], index as u8);
            assert_ne!(hash, late_hash, "the later copy replaced the first");
        }
        assert!(matches!(plan.step(deadline), Step::Finished));
    }

    #[test]
    fn the_hedging_delay_follows_measured_batch_times() {
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let mut plan = ParallelPlan::new(map(40, MIB), peers[0], &peers);
        let start = Instant::now();
        plan.step(start);
        let sent = requests(&mut plan);
        // Three batches take 100 ms each.
        for (id, _, shards, _) in &sent[..3] {
            deliver(
                &mut plan,
                *id,
                shards.clone(),
                start + Duration::from_millis(100),
            );
        }
        let now = start + Duration::from_millis(100);
        for _ in 0..12 {
            take_shard(&mut plan, now);
        }
        // The batch now waited for was sent at `start`: its deadline is four medians (at least
        // the minimum) after that.
        let Step::Wait(Some(deadline)) = plan.step(now) else {
            panic!("waiting with a deadline");
        };
        assert_eq!(deadline, start + MIN_HEDGE.max(Duration::from_millis(400)));
    }

    #[test]
    fn a_holder_is_dropped_after_three_failures_and_its_shards_go_elsewhere() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut plan = ParallelPlan::new(map(4, MIB), a, &[a, b]);
        let now = Instant::now();
        for attempt in 1..=HOLDER_FAILURES {
            plan.step(now);
            let sent = requests(&mut plan);
            // Fewest open requests first, best ranked on ties: `a` while it is usable.
            let (id, peer, shards, _) = sent[0].clone();
            assert_eq!(peer, a, "attempt {attempt}");
            assert_eq!(shards, 0..4);
            plan.on_failed(id, Failure::Failed, "stream reset".into());
            assert_eq!(plan.holders().contains(&a), attempt < HOLDER_FAILURES);
        }
        plan.step(now);
        let sent = requests(&mut plan);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, b);
        assert_eq!(sent[0].2, 0..4);
    }

    #[test]
    fn a_holder_that_lies_is_dropped_at_once_and_avoided() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut plan = ParallelPlan::new(map(4, MIB), a, &[a, b]);
        let now = Instant::now();
        plan.step(now);
        let (id, peer, _, _) = requests(&mut plan)[0].clone();
        // Two shards came before the lie: only the rest is asked again.
        deliver_shards(&mut plan, id, 0..2);
        plan.on_failed(id, Failure::Misbehaved, "bad hash".into());
        assert_eq!(plan.poll_action(), Some(Action::Avoid(peer)));
        assert!(!plan.holders().contains(&peer));
        take_shard(&mut plan, now);
        take_shard(&mut plan, now);
        plan.step(now);
        let sent = requests(&mut plan);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, b);
        assert_eq!(sent[0].2, 2..4);
    }

    fn deliver_shards(plan: &mut ParallelPlan, id: BatchId, shards: Range<usize>) {
        for index in shards {
            let bytes = shard_bytes(index, MIB);
            let hash = ShardHash::from_bytes(*blake3::hash(&bytes).as_bytes());
            plan.on_shard(id, index, bytes.into(), hash);
        }
    }

    #[test]
    fn gaps_before_arrived_shards_are_filled_from_the_origin_in_bounded_ranges() {
        let a = PeerId::random();
        // 48 shards of 1 MiB: twelve batches of four.
        let mut plan = ParallelPlan::new(map(48, MIB), a, &[a]);
        let now = Instant::now();
        plan.step(now);
        let sent = requests(&mut plan);
        assert_eq!(sent.len(), PER_PEER);
        // The third batch arrives, then the holder fails the first two and is dropped as lying.
        deliver(&mut plan, sent[2].0, sent[2].2.clone(), now);
        plan.on_failed(sent[0].0, Failure::NotHere, "gone".into());
        plan.on_failed(sent[1].0, Failure::NotHere, "gone".into());
        assert!(plan.holders().is_empty());
        // Shards 0..8 come from the origin, in ranges of at most MAX_ORIGIN_FILL, then the
        // arrived shards 8..12 follow.
        let mut filled = 0;
        loop {
            match plan.step(now) {
                Step::Piece(Piece::FromOrigin(range)) => {
                    assert_eq!(range.start, filled);
                    assert!(range.end - range.start <= MAX_ORIGIN_FILL);
                    assert!(range.end > range.start);
                    filled = range.end;
                }
                Step::Piece(Piece::Shard(bytes, _)) => {
                    assert_eq!(filled, 8 * u64::from(MIB));
                    assert_eq!(bytes[0], 8);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for index in 9..12 {
            assert_eq!(take_shard(&mut plan, now)[0], index as u8);
        }
        // Nothing arrived further on: the reader takes the rest from the origin itself.
        assert!(matches!(plan.step(now), Step::NoPeersLeft(_)));
    }

    #[test]
    fn origin_fills_are_cut_at_the_bound() {
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        // 80 shards of 1 MiB; the holders deliver only the last batch of the window.
        let mut plan = ParallelPlan::new(map(80, MIB), peers[0], &peers);
        let now = Instant::now();
        plan.step(now);
        let sent = requests(&mut plan);
        let (last_id, _, last_shards, _) = sent.last().unwrap().clone();
        deliver(&mut plan, last_id, last_shards.clone(), now);
        for (id, _, _, _) in &sent[..sent.len() - 1] {
            plan.on_failed(*id, Failure::NotHere, "gone".into());
        }
        let mut ranges = Vec::new();
        while let Step::Piece(Piece::FromOrigin(range)) = plan.step(now) {
            ranges.push(range);
        }
        assert_eq!(sent.len(), WINDOW);
        let gap = last_shards.start as u64 * u64::from(MIB);
        assert!(gap > MAX_ORIGIN_FILL);
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, gap);
        assert_eq!(ranges.len() as u64, gap.div_ceil(MAX_ORIGIN_FILL));
        assert!(ranges.windows(2).all(|pair| pair[0].end == pair[1].start));
        assert!(ranges
            .iter()
            .all(|r| r.end - r.start <= MAX_ORIGIN_FILL && r.end > r.start));
    }

    #[test]
    fn a_slow_first_batch_holds_at_most_the_reorder_window_in_memory() {
        // Every batch but the first answers at once; the first never does (and no second holder
        // can hedge it). Nothing past the reorder bound is asked for, so the memory held for
        // reordering stays within it however long the first batch takes.
        let a = PeerId::random();
        let mut plan = ParallelPlan::new(map(400, MIB), a, &[a]);
        let now = Instant::now();
        let mut slow = None;
        let mut requested_end = 0;
        for round in 0..100 {
            plan.step(now + Duration::from_secs(round));
            for (id, _, shards, _) in requests(&mut plan) {
                requested_end = requested_end.max(shards.end);
                if shards.start == 0 {
                    slow = Some(id);
                    continue;
                }
                deliver(&mut plan, id, shards, now);
            }
            assert!(
                plan.reorder_bytes() <= REORDER_BYTES,
                "{} bytes held for reordering",
                plan.reorder_bytes()
            );
        }
        assert!(slow.is_some());
        assert!((requested_end as u64) * u64::from(MIB) <= REORDER_BYTES);
        // Once the first batch comes, the reader moves on and later batches are asked for.
        deliver(&mut plan, slow.unwrap(), 0..4, now);
        for index in 0..(REORDER_BYTES / u64::from(MIB)) as usize {
            assert_eq!(take_shard(&mut plan, now)[0], index as u8);
        }
        plan.step(now);
        assert!(!requests(&mut plan).is_empty());
    }
}
