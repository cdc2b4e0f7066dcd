//! One blob being fetched from an upstream and ingested, shared by every request that wants it
//! meanwhile (single flight).
//!
//! The driver task appends network reads to `pending` as they arrive and hands them to a blocking
//! ingest worker; as the worker writes shards, the bytes they cover move from memory to the shard
//! files. Readers at any offset are served from whichever holds it, so memory stays bounded by
//! about one maximum shard plus the channel, however many readers there are and however late they
//! join. The last byte is held back until the sha256 has matched.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use shoal_proto::BlobDigest;
use tokio::sync::watch;

use super::PullError;
use crate::store::StoredShard;

/// How a flight ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Verified and committed.
    Committed,
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
    outcome: Option<Outcome>,
}

/// A blob in flight.
#[derive(Debug)]
pub struct Flight {
    pub(super) digest: BlobDigest,
    state: Mutex<FlightState>,
    changed: watch::Sender<u64>,
}

/// What a reader may do next.
pub enum Next {
    /// Bytes at the reader's cursor.
    Bytes(Bytes),
    /// Bytes at the reader's cursor are in this file range.
    File(StoredShard, u64, u64),
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
                started: false,
                total: None,
                received: 0,
                shards: Vec::new(),
                pending: VecDeque::new(),
                pending_start: 0,
                verified: false,
                outcome: None,
            }),
            changed: watch::channel(0).0,
        })
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
        self.state().source = Some(source);
        self.notify();
    }

    /// Where the bytes come from, once decided; `Some(None)` if the flight ended first.
    pub fn source(&self) -> Option<Option<FlightSource>> {
        let state = self.state();
        match (state.source, &state.outcome) {
            (Some(source), None) => Some(Some(source)),
            (_, Some(_)) => Some(None),
            (None, None) => None,
        }
    }

    /// The blob's length, if known.
    pub fn total(&self) -> Option<u64> {
        self.state().total
    }

    /// For a peer following the flight: shard `index`, once written.
    pub fn shard(&self, index: usize) -> NextShard {
        let state = self.state();
        if let Some(Outcome::Failed(_)) = &state.outcome {
            return NextShard::Failed;
        }
        if let Some(shard) = state.shards.get(index) {
            return NextShard::Ready(shard.clone());
        }
        if state.verified {
            return NextShard::End;
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

    pub(super) fn received(&self) -> u64 {
        self.state().received
    }

    pub(super) fn push(&self, bytes: Bytes) {
        let mut state = self.state();
        state.received += bytes.len() as u64;
        state.pending.push_back(bytes);
        drop(state);
        self.notify();
    }

    pub(super) fn add_shards(&self, shards: Vec<StoredShard>) {
        if shards.is_empty() {
            return;
        }
        let mut state = self.state();
        for shard in shards {
            let flushed = shard.offset + u64::from(shard.len);
            state.shards.push(shard);
            while state.pending_start < flushed {
                let need = flushed - state.pending_start;
                let Some(front) = state.pending.front_mut() else {
                    break;
                };
                if (front.len() as u64) <= need {
                    let len = front.len() as u64;
                    state.pending.pop_front();
                    state.pending_start += len;
                } else {
                    let _ = front.split_to(need as usize);
                    state.pending_start += need;
                }
            }
        }
    }

    pub(super) fn mark_verified(&self) {
        self.state().verified = true;
        self.notify();
    }

    pub(super) fn finish(&self, outcome: Outcome) {
        let mut state = self.state();
        state.outcome = Some(outcome);
        state.started = true;
        state.pending.clear();
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
                Some(Outcome::Committed) => Some(state.received),
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
