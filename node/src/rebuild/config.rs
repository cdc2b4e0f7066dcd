//! The `[rebuild]` keys: parsed from the config file, validated once, with errors naming the key.

use std::time::Duration;

use serde::Deserialize;

/// Validated rebuild settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildConfig {
    /// How long a tag may be held at its old digest while a rebuild's shadow is fetched: the
    /// rebuild fails (and the hold lapses on every node) when the new version is not in every
    /// region by then. It also caps the holds other members ask this node to keep.
    pub hold: Duration,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(3600),
        }
    }
}

/// `[rebuild]` as written in the file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRebuild {
    hold_secs: Option<u64>,
}

/// A `[rebuild]` key out of range: the key (with its `rebuild.` prefix) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RebuildConfigError {
    /// The key, as `rebuild.<name>`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl RebuildConfig {
    /// Validates `[rebuild]` (absent: the defaults).
    pub fn from_file(file: Option<FileRebuild>) -> Result<Self, RebuildConfigError> {
        let file = file.unwrap_or_default();
        let default_secs = Self::default().hold.as_secs();
        let hold_secs = crate::config::in_range(file.hold_secs, default_secs, 10, 7 * 24 * 3600)
            .map_err(|message| RebuildConfigError {
                key: "rebuild.hold_secs".into(),
                message,
            })?;
        Ok(Self {
            hold: Duration::from_secs(hold_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RebuildConfig, String> {
        let file: FileRebuild = toml::from_str(text).map_err(|e| e.to_string())?;
        RebuildConfig::from_file(Some(file)).map_err(|e| e.key)
    }

    #[test]
    fn absent_keys_take_the_defaults_and_bad_ones_name_the_key() {
        assert_eq!(RebuildConfig::from_file(None), Ok(RebuildConfig::default()));
        assert_eq!(
            parse("hold_secs = 600").unwrap().hold,
            Duration::from_secs(600)
        );
        assert_eq!(parse("hold_secs = 1"), Err("rebuild.hold_secs".into()));
        assert_eq!(
            parse("hold_secs = 99999999"),
            Err("rebuild.hold_secs".into())
        );
        assert!(parse("no_such_key = 1").is_err());
    }
}
