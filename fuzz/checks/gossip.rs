//! The gossip payloads (`shoal_proto::gossip`): announcements, demand summaries and a rebuild's
//! tag news as a member receives them. Whatever decodes must keep its rules through to_payload → from_payload.

use shoal_proto::gossip::{Announcement, DemandSummary, GossipMessage, TagNews};

/// The first byte picks the message type; the rest is the received payload.
pub fn check(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => round_trip::<Announcement>(payload),
        1 => round_trip::<DemandSummary>(payload),
        _ => round_trip::<TagNews>(payload),
    }
}

fn round_trip<M: GossipMessage + PartialEq + std::fmt::Debug>(payload: &[u8]) {
    let Ok(message) = M::from_payload(payload) else {
        return;
    };
    let again =
        M::from_payload(&message.to_payload()).expect("a decoded message re-encodes validly");
    assert_eq!(again, message, "to_payload → from_payload is the identity");
}
