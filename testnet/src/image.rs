//! Test images, built here from a seed and pushed to a registry over the OCI
//! distribution API.
//!
//! Layers are what image builders produce: real tar archives of files (a mix
//! of compressible text and random bytes) compressed with gzip. The config
//! lists each layer's `diff_id` (sha256 of the uncompressed tar), so
//! containerd's unpack check passes. Manifests come as an OCI image manifest
//! (optionally wrapped in an OCI image index for linux/amd64) or as a Docker
//! schema 2 manifest (optionally in a Docker manifest list).
//!
//! The same spec always gives the same bytes. Random content comes from a
//! seeded SplitMix64 generator filling eight bytes per step, so hundreds of
//! MiB are cheap; layers above [`FAST_GZIP_ABOVE`] bytes use gzip's fastest
//! level so tests stay quick.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::origin::Origin;

/// Layers with more uncompressed content than this are compressed with
/// gzip's fastest level.
pub const FAST_GZIP_ABOVE: usize = 16 << 20;

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How the image's manifests are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// An OCI image manifest, tagged directly.
    Oci,
    /// An OCI image index (one linux/amd64 entry) pointing at an OCI manifest.
    OciIndex,
    /// A Docker schema 2 manifest, tagged directly.
    Docker,
    /// A Docker manifest list (one linux/amd64 entry) pointing at a Docker
    /// schema 2 manifest.
    DockerList,
}

/// One layer to build.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    /// Approximate uncompressed content size in bytes (tar headers add a
    /// little).
    pub size: usize,
    /// Share of the content, in percent, that is random (incompressible);
    /// the rest is repetitive text.
    pub random_percent: u8,
}

/// What image to build: a repository, tag, seed and layers.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Repository name, e.g. `test/app`.
    pub repo: String,
    /// Tag, e.g. `v1`.
    pub tag: String,
    /// Seed for all generated content.
    pub seed: u64,
    /// Layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// Manifest shape.
    pub format: ManifestFormat,
}

impl ImageSpec {
    /// A spec without layers, in [`ManifestFormat::OciIndex`] format.
    pub fn new(repo: &str, tag: &str, seed: u64) -> ImageSpec {
        ImageSpec {
            repo: repo.to_string(),
            tag: tag.to_string(),
            seed,
            layers: Vec::new(),
            format: ManifestFormat::OciIndex,
        }
    }

    /// Adds a layer of about `size` bytes, `random_percent` of them random.
    pub fn layer(mut self, size: usize, random_percent: u8) -> ImageSpec {
        self.layers.push(LayerSpec {
            size,
            random_percent: random_percent.min(100),
        });
        self
    }

    /// Sets the manifest shape.
    pub fn format(mut self, format: ManifestFormat) -> ImageSpec {
        self.format = format;
        self
    }

    /// A typical small multi-layer image: 4 layers from a few KiB to a few
    /// tens of MiB, behind an OCI index.
    pub fn multi_layer(repo: &str, tag: &str, seed: u64) -> ImageSpec {
        ImageSpec::new(repo, tag, seed)
            .layer(6 << 10, 0)
            .layer(700 << 10, 50)
            .layer(5 << 20, 30)
            .layer(24 << 20, 80)
    }

    /// Builds all blobs in memory. CPU-bound: call from a blocking thread
    /// (see [`push_image`]).
    pub fn build(&self) -> Result<BuiltImage> {
        if self.layers.is_empty() {
            bail!("an image needs at least one layer");
        }
        let docker = matches!(
            self.format,
            ManifestFormat::Docker | ManifestFormat::DockerList
        );
        let (layer_type, config_type, manifest_type) = if docker {
            (DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST)
        } else {
            (OCI_LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST)
        };

        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, spec) in self.layers.iter().enumerate() {
            let seed = self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (gz, diff_id) = build_layer(i, spec, seed)?;
            layers.push(Blob::new(layer_type, gz));
            diff_ids.push(diff_id);
        }

        let history: Vec<_> = (0..layers.len())
            .map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("shoal-testnet layer {i}")}))
            .collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"shoal.test.seed": self.seed.to_string(), "shoal.test.tag": self.tag},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = Blob::new(config_type, serde_json::to_vec(&config)?);

        let layer_descriptors: Vec<_> = layers.iter().map(Blob::descriptor).collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layer_descriptors,
        });
        let manifest = Blob::new(manifest_type, serde_json::to_vec_pretty(&manifest)?);

        let index_type = match self.format {
            ManifestFormat::OciIndex => Some(OCI_INDEX),
            ManifestFormat::DockerList => Some(DOCKER_LIST),
            ManifestFormat::Oci | ManifestFormat::Docker => None,
        };
        let index = index_type
            .map(|index_type| -> Result<Blob> {
                let mut entry = manifest.descriptor();
                entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
                let index = json!({
                    "schemaVersion": 2,
                    "mediaType": index_type,
                    "manifests": [entry],
                });
                Ok(Blob::new(index_type, serde_json::to_vec_pretty(&index)?))
            })
            .transpose()?;

        Ok(BuiltImage {
            spec: self.clone(),
            layers,
            diff_ids,
            config,
            manifest,
            index,
        })
    }
}

/// A content-addressed blob held in memory.
#[derive(Clone)]
pub struct Blob {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Media type used in descriptors.
    pub media_type: String,
    /// The bytes.
    pub bytes: bytes::Bytes,
}

impl Blob {
    /// Wraps bytes, computing their digest.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&bytes),
            media_type: media_type.to_string(),
            bytes: bytes.into(),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// An OCI descriptor (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }

    /// The digest, size and media type without the bytes.
    pub fn blob_ref(&self) -> BlobRef {
        BlobRef {
            digest: self.digest.clone(),
            size: self.size(),
            media_type: self.media_type.clone(),
        }
    }
}

/// An image with all its bytes, ready to push.
pub struct BuiltImage {
    /// What it was built from.
    pub spec: ImageSpec,
    /// Compressed layers, bottom first.
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
    /// Image config.
    pub config: Blob,
    /// Image manifest.
    pub manifest: Blob,
    /// Index or manifest list, if the format has one.
    pub index: Option<Blob>,
}

impl BuiltImage {
    /// Digests, sizes and names without the bytes.
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            repo: self.spec.repo.clone(),
            tag: self.spec.tag.clone(),
            reference: format!(
                "{}/{}:{}",
                crate::REGISTRY_HOST,
                self.spec.repo,
                self.spec.tag
            ),
            index: self.index.as_ref().map(Blob::blob_ref),
            manifest: self.manifest.blob_ref(),
            config: self.config.blob_ref(),
            layers: self.layers.iter().map(Blob::blob_ref).collect(),
            diff_ids: self.diff_ids.clone(),
        }
    }

    /// Pushes blobs, then the manifest (by digest if an index follows), then
    /// the tag, to the registry at `base_url` (`http://host:port`).
    pub async fn push(&self, base_url: &str) -> Result<ImageInfo> {
        let client = reqwest::Client::new();
        let repo = &self.spec.repo;
        for blob in self.layers.iter().chain([&self.config]) {
            push_blob(&client, base_url, repo, blob).await?;
        }
        match &self.index {
            Some(index) => {
                push_manifest(
                    &client,
                    base_url,
                    repo,
                    &self.manifest.digest,
                    &self.manifest,
                )
                .await?;
                push_manifest(&client, base_url, repo, &self.spec.tag, index).await?;
            }
            None => push_manifest(&client, base_url, repo, &self.spec.tag, &self.manifest).await?,
        }
        Ok(self.info())
    }
}

/// Digest, size and media type of one blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// What a test needs to know about a pushed image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Repository name.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// Reference for containerd: `origin.shoal.test/<repo>:<tag>`.
    pub reference: String,
    /// Index or manifest list, if any.
    pub index: Option<BlobRef>,
    /// Image manifest.
    pub manifest: BlobRef,
    /// Image config.
    pub config: BlobRef,
    /// Layers, bottom first.
    pub layers: Vec<BlobRef>,
    /// sha256 of each uncompressed layer.
    pub diff_ids: Vec<String>,
}

impl ImageInfo {
    /// Every digest a full pull stores in containerd's content store: index
    /// (if any), manifest, config and layers.
    pub fn content_digests(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.blobs().map(|b| b.digest.clone()).collect();
        all.insert(self.manifest.digest.clone());
        if let Some(index) = &self.index {
            all.insert(index.digest.clone());
        }
        all
    }

    /// The config and the layers (what is fetched from `/blobs/`).
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// The largest layer.
    pub fn largest_layer(&self) -> &BlobRef {
        self.layers
            .iter()
            .max_by_key(|l| l.size)
            .expect("images have at least one layer")
    }

    /// The smallest layer.
    pub fn smallest_layer(&self) -> &BlobRef {
        self.layers
            .iter()
            .min_by_key(|l| l.size)
            .expect("images have at least one layer")
    }
}

/// Builds `spec` on a blocking thread and pushes it to `origin`.
pub async fn push_image(origin: &Origin, spec: ImageSpec) -> Result<ImageInfo> {
    let built = tokio::task::spawn_blocking(move || spec.build())
        .await
        .context("image build thread panicked")??;
    built.push(&origin.url()).await
}

/// Uploads one blob with a monolithic upload (`POST .../blobs/uploads/`,
/// then `PUT <location>&digest=...`), unless the registry already has it.
pub async fn push_blob(
    client: &reqwest::Client,
    base_url: &str,
    repo: &str,
    blob: &Blob,
) -> Result<()> {
    let head = client
        .head(format!("{base_url}/v2/{repo}/blobs/{}", blob.digest))
        .send()
        .await
        .context("HEAD blob")?;
    if head.status().is_success() {
        return Ok(());
    }
    let start = client
        .post(format!("{base_url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .context("starting blob upload")?;
    if start.status() != reqwest::StatusCode::ACCEPTED {
        bail!("starting upload of {}: {}", blob.digest, start.status());
    }
    let location = start
        .headers()
        .get(reqwest::header::LOCATION)
        .context("upload response without Location")?
        .to_str()?
        .to_string();
    let location = if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else {
        format!("{base_url}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{separator}digest={}", blob.digest))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(blob.bytes.clone())
        .send()
        .await
        .with_context(|| format!("uploading blob {}", blob.digest))?;
    if put.status() != reqwest::StatusCode::CREATED {
        let status = put.status();
        let body = put.text().await.unwrap_or_default();
        bail!("uploading blob {}: {status} {body}", blob.digest);
    }
    Ok(())
}

/// `PUT /v2/<repo>/manifests/<reference>` with the blob's media type.
pub async fn push_manifest(
    client: &reqwest::Client,
    base_url: &str,
    repo: &str,
    reference: &str,
    manifest: &Blob,
) -> Result<()> {
    let resp = client
        .put(format!("{base_url}/v2/{repo}/manifests/{reference}"))
        .header(reqwest::header::CONTENT_TYPE, &manifest.media_type)
        .body(manifest.bytes.clone())
        .send()
        .await
        .with_context(|| format!("pushing manifest {repo}:{reference}"))?;
    if resp.status() != reqwest::StatusCode::CREATED {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("pushing manifest {repo}:{reference}: {status} {body}");
    }
    Ok(())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds one gzip layer; returns its bytes and the diff_id of the tar.
fn build_layer(index: usize, spec: &LayerSpec, seed: u64) -> Result<(Vec<u8>, String)> {
    let level = if spec.size > FAST_GZIP_ABOVE {
        Compression::fast()
    } else {
        Compression::default()
    };
    let writer = DiffIdWriter {
        hasher: Sha256::new(),
        gzip: GzEncoder::new(Vec::with_capacity(spec.size / 2 + 4096), level),
    };
    let mut tar = tar::Builder::new(writer);
    let dir = format!("layer{index}");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(1_704_067_200);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, format!("{dir}/"), std::io::empty())
        .context("writing tar directory entry")?;

    let mut rng = SplitMix64(seed);
    let typical_file = (spec.size / 8).clamp(1 << 10, 4 << 20);
    let mut written = 0usize;
    let mut random_written = 0usize;
    let mut buf = Vec::new();
    let mut file_no = 0usize;
    while written < spec.size || file_no == 0 {
        let jitter = (rng.next_u64() as usize) % typical_file;
        let len = (typical_file / 2 + jitter).min(spec.size - written).max(1);
        // Keep the running share of random bytes close to the requested one.
        let want_random = (written + len) * spec.random_percent as usize / 100;
        let random = random_written < want_random && spec.random_percent > 0;
        buf.clear();
        buf.resize(len, 0);
        if random {
            rng.fill(&mut buf);
            random_written += len;
        } else {
            fill_text(&mut rng, &mut buf);
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(len as u64);
        header.set_mode(0o644);
        header.set_mtime(1_704_067_200);
        header.set_uid(0);
        header.set_gid(0);
        let name = if random { "bin" } else { "txt" };
        tar.append_data(
            &mut header,
            format!("{dir}/file{file_no:04}.{name}"),
            &buf[..],
        )
        .context("writing tar entry")?;
        written += len;
        file_no += 1;
    }
    let writer = tar.into_inner().context("finishing tar")?;
    let diff_id = format!("sha256:{}", hex::encode(writer.hasher.finalize()));
    let gz = writer.gzip.finish().context("finishing gzip")?;
    Ok((gz, diff_id))
}

/// Hashes the uncompressed tar stream while compressing it.
struct DiffIdWriter {
    hasher: Sha256,
    gzip: GzEncoder<Vec<u8>>,
}

impl Write for DiffIdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.gzip.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.gzip.flush()
    }
}

/// Fills `buf` with repetitive, compressible text lines.
fn fill_text(rng: &mut SplitMix64, buf: &mut [u8]) {
    const WORDS: [&[u8]; 16] = [
        b"shoal ",
        b"layer ",
        b"cache ",
        b"blob ",
        b"digest ",
        b"shard ",
        b"peer ",
        b"origin ",
        b"mirror ",
        b"pull ",
        b"index ",
        b"config ",
        b"tar ",
        b"gzip ",
        b"content ",
        b"store ",
    ];
    let mut pos = 0;
    let mut word_count = 0u32;
    while pos < buf.len() {
        let r = rng.next_u64();
        let word: &[u8] = if word_count % 12 == 11 {
            b"\n"
        } else {
            WORDS[(r % 16) as usize]
        };
        word_count += 1;
        let n = word.len().min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&word[..n]);
        pos += n;
    }
}

/// SplitMix64: a tiny, fast, seedable generator (not for cryptography).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes, eight at a time.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_deterministic_and_consistent() {
        let spec = ImageSpec::new("t/a", "v1", 7)
            .layer(10 << 10, 50)
            .layer(64 << 10, 0);
        let a = spec.build().unwrap();
        let b = spec.build().unwrap();
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_eq!(
            a.index.as_ref().unwrap().digest,
            b.index.as_ref().unwrap().digest
        );
        // diff_ids match the decompressed layers.
        for (layer, diff_id) in a.layers.iter().zip(&a.diff_ids) {
            let mut tar = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&layer.bytes[..]),
                &mut tar,
            )
            .unwrap();
            assert_eq!(&sha256_digest(&tar), diff_id);
            let entries = tar::Archive::new(&tar[..]).entries().unwrap().count();
            assert!(entries >= 2);
        }
        let other = ImageSpec::new("t/a", "v1", 8)
            .layer(10 << 10, 50)
            .build()
            .unwrap();
        assert_ne!(other.layers[0].digest, a.layers[0].digest);
    }
}
