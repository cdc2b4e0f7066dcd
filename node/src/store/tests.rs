//! Store tests: ingest, dedup, verification, eviction, crash recovery and fsck.

use super::*;
use crate::test_data::digest_of;
use proptest::prelude::*;

const PARAMS: ChunkingParams = ChunkingParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

fn config(dir: &Path, max_disk_bytes: u64) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        chunking: PARAMS,
        max_disk_bytes,
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    crate::test_data::pseudo_random_bytes(len, seed)
}

fn ingest(store: &ShardStore, bytes: &[u8]) -> Result<ShardMap, IngestError> {
    let mut ingest = store.begin_ingest_with(digest_of(bytes), Durability::AsWritten);
    for piece in bytes.chunks(3000) {
        ingest.write(piece)?;
    }
    ingest.finish().map(|(map, _)| map)
}

fn read_all(store: &ShardStore, digest: &BlobDigest) -> Vec<u8> {
    let (map, _guard) = store.open_blob(digest).unwrap().unwrap();
    map.shards
        .iter()
        .flat_map(|s| store.read_shard(s).unwrap().to_vec())
        .collect()
}

fn shard_file_count(store: &ShardStore) -> usize {
    walk(&store.layout().shards_dir())
}

fn walk(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn ingested_blob_reads_back_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(100_000, 1);
    let digest = digest_of(&bytes);
    {
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        let map = ingest(&store, &bytes).unwrap();
        assert_eq!(map.blob_len, 100_000);
        assert_eq!(read_all(&store, &digest), bytes);
        assert_eq!(store.stats().blobs, 1);
        store.close().unwrap();
    }
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    assert_eq!(read_all(&store, &digest), bytes);
    assert_eq!(
        store.stats(),
        StoreStats {
            blobs: 1,
            bytes: 100_000
        }
    );
}

#[test]
fn shared_shards_are_stored_once_and_freed_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    let common = data(80_000, 2);
    let mut a = common.clone();
    a.extend(data(20_000, 3));
    let mut b = common.clone();
    b.extend(data(20_000, 4));
    let map_a = ingest(&store, &a).unwrap();
    let files_after_a = shard_file_count(&store);
    let map_b = ingest(&store, &b).unwrap();
    let shared = map_b
        .shards
        .iter()
        .filter(|s| map_a.shards.iter().any(|t| t.hash == s.hash))
        .count();
    assert!(shared >= 3, "only {shared} shards shared");
    assert_eq!(
        shard_file_count(&store),
        files_after_a + map_b.shards.len() - shared
    );
    assert!(store.stats().bytes < (a.len() + b.len()) as u64);
    assert!(store.remove_blob(&digest_of(&a)).unwrap());
    assert_eq!(read_all(&store, &digest_of(&b)), b);
    assert_eq!(shard_file_count(&store), map_b.shards.len());
    assert!(store.remove_blob(&digest_of(&b)).unwrap());
    assert_eq!(shard_file_count(&store), 0);
    assert_eq!(store.stats(), StoreStats::default());
}

#[test]
fn digest_mismatch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    let bytes = data(50_000, 5);
    let wrong = digest_of(b"something else");
    let mut ingest = store.begin_ingest_with(wrong, Durability::AfterRelease);
    ingest.write(&bytes).unwrap();
    assert!(matches!(
        ingest.finish(),
        Err(IngestError::DigestMismatch { .. })
    ));
    assert_eq!(shard_file_count(&store), 0);
    assert!(store.shard_map(&wrong).unwrap().is_none());
    assert_eq!(fs::read_dir(store.layout().maps_dir()).unwrap().count(), 0);
    assert_eq!(store.stats(), StoreStats::default());
}

#[test]
fn corrupt_shard_is_never_returned_and_can_be_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    let bytes = data(60_000, 6);
    let map = ingest(&store, &bytes).unwrap();
    let victim = map.shards[1];
    let path = store.layout().shard_path(&victim.shard_hash());
    let mut corrupted = fs::read(&path).unwrap();
    corrupted[10] ^= 0xff;
    fs::write(&path, &corrupted).unwrap();
    assert!(matches!(
        store.read_shard(&victim),
        Err(ShardReadError::Corrupt(_))
    ));
    assert!(!path.exists(), "a corrupt shard is dropped");
    assert!(matches!(
        store.read_shard(&victim),
        Err(ShardReadError::Missing(_))
    ));
    let good = &bytes[victim.offset as usize..victim.end() as usize];
    assert!(
        !store.repair_shard(&victim, &corrupted).unwrap(),
        "bad bytes are refused"
    );
    assert!(store.repair_shard(&victim, good).unwrap());
    assert_eq!(read_all(&store, &digest_of(&bytes)), bytes);
}

#[test]
fn eviction_is_lru_and_skips_blobs_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), 150_000)).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(60_000, 10 + i)).collect();
    for blob in &blobs {
        ingest(&store, blob).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    // The oldest is being served: the next oldest goes instead.
    let guard = store.register_reader(digest_of(&blobs[0]));
    let evicted = store.evict_to_budget().unwrap();
    assert_eq!(evicted, vec![digest_of(&blobs[1])]);
    assert!(store.stats().bytes <= 150_000);
    drop(guard);
    ingest(&store, &data(60_000, 20)).unwrap();
    let evicted = store.evict_to_budget().unwrap();
    assert_eq!(evicted, vec![digest_of(&blobs[0])]);
}

#[test]
fn a_read_makes_a_blob_recent_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), 150_000)).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(60_000, 50 + i)).collect();
    for blob in &blobs {
        ingest(&store, blob).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    // Reading the oldest makes the second the least recently used.
    std::thread::sleep(std::time::Duration::from_millis(3));
    assert_eq!(read_all(&store, &digest_of(&blobs[0])), blobs[0]);
    let evicted = store.evict_to_budget().unwrap();
    assert_eq!(evicted, vec![digest_of(&blobs[1])]);
    // Access counts survive a clean restart.
    store.close().unwrap();
    drop(store);
    let store = ShardStore::open(&config(dir.path(), 150_000)).unwrap();
    let record = store
        .inner
        .access
        .get(digest_of(&blobs[0]).as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(records::decode::<AccessRecord>(&record).unwrap().count, 1);
}

#[test]
fn crash_mid_ingest_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let kept = data(40_000, 30);
    {
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        ingest(&store, &kept).unwrap();
        let partial = data(90_000, 31);
        let mut ingest = store.begin_ingest_with(digest_of(&partial), Durability::AfterRelease);
        ingest.write(&partial[..70_000]).unwrap();
        // A crash: no cleanup runs, the store is not closed.
        ingest.crash();
        fs::write(store.layout().tmp_dir().join("shard.1.2"), b"half").unwrap();
        // A map whose shards never made it (as if the crash came between files).
        let ghost = ShardMap {
            blob: [9; 32],
            blob_len: 5,
            chunking: PARAMS,
            shards: vec![ShardEntry {
                hash: [8; 32],
                offset: 0,
                len: 5,
            }],
        };
        fs::write(
            store.layout().map_path(&ghost.blob_digest()),
            ghost.encode(),
        )
        .unwrap();
    }
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    assert_eq!(store.blob_digests().unwrap(), vec![digest_of(&kept)]);
    assert_eq!(read_all(&store, &digest_of(&kept)), kept);
    assert_eq!(fs::read_dir(store.layout().tmp_dir()).unwrap().count(), 0);
    let map = store.shard_map(&digest_of(&kept)).unwrap().unwrap();
    assert_eq!(
        shard_file_count(&store),
        map.shards.len(),
        "orphan shards removed"
    );
    store.close().unwrap();
    drop(store);
    let report = recovery::fsck(dir.path(), false).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn fsck_finds_corruption_and_repair_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(50_000, 40);
    let other = data(50_000, 41);
    let map = {
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        let map = ingest(&store, &bytes).unwrap();
        ingest(&store, &other).unwrap();
        store.close().unwrap();
        map
    };
    let path = Layout::new(dir.path()).shard_path(&map.shards[0].shard_hash());
    let mut corrupted = fs::read(&path).unwrap();
    corrupted[0] ^= 1;
    fs::write(&path, corrupted).unwrap();
    let report = recovery::fsck(dir.path(), false).unwrap();
    assert_eq!(report.corrupt_shards, vec![map.shards[0].shard_hash()]);
    assert!(!report.is_clean());
    recovery::fsck(dir.path(), true).unwrap();
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    assert_eq!(store.blob_digests().unwrap(), vec![digest_of(&other)]);
    store.close().unwrap();
    drop(store);
    assert!(recovery::fsck(dir.path(), false).unwrap().is_clean());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_blob_round_trips(len in 0usize..70_000, seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        let bytes = data(len, seed);
        let map = ingest(&store, &bytes).unwrap();
        prop_assert_eq!(map.blob_len, len as u64);
        prop_assert_eq!(read_all(&store, &digest_of(&bytes)), bytes);
    }
}

#[test]
fn shards_stored_as_a_peer_cut_them_make_the_same_blob() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = ShardStore::open(&config(source_dir.path(), u64::MAX)).unwrap();
    let bytes = data(200_000, 41);
    let map = ingest(&source, &bytes).unwrap();
    let shards: Vec<(Vec<u8>, ShardHash)> = map
        .shards
        .iter()
        .map(|entry| {
            let range = entry.offset as usize..entry.end() as usize;
            (bytes[range].to_vec(), ShardHash::from_bytes(entry.hash))
        })
        .collect();

    // Every shard as it came: the same map, and the blob reads back.
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    let mut whole = store.begin_ingest_with(digest_of(&bytes), Durability::AsWritten);
    for (shard, hash) in &shards {
        whole
            .write_shard(Bytes::copy_from_slice(shard), *hash)
            .unwrap();
    }
    // Like `write_unhashed`, `write_shard` leaves the blob's sha256 to the caller.
    whole.verify_with(digest_of(&bytes)).unwrap();
    assert_eq!(whole.commit().unwrap(), map);
    assert_eq!(read_all(&store, &digest_of(&bytes)), bytes);

    // Half from a peer, the rest as plain bytes (the peer failed): still one contiguous blob.
    let other = data(150_000, 42);
    let other_map = ingest(&source, &other).unwrap();
    let half = other_map.shards.len() / 2;
    let cut = other_map.shards[half].offset as usize;
    let mut mixed = store.begin_ingest_with(digest_of(&other), Durability::AfterRelease);
    for entry in &other_map.shards[..half] {
        let range = entry.offset as usize..entry.end() as usize;
        mixed
            .write_shard(
                Bytes::copy_from_slice(&other[range]),
                ShardHash::from_bytes(entry.hash),
            )
            .unwrap();
    }
    for piece in other[cut..].chunks(5000) {
        mixed.write_unhashed(piece).unwrap();
    }
    mixed.verify_with(digest_of(&other)).unwrap();
    let mixed_map = mixed.commit().unwrap();
    mixed_map.validate().unwrap();
    assert_eq!(read_all(&store, &digest_of(&other)), other);
}

#[test]
fn no_commit_starts_after_close_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(60_000, 50);
    {
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        store.close().unwrap();
        let refused = ingest(&store, &bytes);
        assert!(
            matches!(refused, Err(IngestError::Store(StoreError::Closed))),
            "{refused:?}"
        );
    }
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    assert!(store.blob_digests().unwrap().is_empty());
    assert_eq!(
        shard_file_count(&store),
        0,
        "the refused blob's shards removed"
    );
}

#[test]
fn a_close_during_a_commit_leaves_the_index_to_be_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(60_000, 51);
    {
        let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
        ingest(&store, &bytes).unwrap();
        let commit = store.begin_commit().unwrap();
        store.close().unwrap();
        assert!(
            store.inner.meta.get(CLEAN_KEY).unwrap().is_none(),
            "a half-done commit must not be called clean"
        );
        drop(commit);
    }
    let store = ShardStore::open(&config(dir.path(), u64::MAX)).unwrap();
    assert_eq!(store.blob_digests().unwrap(), vec![digest_of(&bytes)]);
    assert_eq!(read_all(&store, &digest_of(&bytes)), bytes);
    store.close().unwrap();
    assert!(store.inner.meta.get(CLEAN_KEY).unwrap().is_some());
}
