//! `shoal rebuild REF [--wait] [--json]`: asks a running node to re-resolve a tag upstream
//! (`POST /images/{ref}/rebuild`) and, with `--wait`, follows `GET /images/{ref}/rebuild` until
//! the rebuild switched over or failed. Plain lines, one per change of state or region progress;
//! `--json` prints the node's answer instead. Exit 0 when switched, unchanged or (without
//! `--wait`) still shadowing; 1 when it failed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use shoal_node::rebuild::job::{RebuildState, RebuildView};

use crate::admin_client::AdminClient;

/// How often `--wait` reads the progress.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What `shoal rebuild` was asked.
#[derive(Debug, Clone)]
pub struct RebuildArgs {
    /// `registry/repository:tag`.
    pub image: String,
    /// Follow until finished.
    pub wait: bool,
    /// Print JSON.
    pub json: bool,
    /// The admin API.
    pub admin: String,
    /// The admin token's file.
    pub token_file: Option<std::path::PathBuf>,
}

/// Runs `shoal rebuild`.
pub async fn run(args: RebuildArgs) -> Result<ExitCode> {
    let client = AdminClient::new(&args.admin)?.with_token_file(args.token_file.as_deref())?;
    let (mut view, running) = client.rebuild_start(&args.image).await?;
    if !args.json {
        print!("{}", lines(&view));
    }
    if args.wait && running {
        let mut shown = lines(&view);
        while view.state == RebuildState::Shadowing {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("stopped waiting; the rebuild goes on (shoal rebuild {} shows it)", args.image);
                    return Ok(ExitCode::SUCCESS);
                }
            }
            view = client.rebuild_view(&args.image).await?;
            let now = lines(&view);
            if now != shown && !args.json {
                print!("{now}");
            }
            shown = now;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    Ok(match view.state {
        RebuildState::Failed => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// The view as plain lines: state and message, digests, one line per region, errors.
pub fn lines(view: &RebuildView) -> String {
    let state = serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = format!("{}: {state}: {}\n", view.image, view.message);
    if let (Some(old), Some(new)) = (&view.old_digest, &view.new_digest) {
        if old != new {
            out.push_str(&format!("  old {old}\n  new {new}\n"));
        }
    }
    for region in &view.regions {
        out.push_str(&format!(
            "  region {}: {}/{} blobs\n",
            region.region, region.blobs_present, region.blobs_total
        ));
    }
    for error in &view.errors {
        out.push_str(&format!("  error: {error}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_node::rebuild::job::RegionProgress;

    use super::*;

    #[test]
    fn lines_show_state_digests_regions_and_errors() {
        let view = RebuildView {
            image: "reg.example/app:v1".into(),
            state: RebuildState::Shadowing,
            message: "fetching".into(),
            old_digest: Some("sha256:aa".into()),
            new_digest: Some("sha256:bb".into()),
            regions: vec![RegionProgress {
                region: "eu".into(),
                blobs_present: 1,
                blobs_total: 3,
            }],
            started_at: 1,
            finished_at: None,
            deadline: 2,
            rounds: 1,
            errors: vec!["eu: busy".into()],
        };
        let text = lines(&view);
        assert!(text.starts_with("reg.example/app:v1: shadowing: fetching\n"));
        assert!(text.contains("  old sha256:aa\n  new sha256:bb\n"));
        assert!(text.contains("  region eu: 1/3 blobs\n"));
        assert!(text.contains("  error: eu: busy\n"));
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'));
    }
}
