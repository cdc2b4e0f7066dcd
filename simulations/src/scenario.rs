//! Scenario files: the TOML a run is described by, validated once.
//!
//! Every key, its meaning and its default is documented on the struct fields
//! below and in the crate README. Paths inside a scenario are relative to the
//! scenario file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_policy::eviction::PredictiveConfig;
use shoal_policy::lifecycle::LifecycleConfig;
use shoal_policy::plan::PlanConfig;
use shoal_policy::precache::PrecacheConfig;

/// The largest scenario file accepted, in bytes.
pub const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// Seed of every random choice. Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time in hours.
    pub duration_hours: f64,
    /// Policies to compare: `predictive`, `lru`, `lfu`, `min`. Default all four.
    #[serde(default = "default_policies")]
    pub policies: Vec<String>,
    /// The network.
    pub topology: TopologyConfig,
    /// Where the pulls come from.
    pub workload: WorkloadConfig,
    /// How the predictive policy is run.
    #[serde(default)]
    pub policy: PolicySettings,
    /// What a configuration must meet in a sweep.
    #[serde(default)]
    pub targets: Targets,
    /// The capacity-planning sweep.
    #[serde(default)]
    pub sweep: SweepConfig,
}

fn default_seed() -> u64 {
    1
}

fn default_policies() -> Vec<String> {
    ["predictive", "lru", "lfu", "min"]
        .map(String::from)
        .to_vec()
}

/// One region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name.
    pub name: String,
    /// Nodes in the region (a sweep overrides it).
    pub nodes: u32,
    /// Position in km on a flat map; RTTs between regions follow distance.
    pub x_km: f64,
    /// Position in km on a flat map.
    pub y_km: f64,
    /// RTT from this region to the origin registry, ms.
    pub origin_rtt_ms: f64,
    /// Local time offset from UTC in hours (drives the daily cycle). Default 0.
    #[serde(default)]
    pub utc_offset_hours: f64,
}

/// The network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// The regions.
    pub regions: Vec<RegionConfig>,
    /// Disk per node in GB (10^9 bytes).
    pub disk_gb_per_node: f64,
    /// Capacity of each region's internal network (shared by all transfers
    /// between its nodes), Gbit/s. Default 10.
    #[serde(default = "d10")]
    pub lan_gbps: f64,
    /// Capacity of each directed link between two regions, Gbit/s. Default 1.
    #[serde(default = "d1")]
    pub wan_gbps: f64,
    /// Capacity of each region's link to the origin, Gbit/s. Default 1.
    #[serde(default = "d1")]
    pub origin_gbps: f64,
    /// RTT between two nodes of one region, ms. Default 1.
    #[serde(default = "d1")]
    pub lan_rtt_ms: f64,
    /// Fixed part of an inter-region RTT, ms. Default 5.
    #[serde(default = "d5")]
    pub base_rtt_ms: f64,
    /// RTT added per 100 km between regions, ms. Default 1.
    #[serde(default = "d1")]
    pub rtt_ms_per_100km: f64,
}

fn d1() -> f64 {
    1.0
}
fn d5() -> f64 {
    5.0
}
fn d10() -> f64 {
    10.0
}

/// Where the pulls come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// `catalog` (synthetic pulls over a real image catalog), `synthetic`
    /// (invented images too) or `trace` (replay a trace file).
    pub kind: String,
    /// Catalog JSONL path, for `kind = "catalog"`.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Catalog time (RFC 3339, UTC) at which the simulation starts. Default:
    /// the catalog's first record.
    #[serde(default)]
    pub catalog_start: Option<String>,
    /// Days of catalog history replayed over the simulated duration (image
    /// updates arrive this much faster than they did). Default 30.
    #[serde(default = "d30")]
    pub catalog_days: f64,
    /// Trace JSONL path, for `kind = "trace"`.
    #[serde(default)]
    pub trace: Option<PathBuf>,
    /// Mean pulls per hour over the whole network. Default 10000.
    #[serde(default = "d10000")]
    pub pulls_per_hour: f64,
    /// Zipf exponent of tag popularity. Default 1.1.
    #[serde(default = "d1_1")]
    pub zipf_exponent: f64,
    /// Spread (sigma of a log-normal factor) of each region's taste. Default 1.0.
    #[serde(default = "d1")]
    pub regional_skew: f64,
    /// Amplitude of the daily cycle, 0-1. Default 0.5.
    #[serde(default = "d0_5")]
    pub daily_amplitude: f64,
    /// Rollouts of a popular tag per simulated day. Default 12.
    #[serde(default = "d12")]
    pub rollouts_per_day: f64,
    /// Fraction of a region's nodes that take part in a rollout. Default 0.3.
    #[serde(default = "d0_3")]
    pub rollout_fraction: f64,
    /// Minutes over which a rollout's pulls spread. Default 10.
    #[serde(default = "d10")]
    pub rollout_minutes: f64,
    /// New versions of the `rollout_top_tags` most popular tags are rolled
    /// out when published. Default 50.
    #[serde(default = "d50u")]
    pub rollout_top_tags: u32,
    /// Vulnerability disclosures per simulated day. Default 2.
    #[serde(default = "d2")]
    pub disclosures_per_day: f64,
    /// Hours from a disclosure to the patched version's rollout. Default 4.
    #[serde(default = "d4")]
    pub patch_delay_hours: f64,
    /// Synthetic generator only: repositories. Default 200.
    #[serde(default = "d200u")]
    pub synthetic_repositories: u32,
    /// Synthetic generator only: mean layer size in MB. Default 12.
    #[serde(default = "d12")]
    pub synthetic_mean_layer_mb: f64,
    /// Synthetic generator only: every layer has exactly this size in bytes
    /// (overrides the mean; for tests that need equal sizes).
    #[serde(default)]
    pub synthetic_fixed_layer_bytes: Option<u64>,
    /// Pattern generator only: `uniform`, `scan`, `stable`, `recency` or
    /// `switch` (see [`crate::pattern`]). Required when `kind = "pattern"`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Pattern generator only: images in the pool. Default 2000.
    #[serde(default = "d2000u")]
    pub pattern_images: u32,
    /// Pattern generator only: images in the stable popular set. Default 100.
    #[serde(default = "d100u")]
    pub pattern_popular_images: u32,
    /// Pattern generator only: layers per image. Default 5.
    #[serde(default = "d5u")]
    pub pattern_layers_per_image: u32,
    /// Catalog only: which repositories to use: `all`, or `train` / `test`
    /// for the two halves of a fixed split by repository name (see
    /// [`crate::workload::catalog_part`]). Default `all`.
    #[serde(default = "d_all")]
    pub catalog_part: String,
}

fn d2000u() -> u32 {
    2000
}
fn d100u() -> u32 {
    100
}
fn d5u() -> u32 {
    5
}
fn d_all() -> String {
    "all".into()
}

fn d0_3() -> f64 {
    0.3
}
fn d0_5() -> f64 {
    0.5
}
fn d1_1() -> f64 {
    1.1
}
fn d2() -> f64 {
    2.0
}
fn d4() -> f64 {
    4.0
}
fn d12() -> f64 {
    12.0
}
fn d30() -> f64 {
    30.0
}
fn d10000() -> f64 {
    10_000.0
}
fn d50u() -> u32 {
    50
}
fn d200u() -> u32 {
    200
}

/// How the predictive policy is run by the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Minutes between replication plan recomputations. Default 60.
    pub plan_interval_minutes: f64,
    /// Forecast horizon of the plan, in usage buckets. Default 6.
    pub horizon_buckets: u32,
    /// Fraction of each node's disk the plan may fill. Default 0.5.
    pub plan_disk_fraction: f64,
    /// Hard cap on the bytes of demand an interval's pre-cache budget is
    /// computed from, GB (the budget itself is `precache.budget_fraction` of
    /// the last interval's demand). Default 200.
    pub replication_gb_per_plan: f64,
    /// Which pre-cache copies pay, and the budget. Default:
    /// [`PrecacheConfig::default`].
    pub precache: PrecacheConfig,
    /// When a tag gets a new version, pre-place its layers where the previous
    /// version was in demand. Default true.
    pub precache_new_versions: bool,
    /// With `precache_new_versions`: pre-place a new version on every node that holds the previous
    /// one (its top layer), without the pre-cache verdict and budget, as `shoald`'s tag watcher
    /// does (each node watches the tags its clients pull and fetches every new version of them).
    /// Default false: one node per region where the previous version is in demand, when the
    /// pre-cache verdict pays and the budget allows.
    pub new_versions_to_every_holder: bool,
    /// Planner settings (weights, copies).
    pub plan: PlanConfig,
    /// Predictive eviction settings.
    pub eviction: PredictiveConfig,
    /// Lifecycle thresholds.
    pub lifecycle: LifecycleConfig,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            plan_interval_minutes: 60.0,
            horizon_buckets: 6,
            plan_disk_fraction: 0.5,
            replication_gb_per_plan: 200.0,
            precache: PrecacheConfig::default(),
            precache_new_versions: true,
            new_versions_to_every_holder: false,
            plan: PlanConfig::default(),
            eviction: PredictiveConfig::default(),
            lifecycle: LifecycleConfig::default(),
        }
    }
}

/// What a configuration must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Targets {
    /// Fraction of layer requests served without the origin. Default 0.95.
    pub min_offload: f64,
    /// Bound on the 99th percentile pull time, seconds. Default 60.
    pub max_p99_pull_secs: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            min_offload: 0.95,
            max_p99_pull_secs: 60.0,
        }
    }
}

/// The capacity-planning sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    /// Disk sizes per node to try, GB.
    pub disk_gb: Vec<f64>,
    /// Nodes per region to try.
    pub nodes_per_region: Vec<u32>,
    /// Policy used for the sweep. Default `predictive`.
    pub policy: String,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            disk_gb: vec![5.0, 10.0, 20.0, 40.0],
            nodes_per_region: vec![2, 5, 10],
            policy: "predictive".into(),
        }
    }
}

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Reading the file failed.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Over [`MAX_SCENARIO_BYTES`].
    #[error("scenario {0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    /// Not valid TOML or not the expected shape.
    #[error("scenario {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The error, naming the key.
        source: Box<toml::de::Error>,
    },
    /// A value out of range.
    #[error("scenario key {key}: {problem}")]
    Invalid {
        /// Which key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Policies the simulator knows.
pub const POLICIES: [&str; 4] = ["predictive", "lru", "lfu", "min"];

impl Scenario {
    /// Reads and validates a scenario file; relative paths in it are resolved
    /// against its folder.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let io = |source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge(path.to_path_buf()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut scenario = Scenario::parse(&text).map_err(|e| match e {
            ScenarioError::Toml { source, .. } => ScenarioError::Toml {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut scenario.workload.catalog, &mut scenario.workload.trace]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(scenario)
    }

    /// Parses and validates scenario text (paths are left as written).
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Toml {
            path: PathBuf::from("<text>"),
            source: Box::new(e),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every value range.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let pos = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(key, format!("must be a positive number, got {v}")))
            }
        };
        let nonneg = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("must be a non-negative number, got {v}"),
                ))
            }
        };
        let fraction = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(key, format!("must be between 0 and 1, got {v}")))
            }
        };
        pos("duration_hours", self.duration_hours)?;
        if self.duration_hours > 24.0 * 366.0 {
            return Err(invalid("duration_hours", "at most a year"));
        }
        if self.policies.is_empty() {
            return Err(invalid("policies", "name at least one policy"));
        }
        for p in &self.policies {
            if !POLICIES.contains(&p.as_str()) {
                return Err(invalid(
                    "policies",
                    format!("unknown policy {p:?}; known: {POLICIES:?}"),
                ));
            }
        }
        let t = &self.topology;
        if t.regions.is_empty() || t.regions.len() > 256 {
            return Err(invalid("topology.regions", "between 1 and 256 regions"));
        }
        let mut total_nodes = 0u64;
        for (i, r) in t.regions.iter().enumerate() {
            let k = |f: &str| format!("topology.regions[{i}].{f}");
            if r.nodes == 0 || r.nodes > 100_000 {
                return Err(invalid(&k("nodes"), "between 1 and 100000"));
            }
            total_nodes += u64::from(r.nodes);
            nonneg(&k("origin_rtt_ms"), r.origin_rtt_ms)?;
            if !(r.x_km.is_finite() && r.y_km.is_finite() && r.utc_offset_hours.is_finite()) {
                return Err(invalid(&k("x_km"), "positions and offsets must be finite"));
            }
            if t.regions[..i].iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    &k("name"),
                    format!("duplicate region {:?}", r.name),
                ));
            }
        }
        if total_nodes > 1_000_000 {
            return Err(invalid("topology.regions", "at most a million nodes"));
        }
        pos("topology.disk_gb_per_node", t.disk_gb_per_node)?;
        pos("topology.lan_gbps", t.lan_gbps)?;
        pos("topology.wan_gbps", t.wan_gbps)?;
        pos("topology.origin_gbps", t.origin_gbps)?;
        nonneg("topology.lan_rtt_ms", t.lan_rtt_ms)?;
        nonneg("topology.base_rtt_ms", t.base_rtt_ms)?;
        nonneg("topology.rtt_ms_per_100km", t.rtt_ms_per_100km)?;
        let w = &self.workload;
        match w.kind.as_str() {
            "catalog" if w.catalog.is_none() => {
                return Err(invalid(
                    "workload.catalog",
                    "required when kind = \"catalog\"",
                ))
            }
            "trace" if w.trace.is_none() => {
                return Err(invalid("workload.trace", "required when kind = \"trace\""))
            }
            "pattern" => match w.pattern.as_deref() {
                Some(p) if crate::pattern::PATTERNS.contains(&p) => {}
                other => {
                    return Err(invalid(
                        "workload.pattern",
                        format!(
                            "{other:?}: required when kind = \"pattern\", one of {:?}",
                            crate::pattern::PATTERNS
                        ),
                    ))
                }
            },
            "catalog" | "trace" | "synthetic" => {}
            other => {
                return Err(invalid(
                    "workload.kind",
                    format!("{other:?} is not catalog, synthetic, trace or pattern"),
                ))
            }
        }
        if !["all", "train", "test"].contains(&w.catalog_part.as_str()) {
            return Err(invalid(
                "workload.catalog_part",
                format!("{:?} is not all, train or test", w.catalog_part),
            ));
        }
        if w.pattern_images == 0 || w.pattern_images > 1_000_000 {
            return Err(invalid("workload.pattern_images", "between 1 and 1000000"));
        }
        if w.pattern_popular_images == 0 {
            return Err(invalid("workload.pattern_popular_images", "at least 1"));
        }
        if w.pattern_layers_per_image == 0 || w.pattern_layers_per_image > 100 {
            return Err(invalid(
                "workload.pattern_layers_per_image",
                "between 1 and 100",
            ));
        }
        pos("workload.pulls_per_hour", w.pulls_per_hour)?;
        if w.pulls_per_hour * self.duration_hours > 50_000_000.0 {
            return Err(invalid(
                "workload.pulls_per_hour",
                "more than 50 million pulls in one run",
            ));
        }
        pos("workload.catalog_days", w.catalog_days)?;
        nonneg("workload.zipf_exponent", w.zipf_exponent)?;
        nonneg("workload.regional_skew", w.regional_skew)?;
        fraction("workload.daily_amplitude", w.daily_amplitude)?;
        nonneg("workload.rollouts_per_day", w.rollouts_per_day)?;
        fraction("workload.rollout_fraction", w.rollout_fraction)?;
        nonneg("workload.rollout_minutes", w.rollout_minutes)?;
        nonneg("workload.disclosures_per_day", w.disclosures_per_day)?;
        nonneg("workload.patch_delay_hours", w.patch_delay_hours)?;
        if w.synthetic_repositories == 0 || w.synthetic_repositories > 1_000_000 {
            return Err(invalid(
                "workload.synthetic_repositories",
                "between 1 and 1000000",
            ));
        }
        pos(
            "workload.synthetic_mean_layer_mb",
            w.synthetic_mean_layer_mb,
        )?;
        let p = &self.policy;
        pos("policy.plan_interval_minutes", p.plan_interval_minutes)?;
        fraction("policy.plan_disk_fraction", p.plan_disk_fraction)?;
        nonneg("policy.replication_gb_per_plan", p.replication_gb_per_plan)?;
        if p.horizon_buckets == 0 {
            return Err(invalid("policy.horizon_buckets", "must be at least 1"));
        }
        p.plan
            .weights
            .validate()
            .map_err(|e| invalid("policy.plan.weights", e.to_string()))?;
        p.eviction
            .usage
            .validate()
            .map_err(|e| invalid("policy.eviction.usage", e.to_string()))?;
        p.eviction
            .guard
            .validate()
            .map_err(|e| invalid("policy.eviction.guard", e.to_string()))?;
        fraction(
            "policy.eviction.spare_copy_cost",
            p.eviction.spare_copy_cost,
        )?;
        p.precache
            .validate()
            .map_err(|e| invalid("policy.precache", e.to_string()))?;
        fraction("targets.min_offload", self.targets.min_offload)?;
        pos("targets.max_p99_pull_secs", self.targets.max_p99_pull_secs)?;
        if self.sweep.disk_gb.len() * self.sweep.nodes_per_region.len() > 400 {
            return Err(invalid("sweep", "at most 400 configurations"));
        }
        for &d in &self.sweep.disk_gb {
            pos("sweep.disk_gb", d)?;
        }
        if self
            .sweep
            .nodes_per_region
            .iter()
            .any(|&n| n == 0 || n > 100_000)
        {
            return Err(invalid("sweep.nodes_per_region", "between 1 and 100000"));
        }
        if !POLICIES.contains(&self.sweep.policy.as_str()) {
            return Err(invalid("sweep.policy", "unknown policy"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
duration_hours = 2
[topology]
disk_gb_per_node = 1
regions = [{ name = "a", nodes = 2, x_km = 0, y_km = 0, origin_rtt_ms = 50 }]
[workload]
kind = "synthetic"
"#;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::parse(MINIMAL).unwrap();
        assert_eq!(s.policies.len(), 4);
        assert_eq!(s.seed, 1);
        assert_eq!(s.policy.plan_interval_minutes, 60.0);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = MINIMAL.replace("nodes = 2", "nodes = 0");
        let e = Scenario::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("topology.regions[0].nodes"), "{e}");
        let bad = MINIMAL.replace("kind = \"synthetic\"", "kind = \"synthetic\"\nbogus = 1");
        let e = Scenario::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let bad = MINIMAL.replace("kind = \"synthetic\"", "kind = \"catalog\"");
        assert!(Scenario::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("workload.catalog"));
    }
}
