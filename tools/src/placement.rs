//! `shoal placement explain <digest>`: asks a running node's admin listener why a layer is or is
//! not on it (`GET /placement/explain/{digest}`) and prints the answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use shoal_proto::BlobDigest;

/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `shoal placement ...`
#[derive(Debug, Subcommand)]
pub enum PlacementCommand {
    /// Why a layer is or is not on a node: forecast, threat, proximity, priority, the plan's
    /// decision and the holders the node knows.
    Explain {
        /// The layer, `sha256:<hex>`.
        digest: String,
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:5051")]
        admin: String,
    },
}

/// Runs a placement command.
pub fn run(command: PlacementCommand) -> anyhow::Result<ExitCode> {
    let PlacementCommand::Explain { digest, admin } = command;
    let digest: BlobDigest = digest
        .parse()
        .map_err(|e| anyhow::anyhow!("{digest:?} is not a sha256 digest: {e}"))?;
    let url = format!("http://{admin}/placement/explain/{digest}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
        {
            bail!("the answer from {url} is too large");
        }
        let body = response.bytes().await?;
        if body.len() > MAX_ANSWER_BYTES {
            bail!("the answer from {url} is too large");
        }
        anyhow::Ok((status, body))
    })?;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        bail!("{url} answered {status}: {}", text.trim());
    }
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}
