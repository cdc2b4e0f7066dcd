//! `shoal threat import FILE` and `shoal threat get DIGEST`: a running node's threat intake over
//! its admin API (`POST /threat/reports`, `GET /threat/layers/{digest}`).
//!
//! The report is read from disk with a size check first (the node's own limit is
//! `threat.max_report_bytes`; this command refuses anything over the policy crate's absolute
//! limit before reading it). Answers are read through the bounded [`AdminClient`]. Exit 0 on success, 1
//! when the node refused the report or has no record of the layer, 2 on any other error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde_json::Value;
use shoal_proto::BlobDigest;

use crate::admin_client::AdminClient;

/// `shoal threat ...`
#[derive(Debug, Subcommand)]
pub enum ThreatCommand {
    /// Send a Trivy or Grype JSON report to a node, which scores the image's layers and shares
    /// the scores with its peers.
    Import {
        /// The report, as `trivy image --format json` or `grype -o json` wrote it.
        file: PathBuf,
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5051")]
        admin: String,
        /// A file holding the admin token (needed when the node has `admin_token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the node's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a layer's threat score and CVEs as the node knows them.
    Get {
        /// The layer, `sha256:<hex>`.
        digest: String,
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5051")]
        admin: String,
        /// Print the node's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Longest a request may take (a large report takes a while to score).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `method` to `path` and reads the node's JSON answer, whatever its status.
async fn exchange(
    client: &AdminClient,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let (status, text) = client.request(method, path, body).await?;
    let value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{path} answered {status} with something that is not JSON: {}",
            text.chars().take(200).collect::<String>()
        )
    })?;
    Ok((status.as_u16(), value))
}

/// Runs a threat command.
pub async fn run(command: ThreatCommand) -> anyhow::Result<ExitCode> {
    match command {
        ThreatCommand::Import {
            file,
            admin,
            token_file,
            json,
        } => import(file, &admin, token_file, json).await,
        ThreatCommand::Get {
            digest,
            admin,
            json,
        } => get(&digest, &admin, json).await,
    }
}

async fn import(
    file: PathBuf,
    admin: &str,
    token_file: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let len = std::fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let limit = shoal_node::threat::config::REPORT_BYTES_CEILING as u64;
    if len > limit {
        bail!(
            "{} is {len} bytes, more than any node accepts ({limit})",
            file.display()
        );
    }
    let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let client =
        AdminClient::with_timeout(admin, TIMEOUT)?.with_token_file(token_file.as_deref())?;
    let (status, value) = exchange(
        &client,
        reqwest::Method::POST,
        "/threat/reports",
        Some(body),
    )
    .await
    .context("sending the report")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if status != 200 {
        if !json {
            eprintln!(
                "shoal: the node refused the report ({status} {}): {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::from(1));
    }
    if !json {
        println!(
            "{} report{}: {} layers scored, {} unchanged (a newer report was known), {} CVEs, {} findings unmapped{}",
            value["scanner"].as_str().unwrap_or("?"),
            value["image"]
                .as_str()
                .map_or_else(String::new, |i| format!(" for {i}")),
            value["layers_scored"],
            value["layers_unchanged"],
            value["cves"],
            value["findings_unmapped"],
            if value["rebuild_requested"] == true {
                "; rebuild requested"
            } else {
                ""
            }
        );
        for layer in value["layers"].as_array().into_iter().flatten() {
            println!(
                "  {}  score {:>5.1}  {:>3} CVEs ({} fixable){}",
                layer["digest"].as_str().unwrap_or("?"),
                layer["score"].as_f64().unwrap_or(0.0),
                layer["cves"],
                layer["fixable"],
                if layer["cached"] == true {
                    ""
                } else {
                    "  not cached yet"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(digest: &str, admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    let digest: BlobDigest = digest
        .parse()
        .map_err(|e| anyhow::anyhow!("{digest:?} is not a sha256 digest: {e}"))?;
    let client = AdminClient::with_timeout(admin, TIMEOUT)?;
    let (status, value) = exchange(
        &client,
        reqwest::Method::GET,
        &format!("/threat/layers/{digest}"),
        None,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if status != 200 {
        if !json {
            eprintln!(
                "shoal: {}",
                value["message"].as_str().unwrap_or("no record")
            );
        }
        return Ok(ExitCode::from(1));
    }
    if !json {
        println!(
            "{digest}: score {:.1}, {} CVEs, from {}{}, reported at {}",
            value["score"].as_f64().unwrap_or(0.0),
            value["cves_total"],
            value["source"].as_str().unwrap_or("?"),
            value["peer"]
                .as_str()
                .map_or_else(String::new, |p| format!(" {p}")),
            value["reported_at"]
        );
        for cve in value["cves"].as_array().into_iter().flatten() {
            println!(
                "  {:<24} {:<10} {}",
                cve["id"].as_str().unwrap_or("?"),
                cve["severity"].as_str().unwrap_or("?"),
                if cve["fixed"] == true {
                    "fix available"
                } else {
                    "no fix"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
