//! What a manifest names: the blobs of an image manifest, the children of an index.
//!
//! Reads the JSON of the four manifest media types Shoal serves. Bounded: at most
//! [`MAX_DESCRIPTORS`] descriptors are read from one manifest; a descriptor with a bad digest or
//! size is skipped, not trusted.

use shoal_proto::BlobDigest;

/// Descriptors read from one manifest at most.
pub const MAX_DESCRIPTORS: usize = 1024;

/// What a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestContent {
    /// An image manifest's config and layers: (digest, size).
    pub blobs: Vec<(BlobDigest, u64)>,
    /// An index's manifests that run on this host's platform (linux and this architecture).
    pub children: Vec<BlobDigest>,
}

/// This host's architecture as OCI names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn descriptor(value: &serde_json::Value) -> Option<(BlobDigest, u64)> {
    let digest = value.get("digest")?.as_str()?.parse().ok()?;
    let size = value.get("size")?.as_u64()?;
    Some((digest, size))
}

/// Reads a manifest body. `None` when it is not a JSON object.
pub fn parse_manifest(body: &[u8]) -> Option<ManifestContent> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let mut content = ManifestContent::default();
    if let Some(manifests) = object.get("manifests").and_then(|m| m.as_array()) {
        let arch = host_architecture();
        content.children = manifests
            .iter()
            .take(MAX_DESCRIPTORS)
            .filter(|m| {
                let platform = m.get("platform");
                let field = |k: &str| platform.and_then(|p| p.get(k)).and_then(|v| v.as_str());
                field("os") == Some("linux") && field("architecture") == Some(arch)
            })
            .filter_map(|m| descriptor(m).map(|(d, _)| d))
            .collect();
        return Some(content);
    }
    if let Some(config) = object.get("config").and_then(descriptor) {
        content.blobs.push(config);
    }
    if let Some(layers) = object.get("layers").and_then(|l| l.as_array()) {
        content
            .blobs
            .extend(layers.iter().take(MAX_DESCRIPTORS).filter_map(descriptor));
    }
    Some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_manifests_name_config_and_layers_and_indexes_this_platform() {
        let d = |b: char| format!("sha256:{}", b.to_string().repeat(64));
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":5}},
               "layers":[{{"digest":"{}","size":7}},{{"digest":"bad","size":1}},{{"digest":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let content = parse_manifest(manifest.as_bytes()).unwrap();
        assert_eq!(
            content.blobs,
            [(d('a').parse().unwrap(), 5), (d('b').parse().unwrap(), 7)]
        );
        let index = format!(
            r#"{{"manifests":[
                {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"{}"}}}},
                {{"digest":"{}","size":1,"platform":{{"os":"windows","architecture":"{}"}}}}]}}"#,
            d('d'),
            host_architecture(),
            d('e'),
            host_architecture()
        );
        let content = parse_manifest(index.as_bytes()).unwrap();
        assert_eq!(content.children, [d('d').parse().unwrap()]);
        assert!(content.blobs.is_empty());
        assert_eq!(parse_manifest(b"[1]"), None);
        assert_eq!(parse_manifest(b"{"), None);
    }
}
