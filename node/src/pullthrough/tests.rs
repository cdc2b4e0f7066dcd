//! Pull-through against a real HTTP origin in-process, with the store under injected faults:
//! whatever the store does, every client of a healthy origin gets the exact blob or an error
//! before its first byte, never a broken body; nothing half-written is committed; the store
//! restarts clean; caching resumes by itself once the store can take blobs again. And a client
//! that joins a fetch made ahead of demand gets the blob from that one fetch.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::test_data::digest_of;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use shoal_proto::{BlobDigest, ChunkingParams, RepoName};
use tokio::sync::watch;

use super::{PullConfig, PullThrough};
use crate::metrics::Metrics;
use crate::pullthrough::warm::Warmed;
use crate::store::faults::{Fault, FaultyFiles, Step};
use crate::store::{recovery, PolicyEviction, RealFiles, ShardStore, StoreConfig, StoreFiles};
use crate::upstream::{Upstream, UpstreamConfig, UpstreamTimeouts};

const PARAMS: ChunkingParams = ChunkingParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

fn blob(len: usize, seed: u64) -> Bytes {
    crate::test_data::pseudo_random_bytes(len, seed).into()
}

/// A registry that serves its blobs in 16 KiB pieces, with Range support, and can be "down"
/// (503).
#[derive(Clone)]
struct Origin {
    blobs: Arc<Vec<Bytes>>,
    up: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    /// While false, bodies stop after their first half until it turns true.
    second_halves: Arc<watch::Sender<bool>>,
}

async fn serve_blob(
    State(origin): State<Origin>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    origin.requests.fetch_add(1, Ordering::SeqCst);
    if !origin.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Some(data) = origin
        .blobs
        .iter()
        .find(|b| uri.path().ends_with(&digest_of(b).to_string()))
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = data.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let (status, body, content_range) = match range {
        Some((start, last)) if start <= last && last < total => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(start..=last),
            Some(format!("bytes {start}-{last}/{total}")),
        ),
        _ => (StatusCode::OK, data, None),
    };
    let len = body.len();
    let pieces: Vec<Result<Bytes, Infallible>> = (0..len)
        .step_by(16 << 10)
        .map(|at| Ok(body.slice(at..(at + (16 << 10)).min(len))))
        .collect();
    let half = pieces.len() / 2;
    let gate = origin.second_halves.subscribe();
    let pieces = futures::stream::iter(pieces.into_iter().enumerate()).then(move |(i, piece)| {
        let mut gate = gate.clone();
        async move {
            if i >= half {
                let _ = gate.wait_for(|open| *open).await;
            }
            piece
        }
    });
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len);
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    response.body(Body::from_stream(pieces)).unwrap()
}

async fn start_origin(blobs: Vec<Bytes>) -> (Origin, SocketAddr) {
    let origin = Origin {
        blobs: Arc::new(blobs),
        up: Arc::new(AtomicBool::new(true)),
        requests: Arc::default(),
        second_halves: Arc::new(watch::channel(true).0),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/v2/{*rest}", get(serve_blob))
        .with_state(origin.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (origin, addr)
}

struct Node {
    pull: PullThrough,
    store: ShardStore,
    files: Arc<FaultyFiles>,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    dir: tempfile::TempDir,
}

fn node(origin: SocketAddr) -> Node {
    let files = Arc::new(FaultyFiles::new());
    let (pull, store, metrics, upstream, dir) = node_with_files(origin, files.clone());
    Node {
        pull,
        store,
        files,
        metrics,
        upstream,
        dir,
    }
}

/// A node's parts, its store changing files through `files`.
fn node_with_files(
    origin: SocketAddr,
    files: Arc<dyn StoreFiles>,
) -> (
    PullThrough,
    ShardStore,
    Arc<Metrics>,
    Upstream,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open_with_files(
        &StoreConfig {
            data_dir: dir.path().to_path_buf(),
            chunking: PARAMS,
            max_disk_bytes: u64::MAX,
        },
        Box::new(PolicyEviction::lru()),
        files,
    )
    .unwrap();
    store.set_disk_reserve_percent(0);
    let metrics = Arc::new(Metrics::default());
    let pull = PullThrough::new(
        store.clone(),
        metrics.clone(),
        PullConfig {
            tag_ttl: Duration::from_secs(60),
        },
    );
    let upstream = Upstream::new(
        UpstreamConfig {
            name: "origin.test".into(),
            url: format!("http://{origin}").parse().unwrap(),
            username: None,
            password: None,
        },
        UpstreamTimeouts {
            attempts: 1,
            ..UpstreamTimeouts::default()
        },
        metrics.clone(),
    )
    .unwrap();
    (pull, store, metrics, upstream, dir)
}

/// Real files whose writes wait while the gate is closed: an ingest slower than its client.
#[derive(Debug, Default)]
struct GatedFiles {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl GatedFiles {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

impl StoreFiles for GatedFiles {
    fn write_new(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        RealFiles.write_new(path, bytes)
    }
    fn start_writeback(&self, path: &Path) -> std::io::Result<()> {
        RealFiles.start_writeback(path)
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        RealFiles.sync_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFiles.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealFiles.sync_dir(dir)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealFiles.remove_file(path)
    }
}

/// What a client got: the whole body, or how many bytes arrived before the body broke, or an
/// error before the response started.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Body(Bytes),
    Broken(usize),
    Refused,
}

async fn pull_blob(node: &Node, digest: BlobDigest) -> Got {
    let repo: RepoName = "library/test".parse().unwrap();
    let Ok(reply) = node
        .pull
        .open_blob(&node.upstream, &repo, digest, None)
        .await
    else {
        return Got::Refused;
    };
    let mut body = reply.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        match piece {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => return Got::Broken(out.len()),
        }
    }
    Got::Body(out.into())
}

/// Closes the node's store and checks it: `tmp/` empty, `fsck` clean.
fn close_and_fsck(node: Node) {
    let Node {
        store, pull, dir, ..
    } = node;
    drop(pull);
    assert_eq!(
        std::fs::read_dir(store.layout().tmp_dir()).unwrap().count(),
        0,
        "tmp/ not cleaned"
    );
    store.close().unwrap();
    drop(store);
    let report = recovery::fsck(dir.path(), false).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_at_any_step_of_an_ingest_never_breaks_a_body() {
    let data = blob(120_000, 7);
    let digest = digest_of(&data);
    let (_origin, addr) = start_origin(vec![data.clone()]).await;
    for (step, error) in [
        (Step::WriteNew, ErrorKind::StorageFull),
        (Step::Rename, ErrorKind::ReadOnlyFilesystem),
        (Step::SyncFile, ErrorKind::Other),
        (Step::SyncDir, ErrorKind::StorageFull),
    ] {
        for nth in 0.. {
            let node = node(addr);
            node.files.plan(Some(step), nth, Fault::Fail(error));
            let clients = futures::future::join_all((0..3).map(|_| pull_blob(&node, digest))).await;
            for got in clients {
                assert_eq!(got, Got::Body(data.clone()), "{step:?} #{nth}");
            }
            assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
            if !node.files.fired() {
                // Past the last step of this kind: the blob was simply stored.
                assert!(node.store.shard_map(&digest).unwrap().is_some());
                close_and_fsck(node);
                break;
            }
            // The failed ingest passed its blob through; a request that came after it may have
            // started a new fetch, which the store took.
            assert!(
                node.metrics.blobs_passed_through.get() >= 1,
                "{step:?} #{nth}"
            );
            let failures = node.metrics.store_write_failures_disk_full.get()
                + node.metrics.store_write_failures_read_only.get()
                + node.metrics.store_write_failures_io.get();
            assert!(failures >= 1, "{step:?} #{nth}");
            if node.store.shard_map(&digest).unwrap().is_none() {
                // The store takes writes again: the next request fetches and stores the blob.
                assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
                assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
            }
            assert!(
                node.store.shard_map(&digest).unwrap().is_some(),
                "{step:?} #{nth}: not cached after recovery"
            );
            assert_eq!(node.pull.degradations(), Vec::<&str>::new());
            assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
            close_and_fsck(node);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_of_a_failed_write_is_reported_until_the_next_commit_succeeds() {
    // `disk_full` is the one cause a room check clears too (the file system has space here, so
    // it would clear at once): `a_blob_that_does_not_fit_passes_through_...` shows it.
    let data = blob(120_000, 11);
    let digest = digest_of(&data);
    let (_origin, addr) = start_origin(vec![data.clone()]).await;
    for (error, reason) in [
        (ErrorKind::ReadOnlyFilesystem, "store_read_only"),
        (ErrorKind::Other, "store_io_error"),
    ] {
        let node = node(addr);
        node.files.plan(Some(Step::SyncFile), 0, Fault::Fail(error));
        assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
        assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
        assert!(node.files.fired(), "{reason}");
        assert!(node.store.shard_map(&digest).unwrap().is_none(), "{reason}");
        assert_eq!(node.pull.degradations(), vec![reason]);
        // The store takes writes again: the next request caches the blob and clears the reason.
        assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
        assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
        assert!(node.store.shard_map(&digest).unwrap().is_some(), "{reason}");
        assert_eq!(node.pull.degradations(), Vec::<&str>::new(), "{reason}");
        close_and_fsck(node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_fit_passes_through_and_is_cached_once_there_is_room() {
    let data = blob(300_000, 8);
    let digest = digest_of(&data);
    let (origin, addr) = start_origin(vec![data.clone()]).await;
    let node = node(addr);
    // The whole file system reserved: the store has no room at all.
    node.store.set_disk_reserve_percent(100);
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert!(node.store.shard_map(&digest).unwrap().is_none());
    assert_eq!(node.pull.degradations(), vec!["disk_full"]);
    assert_eq!(node.metrics.bytes_passed_through.get(), data.len() as u64);
    assert_eq!(
        node.metrics.ingested_bytes.get(),
        0,
        "nothing touched the disk"
    );
    // Later requests go to the origin again.
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 2);
    // Space returns: the next pull is cached, and the node is healthy again.
    node.store.set_disk_reserve_percent(0);
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert!(node.store.shard_map(&digest).unwrap().is_some());
    assert_eq!(node.pull.degradations(), Vec::<&str>::new());
    origin.up.store(false, Ordering::SeqCst);
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    close_and_fsck(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_is_reported_until_it_answers_again() {
    let cached = blob(50_000, 9);
    let cold = blob(50_000, 10);
    let (origin, addr) = start_origin(vec![cached.clone(), cold.clone()]).await;
    let node = node(addr);
    assert_eq!(
        pull_blob(&node, digest_of(&cached)).await,
        Got::Body(cached.clone())
    );
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    origin.up.store(false, Ordering::SeqCst);
    assert_eq!(pull_blob(&node, digest_of(&cold)).await, Got::Refused);
    assert_eq!(node.pull.degradations(), vec!["upstream_unreachable"]);
    // The failed fetch leaves the flight table once it has ended.
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert_eq!(
        pull_blob(&node, digest_of(&cached)).await,
        Got::Body(cached.clone())
    );
    origin.up.store(true, Ordering::SeqCst);
    assert_eq!(
        pull_blob(&node, digest_of(&cold)).await,
        Got::Body(cold.clone())
    );
    assert_eq!(node.pull.degradations(), Vec::<&str>::new());
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    close_and_fsck(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_a_fetch_made_ahead_of_demand_gets_the_blob_from_that_fetch() {
    let joined = blob(600_000, 12);
    let alone = blob(600_000, 13);
    let (origin, addr) = start_origin(vec![joined.clone(), alone.clone()]).await;
    let node = Arc::new(node(addr));
    let repo: RepoName = "library/test".parse().unwrap();

    // A fetch ahead of demand (a preheat or a placement) stops halfway: the origin holds back
    // the second half of every body.
    origin.second_halves.send_replace(false);
    let (progress, mut warmed_bytes) = watch::channel(0u64);
    let warm = tokio::spawn({
        let (node, repo) = (node.clone(), repo.clone());
        let digest = digest_of(&joined);
        async move {
            node.pull
                .warm_blob(&node.upstream, &repo, digest, &progress)
                .await
        }
    });
    warmed_bytes
        .wait_for(|&bytes| bytes >= joined.len() as u64 / 4)
        .await
        .unwrap();

    // A client asks for the blob meanwhile: it joins that fetch rather than starting another.
    let client = tokio::spawn({
        let node = node.clone();
        let digest = digest_of(&joined);
        async move { pull_blob(&node, digest).await }
    });
    while node.metrics.single_flight_joins.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.second_halves.send_replace(true);

    assert_eq!(client.await.unwrap(), Got::Body(joined.clone()));
    assert_eq!(
        warm.await.unwrap().unwrap(),
        Warmed::Fetched {
            sources: vec![super::flight::FlightSource::Origin],
            bytes: joined.len() as u64,
        }
    );
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        1,
        "one origin fetch"
    );
    assert_eq!(node.metrics.single_flight_joins.get(), 1);
    assert!(node.store.shard_map(&digest_of(&joined)).unwrap().is_some());
    // The fetch saw the client and left its durability to the client's last byte.
    assert_eq!(node.metrics.ingests_deferred_for_client.get(), 1);

    // A fetch ahead of demand that nobody joins keeps its durability as written.
    let (progress, _) = watch::channel(0u64);
    assert!(matches!(
        node.pull
            .warm_blob(&node.upstream, &repo, digest_of(&alone), &progress)
            .await
            .unwrap(),
        Warmed::Fetched { .. }
    ));
    assert_eq!(node.pull.drain_flights(Duration::from_secs(30)).await, 0);
    assert_eq!(node.metrics.ingests_deferred_for_client.get(), 1);
    assert_eq!(pull_blob(&node, digest_of(&alone)).await, Got::Body(alone));

    let node = Arc::into_inner(node).expect("every task ended");
    close_and_fsck(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_its_last_byte_before_the_ingest_ends_and_the_commit_follows_every_shard() {
    // Larger than the flight's memory window, so a late reader reads the spool.
    let data = blob(12 << 20, 12);
    let digest = digest_of(&data);
    let (_origin, addr) = start_origin(vec![data.clone()]).await;
    let gate = Arc::new(GatedFiles::default());
    let (pull, store, metrics, upstream, dir) = node_with_files(addr, gate.clone());
    let node = Node {
        pull,
        store,
        files: Arc::new(FaultyFiles::new()),
        metrics,
        upstream,
        dir,
    };
    // The ingest cannot write a single shard file.
    gate.set_closed(true);
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    // The client has every byte, its sha256 checked; nothing is stored yet, the spool holds the
    // bytes the ingest has yet to cut.
    assert!(node.store.shard_map(&digest).unwrap().is_none());
    assert_eq!(node.metrics.blobs_committed.get(), 0);
    let spools = || {
        std::fs::read_dir(node.store.layout().tmp_dir())
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("spool.")
            })
            .count()
    };
    assert_eq!(spools(), 1);
    // A second client joins the same flight meanwhile and gets the whole blob, its start from
    // the spool.
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    assert_eq!(node.metrics.blobs_committed.get(), 0);
    gate.set_closed(false);
    assert_eq!(node.pull.drain_flights(Duration::from_secs(60)).await, 0);
    // Committed once every shard was written and the sha256 of the spool's bytes matched; the
    // spool is gone, and the blob is served from the store.
    assert_eq!(node.metrics.blobs_committed.get(), 1);
    assert!(node.store.shard_map(&digest).unwrap().is_some());
    assert_eq!(spools(), 0);
    assert_eq!(pull_blob(&node, digest).await, Got::Body(data.clone()));
    close_and_fsck(node);
}
