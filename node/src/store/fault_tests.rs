//! The store under injected storage faults ([`faults::FaultyFiles`]): any write, writeback start,
//! fsync, rename, directory sync or removal fails, or the process "crashes" before it, while random ingests,
//! reads and evictions run. After every recovery: no committed blob is lost, every blob the
//! store lists reads back exactly (so no unverified byte is served), `tmp/` is empty and `fsck`
//! is clean.

use std::collections::BTreeSet;
use std::io::ErrorKind;

use crate::test_data::digest_of;
use proptest::prelude::*;

use super::faults::{Fault, FaultyFiles, Step};
use super::*;

const PARAMS: ChunkingParams = ChunkingParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

/// Blobs the tests draw from; blob 3 shares most of its bytes with blob 2.
fn pool() -> Vec<Vec<u8>> {
    let mut blobs: Vec<Vec<u8>> = (0..3u64)
        .map(|seed| bytes(30_000 + seed as usize * 9_000, seed))
        .collect();
    let mut shared = blobs[2].clone();
    shared.extend_from_slice(&bytes(5_000, 99));
    blobs.push(shared);
    blobs.push(Vec::new());
    blobs
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    crate::test_data::pseudo_random_bytes(len, seed)
}

fn open(dir: &Path, files: Arc<FaultyFiles>) -> ShardStore {
    let config = StoreConfig {
        data_dir: dir.to_path_buf(),
        chunking: PARAMS,
        max_disk_bytes: u64::MAX,
    };
    ShardStore::open_with_files(&config, Box::new(PolicyEviction::lru()), files).unwrap()
}

fn ingest(
    store: &ShardStore,
    data: &[u8],
    durability: Durability,
) -> Result<ShardMap, IngestError> {
    let mut ingest = store.begin_ingest_with(digest_of(data), durability);
    for piece in data.chunks(7_000) {
        ingest.write(piece)?;
    }
    ingest.finish().map(|(map, _)| map)
}

/// The blob's bytes as the store serves them (each shard BLAKE3-checked), or why not.
fn read_back(store: &ShardStore, digest: &BlobDigest) -> Result<Vec<u8>, String> {
    let (map, _guard) = store
        .open_blob(digest)
        .map_err(|e| e.to_string())?
        .ok_or("not stored")?;
    let mut out = Vec::new();
    for shard in &map.shards {
        out.extend_from_slice(&store.read_shard(shard).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Every blob that must be there is, every blob listed reads back exactly, nothing is left in
/// `tmp/`; then a clean close and `fsck`.
fn check_recovered(dir: &Path, blobs: &[Vec<u8>], committed: &BTreeSet<usize>) -> ShardStore {
    let store = open(dir, Arc::new(FaultyFiles::new()));
    let listed: BTreeSet<BlobDigest> = store.blob_digests().unwrap().into_iter().collect();
    for &index in committed {
        assert!(
            listed.contains(&digest_of(&blobs[index])),
            "committed blob {index} lost"
        );
    }
    for digest in &listed {
        let data = blobs
            .iter()
            .find(|b| digest_of(b) == *digest)
            .expect("only blobs that were ingested are listed");
        assert_eq!(read_back(&store, digest).as_deref(), Ok(data.as_slice()));
    }
    assert_eq!(fs::read_dir(store.layout().tmp_dir()).unwrap().count(), 0);
    store.close().unwrap();
    drop(store);
    let report = recovery::fsck(dir, false).unwrap();
    assert!(report.is_clean(), "{report:?}");
    open(dir, Arc::new(FaultyFiles::new()))
}

#[derive(Debug, Clone)]
enum Action {
    Ingest(usize, Durability),
    Read(usize),
    Evict(usize),
    /// A clean stop and start.
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..5usize, durability()).prop_map(|(index, durability)| Action::Ingest(index, durability)),
        2 => (0..5usize).prop_map(Action::Read),
        2 => (0..5usize).prop_map(Action::Evict),
        1 => Just(Action::Restart),
    ]
}

fn step() -> impl Strategy<Value = Option<Step>> {
    prop_oneof![
        Just(None),
        Just(Some(Step::WriteNew)),
        Just(Some(Step::StartWriteback)),
        Just(Some(Step::SyncFile)),
        Just(Some(Step::Rename)),
        Just(Some(Step::SyncDir)),
        Just(Some(Step::Remove)),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![Just(Durability::AsWritten), Just(Durability::AfterRelease)]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Crash),
        Just(Fault::Fail(ErrorKind::StorageFull)),
        Just(Fault::Fail(ErrorKind::ReadOnlyFilesystem)),
        Just(Fault::Fail(ErrorKind::Other)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn faults_and_crashes_never_lose_a_committed_blob_or_serve_a_wrong_byte(
        actions in proptest::collection::vec(action(), 1..16),
        faults in proptest::collection::vec((0..12usize, step(), 0..24u64, fault()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = pool();
        let mut committed = BTreeSet::new();
        let mut files = Arc::new(FaultyFiles::new());
        let mut store = open(dir.path(), files.clone());
        for (at, action) in actions.iter().enumerate() {
            for (when, step, nth, fault) in &faults {
                if *when == at {
                    files.plan(*step, *nth, *fault);
                }
            }
            match action {
                Action::Ingest(index, durability) => {
                    let data = &blobs[*index];
                    match ingest(&store, data, *durability) {
                        Ok(map) => {
                            prop_assert_eq!(map.blob_digest(), digest_of(data));
                            committed.insert(*index);
                        }
                        Err(_) => {
                            // Not committed (unless it was already): nothing half-done is listed.
                            if !committed.contains(index) && !files.crashed() {
                                prop_assert!(store.shard_map(&digest_of(data)).unwrap().is_none());
                            }
                        }
                    }
                }
                Action::Read(index) => {
                    let digest = digest_of(&blobs[*index]);
                    match read_back(&store, &digest) {
                        Ok(data) => prop_assert_eq!(&data, &blobs[*index]),
                        Err(error) => prop_assert!(!committed.contains(index), "committed blob {index} unreadable: {error}"),
                    }
                }
                Action::Evict(index) => {
                    if store.remove_blob(&digest_of(&blobs[*index])).unwrap_or(false) {
                        committed.remove(index);
                    } else if store.shard_map(&digest_of(&blobs[*index])).unwrap().is_some() {
                        // The removal failed part way: the blob may be there or not.
                        committed.remove(index);
                    }
                }
                Action::Restart => {}
            }
            if files.crashed() || matches!(action, Action::Restart) {
                if files.crashed() {
                    // The process died: nothing more runs, the store is not closed.
                    drop(store);
                } else {
                    store.close().unwrap();
                    drop(store);
                }
                store = check_recovered(dir.path(), &blobs, &committed);
                drop(store);
                files = Arc::new(FaultyFiles::new());
                store = open(dir.path(), files.clone());
            }
        }
        drop(store);
        drop(check_recovered(dir.path(), &blobs, &committed));
    }
}

/// A write or fsync error at each step of an ingest, then the same ingest again: the failed one
/// leaves nothing that counts, the store says why it is degraded until a commit succeeds, and the
/// store restarts clean.
#[test]
fn a_failed_step_of_an_ingest_leaves_nothing_and_the_next_commit_clears_the_failure() {
    let blobs = pool();
    let data = &blobs[3];
    for (step, durability) in [
        Step::WriteNew,
        Step::StartWriteback,
        Step::Rename,
        Step::SyncFile,
        Step::SyncDir,
    ]
    .into_iter()
    .flat_map(|step| {
        [
            (step, Durability::AsWritten),
            (step, Durability::AfterRelease),
        ]
    }) {
        for nth in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let files = Arc::new(FaultyFiles::new());
            let store = open(dir.path(), files.clone());
            files.plan(Some(step), nth, Fault::Fail(ErrorKind::StorageFull));
            let result = ingest(&store, data, durability);
            if !files.fired() {
                // Past the last step of this kind: the ingest ran clean.
                result.unwrap();
                break;
            }
            assert!(
                result.is_err(),
                "{step:?} #{nth} ({durability:?}) failed but the ingest committed"
            );
            assert!(store.shard_map(&digest_of(data)).unwrap().is_none());
            assert_eq!(store.write_failure(), Some(WriteFailure::DiskFull));
            assert_eq!(
                fs::read_dir(store.layout().tmp_dir()).unwrap().count(),
                0,
                "{step:?} #{nth} ({durability:?}): tmp not cleaned"
            );
            ingest(&store, data, durability).unwrap();
            assert_eq!(store.write_failure(), None);
            assert_eq!(read_back(&store, &digest_of(data)).unwrap(), *data);
            store.close().unwrap();
            drop(store);
            let report = recovery::fsck(dir.path(), false).unwrap();
            assert!(
                report.is_clean(),
                "{step:?} #{nth} ({durability:?}): {report:?}"
            );
        }
    }
}

/// Two ingests of the same bytes at once: the second finds every shard file in place, written by
/// the first, which has not committed (so not fsynced) them. Its commit must fsync them itself
/// before its map makes them reachable, or a crash could leave a committed map over lost shards.
#[test]
fn a_commit_fsyncs_the_shards_it_found_written_by_an_ingest_not_yet_committed() {
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(FaultyFiles::new());
    let store = open(dir.path(), files.clone());
    let data = &pool()[1];
    let mut first = store.begin_ingest_with(digest_of(data), Durability::AsWritten);
    first.write(data).unwrap();
    first.verify().unwrap();
    // The first ingest's sync threads are done: the count below is the second commit's alone.
    first.settle().unwrap();
    let mut second = store.begin_ingest_with(digest_of(data), Durability::AfterRelease);
    second.write(data).unwrap();
    second.verify().unwrap();
    // Count the fsyncs of files (a fault planned past the last one never fires).
    files.plan(Some(Step::SyncFile), u64::MAX, Fault::Crash);
    let map = second.commit().unwrap();
    let shard_files: BTreeSet<[u8; 32]> = map.shards.iter().map(|s| s.hash).collect();
    assert!(shard_files.len() > 1);
    // One per shard file, one for the map.
    assert_eq!(files.seen(), shard_files.len() as u64 + 1);
    drop(first);
    assert_eq!(read_back(&store, &digest_of(data)).unwrap(), *data);
}

/// With `Durability::AsWritten` the sync threads fsync the shard files of a blob while it
/// arrives, and the commit fsyncs only the rest: every shard file is fsynced exactly once, most
/// of them before the commit starts.
#[test]
fn as_written_shard_files_are_fsynced_once_each_most_of_them_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(FaultyFiles::new());
    let store = open(dir.path(), files.clone());
    let data = bytes(200_000, 5);
    // Count the fsyncs of files (a fault planned past the last one never fires).
    files.plan(Some(Step::SyncFile), u64::MAX, Fault::Crash);
    let mut ingest = store.begin_ingest_with(digest_of(&data), Durability::AsWritten);
    for piece in data.chunks(7_000) {
        ingest.write(piece).unwrap();
    }
    ingest.verify().unwrap();
    ingest.settle().unwrap();
    let before_commit = files.seen();
    let map = ingest.commit().unwrap();
    let shard_files: BTreeSet<[u8; 32]> = map.shards.iter().map(|s| s.hash).collect();
    assert!(shard_files.len() > 10);
    assert!(
        before_commit * 2 > shard_files.len() as u64,
        "{before_commit} of {} shard files fsynced before the commit",
        shard_files.len()
    );
    // One per shard file, one for the map.
    assert_eq!(files.seen(), shard_files.len() as u64 + 1);
    assert_eq!(read_back(&store, &digest_of(&data)).unwrap(), data);
}

/// With `Durability::AfterRelease` (or `AsWritten` deferred because a client joined before the
/// first shard) no shard file is fsynced, nor its writeback started, before the verify (the
/// release of the client's last byte), however many are written; at the switch every file
/// written so far goes to the sync threads, so the commit fsyncs only the map, and each file is
/// fsynced, and its writeback started, exactly once.
#[test]
fn after_release_nothing_is_made_durable_before_the_release_and_each_file_once_after() {
    for (step, deferred_by_a_client) in [
        (Step::SyncFile, false),
        (Step::StartWriteback, false),
        (Step::SyncFile, true),
        (Step::StartWriteback, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(FaultyFiles::new());
        let store = open(dir.path(), files.clone());
        let data = bytes(200_000, 6);
        files.plan(Some(step), u64::MAX, Fault::Crash);
        let mut ingest = if deferred_by_a_client {
            let mut ingest = store.begin_ingest_with(digest_of(&data), Durability::AsWritten);
            ingest.defer_durability();
            ingest
        } else {
            store.begin_ingest_with(digest_of(&data), Durability::AfterRelease)
        };
        for piece in data.chunks(7_000) {
            ingest.write(piece).unwrap();
        }
        ingest.wait_for_writes().unwrap();
        assert_eq!(files.seen(), 0, "{step:?} before the release");
        ingest.verify().unwrap();
        ingest.settle().unwrap();
        let before_commit = files.seen();
        let map = ingest.commit().unwrap();
        let shard_files: BTreeSet<[u8; 32]> = map.shards.iter().map(|s| s.hash).collect();
        assert!(shard_files.len() > 10);
        assert_eq!(
            before_commit,
            shard_files.len() as u64,
            "{step:?} at the switch"
        );
        // The map is fsynced, not started early.
        let map_steps = u64::from(step == Step::SyncFile);
        assert_eq!(
            files.seen(),
            shard_files.len() as u64 + map_steps,
            "{step:?}"
        );
        assert_eq!(read_back(&store, &digest_of(&data)).unwrap(), data);
    }
}
