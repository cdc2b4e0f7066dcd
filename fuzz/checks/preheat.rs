//! The preheat messages between members (`shoal_proto::preheat`): `PreheatRequest` and
//! `PreheatReport` decoded from the same bytes, whole and streamed through `BodyReader` in small
//! pieces. Whatever decodes must decode the same both ways, keep its rules and survive
//! encode → decode unchanged.

use shoal_proto::preheat::{PreheatReport, PreheatRequest, MAX_REASON_BYTES};
use shoal_proto::wire::{BodyReader, WireMessage, PREFIX_LEN};

/// The first byte picks the message type; the rest is a frame body (header and archive).
pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        if let Some(request) = message::<PreheatRequest>(body) {
            assert!(
                request.repo_name().is_ok(),
                "a decoded request names a valid repository"
            );
        }
    } else if let Some(PreheatReport::Failed(reason)) = message::<PreheatReport>(body) {
        assert!(
            !reason.is_empty() && reason.len() <= MAX_REASON_BYTES,
            "a failure reason is bounded"
        );
    }
}

fn message<M: WireMessage + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<M> {
    let whole = M::decode(body);
    let streamed = streamed::<M>(body);
    assert_eq!(
        whole.as_ref().ok(),
        streamed.as_ref().ok(),
        "a body decodes the same whole and streamed"
    );
    let message = whole.ok()?;
    let frame = message.encode();
    let again = M::decode(&frame[PREFIX_LEN..]).expect("a decoded message re-encodes validly");
    assert_eq!(again, message, "encode → decode is the identity");
    Some(message)
}

/// Feeds the body to a `BodyReader` the way a stream delivers it, 7 bytes at a time.
fn streamed<M: WireMessage>(body: &[u8]) -> Result<M, shoal_proto::wire::WireError> {
    let prefix = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let mut reader = BodyReader::<M>::new(prefix)?;
    for piece in body.chunks(7) {
        reader.feed(piece)?;
        assert!(
            reader.buffered_capacity() <= 2 * (body.len() + 16),
            "the reader holds at most about twice what arrived"
        );
    }
    reader.finish()
}
