//! Pure edits of containerd's registry host files (`<hosts dir>/<registry>/hosts.toml`) and the
//! check of containerd's own config: text in, text or a finding out, no I/O.
//!
//! A hosts file lists, for one registry, the hosts containerd tries in order (`[host."URL"]`)
//! before falling back to `server`. Merging keeps everything already there: an existing `server`,
//! other hosts and their settings, comments and layout. Only the mirror's own entry is added
//! (first, so it is tried first) or completed (its capabilities).

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// Largest hosts file or containerd config read, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The capabilities the mirror needs: fetch blobs and manifests (`pull`), resolve tags
/// (`resolve`).
const MIRROR_CAPABILITIES: [&str; 2] = ["pull", "resolve"];

/// Why a hosts file or containerd config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    /// The file is not TOML.
    #[error("not valid TOML: {0}")]
    Parse(String),
    /// A key has a shape containerd would not accept either.
    #[error("`{key}` must be {expected}")]
    Shape {
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
    },
}

/// The upstream server containerd falls back to for `registry` when none is configured:
/// Docker Hub's API host for `docker.io`, else the registry itself over HTTPS.
pub fn default_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

/// Returns `existing` (or an empty file) with `mirror` as the first host of the registry,
/// allowed to pull and resolve. An existing `server` is kept; `server` is set only when absent.
/// Other hosts and keys are left as they are. Merging the result again changes nothing.
pub fn merge_hosts_toml(
    existing: Option<&str>,
    server: &str,
    mirror: &str,
) -> Result<String, HostsError> {
    let text = existing.unwrap_or("");
    if text.len() > MAX_CONFIG_BYTES {
        return Err(HostsError::TooLarge);
    }
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| HostsError::Parse(e.message().to_owned()))?;
    match doc.get("server") {
        None => doc["server"] = toml_edit::value(server),
        Some(item) if item.is_str() => {}
        Some(_) => {
            return Err(HostsError::Shape {
                key: "server".into(),
                expected: "a string URL",
            })
        }
    }
    let hosts = doc
        .entry("host")
        .or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        })
        .as_table_mut()
        .ok_or(HostsError::Shape {
            key: "host".into(),
            expected: "a table of hosts",
        })?;
    if let Some(entry) = hosts.get_mut(mirror) {
        let entry = entry.as_table_like_mut().ok_or(HostsError::Shape {
            key: format!("host.\"{mirror}\""),
            expected: "a table",
        })?;
        add_capabilities(entry, mirror)?;
        return Ok(doc.to_string());
    }
    // A new entry goes first: containerd tries hosts in the order of the file. It takes the
    // position of the first existing host so it is written before it.
    let first_position = hosts
        .iter()
        .filter_map(|(_, item)| item.as_table().and_then(Table::position))
        .min();
    let others: Vec<(String, Item)> = hosts
        .iter()
        .map(|(key, item)| (key.to_owned(), item.clone()))
        .collect();
    hosts.clear();
    let mut entry = Table::new();
    if let Some(position) = first_position {
        entry.set_position(position);
    }
    entry["capabilities"] = toml_edit::value(capabilities_array());
    hosts.insert(mirror, Item::Table(entry));
    for (key, item) in others {
        hosts.insert(&key, item);
    }
    Ok(doc.to_string())
}

fn capabilities_array() -> Array {
    MIRROR_CAPABILITIES.iter().copied().collect()
}

fn add_capabilities(entry: &mut dyn toml_edit::TableLike, mirror: &str) -> Result<(), HostsError> {
    let Some(item) = entry.get_mut("capabilities") else {
        entry.insert("capabilities", toml_edit::value(capabilities_array()));
        return Ok(());
    };
    let array = item.as_array_mut().ok_or(HostsError::Shape {
        key: format!("host.\"{mirror}\".capabilities"),
        expected: "an array of strings",
    })?;
    for capability in MIRROR_CAPABILITIES {
        if !array.iter().any(|v| v.as_str() == Some(capability)) {
            array.push(capability);
        }
    }
    Ok(())
}

/// What containerd's config says about where its CRI plugin (the one Kubernetes uses) reads
/// registry hosts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriFinding {
    /// `config_path` names the hosts directory: the CRI plugin uses the files written there.
    UsesHostsDir,
    /// The CRI plugin is disabled: only clients that pass the hosts directory themselves
    /// (`ctr --hosts-dir`, nerdctl) use it.
    CriDisabled,
    /// No config file: containerd's built-in default has no `config_path`.
    NoConfigFile,
    /// The config sets no `config_path` for the CRI plugin.
    ConfigPathUnset {
        /// The table the key belongs in.
        table: &'static str,
    },
    /// `config_path` names other directories.
    ConfigPathElsewhere {
        /// The table the key is in.
        table: &'static str,
        /// Its value.
        configured: String,
    },
    /// The deprecated `mirrors` table is set beside or instead of `config_path`; containerd
    /// refuses to start with both.
    DeprecatedMirrors {
        /// The table the key is in.
        table: &'static str,
    },
}

impl CriFinding {
    /// Whether the CRI plugin will use the hosts directory as it is.
    pub fn is_ok(&self) -> bool {
        matches!(self, CriFinding::UsesHostsDir | CriFinding::CriDisabled)
    }

    /// One line saying what is wrong and exactly what to change, naming `config_file` and
    /// `hosts_dir`.
    pub fn explain(&self, config_file: &Path, hosts_dir: &Path) -> String {
        let config = config_file.display();
        let hosts = hosts_dir.display();
        match self {
            CriFinding::UsesHostsDir => {
                format!("containerd's CRI plugin reads registry hosts from {hosts}")
            }
            CriFinding::CriDisabled => format!(
                "containerd's CRI plugin is disabled in {config}: only clients given the hosts directory (ctr --hosts-dir {hosts}, nerdctl) use the mirror"
            ),
            CriFinding::NoConfigFile => format!(
                "{config} does not exist, so containerd's CRI plugin reads no hosts directory: create it with `version = 2` and [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"{hosts}\", then restart containerd"
            ),
            CriFinding::ConfigPathUnset { table } => format!(
                "containerd's CRI plugin reads no hosts directory: in {config} set config_path = \"{hosts}\" under [{table}], then restart containerd"
            ),
            CriFinding::ConfigPathElsewhere { table, configured } => format!(
                "containerd's CRI plugin reads registry hosts from {configured:?}, not {hosts}: in {config} set config_path = \"{hosts}\" under [{table}] (or run this with --hosts-dir {configured}), then restart containerd"
            ),
            CriFinding::DeprecatedMirrors { table } => format!(
                "{config} configures [{table}.mirrors], which containerd does not combine with a hosts directory: remove the mirrors table and set config_path = \"{hosts}\" under [{table}], then restart containerd"
            ),
        }
    }
}

/// Reads containerd's config (`None` when the file does not exist) and says whether its CRI
/// plugin takes registry hosts from `hosts_dir`. Version 2 configs (containerd 1.x) keep the
/// key under `plugins."io.containerd.grpc.v1.cri".registry`, version 3 (containerd 2.x) under
/// `plugins."io.containerd.cri.v1.images".registry`.
pub fn check_cri_config(text: Option<&str>, hosts_dir: &Path) -> Result<CriFinding, HostsError> {
    let Some(text) = text else {
        return Ok(CriFinding::NoConfigFile);
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(HostsError::TooLarge);
    }
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| HostsError::Parse(e.message().to_owned()))?;
    let version = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    let (plugin, table) = if version >= 3 {
        (
            "io.containerd.cri.v1.images",
            "plugins.\"io.containerd.cri.v1.images\".registry",
        )
    } else {
        (
            "io.containerd.grpc.v1.cri",
            "plugins.\"io.containerd.grpc.v1.cri\".registry",
        )
    };
    let disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .is_some_and(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .any(|name| name == plugin || name == "cri" || name == "io.containerd.grpc.v1.cri")
        });
    if disabled {
        return Ok(CriFinding::CriDisabled);
    }
    let registry = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("registry"));
    if registry.and_then(|r| r.get("mirrors")).is_some() {
        return Ok(CriFinding::DeprecatedMirrors { table });
    }
    let Some(configured) = registry
        .and_then(|r| r.get("config_path"))
        .and_then(Item::as_str)
        .filter(|path| !path.is_empty())
    else {
        return Ok(CriFinding::ConfigPathUnset { table });
    };
    // containerd accepts several directories separated by ':'.
    let wanted = hosts_dir.to_string_lossy();
    let wanted = wanted.trim_end_matches('/');
    if configured
        .split(':')
        .any(|dir| dir.trim_end_matches('/') == wanted)
    {
        Ok(CriFinding::UsesHostsDir)
    } else {
        Ok(CriFinding::ConfigPathElsewhere {
            table,
            configured: configured.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: &str = "http://127.0.0.1:5050";

    #[test]
    fn a_new_file_names_the_server_and_the_mirror() {
        let text = merge_hosts_toml(None, "https://registry-1.docker.io", MIRROR).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
        let caps = doc["host"][MIRROR]["capabilities"].as_array().unwrap();
        assert_eq!(caps.len(), 2);
    }

    #[test]
    fn merging_twice_changes_nothing() {
        let once = merge_hosts_toml(None, "https://quay.io", MIRROR).unwrap();
        let twice = merge_hosts_toml(Some(&once), "https://quay.io", MIRROR).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn an_existing_server_other_hosts_and_comments_are_kept_and_the_mirror_goes_first() {
        let existing = "# managed by hand\nserver = \"https://mirror.example\"\n\n\
                        [host.\"https://other.example\"]\n  capabilities = [\"pull\"]\n  skip_verify = true\n";
        let merged = merge_hosts_toml(Some(existing), "https://quay.io", MIRROR).unwrap();
        assert!(merged.starts_with("# managed by hand\n"), "{merged}");
        let doc: toml::Table = toml::from_str(&merged).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://mirror.example"));
        assert_eq!(
            doc["host"]["https://other.example"]["skip_verify"].as_bool(),
            Some(true)
        );
        let ours = merged.find(MIRROR).unwrap();
        let theirs = merged.find("https://other.example").unwrap();
        assert!(ours < theirs, "the mirror must be tried first:\n{merged}");
        let again = merge_hosts_toml(Some(&merged), "https://quay.io", MIRROR).unwrap();
        assert_eq!(merged, again);
    }

    #[test]
    fn a_mirror_entry_without_resolve_gets_it_and_keeps_its_other_keys() {
        let existing = format!(
            "server = \"https://quay.io\"\n[host.\"{MIRROR}\"]\ncapabilities = [\"pull\"]\nheader = {{ x = \"y\" }}\n"
        );
        let merged = merge_hosts_toml(Some(&existing), "https://quay.io", MIRROR).unwrap();
        let doc: toml::Table = toml::from_str(&merged).unwrap();
        let caps: Vec<_> = doc["host"][MIRROR]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(caps, ["pull", "resolve"]);
        assert!(doc["host"][MIRROR].get("header").is_some());
    }

    #[test]
    fn a_malformed_hosts_file_is_an_error_not_overwritten() {
        assert!(matches!(
            merge_hosts_toml(Some("server = [1"), "https://quay.io", MIRROR),
            Err(HostsError::Parse(_))
        ));
        assert!(matches!(
            merge_hosts_toml(Some("server = 3"), "https://quay.io", MIRROR),
            Err(HostsError::Shape { .. })
        ));
        let huge = "#".repeat(MAX_CONFIG_BYTES + 1);
        assert!(matches!(
            merge_hosts_toml(Some(&huge), "https://quay.io", MIRROR),
            Err(HostsError::TooLarge)
        ));
    }

    #[test]
    fn the_cri_check_tells_each_case_apart() {
        let dir = Path::new("/etc/containerd/certs.d");
        assert_eq!(
            check_cri_config(None, dir).unwrap(),
            CriFinding::NoConfigFile
        );
        assert_eq!(
            check_cri_config(Some("version = 2\n"), dir).unwrap(),
            CriFinding::ConfigPathUnset {
                table: "plugins.\"io.containerd.grpc.v1.cri\".registry"
            }
        );
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d/\"\n";
        assert_eq!(
            check_cri_config(Some(v2), dir).unwrap(),
            CriFinding::UsesHostsDir
        );
        let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/a:/etc/containerd/certs.d\"\n";
        assert_eq!(
            check_cri_config(Some(v3), dir).unwrap(),
            CriFinding::UsesHostsDir
        );
        let elsewhere = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/srv/hosts\"\n";
        let finding = check_cri_config(Some(elsewhere), dir).unwrap();
        assert!(!finding.is_ok());
        let line = finding.explain(Path::new("/etc/containerd/config.toml"), dir);
        assert!(
            line.contains("config_path = \"/etc/containerd/certs.d\""),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let mirrors = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://x\"]\n";
        assert!(matches!(
            check_cri_config(Some(mirrors), dir).unwrap(),
            CriFinding::DeprecatedMirrors { .. }
        ));
        let disabled = "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";
        assert_eq!(
            check_cri_config(Some(disabled), dir).unwrap(),
            CriFinding::CriDisabled
        );
        for finding in [
            CriFinding::NoConfigFile,
            CriFinding::ConfigPathUnset { table: "t" },
        ] {
            let line = finding.explain(Path::new("/etc/containerd/config.toml"), dir);
            assert!(line.contains("config_path = \"/etc/containerd/certs.d\""));
            assert!(line.contains("restart containerd"));
        }
    }
}
