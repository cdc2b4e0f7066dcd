//! The `[lifecycle]` and `[retention]` keys: parsed from the config file, validated once, with
//! errors naming the key.

use std::time::Duration;

use serde::Deserialize;
use shoal_policy::lifecycle::LifecycleConfig;
use shoal_policy::retention::RetentionRules;

/// Validated lifecycle settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    /// Off: no states are computed, nothing is deleted by the lifecycle, the API says it is off.
    pub enabled: bool,
    /// How often every cached layer's state is reviewed.
    pub review_interval: Duration,
    /// The policy's thresholds and grace period (`shoal-policy`'s `LifecycleConfig`).
    pub policy: LifecycleConfig,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            review_interval: Duration::from_secs(300),
            policy: LifecycleConfig::default(),
        }
    }
}

/// Validated retention settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// On: only images the rules keep count as retained, and the rules run on a timer. Off:
    /// every cached image counts as retained and nothing is deleted for retention.
    pub enabled: bool,
    /// How often the rules run when enabled.
    pub interval: Duration,
    /// The rules (`shoal-policy`'s `RetentionRules`).
    pub rules: RetentionRules,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(3600),
            rules: RetentionRules::default(),
        }
    }
}

/// `[lifecycle]` as written in the file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLifecycle {
    enabled: Option<bool>,
    review_interval_secs: Option<u64>,
    grace_period_secs: Option<u64>,
    active_threshold: Option<f64>,
    warm_threshold: Option<f64>,
    cold_threshold: Option<f64>,
    threat_discount: Option<f64>,
}

/// `[retention]` as written in the file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetention {
    enabled: Option<bool>,
    interval_secs: Option<u64>,
    keep_younger_than_days: Option<u64>,
    keep_latest_per_repository: Option<bool>,
    grace_period_secs: Option<u64>,
}

/// A `[lifecycle]` or `[retention]` key out of range: the dotted key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct LifecycleConfigError {
    /// The key, as `lifecycle.<name>` or `retention.<name>`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> LifecycleConfigError {
    LifecycleConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn within<T: PartialOrd + Copy + std::fmt::Display>(
    key: &str,
    value: Option<T>,
    default: T,
    low: T,
    high: T,
) -> Result<T, LifecycleConfigError> {
    crate::config::in_range(value, default, low, high).map_err(|message| bad(key, message))
}

/// Seven years: the longest period any key takes.
const MAX_SECS: u64 = 7 * 365 * 86_400;

impl LifecycleSettings {
    /// Validates `[lifecycle]` (absent: the defaults).
    pub fn from_file(file: Option<FileLifecycle>) -> Result<Self, LifecycleConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        let policy = LifecycleConfig {
            active_threshold: within(
                "lifecycle.active_threshold",
                file.active_threshold,
                d.policy.active_threshold,
                0.0,
                100.0,
            )?,
            warm_threshold: within(
                "lifecycle.warm_threshold",
                file.warm_threshold,
                d.policy.warm_threshold,
                0.0,
                100.0,
            )?,
            cold_threshold: within(
                "lifecycle.cold_threshold",
                file.cold_threshold,
                d.policy.cold_threshold,
                0.0,
                100.0,
            )?,
            grace_period_secs: within(
                "lifecycle.grace_period_secs",
                file.grace_period_secs,
                d.policy.grace_period_secs,
                0,
                MAX_SECS,
            )?,
            threat_discount: within(
                "lifecycle.threat_discount",
                file.threat_discount,
                d.policy.threat_discount,
                0.0,
                1.0,
            )?,
        };
        if !(policy.cold_threshold <= policy.warm_threshold
            && policy.warm_threshold <= policy.active_threshold)
        {
            return Err(bad(
                "lifecycle.warm_threshold",
                "thresholds must satisfy cold_threshold <= warm_threshold <= active_threshold",
            ));
        }
        Ok(Self {
            enabled: file.enabled.unwrap_or(d.enabled),
            review_interval: Duration::from_secs(within(
                "lifecycle.review_interval_secs",
                file.review_interval_secs,
                d.review_interval.as_secs(),
                1,
                7 * 86_400,
            )?),
            policy,
        })
    }
}

impl RetentionSettings {
    /// Validates `[retention]` (absent: the defaults).
    pub fn from_file(file: Option<FileRetention>) -> Result<Self, LifecycleConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        let days = within(
            "retention.keep_younger_than_days",
            file.keep_younger_than_days,
            d.rules.keep_younger_than_secs / 86_400,
            0,
            MAX_SECS / 86_400,
        )?;
        Ok(Self {
            enabled: file.enabled.unwrap_or(d.enabled),
            interval: Duration::from_secs(within(
                "retention.interval_secs",
                file.interval_secs,
                d.interval.as_secs(),
                1,
                30 * 86_400,
            )?),
            rules: RetentionRules {
                keep_younger_than_secs: days * 86_400,
                keep_latest_per_repository: file
                    .keep_latest_per_repository
                    .unwrap_or(d.rules.keep_latest_per_repository),
                grace_period_secs: within(
                    "retention.grace_period_secs",
                    file.grace_period_secs,
                    d.rules.grace_period_secs,
                    0,
                    MAX_SECS,
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(text: &str) -> Result<LifecycleSettings, String> {
        let file: FileLifecycle = toml::from_str(text).map_err(|e| e.to_string())?;
        LifecycleSettings::from_file(Some(file)).map_err(|e| e.key)
    }

    fn retention(text: &str) -> Result<RetentionSettings, String> {
        let file: FileRetention = toml::from_str(text).map_err(|e| e.to_string())?;
        RetentionSettings::from_file(Some(file)).map_err(|e| e.key)
    }

    #[test]
    fn absent_keys_take_the_defaults_and_bad_ones_name_the_key() {
        assert_eq!(
            LifecycleSettings::from_file(None),
            Ok(LifecycleSettings::default())
        );
        assert_eq!(
            RetentionSettings::from_file(None),
            Ok(RetentionSettings::default())
        );
        let l = lifecycle("grace_period_secs = 2\nreview_interval_secs = 1").unwrap();
        assert_eq!(l.policy.grace_period_secs, 2);
        assert_eq!(l.review_interval, Duration::from_secs(1));
        assert_eq!(
            lifecycle("review_interval_secs = 0"),
            Err("lifecycle.review_interval_secs".into())
        );
        assert_eq!(
            lifecycle("threat_discount = 1.5"),
            Err("lifecycle.threat_discount".into())
        );
        assert_eq!(
            lifecycle("cold_threshold = 50"),
            Err("lifecycle.warm_threshold".into())
        );
        assert!(lifecycle("nope = 1").is_err());
        let r =
            retention("enabled = true\nkeep_younger_than_days = 0\ngrace_period_secs = 0").unwrap();
        assert!(r.enabled);
        assert_eq!(r.rules.keep_younger_than_secs, 0);
        assert_eq!(
            retention("interval_secs = 0"),
            Err("retention.interval_secs".into())
        );
    }
}
