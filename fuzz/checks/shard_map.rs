//! Shard maps (`shoal_proto::ShardMap`), as read from disk or a peer's answer. A decoded map is
//! valid, re-encodes to the same map, and finds the right shard for any offset.

use shoal_proto::ShardMap;

/// The whole input is an encoded map.
pub fn check(data: &[u8]) {
    let Ok(map) = ShardMap::decode(data) else {
        return;
    };
    map.validate().expect("a decoded map is valid");
    let again = ShardMap::decode(&map.encode()).expect("a decoded map re-encodes validly");
    assert_eq!(again, map, "encode → decode is the identity");
    if map.blob_len == 0 {
        assert!(map.shard_index_at(0).is_none());
        return;
    }
    for offset in [0, map.blob_len / 2, map.blob_len - 1] {
        let index = map
            .shard_index_at(offset)
            .expect("an offset inside the blob has a shard");
        let shard = &map.shards[index];
        assert!(
            shard.offset <= offset && offset < shard.end(),
            "the shard holds the offset"
        );
    }
    assert!(map.shard_index_at(map.blob_len).is_none());
}
