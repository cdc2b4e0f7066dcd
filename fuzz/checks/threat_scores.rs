//! Threat scores as a member receives them over gossip (`shoal_proto::gossip::ThreatScores`,
//! topic `shoal/threat/1`). Whatever decodes keeps its limits and survives
//! to_payload → from_payload unchanged.

use shoal_proto::gossip::{
    GossipMessage, ThreatScores, MAX_MILLI_SCORE, MAX_SEVERITY, MAX_THREAT_CVES,
    MAX_THREAT_CVE_ID_BYTES, MAX_THREAT_ENTRIES,
};

/// The whole input is the received payload.
pub fn check(payload: &[u8]) {
    let Ok(scores) = ThreatScores::from_payload(payload) else {
        return;
    };
    assert!(
        (1..=MAX_THREAT_ENTRIES).contains(&scores.entries.len()),
        "entries bounded"
    );
    assert!(
        scores.entries.windows(2).all(|w| w[0].blob < w[1].blob),
        "one entry per blob, ascending"
    );
    for entry in &scores.entries {
        assert!(entry.milli_score <= MAX_MILLI_SCORE, "score bounded");
        assert!(entry.cves.len() <= MAX_THREAT_CVES, "CVEs bounded");
        assert!(
            entry.cves_total as usize >= entry.cves.len(),
            "the total counts the CVEs listed"
        );
        for cve in &entry.cves {
            assert!(cve.severity <= MAX_SEVERITY, "severity bounded");
            assert!(
                !cve.id.is_empty() && cve.id.len() <= MAX_THREAT_CVE_ID_BYTES,
                "CVE id length bounded"
            );
        }
    }
    let again = ThreatScores::from_payload(&scores.to_payload())
        .expect("a decoded message re-encodes validly");
    assert_eq!(again, scores, "to_payload → from_payload is the identity");
}
