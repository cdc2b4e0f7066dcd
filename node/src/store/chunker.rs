//! Streaming content-defined chunking: bytes go in as they arrive from the network, shards come
//! out with their BLAKE3 hash, cut by FastCDC v2020.
//!
//! A FastCDC cut that starts at offset `s` depends only on the bytes `s..s + max`, so once the
//! buffer holds at least `max` bytes past a shard's start, that shard's end is final. The chunker
//! appends into one buffer of four maximum shards, cuts every shard whose end is final, hashes
//! each right after it is cut while its bytes are still in cache (chunking and hashing are one pass
//! over the data), and hands it on as a [`Bytes`] split off the front of the buffer: the shard's
//! bytes are not copied again, so a later stage (the shard writer, on its own thread) can own
//! them. When the buffer is full, the unfinished tail (less than one maximum shard) moves to the
//! front of it, or to a new buffer while shards cut from the old one are still held.
//!
//! Bytes that are already contiguous (the node's ingest maps its spool) need no buffer at all:
//! [`cut_window`] cuts shards as slices of a window of them, with the same cut points.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::FastCDC;
use shoal_proto::{ChunkingParams, ShardHash};

/// One shard cut from the stream, owned (see [`chunk_all`]).
#[derive(Debug, Clone)]
pub struct CutShard {
    /// Offset of the shard in the blob.
    pub offset: u64,
    /// The shard's bytes.
    pub data: Bytes,
    /// BLAKE3 of `data`.
    pub hash: ShardHash,
}

/// Cuts a byte stream into shards.
#[derive(Debug)]
pub struct StreamChunker {
    params: ChunkingParams,
    /// Bytes pushed and not yet in a shard; shards are split off its front.
    buffer: BytesMut,
    /// Blob offset of `buffer[0]`.
    buffer_offset: u64,
}

impl StreamChunker {
    /// A chunker for one blob. `params` must already be validated (see `config`).
    pub fn new(params: ChunkingParams) -> Self {
        Self {
            params,
            buffer: BytesMut::with_capacity(Self::buffer_capacity(params)),
            buffer_offset: 0,
        }
    }

    fn buffer_capacity(params: ChunkingParams) -> usize {
        4 * params.max as usize
    }

    /// Adds bytes; calls `emit(offset, bytes, hash)` for every shard whose end is now final.
    pub fn push<E>(&mut self, mut data: &[u8], mut emit: E) -> Result<(), E::Error>
    where
        E: ShardSink,
    {
        while !data.is_empty() {
            if self.buffer.capacity() == self.buffer.len() {
                // Room for a full buffer again: the unfinished tail (under one maximum shard)
                // moves to the front of the same allocation once every shard cut from it is
                // dropped, else to a new one.
                self.buffer
                    .reserve(Self::buffer_capacity(self.params) - self.buffer.len());
            }
            let take = (self.buffer.capacity() - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            // Cut as soon as a shard's end is final, while its bytes are still in cache.
            self.cut(false, &mut emit)?;
        }
        Ok(())
    }

    /// Whether every byte pushed so far is in an emitted shard.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Continues the stream at blob offset `offset` (bytes before it were cut elsewhere). Only
    /// meaningful when [`is_empty`](Self::is_empty).
    pub fn skip_to(&mut self, offset: u64) {
        debug_assert!(self.is_empty());
        self.buffer.clear();
        self.buffer_offset = offset;
    }

    /// Ends the stream; emits the remaining shards.
    pub fn finish<E: ShardSink>(&mut self, mut emit: E) -> Result<(), E::Error> {
        self.cut(true, &mut emit)
    }

    fn cut<E: ShardSink>(&mut self, at_end: bool, emit: &mut E) -> Result<(), E::Error> {
        while let Some(len) = next_final_cut(self.params, &self.buffer, at_end) {
            let shard = self.buffer.split_to(len).freeze();
            let hash = hash_of(&shard);
            let offset = self.buffer_offset;
            self.buffer_offset += len as u64;
            emit.shard(offset, shard, hash)?;
        }
        Ok(())
    }
}

/// The length of the shard that starts `bytes`, if its end is final: always `at_end` (unless
/// `bytes` is empty), else only with at least one maximum shard of bytes (a FastCDC cut depends
/// on no byte further).
fn next_final_cut(params: ChunkingParams, bytes: &[u8], at_end: bool) -> Option<usize> {
    let available = bytes.len();
    if available == 0 || (!at_end && available < params.max as usize) {
        return None;
    }
    let (_, len) = FastCDC::new(bytes, params.min, params.avg, params.max).cut(0, available);
    Some(len)
}

/// A shard's BLAKE3, taken right after its cut while its bytes are in cache.
fn hash_of(shard: &[u8]) -> ShardHash {
    ShardHash::from_bytes(*blake3::hash(shard).as_bytes())
}

/// Cuts the shards of `window`, the blob's bytes from `offset`, whose ends are final (see
/// [`next_final_cut`]). Each shard is a slice of `window`, never a copy, hashed right after its
/// cut. Returns how many bytes were cut: the rest must start the next window. Cuts exactly where
/// [`StreamChunker`] would.
pub fn cut_window<E: ShardSink>(
    params: ChunkingParams,
    window: &Bytes,
    offset: u64,
    at_end: bool,
    emit: &mut E,
) -> Result<usize, E::Error> {
    let mut start = 0;
    while let Some(len) = next_final_cut(params, &window[start..], at_end) {
        let shard = window.slice(start..start + len);
        let hash = hash_of(&shard);
        emit.shard(offset + start as u64, shard, hash)?;
        start += len;
    }
    Ok(start)
}

/// Receives shards from a [`StreamChunker`].
pub trait ShardSink {
    /// What can go wrong while handling a shard.
    type Error;
    /// Handles the shard at `offset` with bytes `data` and BLAKE3 `hash`.
    fn shard(&mut self, offset: u64, data: Bytes, hash: ShardHash) -> Result<(), Self::Error>;
}

impl<F: FnMut(u64, Bytes, ShardHash)> ShardSink for F {
    type Error = std::convert::Infallible;
    fn shard(&mut self, offset: u64, data: Bytes, hash: ShardHash) -> Result<(), Self::Error> {
        self(offset, data, hash);
        Ok(())
    }
}

fn collect_into(out: &mut Vec<CutShard>) -> impl FnMut(u64, Bytes, ShardHash) + '_ {
    |offset, data, hash| out.push(CutShard { offset, data, hash })
}

/// Cuts a whole buffer at once (used by tests and tools).
pub fn chunk_all(params: ChunkingParams, data: &[u8]) -> Vec<CutShard> {
    let mut chunker = StreamChunker::new(params);
    let mut out = Vec::new();
    let Ok(()) = chunker.push(data, collect_into(&mut out));
    let Ok(()) = chunker.finish(collect_into(&mut out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: ChunkingParams = ChunkingParams {
        min: 256,
        avg: 1024,
        max: 4096,
    };

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn boundaries(shards: &[CutShard]) -> Vec<u64> {
        shards.iter().map(|s| s.offset).collect()
    }

    proptest! {
        #[test]
        fn shards_reassemble_the_stream(
            len in 0usize..40_000,
            seed in any::<u64>(),
            split_points in proptest::collection::vec(0usize..40_000, 0..20),
        ) {
            let data = pseudo_random(len, seed);
            let whole = chunk_all(SMALL, &data);
            // Feeding the same bytes in arbitrary pieces gives the same shards.
            let mut cuts: Vec<usize> = split_points.into_iter().filter(|&p| p < len).collect();
            cuts.sort_unstable();
            let mut chunker = StreamChunker::new(SMALL);
            let mut pieces = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([len]) {
                let Ok(()) = chunker.push(&data[last..cut], collect_into(&mut pieces));
                last = cut;
            }
            let Ok(()) = chunker.finish(collect_into(&mut pieces));
            prop_assert_eq!(boundaries(&whole), boundaries(&pieces));
            let joined: Vec<u8> = pieces.iter().flat_map(|s| s.data.iter().copied()).collect();
            prop_assert_eq!(&joined, &data);
            for shard in &pieces {
                prop_assert!(shard.data.len() <= SMALL.max as usize);
                prop_assert_eq!(*shard.hash.as_bytes(), *blake3::hash(&shard.data).as_bytes());
            }
            for shard in pieces.iter().rev().skip(1) {
                prop_assert!(shard.data.len() >= SMALL.min as usize);
            }
        }

        #[test]
        fn streamed_shards_are_the_ones_fastcdc_cuts_from_the_whole_buffer(
            len in 0usize..60_000,
            seed in any::<u64>(),
            piece in 1usize..9_000,
        ) {
            let data = pseudo_random(len, seed);
            let mut chunker = StreamChunker::new(SMALL);
            let mut streamed = Vec::new();
            for part in data.chunks(piece) {
                let Ok(()) = chunker.push(part, collect_into(&mut streamed));
            }
            let Ok(()) = chunker.finish(collect_into(&mut streamed));
            let whole: Vec<(u64, usize)> = FastCDC::new(&data, SMALL.min, SMALL.avg, SMALL.max)
                .map(|chunk| (chunk.offset as u64, chunk.length))
                .collect();
            let streamed: Vec<(u64, usize)> =
                streamed.iter().map(|s| (s.offset, s.data.len())).collect();
            prop_assert_eq!(streamed, whole);
        }

        #[test]
        fn boundaries_are_stable_under_appended_data(seed in any::<u64>(), extra in 1usize..10_000) {
            let data = pseudo_random(30_000 + extra, seed);
            let prefix = chunk_all(SMALL, &data[..30_000]);
            let longer = chunk_all(SMALL, &data);
            // Every shard of the prefix but the last ends where the longer stream's shard ends.
            for (a, b) in prefix.iter().zip(&longer).take(prefix.len().saturating_sub(1)) {
                prop_assert_eq!(a.offset, b.offset);
                prop_assert_eq!(a.hash, b.hash);
            }
        }
    }

    /// Random bytes with runs of zeros, where the gear hash finds no cut and shards end at the
    /// maximum size.
    fn with_zero_runs(len: usize, seed: u64, runs: &[(usize, usize)]) -> Vec<u8> {
        let mut data = pseudo_random(len, seed);
        for &(start, run) in runs {
            let start = start.min(len);
            let end = (start + run).min(len);
            data[start..end].fill(0);
        }
        data
    }

    /// The crate's shards of `data`, with their BLAKE3.
    fn crate_shards(params: ChunkingParams, data: &[u8]) -> Vec<(u64, usize, ShardHash)> {
        FastCDC::new(data, params.min, params.avg, params.max)
            .map(|chunk| {
                let bytes = &data[chunk.offset..chunk.offset + chunk.length];
                let hash = ShardHash::from_bytes(*blake3::hash(bytes).as_bytes());
                (chunk.offset as u64, chunk.length, hash)
            })
            .collect()
    }

    fn streamed_shards(
        params: ChunkingParams,
        data: &[u8],
        piece: usize,
    ) -> Vec<(u64, usize, ShardHash)> {
        let mut chunker = StreamChunker::new(params);
        let mut out = Vec::new();
        for part in data.chunks(piece) {
            let Ok(()) = chunker.push(part, collect_into(&mut out));
        }
        let Ok(()) = chunker.finish(collect_into(&mut out));
        out.iter()
            .map(|s| (s.offset, s.data.len(), s.hash))
            .collect()
    }

    proptest! {
        #[test]
        fn any_valid_chunking_cuts_and_hashes_as_the_crate_does(
            min in 64u32..3_000,
            avg_above_min in 1u32..9_000,
            max in 65_536u32..140_000,
            len in 0usize..400_000,
            seed in any::<u64>(),
            zero_runs in proptest::collection::vec((0usize..400_000, 0usize..150_000), 0..3),
            piece in 1usize..100_000,
        ) {
            // The average must be at least 256 B (the crate's and the config's floor) and above
            // the minimum.
            let avg = min.max(255) + avg_above_min;
            let params = crate::config::validate_chunking(ChunkingParams { min, avg, max })
                .expect("valid chunking");
            let data = with_zero_runs(len, seed, &zero_runs);
            prop_assert_eq!(streamed_shards(params, &data, piece), crate_shards(params, &data));
        }
    }

    proptest! {
        #[test]
        fn windows_of_any_size_cut_and_hash_as_the_stream_does(
            seed in any::<u64>(),
            len in 0usize..200_000,
            window in 1usize..60_000,
        ) {
            let data = Bytes::from(pseudo_random(len, seed));
            let mut windowed = Vec::new();
            let mut cut_to = 0usize;
            let mut read_to = 0usize;
            while read_to < len {
                read_to = (read_to + window).min(len);
                let slice = data.slice(cut_to..read_to);
                let mut sink = collect_into(&mut windowed);
                let Ok(cut) = cut_window(SMALL, &slice, cut_to as u64, false, &mut sink);
                cut_to += cut;
            }
            let slice = data.slice(cut_to..len);
            let Ok(cut) = cut_window(SMALL, &slice, cut_to as u64, true, &mut collect_into(&mut windowed));
            prop_assert_eq!(cut_to + cut, len);
            let streamed = chunk_all(SMALL, &data);
            prop_assert_eq!(windowed.len(), streamed.len());
            for (w, s) in windowed.iter().zip(&streamed) {
                prop_assert_eq!((w.offset, &w.data, w.hash), (s.offset, &s.data, s.hash));
            }
        }
    }

    #[test]
    fn the_default_chunking_cuts_and_hashes_as_the_crate_does() {
        let params = crate::config::DEFAULT_CHUNKING;
        // 20 MiB: random, a 9 MiB run of zeros (two maximum shards and a part), random again.
        let data = with_zero_runs(20 << 20, 11, &[(6 << 20, 9 << 20)]);
        let expected = crate_shards(params, &data);
        assert!(expected
            .iter()
            .any(|&(_, len, _)| len == params.max as usize));
        for piece in [16 * 1024 + 3, 64 * 1024, 1 << 20, data.len()] {
            assert_eq!(
                streamed_shards(params, &data, piece),
                expected,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn inserted_bytes_disturb_few_shards() {
        let data = pseudo_random(200_000, 7);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, [1u8, 2, 3]);
        let before: std::collections::HashSet<_> = chunk_all(SMALL, &data)
            .into_iter()
            .map(|s| s.hash)
            .collect();
        let after = chunk_all(SMALL, &edited);
        let shared = after.iter().filter(|s| before.contains(&s.hash)).count();
        assert!(
            shared + 3 >= after.len(),
            "{shared} of {} shards survive an insert",
            after.len()
        );
    }
}
