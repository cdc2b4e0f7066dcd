//! `shoal preheat IMAGE... [--region R]... [--all-regions] [--platform os/arch]...`: asks a node
//! (`POST /preheat` on its admin API) to have the chosen regions fetch the images' blobs, and
//! follows the job (`GET /preheat/{id}`) until it is done.
//!
//! On a terminal it draws progress bars (one per blob and region while it moves, and one for the
//! total: bytes and rate); otherwise it prints plain lines, one per blob as it finishes and a
//! total every few seconds, with no control characters. Ctrl-C stops waiting, not the job: the
//! node goes on, and running the same command again resumes (what is there already is counted as
//! such). It ends with a summary: already there, from peers, from the origin (blobs and bytes).
//! Exit 0 when every blob is in every region, 1 when some failed.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_node::preheat::job::{BlobEntry, BlobSource, BlobState, JobState, JobView, Tally};
use shoal_node::preheat::PreheatBody;

use crate::admin_client::AdminClient;

/// How often the job is read.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// How often plain output prints the total while bytes move.
const PLAIN_TOTAL_EVERY: Duration = Duration::from_secs(5);

/// What to preheat, from the command line.
#[derive(Debug, Clone)]
pub struct PreheatArgs {
    /// The node's admin API.
    pub admin: String,
    /// Image references.
    pub images: Vec<String>,
    /// Regions to fill.
    pub regions: Vec<String>,
    /// Every region the node knows.
    pub all_regions: bool,
    /// Platforms of multi-platform images.
    pub platforms: Vec<String>,
    /// The file holding the admin bearer token, if the node needs one.
    pub token_file: Option<std::path::PathBuf>,
}

/// Runs `shoal preheat`.
pub async fn run(args: PreheatArgs) -> Result<ExitCode> {
    let client = AdminClient::new(&args.admin)?.with_token_file(args.token_file.as_deref())?;
    let started = client
        .preheat_start(&PreheatBody {
            images: args.images.clone(),
            regions: args.regions.clone(),
            all_regions: args.all_regions,
            platforms: args.platforms.clone(),
        })
        .await?;
    println!(
        "preheat job {} for {} into region(s) {}",
        started.id,
        args.images.join(", "),
        started.regions.join(", ")
    );
    let mut display = if std::io::stdout().is_terminal() {
        Display::Bars(Bars::new())
    } else {
        Display::Plain(Plain::default())
    };
    let follow = async {
        loop {
            let view = client.preheat_job(&started.id).await?;
            display.update(&view);
            if matches!(view.state, JobState::Done | JobState::Failed) {
                return Ok::<JobView, anyhow::Error>(view);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    };
    let view = tokio::select! {
        view = follow => view?,
        _ = tokio::signal::ctrl_c() => {
            display.finish();
            println!(
                "stopped waiting; job {} goes on at the node. Run the same command again to resume.",
                started.id
            );
            return Ok(ExitCode::from(130));
        }
    };
    display.finish();
    print_summary(&view);
    Ok(match view.state {
        JobState::Done => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn short(digest: &str) -> &str {
    let end = digest.len().min("sha256:".len() + 12);
    &digest[..end]
}

fn source_label(source: Option<BlobSource>) -> &'static str {
    match source {
        Some(BlobSource::AlreadyThere) => "already there",
        Some(BlobSource::Peers) => "from peers",
        Some(BlobSource::Origin) => "from origin",
        Some(BlobSource::PeersAndOrigin) => "from peers and origin",
        None => "",
    }
}

fn tally(label: &str, tally: Tally) -> String {
    format!(
        "  {label:<14} {:>4} blob(s)  {}",
        tally.blobs,
        HumanBytes(tally.bytes)
    )
}

/// The closing summary (plain text either way).
fn print_summary(view: &JobView) {
    let totals = &view.totals;
    println!(
        "summary: job {} {}: {} blob(s) in {} region(s), {}",
        view.id,
        match view.state {
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Resolving | JobState::Running => "unfinished",
        },
        totals.all.blobs,
        view.regions.len(),
        HumanBytes(totals.all.bytes)
    );
    println!("{}", tally("already there:", totals.already_there));
    println!("{}", tally("from peers:", totals.from_peers));
    println!("{}", tally("from origin:", totals.from_origin));
    if totals.failed > 0 {
        println!("  failed:        {:>4} blob(s)", totals.failed);
    }
    for error in &view.errors {
        println!("error: {error}");
    }
}

/// How progress is shown.
enum Display {
    Bars(Bars),
    Plain(Plain),
}

impl Display {
    fn update(&mut self, view: &JobView) {
        match self {
            Display::Bars(bars) => bars.update(view),
            Display::Plain(plain) => plain.update(view),
        }
    }

    fn finish(&mut self) {
        if let Display::Bars(bars) = self {
            bars.finish();
        }
    }
}

/// Progress bars on a terminal: the total, and one per blob and region once it is asked for.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: HashMap<usize, ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(Self::style());
        total.set_prefix("total");
        Bars {
            multi,
            total,
            blobs: HashMap::new(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }

    fn update(&mut self, view: &JobView) {
        self.total.set_length(view.totals.all.bytes);
        self.total.set_position(view.totals.bytes_done);
        self.total.set_message(format!(
            "{}/{} blob(s) done",
            view.totals.done + view.totals.failed,
            view.totals.all.blobs
        ));
        for (index, entry) in view.blobs.iter().enumerate() {
            if entry.state == BlobState::Queued {
                continue;
            }
            let bar = self.blobs.entry(index).or_insert_with(|| {
                let bar = self
                    .multi
                    .insert_before(&self.total, ProgressBar::new(entry.bytes_total));
                bar.set_style(Self::style());
                bar.set_prefix(entry.region.clone());
                bar
            });
            if bar.is_finished() {
                continue;
            }
            bar.set_length(entry.bytes_total);
            bar.set_position(entry.bytes_done);
            let what = format!("{} {:?}", short(&entry.digest), entry.kind).to_lowercase();
            match entry.state {
                BlobState::Done => {
                    bar.finish_with_message(format!("{what} {}", source_label(entry.source)));
                }
                BlobState::Failed => bar.abandon_with_message(format!(
                    "{what} failed: {}",
                    entry.error.as_deref().unwrap_or("")
                )),
                BlobState::Queued | BlobState::Fetching => bar.set_message(what),
            }
        }
    }

    fn finish(&mut self) {
        self.total.finish();
    }
}

/// Plain lines for logs and pipes: one per blob and region as it finishes, the total now and then.
#[derive(Default)]
struct Plain {
    reported: HashMap<usize, BlobState>,
    last_total: Option<(Instant, u64)>,
    started: Option<Instant>,
    resolved: bool,
}

impl Plain {
    fn update(&mut self, view: &JobView) {
        let started = *self.started.get_or_insert_with(Instant::now);
        if !self.resolved && view.state != JobState::Resolving {
            self.resolved = true;
            for image in &view.images {
                println!(
                    "resolved {} to {} ({} manifest(s))",
                    image.reference,
                    image.digest,
                    image.manifests.len()
                );
            }
            println!(
                "{} blob(s) into {} region(s), {} in all",
                view.totals.all.blobs,
                view.regions.len(),
                HumanBytes(view.totals.all.bytes)
            );
        }
        for (index, entry) in view.blobs.iter().enumerate() {
            if matches!(entry.state, BlobState::Done | BlobState::Failed)
                && self.reported.get(&index) != Some(&entry.state)
            {
                self.reported.insert(index, entry.state);
                println!("{}", plain_line(entry));
            }
        }
        let done = view.totals.bytes_done;
        let due = self
            .last_total
            .is_none_or(|(at, bytes)| at.elapsed() >= PLAIN_TOTAL_EVERY && bytes != done);
        if due && view.state == JobState::Running {
            let seconds = started.elapsed().as_secs_f64().max(0.001);
            println!(
                "progress: {} of {} ({}/s), {}/{} blob(s) done",
                HumanBytes(done),
                HumanBytes(view.totals.all.bytes),
                HumanBytes((done as f64 / seconds) as u64),
                view.totals.done + view.totals.failed,
                view.totals.all.blobs
            );
            self.last_total = Some((Instant::now(), done));
        }
    }
}

fn plain_line(entry: &BlobEntry) -> String {
    let kind = format!("{:?}", entry.kind).to_lowercase();
    match entry.state {
        BlobState::Failed => format!(
            "failed  region {} {} {kind} {}: {}",
            entry.region,
            short(&entry.digest),
            HumanBytes(entry.bytes_total),
            entry.error.as_deref().unwrap_or("")
        ),
        _ => format!(
            "done    region {} {} {kind} {} {}",
            entry.region,
            short(&entry.digest),
            HumanBytes(entry.bytes_total),
            source_label(entry.source)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_node::preheat::job::BlobKind;

    #[test]
    fn plain_lines_have_no_control_characters() {
        let entry = BlobEntry {
            digest: format!("sha256:{}", "a".repeat(64)),
            kind: BlobKind::Layer,
            region: "eu".into(),
            member: Some("local".into()),
            state: BlobState::Done,
            bytes_done: 3 << 20,
            bytes_total: 3 << 20,
            source: Some(BlobSource::Peers),
            error: None,
        };
        let line = plain_line(&entry);
        assert_eq!(
            line,
            "done    region eu sha256:aaaaaaaaaaaa layer 3.00 MiB from peers"
        );
        assert!(!line.chars().any(char::is_control));
        let failed = BlobEntry {
            state: BlobState::Failed,
            error: Some("upstream unavailable".into()),
            ..entry
        };
        assert!(plain_line(&failed).ends_with("upstream unavailable"));
    }
}
