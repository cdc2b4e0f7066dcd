//! The OCI name grammar (`shoal_proto::oci`, `shoal_proto::digest`): repository names, tags,
//! references, digests and registry hosts as a client sends them. Whatever parses prints back to
//! text that parses to the same value.

use std::str::FromStr;

use shoal_proto::oci::{is_valid_registry_host, is_valid_tag};
use shoal_proto::{BlobDigest, Reference, RepoName};

/// The input, if UTF-8, is tried as every kind of name.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = RepoName::from_str(text) {
        assert_eq!(name.as_str(), text, "a repository name is kept as written");
        assert_eq!(RepoName::from_str(&name.to_string()).ok(), Some(name));
    }
    if let Ok(reference) = Reference::from_str(text) {
        assert_eq!(
            Reference::from_str(&reference.to_string()).ok(),
            Some(reference.clone())
        );
        if let Reference::Tag(tag) = &reference {
            assert!(is_valid_tag(tag));
        }
    }
    if let Ok(digest) = BlobDigest::from_str(text) {
        assert_eq!(BlobDigest::from_str(&digest.to_string()).ok(), Some(digest));
        assert_eq!(BlobDigest::from_hex(&digest.hex()).ok(), Some(digest));
    }
    if is_valid_registry_host(text) {
        assert!(!text.is_empty() && text.is_ascii());
    }
}
