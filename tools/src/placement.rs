//! `shoal placement explain <digest>`: asks a running node's admin listener why a layer is or is
//! not on it (`GET /placement/explain/{digest}`) and prints the answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use shoal_proto::BlobDigest;

use crate::admin_client::AdminClient;

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
    let path = format!("/placement/explain/{digest}");
    let client = AdminClient::with_timeout(&admin, Duration::from_secs(10))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(client.request(reqwest::Method::GET, &path, None))?;
    if !status.is_success() {
        bail!("{path} on {admin}: {status}: {}", text.trim());
    }
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}
