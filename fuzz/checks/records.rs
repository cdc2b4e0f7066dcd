//! The index records the node keeps in sled (`shoal_proto::records`), as read back after a crash
//! or from a damaged index. Whatever decodes re-encodes to the same record.

use shoal_proto::records::{decode, encode, AccessRecord, ManifestRecord, ShardRecord, TagRecord};

/// The first byte picks the record type; the rest is the stored value.
pub fn check(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(record) = decode::<ManifestRecord>(bytes) {
                assert_eq!(decode::<ManifestRecord>(&encode(&record)), Ok(record));
            }
        }
        1 => {
            if let Ok(record) = decode::<TagRecord>(bytes) {
                assert_eq!(decode::<TagRecord>(&encode(&record)), Ok(record));
            }
        }
        2 => {
            if let Ok(record) = decode::<AccessRecord>(bytes) {
                assert_eq!(decode::<AccessRecord>(&encode(&record)), Ok(record));
            }
        }
        _ => {
            if let Ok(record) = decode::<ShardRecord>(bytes) {
                assert_eq!(decode::<ShardRecord>(&encode(&record)), Ok(record));
            }
        }
    }
}
