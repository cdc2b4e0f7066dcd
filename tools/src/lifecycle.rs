//! `shoal layers`, `shoal lifecycle get|pin|unpin`, `shoal graph` and `shoal retention`: the
//! lifecycle's admin API of a running node, as tables (or `--json`). Mutating commands send the
//! bearer token read from `--token-file`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use shoal_proto::BlobDigest;

use crate::admin_client::AdminClient;

/// Longest a request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the node is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct AdminOptions {
    /// The node's admin URL.
    #[arg(long, default_value = "http://127.0.0.1:5051")]
    pub admin: String,
    /// A file holding the admin bearer token (the node's `admin_token_file`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the node's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shoal lifecycle ...`
#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// A layer's state, scores, pins, images and reason.
    Get {
        /// The layer, `sha256:<hex>`.
        digest: String,
        #[command(flatten)]
        options: AdminOptions,
    },
    /// Pins a layer: keep (held Active, never deleted) or delete (after the grace period).
    Pin {
        /// The layer, `sha256:<hex>`.
        digest: String,
        /// Which pin.
        #[arg(long, value_enum)]
        pin: PinArg,
        /// Why (shown and logged).
        #[arg(long, default_value = "")]
        reason: String,
        /// The pin lapses after this many seconds.
        #[arg(long, value_name = "SECS")]
        expires_in_secs: Option<u64>,
        #[command(flatten)]
        options: AdminOptions,
    },
    /// Removes a layer's pins (both, or the one named).
    Unpin {
        /// The layer, `sha256:<hex>`.
        digest: String,
        /// Only this pin.
        #[arg(long, value_enum)]
        pin: Option<PinArg>,
        #[command(flatten)]
        options: AdminOptions,
    },
}

/// A pin kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PinArg {
    /// Keep.
    Keep,
    /// Delete.
    Delete,
}

impl PinArg {
    fn name(self) -> &'static str {
        match self {
            PinArg::Keep => "keep",
            PinArg::Delete => "delete",
        }
    }
}

/// Output format of `shoal graph`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// The node's JSON.
    Json,
    /// Graphviz DOT.
    Dot,
    /// A table.
    Table,
}

/// The admin client for `options`, with the token read from `--token-file` if given.
fn client(options: &AdminOptions) -> Result<AdminClient> {
    AdminClient::with_timeout(&options.admin, TIMEOUT)?
        .with_token_file(options.token_file.as_deref())
}

fn run_async<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn check_digest(digest: &str) -> Result<BlobDigest> {
    digest
        .parse()
        .map_err(|e| anyhow::anyhow!("{digest:?} is not a sha256 digest: {e}"))
}

fn print_json(value: &Value) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `shoal lifecycle ...`
pub fn run(command: LifecycleCommand) -> Result<ExitCode> {
    match command {
        LifecycleCommand::Get { digest, options } => {
            let digest = check_digest(&digest)?;
            let client = client(&options)?;
            let value = run_async(client.json(
                reqwest::Method::GET,
                &format!("/layers/{digest}/lifecycle"),
                None,
            ))?;
            if options.json {
                return print_json(&value);
            }
            print!("{}", render_layer(&value));
            Ok(ExitCode::SUCCESS)
        }
        LifecycleCommand::Pin {
            digest,
            pin,
            reason,
            expires_in_secs,
            options,
        } => {
            let digest = check_digest(&digest)?;
            let mut body = json!({"action": pin.name(), "reason": reason});
            if let Some(secs) = expires_in_secs {
                body["expires_in_secs"] = json!(secs);
            }
            override_layer(&options, digest, body)
        }
        LifecycleCommand::Unpin {
            digest,
            pin,
            options,
        } => {
            let digest = check_digest(&digest)?;
            let mut body = json!({"action": "clear"});
            if let Some(pin) = pin {
                body["pin"] = json!(pin.name());
            }
            override_layer(&options, digest, body)
        }
    }
}

fn override_layer(options: &AdminOptions, digest: BlobDigest, body: Value) -> Result<ExitCode> {
    let client = client(options)?;
    let value = run_async(client.json(
        reqwest::Method::POST,
        &format!("/layers/{digest}/lifecycle/override"),
        Some(body),
    ))?;
    if options.json {
        return print_json(&value);
    }
    println!(
        "{digest}: keep {}, delete {} (state {}; reviewed again now)",
        if value["pins"]["keep"].is_null() {
            "off"
        } else {
            "on"
        },
        if value["pins"]["delete"].is_null() {
            "off"
        } else {
            "on"
        },
        text(&value["state"])
    );
    Ok(ExitCode::SUCCESS)
}

fn render_layer(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "layer      {}", text(&v["digest"]));
    let _ = writeln!(
        out,
        "held       {}  size {}",
        text(&v["held"]),
        text(&v["size"])
    );
    let _ = writeln!(
        out,
        "state      {} since {}",
        text(&v["state"]),
        text(&v["since"])
    );
    let _ = writeln!(out, "reason     {}", text(&v["reason"]));
    let s = &v["scores"];
    let _ = writeln!(
        out,
        "scores     usage {} (forecast {} pulls)  threat {}  proximity {}  lifecycle {}  priority {}",
        text(&s["usage"]),
        text(&s["forecast_pulls"]),
        text(&s["threat"]),
        text(&s["proximity"]),
        text(&s["lifecycle_score"]),
        text(&v["priority"])
    );
    for cve in s["cves"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "cve        {} {}{}",
            text(&cve["id"]),
            text(&cve["severity"]),
            if cve["fixed"] == true {
                " (fix available)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "copies     {}", v["copies_per_region"]);
    for kind in ["keep", "delete"] {
        let pin = &v["pins"][kind];
        if !pin.is_null() {
            let _ = writeln!(
                out,
                "pin {kind:<6} {} (set {}, expires {})",
                text(&pin["reason"]),
                text(&pin["set_at"]),
                text(&pin["expires_at"])
            );
        }
    }
    for image in v["images"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "image      {} {} {}",
            text(&image["name"]),
            image["tags"],
            short(image["digest"].as_str().unwrap_or(""))
        );
    }
    let _ = writeln!(out, "next review {}", text(&v["next_review"]));
    out
}

/// `shoal layers`.
pub fn layers(
    options: &AdminOptions,
    state: Option<&str>,
    sort: &str,
    limit: usize,
    offset: usize,
) -> Result<ExitCode> {
    let client = client(options)?;
    let mut path = format!("/layers?sort={sort}&limit={limit}&offset={offset}");
    if let Some(state) = state {
        path.push_str(&format!("&state={state}"));
    }
    let value = run_async(client.json(reqwest::Method::GET, &path, None))?;
    if options.json {
        return print_json(&value);
    }
    println!(
        "{:<19}  {:<16}  {:>12}  {:>6}  {:>6}  {:<4}  pins",
        "layer", "state", "bytes", "usage", "threat", "ref"
    );
    for row in value["layers"].as_array().into_iter().flatten() {
        let pins = match (row["pinned_keep"] == true, row["pinned_delete"] == true) {
            (true, true) => "keep,delete",
            (true, false) => "keep",
            (false, true) => "delete",
            (false, false) => "",
        };
        println!(
            "{:<19}  {:<16}  {:>12}  {:>6}  {:>6}  {:<4}  {pins}",
            short(row["digest"].as_str().unwrap_or("")),
            text(&row["state"]),
            text(&row["size"]),
            text(&row["usage"]),
            text(&row["threat"]),
            if row["referenced"] == true {
                "yes"
            } else {
                "no"
            },
        );
    }
    println!(
        "{} of {} layers; states: {}{}",
        value["layers"].as_array().map_or(0, Vec::len),
        text(&value["total"]),
        value["counts"],
        match value["next_offset"].as_u64() {
            Some(next) => format!("; next page: --offset {next}"),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `shoal graph`.
pub fn graph(options: &AdminOptions, image: Option<&str>, format: GraphFormat) -> Result<ExitCode> {
    let client = client(options)?;
    let query: Vec<(&str, &str)> = image.map(|image| ("image", image)).into_iter().collect();
    let path = client.path_with_query("/graph", &query)?;
    let value = run_async(client.json(reqwest::Method::GET, &path, None))?;
    let format = if options.json {
        GraphFormat::Json
    } else {
        format
    };
    match format {
        GraphFormat::Json => print_json(&value),
        GraphFormat::Dot => {
            print!("{}", render_dot(&value));
            Ok(ExitCode::SUCCESS)
        }
        GraphFormat::Table => {
            for image in value["images"].as_array().into_iter().flatten() {
                println!(
                    "{} {} {} {} {} bytes",
                    text(&image["kind"]),
                    short(image["digest"].as_str().unwrap_or("")),
                    text(&image["repository"]),
                    image["tags"],
                    text(&image["size"])
                );
                for child in image["children"].as_array().into_iter().flatten() {
                    println!(
                        "  child {} {}{}",
                        short(child["digest"].as_str().unwrap_or("")),
                        text(&child["platform"]),
                        if child["cached"] == true {
                            ""
                        } else {
                            " (not cached)"
                        }
                    );
                }
                for layer in image["layers"].as_array().into_iter().flatten() {
                    println!(
                        "  layer {} {} bytes",
                        short(layer["digest"].as_str().unwrap_or("")),
                        text(&layer["size"])
                    );
                }
            }
            println!("shared layers: {}", value["shared_layers"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph as Graphviz DOT: images as boxes, blobs as ellipses (shared layers filled), edges
/// from an index to its children and from a manifest to its config and layers in order.
pub fn render_dot(value: &Value) -> String {
    let mut out = String::from("digraph shoal {\n  rankdir=LR;\n");
    for image in value["images"].as_array().into_iter().flatten() {
        let digest = image["digest"].as_str().unwrap_or("");
        let name = match (image["repository"].as_str(), image["tags"].as_array()) {
            (Some(repo), Some(tags)) if !tags.is_empty() => format!(
                "{repo}:{}",
                tags.iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            (Some(repo), _) => repo.to_owned(),
            _ => "untagged".to_owned(),
        };
        let _ = writeln!(
            out,
            "  \"{}\" [shape=box, label=\"{}\\n{} {}\"];",
            dot_escape(digest),
            dot_escape(&name),
            text(&image["kind"]),
            dot_escape(short(digest))
        );
        for child in image["children"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                dot_escape(digest),
                dot_escape(child["digest"].as_str().unwrap_or("")),
                dot_escape(&text(&child["platform"]))
            );
        }
        if let Some(config) = image["config"]["digest"].as_str() {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [style=dashed, label=\"config\"];",
                dot_escape(digest),
                dot_escape(config)
            );
        }
        for (i, layer) in image["layers"].as_array().into_iter().flatten().enumerate() {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{i}\"];",
                dot_escape(digest),
                dot_escape(layer["digest"].as_str().unwrap_or(""))
            );
        }
    }
    for blob in value["blobs"].as_array().into_iter().flatten() {
        let digest = blob["digest"].as_str().unwrap_or("");
        let style = if blob["shared"] == true {
            ", style=filled, fillcolor=lightblue"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{} bytes\\n{} threat {}\"{style}];",
            dot_escape(digest),
            dot_escape(short(digest)),
            text(&blob["size"]),
            dot_escape(&text(&blob["state"])),
            text(&blob["threat"])
        );
    }
    out.push_str("}\n");
    out
}

/// `shoal retention`.
pub fn retention(options: &AdminOptions, dry_run: bool) -> Result<ExitCode> {
    let client = client(options)?;
    let value = if dry_run {
        run_async(client.json(reqwest::Method::GET, "/retention/run", None))?
    } else {
        run_async(client.json(reqwest::Method::POST, "/retention/run?dry_run=false", None))?
    };
    if options.json {
        return print_json(&value);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for layer in value["deleted_layers"].as_array().into_iter().flatten() {
        println!("{verb} {} ({} bytes)", text(&layer[0]), text(&layer[1]));
    }
    println!(
        "{} images kept, {} expired; {verb} {} layers, {} bytes{}",
        value["kept_images"].as_object().map_or(0, |o| o.len()),
        value["expired_images"].as_array().map_or(0, Vec::len),
        value["deleted_layers"].as_array().map_or(0, Vec::len),
        text(&value["bytes_freed"]),
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_output_draws_children_layers_in_order_and_fills_shared_layers() {
        let graph = json!({
            "images": [
                {"digest": "sha256:i", "kind": "index", "repository": "a\"b", "tags": ["v1"],
                 "children": [{"digest": "sha256:m", "platform": "linux/amd64", "cached": true}],
                 "config": null, "layers": []},
                {"digest": "sha256:m", "kind": "manifest", "repository": "a\"b", "tags": [],
                 "children": [], "config": {"digest": "sha256:c", "size": 1},
                 "layers": [{"digest": "sha256:l", "size": 5}]}
            ],
            "blobs": [{"digest": "sha256:l", "size": 5, "shared": true, "state": "active", "threat": 0.0}],
            "shared_layers": ["sha256:l"]
        });
        let dot = render_dot(&graph);
        assert!(dot.starts_with("digraph shoal {"));
        assert!(dot.contains("\"sha256:i\" -> \"sha256:m\" [label=\"linux/amd64\"]"));
        assert!(dot.contains("\"sha256:m\" -> \"sha256:l\" [label=\"0\"]"));
        assert!(dot.contains("a\\\"b:v1"));
        assert!(dot.contains("fillcolor=lightblue"));
        assert!(dot.trim_end().ends_with('}'));
    }
}
