//! The peer wire messages (`shoal_proto::wire`): every message type decoded from the same bytes,
//! whole and streamed through `BodyReader` in small pieces. Whatever decodes must decode the same
//! both ways and survive encode → decode unchanged.

use shoal_proto::wire::{
    BodyReader, Challenge, FailedMember, ManifestAnswer, ManifestRequest, Proof, ShardAnswer,
    ShardFrame, ShardRequest, WireMessage, PREFIX_LEN,
};

/// The first byte picks the message type; the rest is a frame body (header and archive).
pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => message::<Challenge>(body),
        1 => message::<Proof>(body),
        2 => message::<ShardRequest>(body),
        3 => message::<ShardAnswer>(body),
        4 => message::<ShardFrame>(body),
        5 => message::<ManifestRequest>(body),
        6 => message::<ManifestAnswer>(body),
        _ => message::<FailedMember>(body),
    }
}

fn message<M: WireMessage + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let whole = M::decode(body);
    let streamed = streamed::<M>(body);
    assert_eq!(
        whole.as_ref().ok(),
        streamed.as_ref().ok(),
        "a body decodes the same whole and streamed"
    );
    if let Ok(message) = whole {
        let frame = message.encode();
        let again = M::decode(&frame[PREFIX_LEN..]).expect("a decoded message re-encodes validly");
        assert_eq!(again, message, "encode → decode is the identity");
    }
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
