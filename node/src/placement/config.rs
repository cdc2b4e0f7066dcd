//! The `[placement]` keys: parsed from the config file, validated once, with errors naming the key.

use std::time::Duration;

use serde::Deserialize;

/// Which order the store evicts in when placement is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionOrder {
    /// Least recently used first (the default), with placement's protections.
    Lru,
    /// `shoal-policy`'s predictive order (lowest expected use per byte first), with the same
    /// protections.
    Predictive,
}

/// Validated placement settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// Off: the node behaves as without placement (no demand file, no watcher, no plan, LRU).
    pub enabled: bool,
    /// How often the replication plan is computed and executed.
    pub plan_interval: Duration,
    /// Origin bytes pre-fetching may spend per hour (peers cost nothing against it).
    pub precache_origin_bytes_per_hour: u64,
    /// Pre-fetches running at once.
    pub prefetch_concurrency: usize,
    /// How many of the tags clients pulled most are watched for new versions.
    pub watch_tags: usize,
    /// Tag checks sent to one upstream per minute at most.
    pub tag_checks_per_minute: u32,
    /// Layers whose demand history is kept (ids interned, history persisted).
    pub max_layers: usize,
    /// How often the demand history is written to disk.
    pub persist_interval: Duration,
    /// Width of one usage bucket.
    pub bucket_secs: u64,
    /// Completed buckets of history per layer.
    pub history_buckets: usize,
    /// The eviction order.
    pub eviction: EvictionOrder,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            plan_interval: Duration::from_secs(300),
            precache_origin_bytes_per_hour: 10 << 30,
            prefetch_concurrency: 2,
            watch_tags: 64,
            tag_checks_per_minute: 30,
            max_layers: 100_000,
            persist_interval: Duration::from_secs(10),
            bucket_secs: 3600,
            history_buckets: 48,
            eviction: EvictionOrder::Lru,
        }
    }
}

/// `[placement]` as written in the file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlacement {
    enabled: Option<bool>,
    plan_interval_secs: Option<u64>,
    precache_origin_bytes_per_hour: Option<u64>,
    prefetch_concurrency: Option<usize>,
    watch_tags: Option<usize>,
    tag_checks_per_minute: Option<u32>,
    max_layers: Option<usize>,
    persist_interval_secs: Option<u64>,
    bucket_secs: Option<u64>,
    history_buckets: Option<usize>,
    eviction: Option<String>,
}

/// A `[placement]` key out of range: the key (with its `placement.` prefix) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PlacementConfigError {
    /// The key, as `placement.<name>`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> PlacementConfigError {
    PlacementConfigError {
        key: format!("placement.{key}"),
        message: message.into(),
    }
}

fn within<T: PartialOrd + Copy + std::fmt::Display>(
    key: &str,
    value: Option<T>,
    default: T,
    low: T,
    high: T,
) -> Result<T, PlacementConfigError> {
    crate::config::in_range(value, default, low, high).map_err(|message| bad(key, message))
}

impl PlacementConfig {
    /// Validates `[placement]` (absent: the defaults).
    pub fn from_file(file: Option<FilePlacement>) -> Result<Self, PlacementConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        let eviction = match file.eviction.as_deref() {
            None | Some("lru") => EvictionOrder::Lru,
            Some("predictive") => EvictionOrder::Predictive,
            Some(_) => return Err(bad("eviction", "must be \"lru\" or \"predictive\"")),
        };
        Ok(Self {
            enabled: file.enabled.unwrap_or(d.enabled),
            plan_interval: Duration::from_secs(within(
                "plan_interval_secs",
                file.plan_interval_secs,
                d.plan_interval.as_secs(),
                1,
                7 * 24 * 3600,
            )?),
            precache_origin_bytes_per_hour: within(
                "precache_origin_bytes_per_hour",
                file.precache_origin_bytes_per_hour,
                d.precache_origin_bytes_per_hour,
                0,
                1 << 50,
            )?,
            prefetch_concurrency: within(
                "prefetch_concurrency",
                file.prefetch_concurrency,
                d.prefetch_concurrency,
                1,
                16,
            )?,
            watch_tags: within("watch_tags", file.watch_tags, d.watch_tags, 0, 10_000)?,
            tag_checks_per_minute: within(
                "tag_checks_per_minute",
                file.tag_checks_per_minute,
                d.tag_checks_per_minute,
                1,
                6_000,
            )?,
            max_layers: within("max_layers", file.max_layers, d.max_layers, 16, 10_000_000)?,
            persist_interval: Duration::from_secs(within(
                "persist_interval_secs",
                file.persist_interval_secs,
                d.persist_interval.as_secs(),
                1,
                3600,
            )?),
            bucket_secs: within("bucket_secs", file.bucket_secs, d.bucket_secs, 1, 86_400)?,
            history_buckets: within(
                "history_buckets",
                file.history_buckets,
                d.history_buckets,
                1,
                1_000,
            )?,
            eviction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PlacementConfig, String> {
        let file: FilePlacement = toml::from_str(text).map_err(|e| e.to_string())?;
        PlacementConfig::from_file(Some(file)).map_err(|e| e.key)
    }

    #[test]
    fn absent_keys_take_the_defaults_and_bad_ones_name_the_key() {
        assert_eq!(
            PlacementConfig::from_file(None),
            Ok(PlacementConfig::default())
        );
        let config =
            parse("enabled = false\nplan_interval_secs = 5\neviction = \"predictive\"").unwrap();
        assert!(!config.enabled);
        assert_eq!(config.plan_interval, Duration::from_secs(5));
        assert_eq!(config.eviction, EvictionOrder::Predictive);
        assert_eq!(
            parse("plan_interval_secs = 0"),
            Err("placement.plan_interval_secs".into())
        );
        assert_eq!(
            parse("prefetch_concurrency = 99"),
            Err("placement.prefetch_concurrency".into())
        );
        assert_eq!(
            parse("eviction = \"mru\""),
            Err("placement.eviction".into())
        );
        assert!(parse("no_such_key = 1").is_err());
    }
}
