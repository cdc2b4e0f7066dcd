//! `Range` request headers (`shoal_node::pullthrough::range`, reached as `crate::range`). A header that parses and resolves
//! against a blob's length names a non-empty range inside the blob.

use crate::range::RangeSpec;

/// The first 8 bytes are the blob's length (little-endian, at least 1); the rest is the header.
pub fn check(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes")).max(1);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Ok(spec) = RangeSpec::parse(header) else {
        return;
    };
    if let RangeSpec::FromTo(first, last) = spec {
        assert!(first <= last, "a parsed range is ordered");
    }
    if let Ok(range) = spec.resolve(len) {
        assert!(
            range.start < range.end && range.end <= len,
            "{range:?} lies in {len} bytes"
        );
    }
}
