//! Writes the seed inputs of the binary formats into `corpus/<target>/seed-*`: one valid encoding
//! of each message, map and record, with the selector byte each target reads first. The text
//! formats' seeds are copies of the project's own examples (README, testdata, scenarios).
//!
//! Run from `fuzz/seeds/`: `cargo run` (it writes into `../corpus/`).

use std::path::Path;

use shoal_proto::gossip::{
    Announcement, DemandSummary, GossipMessage, ThreatCve, ThreatEntry, ThreatScores,
};
use shoal_proto::preheat::{BlobSource, Fetched, PreheatReport, PreheatRequest};
use shoal_proto::records::{encode, AccessRecord, ManifestRecord, ShardRecord, TagRecord};
use shoal_proto::wire::{
    Challenge, ClaimAsk, FailedMember, FoundManifest, InFlightHeader, ManifestAnswer, ManifestRequest, MapWanted,
    Proof, ShardAnswer, ShardFrame, ShardRequest, ShardSet, WireMessage, PREFIX_LEN,
};
use shoal_proto::{BlobDigest, ChunkingParams, ShardEntry, ShardMap};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("../corpus").join(target);
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
}

fn with_selector(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(body);
    out
}

fn wire<M: WireMessage>(selector: u8, name: &str, message: &M) {
    let frame = message.encode();
    write("wire", name, &with_selector(selector, &frame[PREFIX_LEN..]));
}

fn sample_map() -> ShardMap {
    let lengths = [70_000u32, 65_536, 100_000];
    let mut offset = 0;
    let shards = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let entry = ShardEntry {
                hash: [i as u8 + 1; 32],
                offset,
                len,
            };
            offset += u64::from(len);
            entry
        })
        .collect();
    ShardMap {
        blob: [9; 32],
        blob_len: offset,
        chunking: ChunkingParams {
            min: 65_536,
            avg: 262_144,
            max: 1_048_576,
        },
        shards,
    }
}

fn main() {
    let chunking = ChunkingParams {
        min: 65_536,
        avg: 262_144,
        max: 1_048_576,
    };
    wire(0, "challenge", &Challenge { nonce: [1; 32] });
    wire(1, "proof", &Proof { mac: [2; 32] });
    wire(
        2,
        "request-all",
        &ShardRequest {
            blob: [3; 32],
            shards: ShardSet::All,
            map: MapWanted::Full,
            claim: ClaimAsk::WhoFetches,
        },
    );
    wire(
        2,
        "request-bits",
        &ShardRequest {
            blob: [3; 32],
            shards: ShardSet::from_indices([0, 3, 9]),
            map: MapWanted::HashOnly,
            claim: ClaimAsk::NoClaim,
        },
    );
    for (name, claim) in [
        ("request-renew-origin", ClaimAsk::StillFetchingFromOrigin),
        ("request-renew-following", ClaimAsk::StillFollowing),
        ("request-who-else-fetches", ClaimAsk::WhoElseFetches),
    ] {
        wire(
            2,
            name,
            &ShardRequest {
                blob: [3; 32],
                shards: ShardSet::All,
                map: MapWanted::HashOnly,
                claim,
            },
        );
    }
    wire(7, "failed-member", &FailedMember { peer: vec![7; 38] });
    wire(3, "answer-map", &ShardAnswer::Map(sample_map()));
    wire(3, "answer-hash", &ShardAnswer::MapHash([4; 32]));
    wire(
        3,
        "answer-in-flight",
        &ShardAnswer::InFlight(InFlightHeader {
            blob_len: Some(1 << 20),
            chunking,
        }),
    );
    wire(3, "answer-claimed", &ShardAnswer::Claimed(vec![7; 38]));
    wire(3, "answer-not-here", &ShardAnswer::NotHere);
    wire(
        4,
        "frame",
        &ShardFrame {
            index: 2,
            len: 65_536,
            hash: [5; 32],
        },
    );
    wire(4, "frame-end", &ShardFrame::end(3));
    wire(
        5,
        "manifest-request",
        &ManifestRequest {
            upstream: "registry.example:5000".into(),
            repo: "library/alpine".into(),
            reference: "3.19".into(),
        },
    );
    wire(
        6,
        "manifest-answer",
        &ManifestAnswer::Found(FoundManifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: [6; 32],
            body: br#"{"schemaVersion":2}"#.to_vec(),
            tag_fetched_at_ms: Some(1_700_000_000_000),
        }),
    );
    wire(6, "manifest-not-here", &ManifestAnswer::NotHere);

    let blob = BlobDigest::from_bytes([8; 32]);
    write(
        "gossip",
        "holds-all",
        &with_selector(0, &Announcement::complete(blob, 12).to_payload()),
    );
    let partial = Announcement::holds(blob, 12, &ShardSet::from_indices([0, 1, 5]))
        .expect("a partial holding");
    write(
        "gossip",
        "holds-some",
        &with_selector(0, &partial.to_payload()),
    );
    write(
        "gossip",
        "dropped",
        &with_selector(0, &Announcement::dropped(blob).to_payload()),
    );
    let summary = DemandSummary::top(
        "eu-west",
        [(blob, 3.5), (BlobDigest::from_bytes([1; 32]), 0.25)],
    );
    write("gossip", "demand", &with_selector(1, &summary.to_payload()));

    write("shard_map", "three-shards", &sample_map().encode());

    let scores = ThreatScores {
        entries: vec![
            ThreatEntry {
                blob: [1; 32],
                reported_at: 1_796_025_600,
                milli_score: 98_000,
                cves_total: 3,
                cves: vec![
                    ThreatCve {
                        id: "CVE-2024-0001".into(),
                        severity: 5,
                        fixed: true,
                    },
                    ThreatCve {
                        id: "GHSA-abcd-efgh-ijkl".into(),
                        severity: 3,
                        fixed: false,
                    },
                ],
            },
            ThreatEntry {
                blob: [2; 32],
                reported_at: 1_796_025_600,
                milli_score: 0,
                cves_total: 0,
                cves: Vec::new(),
            },
        ],
    };
    write("threat_scores", "two-layers", &scores.to_payload());

    let preheat_request = PreheatRequest::new(
        "registry.example:5000",
        &"library/alpine".parse().expect("a valid repository"),
        blob,
        2_000_000,
    );
    let frame = preheat_request.encode();
    write(
        "preheat",
        "request",
        &with_selector(0, &frame[PREFIX_LEN..]),
    );
    for (name, report) in [
        ("progress", PreheatReport::Progress(1 << 20)),
        ("already-there", PreheatReport::AlreadyThere),
        (
            "fetched",
            PreheatReport::Fetched(Fetched {
                source: BlobSource::PeersAndOrigin,
                bytes: 2_000_000,
            }),
        ),
        ("busy", PreheatReport::Busy),
        ("failed", PreheatReport::failed("the origin answered 404")),
    ] {
        let frame = report.encode();
        write("preheat", name, &with_selector(1, &frame[PREFIX_LEN..]));
    }

    let manifest = ManifestRecord {
        media_type: "application/json".into(),
        body: b"{}".to_vec(),
    };
    write("records", "manifest", &with_selector(0, &encode(&manifest)));
    let tag = TagRecord {
        digest: [2; 32],
        media_type: "m".into(),
        fetched_at_ms: 42,
    };
    write("records", "tag", &with_selector(1, &encode(&tag)));
    let access = AccessRecord {
        last_access_ms: 7,
        count: 3,
    };
    write("records", "access", &with_selector(2, &encode(&access)));
    let shard = ShardRecord {
        refcount: 2,
        len: 65_536,
    };
    write("records", "shard", &with_selector(3, &encode(&shard)));

    for (name, text) in [
        ("repo", "library/alpine"),
        ("repo-nested", "a.b/c_d/e-f"),
        ("tag", "3.19.1"),
        (
            "digest",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ),
        ("host", "registry.example:5000"),
    ] {
        write("oci", name, text.as_bytes());
    }
    for (name, header) in [
        ("from-to", "bytes=0-99"),
        ("from", "bytes=100-"),
        ("suffix", "bytes=-500"),
        ("multi", "bytes=0-1,5-9"),
    ] {
        let mut input = 1000u64.to_le_bytes().to_vec();
        input.extend_from_slice(header.as_bytes());
        write("range", name, &input);
    }
}
