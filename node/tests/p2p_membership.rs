//! The peer network in one process: a member finds a blob's provider through the DHT and looks
//! manifests up in another member's cache, a peer that never proves the network key gets no
//! Kademlia answer and no manifest from the same node, and a node with an allowlist refuses a
//! holder of the key that it does not name; nodes joining through one member find all the others,
//! and a request made while the proof is under way waits for it.

mod common;

use common::{node, node_allowing, TestNode};

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::kad;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::SwarmEvent;
use sha2::{Digest as _, Sha256};
use shoal_node::p2p::{NextFrame, PeerAnswer, TransferError, KAD_PROTOCOL, MANIFESTS_PROTOCOL};
use shoal_node::store::ShardStore;
use shoal_proto::records::{ManifestRecord, TagRecord};
use shoal_proto::wire::{
    ClaimAsk, ManifestRequest, MapWanted, ShardRequest, ShardSet, WireMessage as _,
};
use shoal_proto::{BlobDigest, Reference, RepoName};
use tokio::sync::watch;

fn commit_blob(store: &ShardStore, bytes: &[u8]) -> BlobDigest {
    let digest = BlobDigest::from_bytes(Sha256::digest(bytes).into());
    let mut ingest = store.begin_ingest(digest);
    ingest.write(bytes).unwrap();
    ingest.verify().unwrap();
    ingest.commit().unwrap();
    digest
}

/// A request for the whole of `digest`, map included.
fn whole_blob(digest: BlobDigest) -> ShardRequest {
    ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::All,
        map: MapWanted::Full,
        claim: ClaimAsk::NoClaim,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_providers_and_outsiders_get_no_dht_answer() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [7u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let digest = commit_blob(&a.store, &[42u8; 100_000]);
    a.network.provide_waiting(digest).await;

    // A member finds A as the provider and can fetch the whole blob from it.
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let mut providers = Vec::new();
    for _ in 0..100 {
        providers = b
            .network
            .find_providers(digest, Duration::from_secs(2))
            .await;
        if !providers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(providers, vec![a.network.local_peer_id()]);
    let whole = whole_blob(digest);
    let PeerAnswer::Map(map, mut stream) = b.network.request(providers[0], whole).await.unwrap()
    else {
        panic!("a holder of the whole blob answers with its map");
    };
    let mut received = Vec::new();
    for _ in &map.shards {
        let NextFrame::Shard(frame, shard) = stream.next_frame().await.unwrap() else {
            panic!("a holder of the whole blob sends no end frame");
        };
        assert_eq!(frame.hash, map.shards[frame.index as usize].hash);
        received.extend_from_slice(&shard);
    }
    assert_eq!(received, vec![42u8; 100_000]);
    // The holder closes the stream after the last shard asked for.
    assert!(matches!(
        stream.next_frame().await,
        Err(TransferError::EndedEarly(_))
    ));

    // A request for some shards gets only those, after the map's hash.
    let last = map.shards.len() - 1;
    let some = ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::from_indices([last]),
        map: MapWanted::HashOnly,
        claim: ClaimAsk::NoClaim,
    };
    let PeerAnswer::MapHash(hash, mut stream) =
        b.network.request(providers[0], some).await.unwrap()
    else {
        panic!("a holder sends the map's hash when asked for it only");
    };
    assert_eq!(&hash, blake3::hash(&map.encode()).as_bytes());
    let NextFrame::Shard(frame, shard) = stream.next_frame().await.unwrap() else {
        panic!("the shard asked for comes");
    };
    assert_eq!(frame.index as usize, last);
    assert_eq!(shard.len() as u32, map.shards[last].len);
    assert!(matches!(
        stream.next_frame().await,
        Err(TransferError::EndedEarly(_))
    ));

    // A bare Kademlia peer on the same protocol, that never proves the key, asks A directly.
    let mut outsider = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                local,
                MemoryStore::new(local),
                kad::Config::new(KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Server));
            kad
        })
        .unwrap()
        .build();
    outsider
        .behaviour_mut()
        .add_address(&a.network.local_peer_id(), a.addr.clone());
    outsider
        .behaviour_mut()
        .get_providers(kad::RecordKey::new(digest.as_bytes()));
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut found = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) = outsider.select_next_some().await
            {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    found.extend(providers);
                }
                if step.last {
                    return found;
                }
            }
        }
    })
    .await
    .expect("the outsider's query never finished");
    assert!(found.is_empty(), "an outsider learned providers: {found:?}");
}

/// Nodes that join one after another through the first member alone find every member that
/// joined before them. A newcomer learns the others from its first DHT lookup through the first
/// member, which must therefore never drop that lookup as coming from a non-member, however soon
/// after the proof exchange it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_through_one_member_find_every_earlier_member() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [9u8; 32];
    let mut nodes = vec![node(&key, Vec::new(), stop.clone()).await];
    for _ in 0..8 {
        let joiner = node(&key, vec![nodes[0].addr.clone()], stop.clone()).await;
        for earlier in &nodes {
            wait_for_member(&joiner, earlier.network.local_peer_id()).await;
        }
        nodes.push(joiner);
    }
    // No member's request was refused: each was sent after, or held until, its sender's
    // admission.
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.metrics.p2p_refused_non_member_requests.get(),
            0,
            "node {index} refused requests from members it had not yet admitted"
        );
    }
}

/// A request to a peer whose membership proof is still under way waits for both ends of the proof
/// instead of going out early and being refused (across a wide-area link the proof takes round
/// trips, longer than a quick retry would wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_while_the_proof_is_under_way_waits_for_it() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [11u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let digest = commit_blob(&a.store, &[5u8; 100_000]);
    // B asks A at once: its connection to A has only just been dialled.
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let whole = whole_blob(digest);
    let answer = b.network.request(a.network.local_peer_id(), whole).await;
    assert!(
        matches!(answer, Ok(PeerAnswer::Map(..))),
        "A did not answer with its map: {answer:?}"
    );
    assert_eq!(
        a.metrics.p2p_refused_non_member_requests.get(),
        0,
        "A refused a request from B before B's proof"
    );
}

/// Waits until `node` counts `peer` as a member.
async fn wait_for_member(node: &TestNode, peer: libp2p::PeerId) {
    for _ in 0..1200 {
        if node.network.members().contains(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{peer} never became a member");
}

/// The manifest the manifest tests cache at a node: its bytes and digest.
const CACHED_MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

/// Puts [`CACHED_MANIFEST`] in `node`'s manifest cache; returns its bytes and digest.
fn cache_a_manifest(node: &TestNode) -> (&'static [u8], BlobDigest) {
    let digest = BlobDigest::from_bytes(Sha256::digest(CACHED_MANIFEST).into());
    node.store
        .put_manifest(
            &digest,
            &ManifestRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                body: CACHED_MANIFEST.to_vec(),
            },
        )
        .unwrap();
    (CACHED_MANIFEST, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_get_cached_manifests_and_outsiders_get_none() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [8u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let repo: RepoName = "team/app".parse().unwrap();
    let (body, digest) = cache_a_manifest(&a);
    // Resolved long ago: a peer is told anyway, with the time, and decides.
    a.store
        .put_tag(
            "reg.example:5000/team/app:v1",
            &TagRecord {
                digest: *digest.as_bytes(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                fetched_at_ms: 1_000,
            },
        )
        .unwrap();

    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let a_id = a.network.local_peer_id();
    wait_for_member(&b, a_id).await;
    let tag = Reference::Tag("v1".into());
    let by_tag = b
        .network
        .fetch_manifest(a_id, "reg.example:5000", &repo, &tag)
        .await
        .unwrap()
        .expect("A has the tag cached");
    assert_eq!(by_tag.digest, digest);
    assert_eq!(by_tag.body.as_ref(), body);
    assert_eq!(by_tag.tag_fetched_at_ms, Some(1_000));
    let by_digest = b
        .network
        .fetch_manifest(a_id, "reg.example:5000", &repo, &Reference::Digest(digest))
        .await
        .unwrap()
        .expect("A has the manifest cached");
    assert_eq!(by_digest.body.as_ref(), body);
    assert_eq!(by_digest.tag_fetched_at_ms, None);
    // Another upstream's tag of the same name is another tag.
    let elsewhere = b
        .network
        .fetch_manifest(a_id, "docker.io", &repo, &tag)
        .await
        .unwrap();
    assert_eq!(elsewhere, None);
    assert_eq!(a.metrics.manifests_sent_peer.get(), 2);

    // A bare stream client that never proves the key asks A on the manifest protocol directly.
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
    // The stream opens (A speaks the protocol), then A drops it: the write or the read fails, and
    // no byte of an answer arrives.
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = control
            .open_stream(a_id, MANIFESTS_PROTOCOL)
            .await
            .expect("the outsider could not open a stream to A");
        let request = ManifestRequest::new("reg.example:5000", &repo, &tag);
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
        "an outsider received {} bytes on the manifest protocol",
        answer.len()
    );
    assert_eq!(a.metrics.manifests_sent_peer.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_refuses_a_key_holder_it_does_not_name() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [9u8; 32];
    let named = node(&key, Vec::new(), stop.clone()).await;
    let allowed = BTreeSet::from([named.network.local_peer_id()]);
    let a = node_allowing(&key, vec![named.addr.clone()], stop.clone(), Some(allowed)).await;
    wait_for_member(&a, named.network.local_peer_id()).await;

    let unnamed = node(&key, vec![a.addr.clone()], stop.clone()).await;
    for _ in 0..1200 {
        if a.metrics.p2p_failed_proofs.get() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.metrics.p2p_failed_proofs.get() >= 1,
        "A never refused the key holder it does not name"
    );
    assert!(!a
        .network
        .members()
        .contains(&unnamed.network.local_peer_id()));
    assert_eq!(a.network.members(), vec![named.network.local_peer_id()]);
}

/// Manifest requests that reach a member at the same moment, up to its serving limit, are all
/// answered by it: the stream layer hands a protocol's inbound streams over one at a time and
/// drops those that arrive while one waits, so a burst of requests used to lose some of them and
/// the requester went to another member or the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_manifest_requests_to_one_member_is_answered_in_full() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [9u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let repo: RepoName = "team/app".parse().unwrap();
    let (_, digest) = cache_a_manifest(&a);
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let a_id = a.network.local_peer_id();
    wait_for_member(&b, a_id).await;
    let by_digest = Reference::Digest(digest);
    for round in 0..100 {
        let answers = futures::future::join_all((0..16).map(|_| {
            let (network, repo, by_digest) = (b.network.clone(), repo.clone(), by_digest.clone());
            async move {
                network
                    .fetch_manifest(a_id, "reg.example:5000", &repo, &by_digest)
                    .await
            }
        }))
        .await;
        let failed: Vec<String> = answers
            .iter()
            .filter(|answer| !matches!(answer, Ok(Some(found)) if found.digest == digest))
            .map(|answer| format!("{answer:?}"))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of 16 requests were not answered: {failed:?}",
            failed.len()
        );
    }
}
