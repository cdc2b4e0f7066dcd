//! Replays the fuzz corpora of `proto`'s decoders (wire messages, gossip, shard maps, index
//! records, the OCI name grammar, threat scores, preheat messages) through the same checks the fuzz targets run (`fuzz/checks/`).

#[path = "../../fuzz/checks/gossip.rs"]
mod gossip;
#[path = "../../fuzz/checks/oci.rs"]
mod oci;
#[path = "../../fuzz/checks/preheat.rs"]
mod preheat;
#[path = "../../fuzz/checks/records.rs"]
mod records;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;
#[path = "../../fuzz/checks/shard_map.rs"]
mod shard_map;
#[path = "../../fuzz/checks/threat_scores.rs"]
mod threat_scores;
#[path = "../../fuzz/checks/wire.rs"]
mod wire;

#[test]
fn every_wire_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("wire", wire::check);
}

#[test]
fn every_gossip_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("gossip", gossip::check);
}

#[test]
fn every_shard_map_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("shard_map", shard_map::check);
}

#[test]
fn every_index_record_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("records", records::check);
}

#[test]
fn every_oci_name_corpus_input_parses_consistently_or_is_refused() {
    replay::replay("oci", oci::check);
}

#[test]
fn every_threat_scores_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("threat_scores", threat_scores::check);
}

#[test]
fn every_preheat_corpus_input_decodes_consistently_or_is_refused() {
    replay::replay("preheat", preheat::check);
}

#[test]
fn a_valid_tag_news_passes_the_gossip_check() {
    use shoal_proto::gossip::{GossipMessage, TagNews, TagPhase};
    let news = TagNews {
        upstream: "registry.example".into(),
        repo: "team/app".into(),
        tag: "v2".into(),
        old: [1; 32],
        new: [2; 32],
        phase: TagPhase::Held,
        started_at: 1_700_000_000,
        expires_at: 1_700_003_600,
    };
    let mut input = vec![2u8];
    input.extend_from_slice(&news.to_payload());
    assert_eq!(
        TagNews::from_payload(&input[1..]).expect("a valid tag news decodes"),
        news
    );
    gossip::check(&input);
}
