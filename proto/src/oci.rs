//! The OCI Distribution grammar for what arrives in request paths: repository names, tags and
//! manifest references. A value of these types is known to be well formed, so it can be used in
//! a log line, a sled key or an upstream URL without escaping concerns (no `..`, no `%`, no `/` at
//! the ends, no control characters).

use std::fmt;
use std::str::FromStr;

use crate::digest::{BlobDigest, DigestError};
use crate::limits::{MAX_REGISTRY_HOST_BYTES, MAX_REPO_NAME_BYTES, MAX_TAG_BYTES};

/// Why a name or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than the limit.
    #[error("repository name must be 1 to {MAX_REPO_NAME_BYTES} bytes")]
    NameLength,
    /// Violates `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/...)*`.
    #[error("repository name does not match the distribution grammar")]
    NameGrammar,
    /// Violates `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("tag does not match the distribution grammar")]
    TagGrammar,
    /// A reference that looked like a digest but was not a valid one.
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
}

/// A repository name such as `library/alpine` or `team/app/api`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_REPO_NAME_BYTES {
            return Err(NameError::NameLength);
        }
        if !s.split('/').all(valid_path_component) {
            return Err(NameError::NameGrammar);
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// A tag such as `latest` or `3.19.1`.
    Tag(String),
    /// A content digest.
    Digest(BlobDigest),
}

/// Checks the tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_BYTES
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a registry host name as containerd sends it in `ns` (`docker.io`, `reg.example:5000`):
/// 1 to [`MAX_REGISTRY_HOST_BYTES`] bytes of ASCII letters, digits, `.`, `-`, `_` and `:`.
pub fn is_valid_registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REGISTRY_HOST_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return Ok(Self::Digest(s.parse()?));
        }
        if is_valid_tag(s) {
            Ok(Self::Tag(s.to_owned()))
        } else {
            Err(NameError::TagGrammar)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(tag) => f.write_str(tag),
            Self::Digest(digest) => fmt::Display::fmt(digest, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for name in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-org/app_server",
            "foo__bar",
            "foo--bar",
            "k8s.gcr.io/pause",
            "a1",
        ] {
            assert!(name.parse::<RepoName>().is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        for name in [
            "",
            "../etc/passwd",
            "a/../b",
            "UPPER",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a.-b",
            "-a",
            "a-",
            "a%2fb",
            "a b",
            "a\0b",
            ".",
            "..",
        ] {
            assert!(name.parse::<RepoName>().is_err(), "{name:?}");
        }
        assert_eq!(
            "a".repeat(256).parse::<RepoName>(),
            Err(NameError::NameLength)
        );
    }

    #[test]
    fn registry_hosts() {
        for host in ["docker.io", "reg.example:5000", "127.0.0.1:5000", "my_reg"] {
            assert!(is_valid_registry_host(host), "{host}");
        }
        for host in ["", "a/b", "a b", "a?ns=b", "é", &"a".repeat(254)] {
            assert!(!is_valid_registry_host(host), "{host:?}");
        }
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            "latest".parse::<Reference>().unwrap(),
            Reference::Tag("latest".into())
        );
        assert!("v1.2_rc-3".parse::<Reference>().is_ok());
        assert!(".hidden".parse::<Reference>().is_err());
        assert!("-x".parse::<Reference>().is_err());
        assert!("a".repeat(129).parse::<Reference>().is_err());
        assert!("sha256:1234".parse::<Reference>().is_err());
        assert!("../x".parse::<Reference>().is_err());
    }
}
