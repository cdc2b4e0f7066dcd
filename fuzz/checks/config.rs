//! The daemon's TOML configuration (`shoal_node::config::Config::load`), read from a file as
//! `shoald --config` does. Any text loads or is refused with an error naming a key; none panics.

use shoal_node::config::{Config, Overrides};

/// The input is the configuration file's text.
pub fn check(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("shoal-fuzz-config-{}.toml", std::process::id()));
    std::fs::write(&path, data).expect("writing the configuration to the temporary directory");
    let loaded = Config::load(Some(&path), &Overrides::default());
    let _ = std::fs::remove_file(&path);
    if let Err(error) = loaded {
        assert!(!error.to_string().is_empty(), "a refusal says why");
    }
}
