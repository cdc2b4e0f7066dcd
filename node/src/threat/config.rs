//! The `[threat]` keys: parsed from the config file, validated once, with errors naming the key.

use serde::Deserialize;

/// The highest `threat.max_report_bytes` (the policy crate's own limit on a report).
pub const REPORT_BYTES_CEILING: usize = shoal_policy::threat::MAX_REPORT_BYTES;

/// Validated threat settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreatConfig {
    /// Largest report `POST /threat/reports` reads, in bytes.
    pub max_report_bytes: usize,
    /// Layers with a threat record at most (scores of layers not cached here go first when full).
    pub max_layers: usize,
    /// CVEs kept per layer at most (the highest scoring).
    pub max_cves_per_layer: usize,
    /// Score (0-100) from which a layer nobody is forecast to pull is evicted before every other
    /// candidate.
    pub evict_first_score: f64,
    /// When a report's findings have fixed versions, ask the rebuild flow to refresh the image.
    pub auto_rebuild: bool,
}

impl Default for ThreatConfig {
    fn default() -> Self {
        Self {
            max_report_bytes: 16 << 20,
            max_layers: 50_000,
            max_cves_per_layer: 64,
            evict_first_score: 70.0,
            auto_rebuild: false,
        }
    }
}

/// `[threat]` as written in the file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileThreat {
    max_report_bytes: Option<usize>,
    max_layers: Option<usize>,
    max_cves_per_layer: Option<usize>,
    evict_first_score: Option<f64>,
    auto_rebuild: Option<bool>,
}

/// A `[threat]` key out of range: the key (with its `threat.` prefix) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ThreatConfigError {
    /// The key, as `threat.<name>`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn within<T: PartialOrd + Copy + std::fmt::Display>(
    key: &str,
    value: Option<T>,
    default: T,
    low: T,
    high: T,
) -> Result<T, ThreatConfigError> {
    crate::config::in_range(value, default, low, high).map_err(|message| ThreatConfigError {
        key: format!("threat.{key}"),
        message,
    })
}

impl ThreatConfig {
    /// Validates `[threat]` (absent: the defaults).
    pub fn from_file(file: Option<FileThreat>) -> Result<Self, ThreatConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        Ok(Self {
            max_report_bytes: within(
                "max_report_bytes",
                file.max_report_bytes,
                d.max_report_bytes,
                1024,
                REPORT_BYTES_CEILING,
            )?,
            max_layers: within("max_layers", file.max_layers, d.max_layers, 16, 1_000_000)?,
            max_cves_per_layer: within(
                "max_cves_per_layer",
                file.max_cves_per_layer,
                d.max_cves_per_layer,
                1,
                1024,
            )?,
            evict_first_score: within(
                "evict_first_score",
                file.evict_first_score,
                d.evict_first_score,
                0.0,
                100.0,
            )?,
            auto_rebuild: file.auto_rebuild.unwrap_or(d.auto_rebuild),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ThreatConfig, String> {
        let file: FileThreat = toml::from_str(text).map_err(|e| e.to_string())?;
        ThreatConfig::from_file(Some(file)).map_err(|e| e.key)
    }

    #[test]
    fn absent_keys_take_the_defaults_and_bad_ones_name_the_key() {
        assert_eq!(ThreatConfig::from_file(None), Ok(ThreatConfig::default()));
        let config = parse("auto_rebuild = true\nmax_report_bytes = 2048").unwrap();
        assert!(config.auto_rebuild);
        assert_eq!(config.max_report_bytes, 2048);
        assert_eq!(
            parse("max_report_bytes = 10"),
            Err("threat.max_report_bytes".into())
        );
        assert_eq!(
            parse("evict_first_score = 101.0"),
            Err("threat.evict_first_score".into())
        );
        assert_eq!(
            parse("max_cves_per_layer = 0"),
            Err("threat.max_cves_per_layer".into())
        );
        assert!(parse("no_such_key = 1").is_err());
    }
}
