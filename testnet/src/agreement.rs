//! The simulator and the testnet on the same small scenario (`shoal-testnet agreement`): three
//! regions of two nodes, a trace of real images from the image catalog (layer sizes scaled
//! down), and a new version of the most pulled tag in the middle of the run.
//!
//! [`build_scenario`] picks tags from the catalog (each with the version it had and, for the
//! updated tag, the next version, sharing layers exactly as the catalog says), makes one blob per
//! catalog layer (seeded bytes, the catalog size divided by the scale) and draws the pulls (Zipf
//! over the tags, uniform over the nodes). It writes the trace (`trace.jsonl`, in `shoal-sim`'s
//! trace format, with the real digests of the blobs) and a scenario (`scenario.toml`) for
//! `shoal-sim run`. [`replay`] then pushes the images to a real origin, starts six `shoald`
//! processes in three regions and replays the same trace in real time with registry-API pulls
//! (the manifest by tag, then every layer) through the trace's node; at the publication it moves
//! the tag on the origin. It reports the two figures the simulator reports for the same trace:
//! the layer bytes the origin served (pulls and pre-fetches together) and the share of layer
//! requests the asked node answered from its own store (checked just before each request with
//! `/placement/explain`).
//!
//! Everything is bounded: the catalog is read line by line (at most [`MAX_CATALOG_LINES`] lines
//! of at most [`MAX_LINE_BYTES`]), a scaled layer is at most [`MAX_SCALED_LAYER`] bytes, and the
//! trace holds at most [`MAX_PULLS`] pulls.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::image::{push_blob, push_manifest, sha256_digest, Blob, SplitMix64};
use crate::network::{Network, NetworkSpec};
use crate::node::{Node, NodeConfig};

/// Catalog lines read at most.
pub const MAX_CATALOG_LINES: usize = 1_000_000;
/// Longest catalog line accepted.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest blob a scaled layer becomes.
pub const MAX_SCALED_LAYER: u64 = 8 << 20;
/// Most pulls in a trace.
pub const MAX_PULLS: usize = 2000;
/// Regions and nodes per region of the scenario.
pub const REGIONS: [&str; 3] = ["a", "b", "c"];
/// Nodes in each region.
pub const NODES_PER_REGION: usize = 2;
/// The tag TTL of the nodes, seconds.
const TAG_TTL_SECS: u64 = 5;
/// No pull of the updated tag within this long after its publication (the nodes learn of the
/// move within a tag TTL; the simulator at once).
const QUIET_AFTER_PUBLISH_SECS: f64 = 30.0;
/// Largest unscaled image taken from the catalog, bytes.
const MAX_IMAGE_BYTES: u64 = 400_000_000;
/// RTT between two regions, ms (added between the testnet's regions too).
const REGION_RTT_MS: u64 = 20;
/// RTT from every region to the origin in the simulator, ms (the testnet's origin is local: the
/// figures compared are bytes and hits, not times).
const ORIGIN_RTT_MS: u64 = 150;

/// What to build and replay.
#[derive(Debug, Clone, Serialize)]
pub struct AgreementOptions {
    /// The image catalog (JSON lines).
    pub catalog: PathBuf,
    /// Layer sizes are divided by this.
    pub scale: u64,
    /// Tags pulled.
    pub tags: usize,
    /// Pulls in the trace.
    pub pulls: usize,
    /// Length of the run, seconds (real time on the testnet, simulated in `shoal-sim`).
    pub seconds: u64,
    /// Seed of the tag choice and the pulls.
    pub seed: u64,
    /// Where the trace and the scenario are written.
    pub out: PathBuf,
}

#[derive(Debug, Deserialize)]
struct CatalogLine {
    time: String,
    image: String,
    tag: String,
    layers: Vec<CatalogLayer>,
}

#[derive(Debug, Deserialize)]
struct CatalogLayer {
    digest: String,
    size: u64,
}

/// One version of a tag as the scenario uses it: its scaled layers (digest of the generated blob,
/// size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaledVersion {
    /// `image:tag`.
    pub name: String,
    /// The generated layers, bottom first.
    pub layers: Vec<(String, u64)>,
}

/// One event of the trace.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceEvent {
    /// The tag names this version from now on.
    Publish {
        /// Seconds from the start.
        time: f64,
        /// Index into [`Scenario::versions`].
        version: usize,
    },
    /// A node pulls a version.
    Pull {
        /// Seconds from the start.
        time: f64,
        /// Node index (regions in order, two nodes each).
        node: usize,
        /// Index into [`Scenario::versions`].
        version: usize,
    },
}

/// The built scenario: versions, the blobs behind their layers, and the events.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Every version the trace names.
    pub versions: Vec<ScaledVersion>,
    /// Generated blobs by digest: (seed, size).
    pub blobs: BTreeMap<String, (u64, u64)>,
    /// Events in time order.
    pub events: Vec<TraceEvent>,
}

/// Seeded bytes of a scaled layer.
fn layer_bytes(seed: u64, size: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    SplitMix64(seed).fill(&mut bytes);
    bytes
}

/// The versions of one tag: (catalog time, layers), in file order.
type History = Vec<(String, Vec<CatalogLayer>)>;

/// Reads the catalog's versions per `image:tag`.
fn read_catalog(path: &Path) -> Result<BTreeMap<String, History>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut tags: BTreeMap<String, History> = BTreeMap::new();
    let mut line = String::new();
    for n in 1..=MAX_CATALOG_LINES {
        line.clear();
        let read =
            std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_line(&mut line)?;
        if read == 0 {
            return Ok(tags);
        }
        ensure!(
            read <= MAX_LINE_BYTES,
            "catalog line {n}: longer than {MAX_LINE_BYTES} bytes"
        );
        if line.trim().is_empty() {
            continue;
        }
        let record: CatalogLine =
            serde_json::from_str(&line).with_context(|| format!("catalog line {n}"))?;
        ensure!(
            !record.layers.is_empty() && record.layers.len() <= 1000,
            "catalog line {n}: 1 to 1000 layers"
        );
        for layer in &record.layers {
            ensure!(
                layer.digest.starts_with("sha256:") && layer.digest.len() == 71,
                "catalog line {n}: {:?} is not a sha256 digest",
                layer.digest
            );
        }
        let versions = tags
            .entry(format!("{}:{}", record.image, record.tag))
            .or_default();
        // A line repeating the version the tag already names is not a new version.
        let same = versions.last().is_some_and(|(_, last)| {
            last.len() == record.layers.len()
                && last
                    .iter()
                    .zip(&record.layers)
                    .all(|(a, b)| a.digest == b.digest)
        });
        if !same {
            versions.push((record.time, record.layers));
        }
    }
    bail!("the catalog has more than {MAX_CATALOG_LINES} lines")
}

/// Picks the tags, scales their layers and draws the pulls (see the module docs).
pub fn build_scenario(options: &AgreementOptions) -> Result<Scenario> {
    ensure!(options.scale >= 1, "the scale must be at least 1");
    ensure!(
        (1..=50).contains(&options.tags),
        "1 to 50 tags, not {}",
        options.tags
    );
    ensure!(
        (1..=MAX_PULLS).contains(&options.pulls),
        "1 to {MAX_PULLS} pulls"
    );
    ensure!(
        options.seconds as f64 > 2.0 * QUIET_AFTER_PUBLISH_SECS,
        "a run of more than {} s",
        2.0 * QUIET_AFTER_PUBLISH_SECS
    );
    let catalog = read_catalog(&options.catalog)?;
    let size_of = |layers: &[CatalogLayer]| layers.iter().map(|l| l.size).sum::<u64>();
    // Tags with a version small enough; the updated one needs a next version too.
    let small: Vec<(&String, &History)> = catalog
        .iter()
        .filter(|(_, versions)| size_of(&versions[0].1) <= MAX_IMAGE_BYTES)
        .collect();
    let mut rng = SplitMix64(options.seed);
    let updatable: Vec<usize> = (0..small.len())
        .filter(|&i| {
            let versions = small[i].1;
            versions.len() >= 2
                && size_of(&versions[1].1) <= MAX_IMAGE_BYTES
                && versions[1]
                    .1
                    .iter()
                    .any(|l| versions[0].1.iter().any(|o| o.digest == l.digest))
        })
        .collect();
    ensure!(
        !updatable.is_empty() && small.len() >= options.tags,
        "the catalog has too few small tags"
    );
    let mut chosen = vec![updatable[(rng.next_u64() % updatable.len() as u64) as usize]];
    while chosen.len() < options.tags {
        let i = (rng.next_u64() % small.len() as u64) as usize;
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    let mut blobs = BTreeMap::new();
    let mut generated: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut scale = |layers: &[CatalogLayer]| -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for layer in layers {
            if let Some(made) = generated.get(&layer.digest) {
                out.push(made.clone());
                continue;
            }
            let size = (layer.size / options.scale).clamp(1, MAX_SCALED_LAYER);
            let seed = u64::from_str_radix(&layer.digest[7..23], 16)?;
            let digest = sha256_digest(&layer_bytes(seed, size));
            blobs.insert(digest.clone(), (seed, size));
            generated.insert(layer.digest.clone(), (digest.clone(), size));
            out.push((digest, size));
        }
        Ok(out)
    };
    let mut versions = Vec::new();
    for &i in &chosen {
        let (name, history) = small[i];
        versions.push(ScaledVersion {
            name: name.clone(),
            layers: scale(&history[0].1)?,
        });
    }
    // The next version of the first (most pulled) tag.
    let (name, history) = small[chosen[0]];
    versions.push(ScaledVersion {
        name: name.clone(),
        layers: scale(&history[1].1)?,
    });
    let updated = versions.len() - 1;

    let mut events: Vec<TraceEvent> = (0..options.tags)
        .map(|version| TraceEvent::Publish { time: 0.0, version })
        .collect();
    let publish_at = options.seconds as f64 / 2.0;
    events.push(TraceEvent::Publish {
        time: publish_at,
        version: updated,
    });
    // Zipf (exponent 1.1) over the tags in the order chosen.
    let weights: Vec<f64> = (1..=options.tags)
        .map(|rank| 1.0 / (rank as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let nodes = REGIONS.len() * NODES_PER_REGION;
    let step = (options.seconds as f64 - 1.0) / options.pulls as f64;
    for k in 0..options.pulls {
        let time = 1.0 + k as f64 * step;
        let mut pick = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut tag = 0;
        while tag + 1 < options.tags && pick >= weights[tag] {
            pick -= weights[tag];
            tag += 1;
        }
        let node = (rng.next_u64() % nodes as u64) as usize;
        let version = if tag == 0 && time >= publish_at {
            if time < publish_at + QUIET_AFTER_PUBLISH_SECS {
                continue;
            }
            updated
        } else {
            tag
        };
        events.push(TraceEvent::Pull {
            time,
            node,
            version,
        });
    }
    events.sort_by(|a, b| event_time(a).total_cmp(&event_time(b)));
    Ok(Scenario {
        versions,
        blobs,
        events,
    })
}

fn event_time(event: &TraceEvent) -> f64 {
    match event {
        TraceEvent::Publish { time, .. } | TraceEvent::Pull { time, .. } => *time,
    }
}

/// The trace in `shoal-sim`'s format.
pub fn trace_jsonl(scenario: &Scenario) -> String {
    let mut out = String::new();
    for event in &scenario.events {
        let (line, version) = match event {
            TraceEvent::Publish { time, version } => {
                (json!({"time": time, "kind": "publish"}), *version)
            }
            TraceEvent::Pull {
                time,
                node,
                version,
            } => (json!({"time": time, "node": node}), *version),
        };
        let v = &scenario.versions[version];
        let mut line = line;
        line["image"] = json!(v.name);
        line["layers"] = v
            .layers
            .iter()
            .map(|(digest, size)| json!({"digest": digest, "size": size}))
            .collect();
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// A `shoal-sim` scenario over `trace.jsonl` with the testnet's shape: three regions of two
/// nodes, disks far larger than the trace (nothing is evicted on either side), regions nearer to
/// each other than to the origin, and a plan every minute.
pub fn scenario_toml(options: &AgreementOptions) -> String {
    let hours = options.seconds as f64 / 3600.0;
    let region_gap_km = (REGION_RTT_MS - 5) * 100;
    format!(
        "# Written by `shoal-testnet agreement` (see BENCHMARKS.md); replayed on the testnet\n\
         # by the same command.\n\
         name = \"agreement\"\n\
         seed = {seed}\n\
         duration_hours = {hours}\n\
         policies = [\"predictive\", \"lru\"]\n\n\
         [topology]\n\
         disk_gb_per_node = 10\n\
         regions = [\n  \
           {{ name = \"a\", nodes = 2, x_km = 0, y_km = 0, origin_rtt_ms = {ORIGIN_RTT_MS} }},\n  \
           {{ name = \"b\", nodes = 2, x_km = {region_gap_km}, y_km = 0, origin_rtt_ms = {ORIGIN_RTT_MS} }},\n  \
           {{ name = \"c\", nodes = 2, x_km = 0, y_km = {region_gap_km}, origin_rtt_ms = {ORIGIN_RTT_MS} }},\n\
         ]\n\n\
         [workload]\n\
         kind = \"trace\"\n\
         trace = \"trace.jsonl\"\n\n\
         [policy]\n\
         plan_interval_minutes = 1\n\
         new_versions_to_every_holder = true\n",
        seed = options.seed,
    )
}

/// What the testnet measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgreementReport {
    /// Pulls replayed.
    pub pulls: usize,
    /// Layer requests (one per layer of each pull).
    pub layer_requests: usize,
    /// Layer requests the asked node answered from its own store.
    pub local_hits: usize,
    /// `local_hits / layer_requests`.
    pub local_hit_ratio: f64,
    /// Layer bytes the origin served (pulls and pre-fetches).
    pub origin_layer_bytes: u64,
    /// Pulls whose tag the node still resolved to the previous version.
    pub stale_resolutions: usize,
    /// Bytes the nodes pre-fetched, from peers and from the origin.
    pub prefetched_peer_bytes: f64,
    /// Bytes pre-fetched from the origin.
    pub prefetched_origin_bytes: f64,
}

/// The repository a catalog `image:tag` is pushed to, and its tag.
fn repo_and_tag(name: &str) -> (String, String) {
    let (image, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
    let image: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' || c == '.' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    (format!("catalog/{image}"), tag.to_owned())
}

/// The manifest (and its config) of a version.
fn manifest_of(version: &ScaledVersion) -> Result<(Blob, Blob)> {
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"shoal.test.image": version.name}},
            "rootfs": {"type": "layers", "diff_ids": version.layers.iter().map(|(d, _)| d).collect::<Vec<_>>()},
        }))?,
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": version.layers.iter().map(|(digest, size)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        })).collect::<Vec<_>>(),
    });
    Ok((
        config,
        Blob::new(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec_pretty(&manifest)?,
        ),
    ))
}

/// Whether `node` holds `digest` now (its placement explanation).
async fn held_here(http: &reqwest::Client, node: &Node, digest: &str) -> Result<bool> {
    let url = format!("{}/placement/explain/{digest}", node.admin_url());
    let response = http.get(&url).send().await?;
    ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    let explained: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    Ok(explained["held_here"] == true)
}

/// Writes the trace and the scenario, then replays the trace on a fresh testnet.
pub async fn replay(options: &AgreementOptions) -> Result<AgreementReport> {
    let scenario = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || build_scenario(&options)).await??
    };
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("trace.jsonl"), trace_jsonl(&scenario))?;
    std::fs::write(options.out.join("scenario.toml"), scenario_toml(options))?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("shoald.toml");
    std::fs::write(
        &config,
        format!("tag_ttl_secs = {TAG_TTL_SECS}\n\n[placement]\nplan_interval_secs = 60\n"),
    )?;
    let node = || {
        NodeConfig::default()
            .arg("--config")
            .arg(config.to_str().expect("temp paths are UTF-8"))
    };
    let mut spec = NetworkSpec::new(options.seed);
    for region in REGIONS {
        for _ in 0..NODES_PER_REGION {
            spec = spec.node_with(region, node());
        }
    }
    for (i, a) in REGIONS.iter().enumerate() {
        for b in &REGIONS[i + 1..] {
            spec = spec.latency(a, b, REGION_RTT_MS);
        }
    }
    let network = Network::start(spec).await?;
    let origin = network.origin().url();
    let http = reqwest::Client::new();
    // Every blob, config and manifest is pushed; the tags are set at their publication.
    for (digest, (seed, size)) in &scenario.blobs {
        let blob = Blob::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            layer_bytes(*seed, *size),
        );
        ensure!(&blob.digest == digest, "generated {digest} differently");
        for version in scenario
            .versions
            .iter()
            .filter(|v| v.layers.iter().any(|(d, _)| d == digest))
        {
            push_blob(&http, &origin, &repo_and_tag(&version.name).0, &blob).await?;
        }
    }
    let mut manifests = Vec::new();
    for version in &scenario.versions {
        let (repo, _) = repo_and_tag(&version.name);
        let (config, manifest) = manifest_of(version)?;
        push_blob(&http, &origin, &repo, &config).await?;
        push_manifest(&http, &origin, &repo, &manifest.digest, &manifest).await?;
        manifests.push(manifest);
    }

    let layer_digests: BTreeSet<String> = scenario.blobs.keys().cloned().collect();
    let mut report = AgreementReport::default();
    let started = Instant::now();
    for event in &scenario.events {
        let due = started + Duration::from_secs_f64(event_time(event));
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        match event {
            TraceEvent::Publish { version, .. } => {
                let (repo, tag) = repo_and_tag(&scenario.versions[*version].name);
                push_manifest(&http, &origin, &repo, &tag, &manifests[*version]).await?;
            }
            TraceEvent::Pull { node, version, .. } => {
                let target = network.node(*node);
                let v = &scenario.versions[*version];
                let (repo, tag) = repo_and_tag(&v.name);
                let url = format!(
                    "{}/v2/{repo}/manifests/{tag}?ns={}",
                    target.registry_url(),
                    crate::REGISTRY_HOST
                );
                let response = http
                    .get(&url)
                    .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await?;
                ensure!(
                    response.status().is_success(),
                    "GET {url}: {}",
                    response.status()
                );
                if sha256_digest(&response.bytes().await?) != manifests[*version].digest {
                    report.stale_resolutions += 1;
                }
                for (digest, _) in &v.layers {
                    report.layer_requests += 1;
                    if held_here(&http, target, digest).await? {
                        report.local_hits += 1;
                    }
                    target.fetch_blob(&repo, digest).await?;
                }
                report.pulls += 1;
            }
        }
    }
    network.origin().settle().await;
    report.origin_layer_bytes = network
        .origin()
        .access_log()?
        .into_iter()
        .filter(|e| e.method == "GET")
        .filter(|e| {
            e.path
                .rsplit_once("/blobs/")
                .is_some_and(|(_, d)| layer_digests.contains(d))
        })
        .map(|e| e.bytes)
        .sum();
    for member in network.nodes() {
        let node = member.node();
        report.prefetched_peer_bytes += node
            .metric_with(
                "shoal_placement_prefetched_bytes_total",
                &[("source", "peer")],
            )
            .await?;
        report.prefetched_origin_bytes += node
            .metric_with(
                "shoal_placement_prefetched_bytes_total",
                &[("source", "origin")],
            )
            .await?;
    }
    report.local_hit_ratio = report.local_hits as f64 / report.layer_requests.max(1) as f64;
    network.shutdown().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_options(dir: &Path) -> AgreementOptions {
        AgreementOptions {
            catalog: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../simulations/testdata/catalog-sample.jsonl"),
            scale: 1000,
            tags: 4,
            pulls: 60,
            seconds: 300,
            seed: 7,
            out: dir.to_path_buf(),
        }
    }

    #[test]
    fn the_scenario_is_deterministic_and_moves_one_tag_mid_run() {
        let dir = tempfile::tempdir().unwrap();
        let options = sample_options(dir.path());
        let a = build_scenario(&options).unwrap();
        let b = build_scenario(&options).unwrap();
        assert_eq!(trace_jsonl(&a), trace_jsonl(&b));
        assert_eq!(a.versions.len(), options.tags + 1);
        // The new version is the same tag and shares a layer with the old one.
        let (old, new) = (&a.versions[0], &a.versions[options.tags]);
        assert_eq!(old.name, new.name);
        assert_ne!(old.layers, new.layers);
        assert!(new.layers.iter().any(|l| old.layers.contains(l)));
        let publications: Vec<f64> = a
            .events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Publish { time, .. } => Some(*time),
                TraceEvent::Pull { .. } => None,
            })
            .collect();
        assert_eq!(publications.len(), options.tags + 1);
        assert_eq!(publications.last(), Some(&150.0));
        // Pulls of the tag name the version it named then.
        for event in &a.events {
            if let TraceEvent::Pull { time, version, .. } = event {
                if *version == 0 {
                    assert!(*time < 150.0);
                }
                if *version == options.tags {
                    assert!(*time >= 150.0 + QUIET_AFTER_PUBLISH_SECS);
                }
            }
        }
        // Every layer is a blob of its scaled size.
        for (digest, (seed, size)) in &a.blobs {
            assert_eq!(&sha256_digest(&layer_bytes(*seed, *size)), digest);
            assert!(*size <= MAX_SCALED_LAYER);
        }
    }

    #[test]
    fn bad_catalog_lines_are_refused_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog.jsonl");
        std::fs::write(
            &catalog,
            "{\"time\":\"t\",\"image\":\"a\",\"tag\":\"1\",\"layers\":[{\"digest\":\"sha256:00\",\"size\":1}]}\n",
        )
        .unwrap();
        let options = AgreementOptions {
            catalog,
            ..sample_options(dir.path())
        };
        let error = format!("{:#}", build_scenario(&options).unwrap_err());
        assert!(error.contains("line 1"), "{error}");
    }
}
