//! The preheat protocol in one process: a member asks another to fetch a blob and hears its
//! progress and outcome from the warmer the other installed; before one is installed the answer is
//! a failure; a peer that never proves the network key gets nothing and starts nothing.

mod common;

use common::{node, TestNode};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use shoal_node::p2p::{BlobWarmer, PREHEAT_PROTOCOL};
use shoal_proto::preheat::{BlobSource, Fetched, PreheatReport, PreheatRequest};
use shoal_proto::wire::WireMessage as _;
use shoal_proto::{BlobDigest, RepoName};
use tokio::sync::watch;

/// A warmer that reports two steps of progress and a fetch from peers, and counts its calls.
#[derive(Default)]
struct CountingWarmer {
    calls: AtomicUsize,
    asked: Mutex<Vec<PreheatRequest>>,
}

impl BlobWarmer for CountingWarmer {
    fn warm(
        &self,
        request: PreheatRequest,
        progress: watch::Sender<u64>,
    ) -> BoxFuture<'static, PreheatReport> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().push(request.clone());
        Box::pin(async move {
            progress.send_replace(request.size / 2);
            tokio::time::sleep(Duration::from_millis(600)).await;
            progress.send_replace(request.size);
            tokio::time::sleep(Duration::from_millis(600)).await;
            PreheatReport::Fetched(Fetched {
                source: BlobSource::Peers,
                bytes: request.size,
            })
        })
    }
}

async fn wait_for_member(node: &TestNode, peer: libp2p::PeerId) {
    for _ in 0..1200 {
        if node.network.members().contains(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{peer} never became a member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_asked_to_preheat_and_report_progress_and_outsiders_start_nothing() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [21u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let a_id = a.network.local_peer_id();
    wait_for_member(&b, a_id).await;
    let repo: RepoName = "team/app".parse().unwrap();
    let digest = BlobDigest::from_bytes([5; 32]);
    let request = PreheatRequest::new("reg.example:5000", &repo, digest, 1000);

    // Before A installs its warmer, it refuses with a reason.
    let refused = b
        .network
        .preheat(a_id, request.clone(), &mut |_| {})
        .await
        .unwrap();
    assert!(
        matches!(&refused, PreheatReport::Failed(reason) if reason.contains("preheat")),
        "{refused:?}"
    );

    let warmer = Arc::new(CountingWarmer::default());
    a.network.serve_preheat(warmer.clone());
    let mut heard = Vec::new();
    let report = b
        .network
        .preheat(a_id, request.clone(), &mut |bytes| heard.push(bytes))
        .await
        .unwrap();
    assert_eq!(
        report,
        PreheatReport::Fetched(Fetched {
            source: BlobSource::Peers,
            bytes: 1000
        })
    );
    assert!(!heard.is_empty(), "no progress was reported");
    assert!(heard.windows(2).all(|w| w[0] <= w[1]), "{heard:?}");
    assert!(heard.iter().all(|b| *b <= 1000), "{heard:?}");
    assert_eq!(warmer.calls.load(Ordering::SeqCst), 1);
    assert_eq!(warmer.asked.lock().unwrap()[0], request);

    // A bare stream client that never proves the key asks A on the preheat protocol directly.
    let mut outsider = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .build();
    let mut control = outsider.behaviour().new_control();
    outsider.dial(a.addr.clone()).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            outsider.select_next_some().await;
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = control
            .open_stream(a_id, PREHEAT_PROTOCOL)
            .await
            .expect("the outsider could not open a stream to A");
        let mut answer = Vec::new();
        if stream.write_all(&request.encode()).await.is_ok() && stream.flush().await.is_ok() {
            let _ = stream.read_to_end(&mut answer).await;
        }
        answer
    })
    .await
    .expect("A neither answered nor closed the outsider's stream");
    driver.abort();
    assert!(
        answer.is_empty(),
        "an outsider received {} bytes on the preheat protocol",
        answer.len()
    );
    assert_eq!(
        warmer.calls.load(Ordering::SeqCst),
        1,
        "an outsider started a fetch"
    );
    assert!(a.metrics.p2p_refused_non_member_requests.get() >= 1);
}

/// A warmer that answers at once that the blob is there.
struct InstantWarmer;

impl BlobWarmer for InstantWarmer {
    fn warm(
        &self,
        _request: PreheatRequest,
        _progress: watch::Sender<u64>,
    ) -> BoxFuture<'static, PreheatReport> {
        Box::pin(async { PreheatReport::AlreadyThere })
    }
}

/// Requests that reach a member at the same moment are all answered by it: the stream layer
/// hands a protocol's inbound streams over one at a time and drops those that arrive while one
/// waits, so a burst from one preheat job (one request per blob) used to lose some of them,
/// and the job went on to another member of the region that fetched the blob again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_to_one_member_is_answered_in_full() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [22u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let a_id = a.network.local_peer_id();
    wait_for_member(&b, a_id).await;
    a.network.serve_preheat(Arc::new(InstantWarmer));
    let repo: RepoName = "team/app".parse().unwrap();
    for round in 0..100u8 {
        let answers = futures::future::join_all((0..48u8).map(|i| {
            let request = PreheatRequest::new(
                "reg.example:5000",
                &repo,
                BlobDigest::from_bytes([i ^ round; 32]),
                10,
            );
            let network = b.network.clone();
            async move { network.preheat(a_id, request, &mut |_| {}).await }
        }))
        .await;
        let failed: Vec<String> = answers
            .iter()
            .filter(|answer| !matches!(answer, Ok(PreheatReport::AlreadyThere)))
            .map(|answer| format!("{answer:?}"))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of 48 requests were not answered: {failed:?}",
            failed.len()
        );
    }
}
