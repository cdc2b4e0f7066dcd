//! What a scanner report says about the image it scanned, beyond its findings: the image's names
//! (Trivy's `Metadata.RepoDigests`, `Metadata.RepoTags` and `ArtifactName`; Grype's
//! `source.target.repoDigests`, `tags`, `userInput` and `manifestDigest`) and when the scan ran
//! (Trivy's `CreatedAt`, Grype's `descriptor.timestamp`). The findings themselves are read by
//! `shoal_policy::threat`.
//!
//! Pure and bounded: at most [`MAX_NAMES`] names are read, each checked against the reference
//! grammar ([`ImageRef::parse`]); names that do not parse are skipped, not trusted.

use serde::Deserialize;
use shoal_proto::{BlobDigest, Reference, RepoName};

/// Image names read from one report at most.
pub const MAX_NAMES: usize = 16;
/// Longest image name read.
pub const MAX_NAME_BYTES: usize = 512;

/// The registry Docker-style short names (`alpine:3.19`) refer to.
pub const DOCKER_HUB: &str = "docker.io";

/// An image reference split the way registries and containerd's `ns` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`docker.io`, `ghcr.io`, `reg.example:5000`): the upstream's name.
    pub registry: String,
    /// The repository.
    pub repo: RepoName,
    /// The tag, if named.
    pub tag: Option<String>,
    /// The manifest digest, if named.
    pub digest: Option<BlobDigest>,
}

impl ImageRef {
    /// Parses `[host[:port]/]path[:tag][@sha256:hex]` with Docker's defaults: a first component
    /// without `.` or `:` that is not `localhost` is part of the path on `docker.io`, and a
    /// one-component path there is under `library/`. `None` when it is not a valid reference.
    pub fn parse(name: &str) -> Option<ImageRef> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return None;
        }
        let (rest, digest) = match name.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<BlobDigest>().ok()?)),
            None => (name, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path)
            }
            _ => (DOCKER_HUB.to_owned(), rest),
        };
        if !shoal_proto::oci::is_valid_registry_host(&registry) {
            return None;
        }
        // A tag follows the last ':' after the last '/'.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match path[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &path[last_slash + i + 1..];
                if !shoal_proto::oci::is_valid_tag(tag) {
                    return None;
                }
                (&path[..last_slash + i], Some(tag.to_owned()))
            }
            None => (path, None),
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let repo = path.parse::<RepoName>().ok()?;
        if tag.is_none() && digest.is_none() {
            return Some(ImageRef {
                registry,
                repo,
                tag: Some("latest".into()),
                digest: None,
            });
        }
        Some(ImageRef {
            registry,
            repo,
            tag,
            digest,
        })
    }

    /// The reference to ask for: the digest when named, else the tag.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => Reference::Digest(*digest),
            (None, Some(tag)) => Reference::Tag(tag.clone()),
            (None, None) => Reference::Tag("latest".into()),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What a report says about its image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image's names that parse, most precise first (by digest, then tags, then the name
    /// the scan was given).
    pub names: Vec<ImageRef>,
    /// Grype's `manifestDigest`: the image manifest (an index's child) that was scanned.
    pub manifest_digest: Option<BlobDigest>,
    /// When the scan ran, seconds since the Unix epoch.
    pub scanned_at: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TrivyDoc {
    #[serde(rename = "CreatedAt")]
    created_at: Option<String>,
    #[serde(rename = "ArtifactName")]
    artifact_name: Option<String>,
    #[serde(rename = "Metadata")]
    metadata: Option<TrivyMetadata>,
    source: Option<GrypeSource>,
    descriptor: Option<GrypeDescriptor>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TrivyMetadata {
    #[serde(rename = "RepoDigests")]
    repo_digests: Option<Vec<serde_json::Value>>,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GrypeSource {
    target: Option<GrypeTarget>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GrypeTarget {
    #[serde(rename = "userInput")]
    user_input: Option<String>,
    #[serde(rename = "manifestDigest")]
    manifest_digest: Option<String>,
    #[serde(rename = "repoDigests")]
    repo_digests: Option<Vec<serde_json::Value>>,
    tags: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GrypeDescriptor {
    timestamp: Option<String>,
}

/// Reads the image facts of a Trivy or Grype report (already accepted by
/// `shoal_policy::threat::parse_report`, so it is JSON within the size limit). Fields of an
/// unexpected type are ignored.
pub fn image_facts(bytes: &[u8]) -> ImageFacts {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(_) => return ImageFacts::default(),
    };
    // Each part separately, so one odd field does not hide the others.
    let part = |key: &str| value.get(key).cloned().unwrap_or(serde_json::Value::Null);
    let doc = TrivyDoc {
        created_at: serde_json::from_value(part("CreatedAt")).unwrap_or_default(),
        artifact_name: serde_json::from_value(part("ArtifactName")).unwrap_or_default(),
        metadata: serde_json::from_value(part("Metadata")).unwrap_or_default(),
        source: serde_json::from_value(part("source")).unwrap_or_default(),
        descriptor: serde_json::from_value(part("descriptor")).unwrap_or_default(),
    };
    let strings = |list: Option<Vec<serde_json::Value>>| -> Vec<String> {
        list.unwrap_or_default()
            .into_iter()
            .take(MAX_NAMES)
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut raw = Vec::new();
    let mut manifest_digest = None;
    if let Some(metadata) = doc.metadata {
        raw.extend(strings(metadata.repo_digests));
        raw.extend(strings(metadata.repo_tags));
    }
    raw.extend(doc.artifact_name);
    let target = doc.source.and_then(|s| s.target);
    if let Some(target) = target {
        raw.extend(strings(target.repo_digests));
        raw.extend(strings(target.tags));
        raw.extend(target.user_input);
        manifest_digest = target.manifest_digest.and_then(|d| d.parse().ok());
    }
    let mut names: Vec<ImageRef> = Vec::new();
    for name in raw.iter().take(MAX_NAMES) {
        if let Some(parsed) = ImageRef::parse(name) {
            if !names.contains(&parsed) {
                names.push(parsed);
            }
        }
    }
    let scanned_at = doc
        .created_at
        .or(doc.descriptor.and_then(|d| d.timestamp))
        .and_then(|t| rfc3339_seconds(&t));
    ImageFacts {
        names,
        manifest_digest,
        scanned_at,
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (`2021-08-25T12:20:30.000000005Z`,
/// `2023-08-31T15:13:32.377177-04:00`); fractions are dropped. `None` when it is not one, or
/// before 1970.
pub fn rfc3339_seconds(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b.len() > 64
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let r = rest.as_bytes();
            if r.len() != 6 || !matches!(r[0], b'+' | b'-') || r[3] != b':' {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if r[0] == b'-' { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_dockers_defaults() {
        let r = ImageRef::parse("busybox:1.32.1").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repo.as_str(), "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.32.1"));
        let r = ImageRef::parse("127.0.0.1:5000/test/app:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repo.as_str(), "test/app");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("quay.io/team/x@{digest}")).unwrap();
        assert_eq!(r.reference(), Reference::Digest(digest.parse().unwrap()));
        assert_eq!(r.tag, None);
        let r = ImageRef::parse("origin.shoal.test/test/app").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "origin.shoal.test/test/app:latest");
        for bad in [
            "",
            "UPPER/case",
            "a/b:bad tag",
            "x@sha256:zz",
            "host:5000/../etc",
        ] {
            assert_eq!(ImageRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_in_the_real_reports_read() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2021-08-25T12:20:30.000000005Z"),
            Some(1_629_894_030)
        );
        assert_eq!(
            rfc3339_seconds("2023-08-31T15:13:32.377177-04:00"),
            Some(1_693_509_212)
        );
        for bad in [
            "yesterday",
            "2021-13-01T00:00:00Z",
            "2021-08-25T12:20:30",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(rfc3339_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_real_reports_name_their_images() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/vuln-reports");
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("{name}: {e} (the shared reports must sit beside the repository)")
            })
        };
        let trivy = image_facts(&read("trivy-alpine-39.json"));
        assert_eq!(
            trivy.names[0].to_string(),
            "ghcr.io/aquasecurity/trivy-test-images:alpine-39"
        );
        assert_eq!(trivy.scanned_at, Some(1_629_894_030));
        let grype = image_facts(&read("grype-xjoin-kafka-connect-strimzi.json"));
        assert_eq!(grype.names[0].registry, "quay.io");
        assert!(grype.names[0].digest.is_some());
        assert!(grype.manifest_digest.is_some());
        assert!(grype.scanned_at.is_some());
        let busybox = image_facts(&read("grype-busybox-1.32.1.json"));
        assert!(busybox
            .names
            .iter()
            .any(|n| n.to_string() == "docker.io/library/busybox:1.32.1"));
    }
}
