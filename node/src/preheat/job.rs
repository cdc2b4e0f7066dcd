//! One preheat job's state: which blobs go to which regions, how far each is, and the totals an
//! operator reads. A pure state machine fed by the service's events (resolved, started, progress,
//! finished); it never reads the clock or does I/O. Its [`JobView`] is the JSON of
//! `GET /preheat/{id}`, which the CLI reads back.

use serde::{Deserialize, Serialize};
use shoal_proto::BlobDigest;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its images are being resolved.
    Resolving,
    /// Blobs are being fetched.
    Running,
    /// Every blob is in every chosen region.
    Done,
    /// Finished, but some image could not be resolved or some blob not fetched.
    Failed,
}

/// What a blob is to its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// An image's config.
    Config,
    /// A layer.
    Layer,
}

/// Where one blob stands in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Not asked yet.
    Queued,
    /// A member is fetching it.
    Fetching,
    /// The region's member holds it.
    Done,
    /// No member of the region could fetch it.
    Failed,
}

/// Where a region's copy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobSource {
    /// The member held it already.
    AlreadyThere,
    /// From other members.
    Peers,
    /// From the origin.
    Origin,
    /// From members, then the rest from the origin (counted as origin in the totals).
    PeersAndOrigin,
}

/// One blob in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// `sha256:...`
    pub digest: String,
    /// Config or layer.
    pub kind: BlobKind,
    /// The region it goes to.
    pub region: String,
    /// The member asked last (its peer id, or `local`).
    pub member: Option<String>,
    /// Where it stands.
    pub state: BlobState,
    /// Bytes the member has verified so far.
    pub bytes_done: u64,
    /// The blob's length (as its manifest gives it).
    pub bytes_total: u64,
    /// Where the bytes came from, once done.
    pub source: Option<BlobSource>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Blobs and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Blobs (one per region they went to).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.blobs += 1;
        self.bytes += bytes;
    }
}

/// The job's totals over every blob and region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Every blob-region pair.
    pub all: Tally,
    /// Bytes done so far, over all pairs.
    pub bytes_done: u64,
    /// Pairs done.
    pub done: u64,
    /// Pairs failed.
    pub failed: u64,
    /// Done: held already.
    pub already_there: Tally,
    /// Done: fetched from members.
    pub from_peers: Tally,
    /// Done: fetched from the origin (wholly or in part).
    pub from_origin: Tally,
}

/// An image as the job resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The reference as given.
    pub reference: String,
    /// The digest it resolved to.
    pub digest: String,
    /// The image manifests preheated (the digest itself for a single-platform image).
    pub manifests: Vec<String>,
}

/// The JSON answer of `GET /preheat/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// The regions it fills.
    pub regions: Vec<String>,
    /// The images, once resolved.
    pub images: Vec<ResolvedImage>,
    /// What went wrong, one sentence each (images that did not resolve, blobs that failed).
    pub errors: Vec<String>,
    /// Every blob in every region, in image order, regions in job order.
    pub blobs: Vec<BlobEntry>,
    /// Sums over `blobs`.
    pub totals: Totals,
}

/// Most errors kept per job.
pub const MAX_ERRORS: usize = 64;

/// One job's state.
#[derive(Debug, Clone)]
pub struct Job {
    view: JobView,
}

impl Job {
    /// A job resolving its images, for `regions`.
    pub fn new(id: String, regions: Vec<String>) -> Job {
        Job {
            view: JobView {
                id,
                state: JobState::Resolving,
                regions,
                images: Vec::new(),
                errors: Vec::new(),
                blobs: Vec::new(),
                totals: Totals::default(),
            },
        }
    }

    /// Records a problem (bounded; the first [`MAX_ERRORS`] are kept).
    pub fn error(&mut self, error: String) {
        if self.view.errors.len() < MAX_ERRORS {
            self.view.errors.push(error);
        }
    }

    /// The images are resolved to `blobs` (distinct, in order): one entry per blob and region.
    /// Returns the entries' indices by blob, regions in job order.
    pub fn resolved(
        &mut self,
        images: Vec<ResolvedImage>,
        blobs: &[(BlobDigest, BlobKind, u64)],
    ) -> Vec<Vec<usize>> {
        self.view.images = images;
        let mut indices = Vec::with_capacity(blobs.len());
        for (digest, kind, size) in blobs {
            let mut of_blob = Vec::with_capacity(self.view.regions.len());
            for region in &self.view.regions {
                of_blob.push(self.view.blobs.len());
                self.view.blobs.push(BlobEntry {
                    digest: digest.to_string(),
                    kind: *kind,
                    region: region.clone(),
                    member: None,
                    state: BlobState::Queued,
                    bytes_done: 0,
                    bytes_total: *size,
                    source: None,
                    error: None,
                });
            }
            indices.push(of_blob);
        }
        self.view.state = JobState::Running;
        self.settle();
        indices
    }

    /// Entry `index` is being fetched by `member`.
    pub fn started(&mut self, index: usize, member: String) {
        if let Some(entry) = self.view.blobs.get_mut(index) {
            entry.state = BlobState::Fetching;
            entry.member = Some(member);
            entry.bytes_done = 0;
        }
    }

    /// Entry `index` has `bytes_done` verified.
    pub fn progress(&mut self, index: usize, bytes_done: u64) {
        if let Some(entry) = self.view.blobs.get_mut(index) {
            if entry.state == BlobState::Fetching {
                entry.bytes_done = bytes_done;
            }
        }
    }

    /// Entry `index` is done (with where its bytes came from and its length) or failed.
    pub fn finished(&mut self, index: usize, outcome: Result<(BlobSource, u64), String>) {
        let Some(entry) = self.view.blobs.get_mut(index) else {
            return;
        };
        match outcome {
            Ok((source, bytes)) => {
                entry.state = BlobState::Done;
                entry.source = Some(source);
                entry.bytes_total = bytes;
                entry.bytes_done = bytes;
                entry.error = None;
            }
            Err(reason) => {
                entry.state = BlobState::Failed;
                let message = format!("{} in region {}: {reason}", entry.digest, entry.region);
                entry.error = Some(reason);
                self.error(message);
            }
        }
        self.settle();
    }

    /// Nothing could be resolved, or resolution ended: if no blob is left, the job is over.
    pub fn resolution_ended(&mut self) {
        if self.view.state == JobState::Resolving {
            self.view.state = JobState::Running;
        }
        self.settle();
    }

    /// Whether the job is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.view.state, JobState::Done | JobState::Failed)
    }

    /// Moves a running job to done or failed once no entry is queued or fetching.
    fn settle(&mut self) {
        if self.view.state != JobState::Running {
            return;
        }
        let open = self
            .view
            .blobs
            .iter()
            .any(|e| matches!(e.state, BlobState::Queued | BlobState::Fetching));
        if open {
            return;
        }
        let failed = self.view.blobs.iter().any(|e| e.state == BlobState::Failed);
        self.view.state = if failed || !self.view.errors.is_empty() || self.view.images.is_empty() {
            JobState::Failed
        } else {
            JobState::Done
        };
    }

    /// What `GET /preheat/{id}` answers, totals included.
    pub fn view(&self) -> JobView {
        let mut view = self.view.clone();
        let mut totals = Totals::default();
        for entry in &view.blobs {
            totals.all.add(entry.bytes_total);
            totals.bytes_done += entry.bytes_done;
            match (entry.state, entry.source) {
                (BlobState::Done, Some(source)) => {
                    totals.done += 1;
                    match source {
                        BlobSource::AlreadyThere => totals.already_there.add(entry.bytes_total),
                        BlobSource::Peers => totals.from_peers.add(entry.bytes_total),
                        BlobSource::Origin | BlobSource::PeersAndOrigin => {
                            totals.from_origin.add(entry.bytes_total)
                        }
                    }
                }
                (BlobState::Failed, _) => totals.failed += 1,
                _ => {}
            }
        }
        view.totals = totals;
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlobDigest {
        BlobDigest::from_bytes([n; 32])
    }

    fn image() -> ResolvedImage {
        ResolvedImage {
            reference: "reg.example/app:v1".into(),
            digest: blob(9).to_string(),
            manifests: vec![blob(9).to_string()],
        }
    }

    #[test]
    fn a_job_is_done_when_every_blob_is_in_every_region_and_totals_say_from_where() {
        let mut job = Job::new("j1".into(), vec!["a".into(), "b".into()]);
        assert_eq!(job.view().state, JobState::Resolving);
        let indices = job.resolved(
            vec![image()],
            &[
                (blob(1), BlobKind::Config, 10),
                (blob(2), BlobKind::Layer, 1000),
            ],
        );
        assert_eq!(indices, [vec![0, 1], vec![2, 3]]);
        assert_eq!(job.view().state, JobState::Running);
        assert_eq!(
            job.view().totals.all,
            Tally {
                blobs: 4,
                bytes: 2020
            }
        );

        job.started(2, "local".into());
        job.progress(2, 400);
        assert_eq!(job.view().totals.bytes_done, 400);
        assert_eq!(job.view().blobs[2].state, BlobState::Fetching);
        job.finished(2, Ok((BlobSource::Origin, 1000)));
        job.started(3, "peer".into());
        job.finished(3, Ok((BlobSource::Peers, 1000)));
        job.finished(0, Ok((BlobSource::AlreadyThere, 10)));
        assert!(!job.is_finished());
        job.finished(1, Ok((BlobSource::PeersAndOrigin, 10)));
        let view = job.view();
        assert_eq!(view.state, JobState::Done);
        assert!(job.is_finished());
        assert_eq!(view.totals.done, 4);
        assert_eq!(view.totals.bytes_done, 2020);
        assert_eq!(
            view.totals.already_there,
            Tally {
                blobs: 1,
                bytes: 10
            }
        );
        assert_eq!(
            view.totals.from_peers,
            Tally {
                blobs: 1,
                bytes: 1000
            }
        );
        assert_eq!(
            view.totals.from_origin,
            Tally {
                blobs: 2,
                bytes: 1010
            }
        );
    }

    #[test]
    fn a_failed_blob_or_an_unresolved_image_fails_the_job_with_the_reason() {
        let mut job = Job::new("j2".into(), vec!["a".into()]);
        job.resolved(vec![image()], &[(blob(1), BlobKind::Layer, 5)]);
        job.started(0, "local".into());
        job.finished(0, Err("upstream unavailable".into()));
        let view = job.view();
        assert_eq!(view.state, JobState::Failed);
        assert_eq!(view.totals.failed, 1);
        assert!(view.errors[0].contains("upstream unavailable"));
        assert!(view.errors[0].contains("region a"));

        let mut nothing = Job::new("j3".into(), vec!["a".into()]);
        nothing.error("reg.example/app:v1: not found".into());
        nothing.resolution_ended();
        assert_eq!(nothing.view().state, JobState::Failed);

        let mut errors = Job::new("j4".into(), vec!["a".into()]);
        for i in 0..MAX_ERRORS + 10 {
            errors.error(format!("error {i}"));
        }
        assert_eq!(errors.view().errors.len(), MAX_ERRORS);
    }

    #[test]
    fn the_view_round_trips_as_json() {
        let mut job = Job::new("j5".into(), vec!["a".into()]);
        job.resolved(vec![image()], &[(blob(1), BlobKind::Layer, 5)]);
        let view = job.view();
        let json = serde_json::to_string(&view).unwrap();
        assert!(json.contains(r#""state":"running""#));
        let back: JobView = serde_json::from_str(&json).unwrap();
        assert_eq!(back, view);
    }
}
