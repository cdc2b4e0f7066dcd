//! `shoal containerd configure` and `shoal containerd check`: point containerd at a node, and
//! prove that it pulls through it.
//!
//! `configure` writes or merges `<hosts dir>/<registry>/hosts.toml` for each registry (by
//! default the node's configured upstreams, read from the node's config file or its admin API),
//! with the node's registry endpoint as the first host. It is idempotent (a second run changes
//! nothing), keeps what was there (see [`hosts::merge_hosts_toml`]), shows a diff with
//! `--dry-run`, and checks that containerd's CRI plugin reads the hosts directory.
//!
//! `check` fetches an image's manifests and config (`ctr content fetch --metadata-only`, the
//! resolver path every containerd pull takes) with the hosts directory, and compares the node's
//! registry request counters before and after: the mirror was used when they moved.

pub mod hosts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::admin_client::AdminClient;

/// `shoal containerd ...`
#[derive(Debug, clap::Subcommand)]
pub enum ContainerdCommand {
    /// Write or merge hosts.toml for each registry so containerd pulls through this node.
    Configure(ConfigureArgs),
    /// Fetch an image's manifests through containerd and say whether the node served them.
    Check(CheckArgs),
}

/// Where to learn the node's upstreams and registry endpoint.
#[derive(Debug, clap::Args)]
pub struct NodeSource {
    /// The node's config file (read for `upstreams` and `listen`). Without it, the node's admin
    /// API is asked.
    #[arg(long)]
    pub node_config: Option<PathBuf>,
    /// The node's admin API.
    #[arg(long, default_value = "http://127.0.0.1:5051")]
    pub admin: String,
}

/// `shoal containerd configure`
#[derive(Debug, clap::Args)]
pub struct ConfigureArgs {
    /// Registries to configure (as containerd names them, e.g. docker.io); default: the node's
    /// upstreams.
    pub registries: Vec<String>,
    /// containerd's hosts directory.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// The node's registry endpoint as containerd reaches it, e.g. http://127.0.0.1:5050;
    /// default: from the node's config or admin API.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub node: NodeSource,
    /// containerd's config file, checked for `config_path`.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// Where the host's file system is mounted, when this runs in a container (e.g. /host):
    /// --hosts-dir and --containerd-config are then the host's paths, read and written below it.
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    /// Show what would change, as a diff, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `shoal containerd check`
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// An image to resolve, e.g. docker.io/library/alpine:3.19 (only its manifests and config
    /// are fetched).
    pub reference: String,
    /// containerd's hosts directory.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd's config file, checked for `config_path`.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// The node's admin API, whose request counters show whether the mirror was used.
    #[arg(long, default_value = "http://127.0.0.1:5051")]
    pub admin: String,
}

/// Runs a `shoal containerd` command.
pub async fn run(command: ContainerdCommand) -> Result<ExitCode> {
    match command {
        ContainerdCommand::Configure(args) => configure(&args).await,
        ContainerdCommand::Check(args) => check(&args).await,
    }
}

/// What `configure` needs to know about the node.
#[derive(Debug, Default)]
struct NodeView {
    /// Upstream name (as containerd sends it in `ns`) to upstream URL.
    upstreams: BTreeMap<String, String>,
    /// The registry endpoint URL, when known.
    endpoint: Option<String>,
}

/// Reads the node's upstreams and endpoint from its config file: only `upstreams` and `listen`,
/// so the file's secrets (network key, passwords) need not be readable here.
fn node_from_config(path: &Path) -> Result<NodeView> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the node's config {}", path.display()))?;
    if text.len() > hosts::MAX_CONFIG_BYTES {
        bail!("{} is larger than 1 MiB", path.display());
    }
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut upstreams = BTreeMap::new();
    match table.get("upstreams") {
        Some(toml::Value::Table(configured)) => {
            for (name, entry) in configured {
                let url = entry
                    .get("url")
                    .and_then(toml::Value::as_str)
                    .with_context(|| {
                        format!("{}: upstreams.{name}.url is missing", path.display())
                    })?;
                upstreams.insert(name.clone(), url.to_owned());
            }
        }
        Some(_) => bail!("{}: `upstreams` must be a table", path.display()),
        None => {
            for (name, url) in shoal_node::config::DEFAULT_UPSTREAMS {
                upstreams.insert(name.to_owned(), url.to_owned());
            }
        }
    }
    let listen = match table.get("listen") {
        Some(value) => value
            .as_str()
            .with_context(|| format!("{}: `listen` must be a string", path.display()))?,
        None => "127.0.0.1:5050",
    };
    Ok(NodeView {
        upstreams,
        endpoint: Some(endpoint_for_listen(listen)?),
    })
}

/// The URL containerd on this host uses for a node listening on `listen`: an unspecified
/// address (0.0.0.0, ::) is reached on loopback.
pub fn endpoint_for_listen(listen: &str) -> Result<String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("{listen:?} is not an address such as 127.0.0.1:5050"))?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{ip}:{}", addr.port()))
}

async fn node_view(source: &NodeSource) -> Result<NodeView> {
    if let Some(path) = &source.node_config {
        return node_from_config(path);
    }
    let status = AdminClient::new(&source.admin)?
        .status()
        .await
        .with_context(|| {
            format!(
                "asking the node at {} for its upstreams (or pass --node-config FILE, or name the registries and --endpoint)",
                source.admin
            )
        })?;
    Ok(NodeView {
        upstreams: status
            .upstreams
            .into_iter()
            .map(|u| (u.name, u.url))
            .collect(),
        endpoint: Some(endpoint_for_listen(&status.registry_listen)?),
    })
}

fn validate_endpoint(endpoint: &str) -> Result<String> {
    let url = reqwest::Url::parse(endpoint)
        .with_context(|| format!("--endpoint {endpoint:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || url.path() != "/" {
        bail!("--endpoint {endpoint:?} must be http://HOST:PORT or https://HOST:PORT");
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

fn read_limited(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > hosts::MAX_CONFIG_BYTES as u64 => {
            bail!("{} is larger than 1 MiB", path.display())
        }
        Ok(_) => Ok(Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

async fn configure(args: &ConfigureArgs) -> Result<ExitCode> {
    let needs_node = args.registries.is_empty() || args.endpoint.is_none();
    let node = if needs_node {
        node_view(&args.node).await?
    } else {
        NodeView::default()
    };
    let endpoint = match args.endpoint.as_deref().or(node.endpoint.as_deref()) {
        Some(endpoint) => validate_endpoint(endpoint)?,
        None => bail!("the node's registry endpoint is unknown: pass --endpoint URL"),
    };
    let registries: Vec<String> = if args.registries.is_empty() {
        node.upstreams.keys().cloned().collect()
    } else {
        args.registries.clone()
    };
    if registries.is_empty() {
        bail!("no registries to configure: the node has no upstreams; name them as arguments");
    }
    let on_host = |path: &Path| match &args.host_root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    };
    let hosts_dir = on_host(&args.hosts_dir);
    let mut changed = 0;
    for registry in &registries {
        if !shoal_proto::oci::is_valid_registry_host(registry) {
            bail!("{registry:?} is not a registry host name (such as docker.io or registry.internal:5000)");
        }
        let server = node
            .upstreams
            .get(registry)
            .cloned()
            .unwrap_or_else(|| hosts::default_server(registry));
        let path = hosts_dir.join(registry).join("hosts.toml");
        let before = read_limited(&path)?;
        let after = hosts::merge_hosts_toml(before.as_deref(), &server, &endpoint)
            .with_context(|| format!("merging {}", path.display()))?;
        if before.as_deref() == Some(after.as_str()) {
            println!("unchanged {}", path.display());
            continue;
        }
        changed += 1;
        if args.dry_run {
            println!("would change {}", path.display());
            print!(
                "{}",
                unified_diff(before.as_deref().unwrap_or(""), &after, &path)
            );
            continue;
        }
        write_atomically(&path, &after)?;
        println!(
            "{} {}",
            if before.is_some() {
                "updated"
            } else {
                "created"
            },
            path.display()
        );
    }
    println!(
        "{changed} of {} hosts files {}; mirror {endpoint}",
        registries.len(),
        if args.dry_run {
            "would change"
        } else {
            "changed"
        }
    );
    // containerd reads the host's paths: judge its config against the hosts directory as the
    // host names it.
    let finding = hosts::check_cri_config(
        read_limited(&on_host(&args.containerd_config))?.as_deref(),
        &args.hosts_dir,
    )
    .with_context(|| format!("reading {}", args.containerd_config.display()))?;
    if finding.is_ok() {
        println!(
            "{}",
            finding.explain(&args.containerd_config, &args.hosts_dir)
        );
    } else {
        eprintln!(
            "warning: {}",
            finding.explain(&args.containerd_config, &args.hosts_dir)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unified_diff(before: &str, after: &str, path: &Path) -> String {
    let name = path.display().to_string();
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .header(&name, &name)
        .to_string()
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so
/// containerd never reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .context("a hosts file has a parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(".hosts.toml.shoal-tmp");
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Longest `ctr content fetch --metadata-only` may take.
const CHECK_FETCH_TIMEOUT: Duration = Duration::from_secs(120);

async fn check(args: &CheckArgs) -> Result<ExitCode> {
    let admin = AdminClient::new(&args.admin)?;
    let before = admin
        .registry_requests()
        .await
        .with_context(|| format!("reading the node's metrics at {}", args.admin))?;
    let mut ctr = tokio::process::Command::new("ctr");
    ctr.arg("--address")
        .arg(&args.address)
        .args(["content", "fetch", "--metadata-only", "--hosts-dir"])
        .arg(&args.hosts_dir)
        .arg(&args.reference)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(CHECK_FETCH_TIMEOUT, ctr.output()).await {
        Ok(output) => output.context("running ctr (is containerd installed?)")?,
        Err(_) => bail!("ctr did not finish within {CHECK_FETCH_TIMEOUT:?}"),
    };
    let after = admin.registry_requests().await?;
    let served = after.saturating_sub(before);
    let mut ok = true;
    if !output.status.success() {
        ok = false;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        println!("containerd could not resolve {}: {last}", args.reference);
    } else if served > 0 {
        println!(
            "mirror used: the node answered {served} registry requests while containerd resolved {}",
            args.reference
        );
    } else {
        ok = false;
        println!(
            "mirror NOT used: containerd resolved {} without asking the node; run `shoal containerd configure --hosts-dir {}`",
            args.reference,
            args.hosts_dir.display()
        );
    }
    let finding = hosts::check_cri_config(
        read_limited(&args.containerd_config)?.as_deref(),
        &args.hosts_dir,
    )?;
    if finding.is_ok() {
        println!(
            "{}",
            finding.explain(&args.containerd_config, &args.hosts_dir)
        );
    } else {
        ok = false;
        println!(
            "Kubernetes pulls will not use the mirror: {}",
            finding.explain(&args.containerd_config, &args.hosts_dir)
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
