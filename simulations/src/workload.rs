//! Workload: the pulls, image updates and vulnerability disclosures a run
//! replays.
//!
//! Three sources, one output ([`Workload`], events sorted by time):
//!
//! * **catalog**: a real image catalog (JSON lines of tag versions with layer
//!   digests and sizes, see [`load_catalog`]) gives the images, layers, sizes
//!   and version history; the generator adds pulls with heavy-tailed (Zipf)
//!   tag popularity, per-region taste, a daily cycle, rollouts that pull one
//!   image on many nodes within minutes, new versions rolled out as they are
//!   published (sharing layers with the previous version exactly as the
//!   catalog says), and vulnerability disclosures that make a patched version
//!   roll out.
//! * **synthetic**: the same generator over an invented catalog.
//! * **trace**: one JSON object per line, replayed as written (format in the
//!   README and [`read_trace`]).
//!
//! Everything is a function of the seed and the inputs.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use shoal_policy::{BlobDigest, LayerId, NodeId};

use crate::rng::{Rng, WeightedPicker};
use crate::scenario::WorkloadConfig;
use crate::topology::Topology;

/// Longest accepted line in a catalog or trace file.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most layers in one image.
pub const MAX_LAYERS_PER_IMAGE: usize = 1000;
/// Most lines read from a catalog or trace file.
pub const MAX_LINES: usize = 50_000_000;
/// Largest accepted layer, bytes.
pub const MAX_LAYER_BYTES: u64 = 1 << 40;

/// One version of a tag: an image manifest and its layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// The tag it belongs to.
    pub tag: u32,
    /// Its layers, base first.
    pub layers: Vec<LayerId>,
}

/// What happens at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A node pulls an image version (its manifest, then its layers).
    Pull {
        /// The pulling node.
        node: NodeId,
        /// The version pulled.
        version: u32,
    },
    /// A new version of a tag is published.
    Publish {
        /// The new version.
        version: u32,
    },
    /// A vulnerability is disclosed in some layers.
    Disclose {
        /// Affected layers.
        layers: Vec<LayerId>,
        /// Its 0-100 score (CVSS × 10).
        score: f64,
    },
}

/// A timed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start of the run.
    pub time: f64,
    /// What happens.
    pub kind: EventKind,
}

/// Everything a run replays.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Size of each layer in bytes (index = layer id).
    pub layer_sizes: Vec<u64>,
    /// Tag names (`image:tag`).
    pub tags: Vec<String>,
    /// Every version.
    pub versions: Vec<Version>,
    /// Events in time order.
    pub events: Vec<Event>,
}

impl Workload {
    /// Number of pull events.
    pub fn pulls(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Pull { .. }))
            .count()
    }
}

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A bad line.
    #[error("{path} line {line}: {problem}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Nothing to simulate.
    #[error("{0}")]
    Empty(String),
}

/// A catalog: tags, their version histories and the layers they use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Layer sizes (index = layer id).
    pub layer_sizes: Vec<u64>,
    /// Tag names.
    pub tags: Vec<String>,
    /// Versions.
    pub versions: Vec<Version>,
    /// Per tag: `(catalog time in seconds since 1970, version)`, in time order.
    pub history: Vec<Vec<(i64, u32)>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogLine {
    time: String,
    image: String,
    tag: String,
    manifest: String,
    layers: Vec<LayerLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerLine {
    digest: String,
    size: u64,
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC) into seconds since 1970.
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

struct Interner {
    layers: BTreeMap<String, LayerId>,
    sizes: Vec<u64>,
    tags: BTreeMap<String, u32>,
    tag_names: Vec<String>,
}

impl Interner {
    fn new() -> Self {
        Interner {
            layers: BTreeMap::new(),
            sizes: Vec::new(),
            tags: BTreeMap::new(),
            tag_names: Vec::new(),
        }
    }

    fn layer(&mut self, digest: &str, size: u64) -> Result<LayerId, String> {
        BlobDigest::parse(digest).map_err(|e| e.to_string())?;
        if size > MAX_LAYER_BYTES {
            return Err(format!("layer size {size} is over the limit"));
        }
        if let Some(&id) = self.layers.get(digest) {
            if self.sizes[id.0 as usize] != size {
                return Err(format!("layer {digest} has two sizes"));
            }
            return Ok(id);
        }
        let id = LayerId(self.sizes.len() as u32);
        self.layers.insert(digest.to_string(), id);
        self.sizes.push(size);
        Ok(id)
    }

    fn tag(&mut self, name: &str) -> u32 {
        if let Some(&t) = self.tags.get(name) {
            return t;
        }
        let t = self.tag_names.len() as u32;
        self.tags.insert(name.to_string(), t);
        self.tag_names.push(name.to_string());
        t
    }
}

fn lines(
    path: &Path,
) -> Result<impl Iterator<Item = (usize, Result<String, WorkloadError>)>, WorkloadError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| WorkloadError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut n = 0usize;
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        // Read at most one byte past the limit, so a huge line is never held whole.
        let read =
            std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf);
        n += 1;
        match read {
            Ok(0) => None,
            Err(source) => Some((
                n,
                Err(WorkloadError::Io {
                    path: shown.clone(),
                    source,
                }),
            )),
            Ok(_) if n > MAX_LINES => Some((n, Err(line_err(&shown, n, "too many lines")))),
            Ok(_) if buf.len() > MAX_LINE_BYTES => {
                Some((n, Err(line_err(&shown, n, "line longer than 1 MiB"))))
            }
            Ok(_) => Some((
                n,
                String::from_utf8(buf).map_err(|_| line_err(&shown, n, "not UTF-8")),
            )),
        }
    }))
}

/// The version a trace line names (its image and layers, interned), added to `versions` the
/// first time it is seen; `needs` are the errors for a missing image and a layer without size.
fn intern_version(
    rec: &TraceLine,
    needs: (&str, &str),
    interner: &mut Interner,
    versions: &mut Vec<Version>,
    version_ids: &mut BTreeMap<(u32, Vec<LayerId>), u32>,
) -> Result<u32, String> {
    let (needs_image, needs_size) = needs;
    let image = rec.image.as_deref().ok_or_else(|| needs_image.to_owned())?;
    let mut layers = Vec::with_capacity(rec.layers.len());
    for l in &rec.layers {
        let size = l.size.ok_or_else(|| needs_size.to_owned())?;
        layers.push(interner.layer(&l.digest, size)?);
    }
    let tag = interner.tag(image);
    let next = versions.len() as u32;
    let version = *version_ids.entry((tag, layers.clone())).or_insert(next);
    if version == next {
        versions.push(Version { tag, layers });
    }
    Ok(version)
}

fn line_err(path: &str, line: usize, problem: impl Into<String>) -> WorkloadError {
    WorkloadError::Line {
        path: path.to_string(),
        line,
        problem: problem.into(),
    }
}

/// Reads a catalog: one JSON object per line with `time` (RFC 3339 UTC),
/// `image`, `tag`, `manifest` and `layers` (`digest`, `size`), as in the
/// shared image catalog. Every line is validated; errors name the line.
pub fn load_catalog(path: &Path) -> Result<Catalog, WorkloadError> {
    let shown = path.display().to_string();
    let mut interner = Interner::new();
    let mut versions = Vec::new();
    let mut history: Vec<Vec<(i64, u32)>> = Vec::new();
    for (n, line) in lines(path)? {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: CatalogLine =
            serde_json::from_str(&line).map_err(|e| line_err(&shown, n, e.to_string()))?;
        let time = parse_utc(&rec.time)
            .ok_or_else(|| line_err(&shown, n, format!("bad time {:?}", rec.time)))?;
        BlobDigest::parse(&rec.manifest).map_err(|e| line_err(&shown, n, e.to_string()))?;
        if rec.layers.is_empty() || rec.layers.len() > MAX_LAYERS_PER_IMAGE {
            return Err(line_err(&shown, n, "an image needs 1 to 1000 layers"));
        }
        let mut layers = Vec::with_capacity(rec.layers.len());
        for l in &rec.layers {
            layers.push(
                interner
                    .layer(&l.digest, l.size)
                    .map_err(|p| line_err(&shown, n, p))?,
            );
        }
        let tag = interner.tag(&format!("{}:{}", rec.image, rec.tag));
        if history.len() <= tag as usize {
            history.resize(tag as usize + 1, Vec::new());
        }
        let v = versions.len() as u32;
        versions.push(Version { tag, layers });
        history[tag as usize].push((time, v));
    }
    for h in &mut history {
        h.sort();
    }
    if versions.is_empty() {
        return Err(WorkloadError::Empty(format!("{shown} holds no images")));
    }
    Ok(Catalog {
        layer_sizes: interner.sizes,
        tags: interner.tag_names,
        versions,
        history,
    })
}

/// Keeps one part of a catalog: `all`, or `train` / `test`, the two halves
/// of its repositories (image names) taken alternately in name order, so that
/// parameters chosen on one half can be reported on the other. Tags of the
/// other half lose their history, so they are never published or pulled.
pub fn catalog_part(mut catalog: Catalog, part: &str) -> Catalog {
    let keep_even = match part {
        "train" => true,
        "test" => false,
        _ => return catalog,
    };
    let repository = |tag: &str| tag.rsplit_once(':').map_or(tag, |(r, _)| r).to_string();
    let mut names: Vec<String> = catalog.tags.iter().map(|t| repository(t)).collect();
    names.sort();
    names.dedup();
    for (tag, history) in catalog.history.iter_mut().enumerate() {
        let Some(name) = catalog.tags.get(tag) else {
            continue;
        };
        let position = names.binary_search(&repository(name)).unwrap_or(0);
        if position.is_multiple_of(2) != keep_even {
            history.clear();
        }
    }
    catalog
}

/// Invents a catalog: repositories built on a few shared base layers, each
/// with a version history where updates rebuild the top layers (and now and
/// then the base).
pub fn synthetic_catalog(config: &WorkloadConfig, seed: u64, span_secs: f64) -> Catalog {
    let mut rng = Rng::derive(seed, 11);
    let mut cat = Catalog::default();
    let mean = config.synthetic_mean_layer_mb * 1e6;
    let new_layer = |cat: &mut Catalog, rng: &mut Rng, scale: f64| {
        let size = match config.synthetic_fixed_layer_bytes {
            Some(b) => b,
            // Log-normal with sigma 1.5: heavy-tailed like real layers.
            None => ((mean * scale) * (1.5 * rng.normal() - 1.125).exp()).clamp(200.0, 2e9) as u64,
        };
        cat.layer_sizes.push(size);
        LayerId(cat.layer_sizes.len() as u32 - 1)
    };
    let bases: Vec<LayerId> = (0..10)
        .map(|_| new_layer(&mut cat, &mut rng, 3.0))
        .collect();
    for repo in 0..config.synthetic_repositories {
        let tag = cat.tags.len() as u32;
        cat.tags.push(format!("synthetic/app{repo}:latest"));
        let mut layers = vec![bases[rng.below(bases.len() as u64) as usize]];
        for _ in 0..(2 + rng.below(8)) {
            layers.push(new_layer(&mut cat, &mut rng, 1.0));
        }
        let mut t = -1.0;
        let mut hist = Vec::new();
        loop {
            let v = cat.versions.len() as u32;
            cat.versions.push(Version {
                tag,
                layers: layers.clone(),
            });
            hist.push((t as i64, v));
            t += rng.exp(1.0 / (9.0 * 86_400.0)).max(1.0);
            if t > span_secs {
                break;
            }
            // Rebuild the top layers; sometimes the base too.
            let keep = if rng.f64() < 0.4 {
                0
            } else {
                1 + rng.below(layers.len() as u64 - 1) as usize
            };
            if keep == 0 {
                layers[0] = bases[rng.below(bases.len() as u64) as usize];
            }
            for layer in layers.iter_mut().skip(keep.max(1)) {
                *layer = new_layer(&mut cat, &mut rng, 1.0);
            }
        }
        cat.history.push(hist);
    }
    cat
}

#[derive(Debug, Clone)]
enum Raw {
    Pull { tag: u32, node: NodeId },
    Publish { tag: u32, version: u32 },
    Disclose { tag: u32 },
    Patch { tag: u32 },
}

/// Generates the workload over a catalog (see the module docs). Catalog time
/// from `start` to `start + catalog_days` maps onto the run's duration.
pub fn generate(
    catalog: Catalog,
    start: i64,
    config: &WorkloadConfig,
    topology: &Topology,
    duration_secs: f64,
    seed: u64,
) -> Result<Workload, WorkloadError> {
    let span = config.catalog_days * 86_400.0;
    let to_sim = |t: i64| (t - start) as f64 / span * duration_secs;
    let ntags = catalog.tags.len();
    // Popularity: Zipf over a seeded permutation of tags, times a per-region taste.
    let mut rng = Rng::derive(seed, 1);
    let mut order: Vec<usize> = (0..ntags).collect();
    for i in (1..ntags).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut rank = vec![0usize; ntags];
    // Only tags that exist by the end of the window can be pulled; ranks count those alone.
    let window_end = start as f64 + span;
    let exists: Vec<bool> = catalog
        .history
        .iter()
        .map(|h| h.first().is_some_and(|(t, _)| (*t as f64) < window_end))
        .collect();
    let mut next_rank = 0usize;
    for &t in &order {
        if exists[t] {
            rank[t] = next_rank;
            next_rank += 1;
        } else {
            rank[t] = usize::MAX;
        }
    }
    let global: Vec<f64> = (0..ntags)
        .map(|t| {
            if exists[t] {
                1.0 / ((rank[t] + 1) as f64).powf(config.zipf_exponent)
            } else {
                0.0
            }
        })
        .collect();
    let global_picker =
        WeightedPicker::new(&global).ok_or_else(|| WorkloadError::Empty("no tags".into()))?;
    let regional: Vec<WeightedPicker> = (0..topology.regions())
        .map(|_| {
            let w: Vec<f64> = global
                .iter()
                .map(|g| g * (config.regional_skew * rng.normal()).exp())
                .collect();
            WeightedPicker::new(&w).expect("positive weights")
        })
        .collect();

    let mut raw: Vec<(f64, Raw)> = Vec::new();
    // Publications of versions inside the window, and rollouts of popular ones.
    let mut rollout_rng = Rng::derive(seed, 2);
    for (tag, hist) in catalog.history.iter().enumerate() {
        for &(t, version) in hist {
            if t <= start {
                continue;
            }
            let at = to_sim(t);
            if at >= duration_secs {
                break;
            }
            raw.push((
                at,
                Raw::Publish {
                    tag: tag as u32,
                    version,
                },
            ));
            if rank[tag] < config.rollout_top_tags as usize {
                rollout(
                    &mut raw,
                    &mut rollout_rng,
                    topology,
                    config,
                    tag as u32,
                    at + 1.0,
                );
            }
        }
    }
    // Steady pulls: a Poisson process with a daily cycle per region (thinning).
    let mut pull_rng = Rng::derive(seed, 3);
    let nodes_weight: Vec<f64> = topology
        .region_nodes
        .iter()
        .map(|n| n.len() as f64)
        .collect();
    let region_picker = WeightedPicker::new(&nodes_weight).expect("nodes exist");
    let peak = config.pulls_per_hour / 3600.0 * (1.0 + config.daily_amplitude);
    let mut t = 0.0;
    loop {
        t += pull_rng.exp(peak);
        if t >= duration_secs {
            break;
        }
        let r = region_picker.pick(&mut pull_rng);
        let local_hour = t / 3600.0 + topology.utc_offset_hours[r];
        // Busiest at 14:00 local time.
        let cycle = 1.0
            + config.daily_amplitude
                * (2.0 * std::f64::consts::PI * (local_hour - 8.0) / 24.0).sin();
        if pull_rng.f64() * (1.0 + config.daily_amplitude) > cycle {
            continue;
        }
        let nodes = &topology.region_nodes[r];
        let node = nodes[pull_rng.below(nodes.len() as u64) as usize];
        let tag = regional[r].pick(&mut pull_rng) as u32;
        raw.push((t, Raw::Pull { tag, node }));
    }
    // Ad-hoc rollouts of popular tags.
    if config.rollouts_per_day > 0.0 {
        let mut t = 0.0;
        loop {
            t += rollout_rng.exp(config.rollouts_per_day / 86_400.0);
            if t >= duration_secs {
                break;
            }
            let tag = global_picker.pick(&mut rollout_rng) as u32;
            rollout(&mut raw, &mut rollout_rng, topology, config, tag, t);
        }
    }
    // Disclosures in popular tags, each followed by a patched version's rollout.
    let mut vuln_rng = Rng::derive(seed, 4);
    if config.disclosures_per_day > 0.0 {
        let mut t = 0.0;
        loop {
            t += vuln_rng.exp(config.disclosures_per_day / 86_400.0);
            if t >= duration_secs {
                break;
            }
            let tag = global_picker.pick(&mut vuln_rng) as u32;
            raw.push((t, Raw::Disclose { tag }));
            let patch_at = t + config.patch_delay_hours * 3600.0;
            if patch_at < duration_secs {
                raw.push((patch_at, Raw::Patch { tag }));
                rollout(
                    &mut raw,
                    &mut vuln_rng,
                    topology,
                    config,
                    tag,
                    patch_at + 1.0,
                );
            }
        }
    }
    raw.retain(|(t, _)| *t < duration_secs);
    // Stable sort: equal times keep generation order.
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Walk in time order, resolving tags to their current version.
    let Catalog {
        mut layer_sizes,
        tags,
        mut versions,
        history,
    } = catalog;
    let mut current: Vec<Option<u32>> = history
        .iter()
        .map(|h| {
            h.iter()
                .take_while(|(t, _)| *t <= start)
                .last()
                .map(|(_, v)| *v)
        })
        .collect();
    let mut disclosed: BTreeMap<u32, (Vec<LayerId>, f64)> = BTreeMap::new();
    let mut events = Vec::with_capacity(raw.len());
    for (time, r) in raw {
        match r {
            Raw::Pull { tag, node } => {
                if let Some(version) = current[tag as usize] {
                    events.push(Event {
                        time,
                        kind: EventKind::Pull { node, version },
                    });
                }
            }
            Raw::Publish { tag, version } => {
                current[tag as usize] = Some(version);
                events.push(Event {
                    time,
                    kind: EventKind::Publish { version },
                });
            }
            Raw::Disclose { tag } => {
                let Some(version) = current[tag as usize] else {
                    continue;
                };
                let layers = &versions[version as usize].layers;
                // The base layer carries the OS packages most CVEs are in; sometimes an app layer too.
                let mut hit = vec![layers[0]];
                if layers.len() > 1 && vuln_rng.f64() < 0.5 {
                    hit.push(layers[1 + vuln_rng.below(layers.len() as u64 - 1) as usize]);
                }
                let score = 50.0 + 50.0 * vuln_rng.f64();
                disclosed.insert(tag, (hit.clone(), score));
                events.push(Event {
                    time,
                    kind: EventKind::Disclose { layers: hit, score },
                });
            }
            Raw::Patch { tag } => {
                let (Some(version), Some((hit, _))) =
                    (current[tag as usize], disclosed.remove(&tag))
                else {
                    continue;
                };
                let mut layers = versions[version as usize].layers.clone();
                for l in layers.iter_mut() {
                    if hit.contains(l) {
                        let size = layer_sizes[l.0 as usize];
                        layer_sizes.push(size);
                        *l = LayerId(layer_sizes.len() as u32 - 1);
                    }
                }
                let v = versions.len() as u32;
                versions.push(Version { tag, layers });
                current[tag as usize] = Some(v);
                events.push(Event {
                    time,
                    kind: EventKind::Publish { version: v },
                });
            }
        }
    }
    Ok(Workload {
        layer_sizes,
        tags,
        versions,
        events,
    })
}

fn rollout(
    raw: &mut Vec<(f64, Raw)>,
    rng: &mut Rng,
    topology: &Topology,
    config: &WorkloadConfig,
    tag: u32,
    at: f64,
) {
    let regions = topology.regions();
    let mut chosen: Vec<usize> = (0..regions).filter(|_| rng.f64() < 0.5).collect();
    if chosen.is_empty() {
        chosen.push(rng.below(regions as u64) as usize);
    }
    for r in chosen {
        let mut nodes = topology.region_nodes[r].clone();
        let k = ((nodes.len() as f64 * config.rollout_fraction).ceil() as usize).min(nodes.len());
        for i in 0..k {
            let j = i + rng.below((nodes.len() - i) as u64) as usize;
            nodes.swap(i, j);
            let t = at + rng.f64() * config.rollout_minutes * 60.0;
            raw.push((
                t,
                Raw::Pull {
                    tag,
                    node: nodes[i],
                },
            ));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceLine {
    time: f64,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    node: Option<u32>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    image: Option<String>,
    layers: Vec<TraceLayer>,
    #[serde(default)]
    score: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceLayer {
    digest: String,
    #[serde(default)]
    size: Option<u64>,
}

/// Reads a trace: one JSON object per line.
///
/// * a pull: `{"time": 12.5, "node": 3, "image": "python:3.6", "layers":
///   [{"digest": "sha256:…", "size": 52599697}, …]}`; `"region": "eu-west"`
///   may replace `node` (a node of that region is then drawn with the seed);
/// * a disclosure: `{"time": 30, "kind": "disclosure", "score": 98,
///   "layers": [{"digest": "sha256:…"}]}`;
/// * a publication: `{"time": 60, "kind": "publish", "image": "python:3.6",
///   "layers": [{"digest": "sha256:…", "size": 52599697}, …]}`: the tag now
///   names this version (with `precache_new_versions`, the predictive policy
///   pre-places it where the previous version is in demand). A pull of a tag
///   never published is a pull of the version it names.
///
/// `time` is seconds from the start of the run; lines need not be sorted.
/// Events after `duration_secs` are dropped.
pub fn read_trace(
    path: &Path,
    topology: &Topology,
    duration_secs: f64,
    seed: u64,
) -> Result<Workload, WorkloadError> {
    let shown = path.display().to_string();
    let mut rng = Rng::derive(seed, 5);
    let mut interner = Interner::new();
    let mut versions: Vec<Version> = Vec::new();
    let mut version_ids: BTreeMap<(u32, Vec<LayerId>), u32> = BTreeMap::new();
    let mut events = Vec::new();
    let region_ids: BTreeMap<&str, usize> = topology
        .region_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for (n, line) in lines(path)? {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |p: String| line_err(&shown, n, p);
        let rec: TraceLine = serde_json::from_str(&line).map_err(|e| err(e.to_string()))?;
        if !(rec.time.is_finite() && rec.time >= 0.0) {
            return Err(err("time must be a non-negative number of seconds".into()));
        }
        if rec.layers.is_empty() || rec.layers.len() > MAX_LAYERS_PER_IMAGE {
            return Err(err("1 to 1000 layers".into()));
        }
        if rec.time >= duration_secs {
            continue;
        }
        match rec.kind.as_deref().unwrap_or("pull") {
            "pull" => {
                let node = match (rec.node, rec.region.as_deref()) {
                    (Some(node), _) if (node as usize) < topology.nodes() => NodeId(node),
                    (Some(node), _) => {
                        return Err(err(format!(
                            "node {node} does not exist ({} nodes)",
                            topology.nodes()
                        )))
                    }
                    (None, Some(region)) => {
                        let r = *region_ids
                            .get(region)
                            .ok_or_else(|| err(format!("unknown region {region:?}")))?;
                        let nodes = &topology.region_nodes[r];
                        nodes[rng.below(nodes.len() as u64) as usize]
                    }
                    (None, None) => return Err(err("a pull needs node or region".into())),
                };
                let version = intern_version(
                    &rec,
                    ("a pull needs image", "a pulled layer needs size"),
                    &mut interner,
                    &mut versions,
                    &mut version_ids,
                )
                .map_err(&err)?;
                events.push(Event {
                    time: rec.time,
                    kind: EventKind::Pull { node, version },
                });
            }
            "publish" => {
                let version = intern_version(
                    &rec,
                    ("a publication needs image", "a published layer needs size"),
                    &mut interner,
                    &mut versions,
                    &mut version_ids,
                )
                .map_err(&err)?;
                events.push(Event {
                    time: rec.time,
                    kind: EventKind::Publish { version },
                });
            }
            "disclosure" => {
                let score = rec
                    .score
                    .filter(|s| (0.0..=100.0).contains(s))
                    .ok_or_else(|| err("a disclosure needs score 0-100".into()))?;
                let mut layers = Vec::new();
                for l in &rec.layers {
                    BlobDigest::parse(&l.digest).map_err(|e| err(e.to_string()))?;
                    // A disclosure about a layer never pulled is kept only if it is known by then.
                    if let Some(&id) = interner.layers.get(&l.digest) {
                        layers.push(id);
                    }
                }
                events.push(Event {
                    time: rec.time,
                    kind: EventKind::Disclose { layers, score },
                });
            }
            other => return Err(err(format!("unknown kind {other:?}"))),
        }
    }
    events.sort_by(|a, b| a.time.total_cmp(&b.time));
    if versions.is_empty() {
        return Err(WorkloadError::Empty(format!("{shown} holds no pulls")));
    }
    Ok(Workload {
        layer_sizes: interner.sizes,
        tags: interner.tag_names,
        versions,
        events,
    })
}

/// Writes a workload's pulls and disclosures as a trace [`read_trace`]
/// reads back: the same events, layers named by a digest made from their
/// number (`sha256:` and the number in 64 hex digits). Publications are not
/// part of the trace format and are left out.
pub fn write_trace(workload: &Workload) -> String {
    let digest = |l: LayerId| format!("sha256:{:064x}", l.0);
    let mut out = String::new();
    for e in &workload.events {
        match &e.kind {
            EventKind::Pull { node, version } => {
                let v = &workload.versions[*version as usize];
                let layers: Vec<String> = v
                    .layers
                    .iter()
                    .map(|&l| {
                        format!(
                            "{{\"digest\": \"{}\", \"size\": {}}}",
                            digest(l),
                            workload.layer_sizes[l.0 as usize]
                        )
                    })
                    .collect();
                out.push_str(&format!(
                    "{{\"time\": {:.3}, \"node\": {}, \"image\": {}, \"layers\": [{}]}}\n",
                    e.time,
                    node.0,
                    serde_json::Value::String(workload.tags[v.tag as usize].clone()),
                    layers.join(", ")
                ));
            }
            EventKind::Disclose { layers, score } => {
                let layers: Vec<String> = layers
                    .iter()
                    .map(|&l| format!("{{\"digest\": \"{}\"}}", digest(l)))
                    .collect();
                out.push_str(&format!(
                    "{{\"time\": {:.3}, \"kind\": \"disclosure\", \"score\": {:.1}, \"layers\": [{}]}}\n",
                    e.time,
                    score,
                    layers.join(", ")
                ));
            }
            EventKind::Publish { .. } => {}
        }
    }
    out
}

/// Builds the workload a scenario asks for.
pub fn build(
    config: &WorkloadConfig,
    topology: &Topology,
    duration_secs: f64,
    seed: u64,
) -> Result<Workload, WorkloadError> {
    match config.kind.as_str() {
        "trace" => read_trace(
            config.trace.as_deref().expect("validated"),
            topology,
            duration_secs,
            seed,
        ),
        "pattern" => crate::pattern::build(config, topology, duration_secs, seed),
        "catalog" => {
            let catalog = load_catalog(config.catalog.as_deref().expect("validated"))?;
            let catalog = catalog_part(catalog, &config.catalog_part);
            let first = catalog
                .history
                .iter()
                .filter_map(|h| h.first())
                .map(|(t, _)| *t)
                .min()
                .unwrap_or(0);
            let start = match &config.catalog_start {
                Some(s) => parse_utc(s).ok_or_else(|| {
                    WorkloadError::Empty(format!(
                        "workload.catalog_start {s:?} is not YYYY-MM-DDTHH:MM:SSZ"
                    ))
                })?,
                None => first,
            };
            generate(catalog, start, config, topology, duration_secs, seed)
        }
        _ => {
            let span = config.catalog_days * 86_400.0;
            let catalog = synthetic_catalog(config, seed, span);
            generate(catalog, 0, config, topology, duration_secs, seed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_parsing() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2016-09-09T21:27:07Z"), Some(1_473_456_427));
        assert_eq!(parse_utc("2016-13-09T21:27:07Z"), None);
        assert_eq!(parse_utc("2016-09-09 21:27:07"), None);
    }

    #[test]
    fn sample_catalog_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalog-sample.jsonl");
        let cat = load_catalog(&path).unwrap();
        assert!(cat.tags.len() >= 10);
        assert!(
            cat.versions.len() > cat.tags.len(),
            "tags have several versions"
        );
        // Alias tags share layers.
        assert!(cat.layer_sizes.len() < cat.versions.iter().map(|v| v.layers.len()).sum::<usize>());
    }

    #[test]
    fn bad_catalog_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, "{\"time\":\"2016-09-09T21:27:07Z\",\"image\":\"a\",\"tag\":\"1\",\"manifest\":\"sha256:00\",\"layers\":[]}\n").unwrap();
        let e = load_catalog(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
