//! One rebuild's state: a pure state machine fed by the service's events (resolved, region
//! progress, switched, failed) with an explicit `now` (seconds since the Unix epoch). It never
//! reads the clock or does I/O; [`RebuildJob::next`] says what the shell should do. Its
//! [`RebuildView`] is the JSON of `GET /images/{ref}/rebuild`, which the CLI reads back.
//!
//! ```text
//! resolved: same digest ──▶ no_change (finished; nothing held, nothing fetched)
//! resolved: new digest  ──▶ shadowing ── every region holds every blob ──▶ Step::SwitchOver ──▶ switched
//!                              │
//!                              └── now ≥ deadline, or failed ──▶ failed (the hold is released)
//! ```

use serde::{Deserialize, Serialize};
use shoal_proto::BlobDigest;

/// Most errors kept per job.
pub const MAX_ERRORS: usize = 32;

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// The new version is being fetched into every region that holds the old one; the tag is
    /// held at the old digest everywhere.
    Shadowing,
    /// Every region held the new version; the tag moved to the new digest network-wide.
    Switched,
    /// The shadow did not complete by the deadline (or could not start); the hold was lifted and
    /// the tag left as it was.
    Failed,
    /// The upstream names the digest already cached: nothing was changed.
    NoChange,
}

/// How far one region is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionProgress {
    /// The region.
    pub region: String,
    /// Blobs of the new version a member of the region holds.
    pub blobs_present: u64,
    /// Blobs of the new version.
    pub blobs_total: u64,
}

/// The JSON answer of `GET /images/{ref}/rebuild` (and of the `POST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildView {
    /// The image as asked (`upstream/repository:tag`).
    pub image: String,
    /// Where the rebuild is.
    pub state: RebuildState,
    /// One sentence on the state.
    pub message: String,
    /// The digest the tag named before (and is held at while shadowing).
    pub old_digest: Option<String>,
    /// The digest the upstream names now.
    pub new_digest: Option<String>,
    /// Regions that must hold the new version before the switchover, this node's first.
    pub regions: Vec<RegionProgress>,
    /// When it started, seconds since the Unix epoch.
    pub started_at: u64,
    /// When it finished, if it did.
    pub finished_at: Option<u64>,
    /// When the shadow gives up (and the hold lapses).
    pub deadline: u64,
    /// Shadow rounds started (a round that leaves blobs missing is followed by another).
    pub rounds: u32,
    /// What went wrong, one sentence each (the first [`MAX_ERRORS`]).
    pub errors: Vec<String>,
}

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep fetching (start another round when the last one ended).
    Shadow,
    /// Every region holds every blob: switch the tag now.
    SwitchOver,
    /// The deadline passed: release the hold.
    GiveUp,
    /// Finished; nothing to do.
    Done,
}

/// One rebuild.
#[derive(Debug, Clone)]
pub struct RebuildJob {
    view: RebuildView,
}

impl RebuildJob {
    /// The upstream names `digest`, which the tag already names: nothing to do.
    pub fn no_change(image: String, digest: BlobDigest, now: u64) -> RebuildJob {
        RebuildJob {
            view: RebuildView {
                image,
                state: RebuildState::NoChange,
                message: "no new digest upstream: nothing was changed".into(),
                old_digest: Some(digest.to_string()),
                new_digest: Some(digest.to_string()),
                regions: Vec::new(),
                started_at: now,
                finished_at: Some(now),
                deadline: now,
                rounds: 0,
                errors: Vec::new(),
            },
        }
    }

    /// The upstream names `new` where the tag names `old`: shadow into `regions` (this node's
    /// first) until `deadline`.
    pub fn shadowing(
        image: String,
        old: BlobDigest,
        new: BlobDigest,
        regions: Vec<String>,
        now: u64,
        deadline: u64,
    ) -> RebuildJob {
        RebuildJob {
            view: RebuildView {
                image,
                state: RebuildState::Shadowing,
                message: format!(
                    "fetching the new version into {} region(s); the tag stays at the old digest until all hold it",
                    regions.len()
                ),
                old_digest: Some(old.to_string()),
                new_digest: Some(new.to_string()),
                regions: regions
                    .into_iter()
                    .map(|region| RegionProgress {
                        region,
                        blobs_present: 0,
                        blobs_total: 0,
                    })
                    .collect(),
                started_at: now,
                finished_at: None,
                deadline,
                rounds: 0,
                errors: Vec::new(),
            },
        }
    }

    /// The regions to fill, in order.
    pub fn regions(&self) -> Vec<String> {
        self.view.regions.iter().map(|r| r.region.clone()).collect()
    }

    /// Whether it finished (switched, failed or no change).
    pub fn is_finished(&self) -> bool {
        self.view.state != RebuildState::Shadowing
    }

    /// A shadow round starts.
    pub fn round_started(&mut self) {
        if self.view.state == RebuildState::Shadowing {
            self.view.rounds += 1;
        }
    }

    /// A member of `region` holds `present` of the new version's `total` blobs.
    pub fn region_progress(&mut self, region: &str, present: u64, total: u64) {
        if self.view.state != RebuildState::Shadowing {
            return;
        }
        if let Some(entry) = self.view.regions.iter_mut().find(|r| r.region == region) {
            entry.blobs_total = total;
            entry.blobs_present = present.min(total);
        }
    }

    /// Records a problem (bounded).
    pub fn error(&mut self, error: String) {
        if self.view.errors.len() < MAX_ERRORS {
            self.view.errors.push(error);
        }
    }

    /// What to do at `now`: switch once every region holds every blob, give up past the deadline.
    pub fn next(&self, now: u64) -> Step {
        if self.view.state != RebuildState::Shadowing {
            return Step::Done;
        }
        let all_held = !self.view.regions.is_empty()
            && self
                .view
                .regions
                .iter()
                .all(|r| r.blobs_total > 0 && r.blobs_present == r.blobs_total);
        if all_held {
            return Step::SwitchOver;
        }
        if now >= self.view.deadline {
            return Step::GiveUp;
        }
        Step::Shadow
    }

    /// The tag moved to the new digest network-wide at `now`.
    pub fn switched(&mut self, now: u64) {
        if self.view.state != RebuildState::Shadowing {
            return;
        }
        self.view.state = RebuildState::Switched;
        self.view.message =
            "every region holds the new version: the tag now names the new digest".into();
        self.view.finished_at = Some(now);
    }

    /// The rebuild failed at `now`: the hold is lifted, the tag left as it was.
    pub fn failed(&mut self, reason: String, now: u64) {
        if self.view.state != RebuildState::Shadowing {
            return;
        }
        self.view.state = RebuildState::Failed;
        self.view.message =
            format!("{reason}; the hold was lifted and the tag left at the old digest");
        self.error(reason);
        self.view.finished_at = Some(now);
    }

    /// The view for `GET`.
    pub fn view(&self) -> RebuildView {
        self.view.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> BlobDigest {
        BlobDigest::from_bytes([byte; 32])
    }

    fn job() -> RebuildJob {
        RebuildJob::shadowing(
            "reg.example/app:v1".into(),
            digest(1),
            digest(2),
            vec!["eu".into(), "us".into()],
            100,
            200,
        )
    }

    #[test]
    fn the_switchover_waits_until_every_region_holds_every_blob() {
        let mut job = job();
        assert_eq!(job.next(100), Step::Shadow, "nothing known yet");
        job.round_started();
        job.region_progress("eu", 3, 3);
        assert_eq!(job.next(110), Step::Shadow, "us has not reported");
        job.region_progress("us", 2, 3);
        assert_eq!(job.next(120), Step::Shadow, "us is one short");
        job.region_progress("mars", 3, 3);
        assert_eq!(
            job.next(120),
            Step::Shadow,
            "an unknown region counts for nothing"
        );
        job.region_progress("us", 3, 3);
        assert_eq!(job.next(130), Step::SwitchOver);
        job.switched(131);
        let view = job.view();
        assert_eq!(view.state, RebuildState::Switched);
        assert_eq!(view.finished_at, Some(131));
        assert_eq!(view.rounds, 1);
        assert_eq!(job.next(132), Step::Done);
        // A late report changes nothing.
        job.region_progress("us", 0, 3);
        assert_eq!(job.view().regions[1].blobs_present, 3);
    }

    #[test]
    fn a_shadow_past_its_deadline_gives_up_and_fails() {
        let mut job = job();
        job.region_progress("eu", 3, 3);
        job.region_progress("us", 1, 3);
        assert_eq!(job.next(199), Step::Shadow);
        assert_eq!(job.next(200), Step::GiveUp);
        job.failed("us holds 1 of 3 blobs at the deadline".into(), 200);
        let view = job.view();
        assert_eq!(view.state, RebuildState::Failed);
        assert_eq!(view.errors.len(), 1);
        assert!(view.message.contains("old digest"));
        // A finished job never switches.
        job.switched(201);
        assert_eq!(job.view().state, RebuildState::Failed);
    }

    #[test]
    fn no_change_is_finished_at_once_and_names_one_digest() {
        let job = RebuildJob::no_change("reg.example/app:v1".into(), digest(1), 100);
        assert!(job.is_finished());
        assert_eq!(job.next(100), Step::Done);
        let view = job.view();
        assert_eq!(view.state, RebuildState::NoChange);
        assert_eq!(view.old_digest, view.new_digest);
        assert!(view.message.contains("no new digest upstream"));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["state"], "no_change");
    }

    #[test]
    fn errors_are_bounded() {
        let mut job = job();
        for i in 0..MAX_ERRORS + 5 {
            job.error(format!("e{i}"));
        }
        assert_eq!(job.view().errors.len(), MAX_ERRORS);
    }
}
