//! Retention: which images to keep, and which layers can go because no kept
//! image references them.
//!
//! This module owns the retention rules in the shape of the retention seed
//! and the two-step deletion trusted registries use: rules decide which
//! images stay; only layers that no kept image references are deleted.
//!
//! An image is **kept** when any of these holds:
//!
//! * it is younger than `keep_younger_than_secs`;
//! * it is the latest image of its repository (by push time, then digest),
//!   whatever its age, when `keep_latest_per_repository` is set;
//! * an operator pinned it (keep beats delete);
//! * it is a child of a kept multi-arch index (children count as referenced);
//! * it fell out of retention less than `grace_period_secs` ago (the
//!   [`RetentionLedger`] remembers when each image fell out).
//!
//! A layer is deleted only when it belongs to an image that is not kept, no
//! kept image references it and it is not pinned.
//!
//! [`evaluate`] is read-only and so is a dry run by construction: it reports
//! what would go and how many bytes. [`RetentionLedger::run`] with
//! `dry_run = true` returns the same report and changes nothing; with
//! `dry_run = false` it also records grace starts and forgets deleted images.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{BlobDigest, Timestamp};

/// Retention rules. Keys and defaults per field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRules {
    /// Keep every image pushed less than this many seconds ago. Default 30 days.
    pub keep_younger_than_secs: u64,
    /// Keep the latest image of each repository whatever its age. Default true.
    pub keep_latest_per_repository: bool,
    /// Seconds an image that fell out of retention is still kept. Default 1 day.
    pub grace_period_secs: u64,
}

impl Default for RetentionRules {
    fn default() -> Self {
        RetentionRules {
            keep_younger_than_secs: 30 * 86_400,
            keep_latest_per_repository: true,
            grace_period_secs: 86_400,
        }
    }
}

/// What an image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageContent {
    /// A single-platform manifest and its layers with their sizes.
    Manifest {
        /// Layer blobs and sizes in bytes.
        layers: Vec<(BlobDigest, u64)>,
    },
    /// A multi-arch index and the manifests it lists.
    Index {
        /// Child manifest digests.
        children: Vec<BlobDigest>,
    },
}

/// One image (manifest or index) known to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Repository name, such as `library/python`.
    pub repository: String,
    /// Manifest or index digest.
    pub digest: BlobDigest,
    /// When it was pushed (or first seen).
    pub pushed_at: Timestamp,
    /// What it contains.
    pub content: ImageContent,
}

/// Operator pins: these are kept whatever the rules say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPins {
    /// Pinned images (manifest or index digests).
    pub images: BTreeSet<BlobDigest>,
    /// Pinned layers.
    pub layers: BTreeSet<BlobDigest>,
}

/// Why an image is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum KeepReason {
    /// Pinned by an operator.
    Pinned,
    /// Younger than the age limit.
    Young,
    /// Latest of its repository.
    Latest,
    /// Child of a kept index.
    IndexChild,
    /// In its grace period.
    Grace,
}

/// What a retention pass keeps and deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Kept images and the first reason that kept each.
    pub kept: BTreeMap<BlobDigest, KeepReason>,
    /// Images in grace and when their grace ends.
    pub grace_ends: BTreeMap<BlobDigest, Timestamp>,
    /// Images that are not kept.
    pub expired_images: Vec<BlobDigest>,
    /// Layers to delete and their sizes.
    pub deleted_layers: Vec<(BlobDigest, u64)>,
    /// Sum of the deleted layers' sizes.
    pub bytes_freed: u64,
}

/// When each image fell out of retention; the only state retention keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionLedger {
    fell_out: BTreeMap<BlobDigest, Timestamp>,
}

impl RetentionLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// When `image` fell out of retention, if it has.
    pub fn fell_out_at(&self, image: &BlobDigest) -> Option<Timestamp> {
        self.fell_out.get(image).copied()
    }

    /// Evaluates the rules at `now`. A dry run returns the report and changes
    /// nothing; otherwise the ledger records new grace starts, forgets images
    /// back in retention and forgets expired (deleted) images.
    pub fn run(
        &mut self,
        rules: &RetentionRules,
        images: &[ImageRecord],
        pins: &RetentionPins,
        now: Timestamp,
        dry_run: bool,
    ) -> RetentionReport {
        let mut report = evaluate(rules, images, pins, self, now);
        report.dry_run = dry_run;
        if dry_run {
            return report;
        }
        let mut next = BTreeMap::new();
        for (image, ends) in &report.grace_ends {
            next.insert(
                image.clone(),
                Timestamp(ends.0.saturating_sub(rules.grace_period_secs)),
            );
        }
        self.fell_out = next;
        report
    }
}

/// Evaluates the retention rules at `now`, reading but never changing the
/// ledger. See the module docs for the rules.
pub fn evaluate(
    rules: &RetentionRules,
    images: &[ImageRecord],
    pins: &RetentionPins,
    ledger: &RetentionLedger,
    now: Timestamp,
) -> RetentionReport {
    let by_digest: BTreeMap<&BlobDigest, &ImageRecord> =
        images.iter().map(|i| (&i.digest, i)).collect();
    let mut latest: BTreeMap<&str, &ImageRecord> = BTreeMap::new();
    for image in images {
        let entry = latest.entry(image.repository.as_str()).or_insert(image);
        if (image.pushed_at, &image.digest) > (entry.pushed_at, &entry.digest) {
            *entry = image;
        }
    }
    let mut report = RetentionReport {
        dry_run: true,
        ..RetentionReport::default()
    };
    for image in by_digest.values() {
        let reason = if pins.images.contains(&image.digest) {
            Some(KeepReason::Pinned)
        } else if now.since(image.pushed_at) < rules.keep_younger_than_secs {
            Some(KeepReason::Young)
        } else if rules.keep_latest_per_repository
            && latest
                .get(image.repository.as_str())
                .is_some_and(|l| l.digest == image.digest)
        {
            Some(KeepReason::Latest)
        } else {
            None
        };
        if let Some(reason) = reason {
            report.kept.insert(image.digest.clone(), reason);
        }
    }
    // Children of kept indexes are kept, transitively.
    let mut work: Vec<BlobDigest> = report.kept.keys().cloned().collect();
    close_over_children(
        &mut work,
        &by_digest,
        &mut report.kept,
        KeepReason::IndexChild,
    );
    // Everything else is in grace or expired.
    for image in by_digest.values() {
        if report.kept.contains_key(&image.digest) {
            continue;
        }
        let fell_out = ledger.fell_out_at(&image.digest).unwrap_or(now);
        let ends = fell_out.plus(rules.grace_period_secs);
        if now < ends {
            report.grace_ends.insert(image.digest.clone(), ends);
        }
    }
    let mut work: Vec<BlobDigest> = report.grace_ends.keys().cloned().collect();
    for d in &work {
        report.kept.insert(d.clone(), KeepReason::Grace);
    }
    close_over_children(&mut work, &by_digest, &mut report.kept, KeepReason::Grace);

    let mut referenced: BTreeSet<&BlobDigest> = BTreeSet::new();
    for digest in report.kept.keys() {
        if let Some(ImageContent::Manifest { layers }) = by_digest.get(digest).map(|i| &i.content) {
            referenced.extend(layers.iter().map(|(l, _)| l));
        }
    }
    let mut doomed: BTreeMap<&BlobDigest, u64> = BTreeMap::new();
    for image in by_digest.values() {
        if report.kept.contains_key(&image.digest) {
            continue;
        }
        report.expired_images.push(image.digest.clone());
        if let ImageContent::Manifest { layers } = &image.content {
            for (layer, size) in layers {
                if !referenced.contains(layer) && !pins.layers.contains(layer) {
                    doomed.insert(layer, *size);
                }
            }
        }
    }
    report.bytes_freed = doomed.values().sum();
    report.deleted_layers = doomed.into_iter().map(|(d, s)| (d.clone(), s)).collect();
    report
}

fn close_over_children(
    work: &mut Vec<BlobDigest>,
    by_digest: &BTreeMap<&BlobDigest, &ImageRecord>,
    kept: &mut BTreeMap<BlobDigest, KeepReason>,
    reason: KeepReason,
) {
    while let Some(d) = work.pop() {
        if let Some(ImageContent::Index { children }) = by_digest.get(&d).map(|i| &i.content) {
            for c in children {
                if !kept.contains_key(c) {
                    kept.insert(c.clone(), reason);
                    work.push(c.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn digest(n: u32) -> BlobDigest {
        BlobDigest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn manifest(repo: &str, n: u32, pushed_day: u64, layers: &[u32]) -> ImageRecord {
        ImageRecord {
            repository: repo.into(),
            digest: digest(n),
            pushed_at: Timestamp(pushed_day * DAY),
            content: ImageContent::Manifest {
                layers: layers.iter().map(|&l| (digest(l), 100)).collect(),
            },
        }
    }

    #[test]
    fn rules_grace_and_dry_run() {
        let rules = RetentionRules::default();
        let images = vec![
            manifest("app", 1, 0, &[1000, 1001]),
            manifest("app", 2, 10, &[1000, 1002]),
            manifest("app", 3, 20, &[1000, 1003]),
            manifest("db", 4, 1, &[2000]),
            // A multi-arch index, old and not latest of its repo, but a child of it...
            ImageRecord {
                repository: "multi".into(),
                digest: digest(5),
                pushed_at: Timestamp(0),
                content: ImageContent::Index {
                    children: vec![digest(6)],
                },
            },
            manifest("multi", 6, 0, &[3000]),
            ImageRecord {
                repository: "multi".into(),
                digest: digest(7),
                pushed_at: Timestamp(90 * DAY),
                content: ImageContent::Index {
                    children: vec![digest(6)],
                },
            },
        ];
        let now = Timestamp(100 * DAY);
        let pins = RetentionPins::default();
        let mut ledger = RetentionLedger::new();
        // First pass: 1, 2 and 5 fall out but are in grace; nothing goes.
        let dry = ledger.run(&rules, &images, &pins, now, true);
        assert!(dry.dry_run);
        assert_eq!(ledger, RetentionLedger::new(), "a dry run changes nothing");
        assert!(dry.deleted_layers.is_empty());
        assert_eq!(dry.grace_ends.len(), 3);
        let first = ledger.run(&rules, &images, &pins, now, false);
        assert_eq!(first.grace_ends, dry.grace_ends);
        assert_eq!(ledger.fell_out_at(&digest(1)), Some(now));
        // After the grace period, the old app images and the old index go.
        let later = now.plus(DAY);
        let dry = ledger.run(&rules, &images, &pins, later, true);
        let before = ledger.clone();
        let report = ledger.run(&rules, &images, &pins, later, false);
        assert_eq!(dry.deleted_layers, report.deleted_layers);
        assert_eq!(report.expired_images, vec![digest(1), digest(2), digest(5)]);
        // 1000 is shared with the kept latest image; 3000 belongs to a child of a kept index.
        assert_eq!(
            report.deleted_layers,
            vec![(digest(1001), 100), (digest(1002), 100)]
        );
        assert_eq!(report.bytes_freed, 200);
        assert_eq!(report.kept[&digest(4)], KeepReason::Latest);
        assert_eq!(report.kept[&digest(6)], KeepReason::IndexChild);
        assert_ne!(before, ledger);
        // Pins: keep beats delete.
        let pinned = RetentionPins {
            images: [digest(1)].into(),
            layers: [digest(1002)].into(),
        };
        let report = evaluate(
            &rules,
            &images,
            &pinned,
            &RetentionLedger::new(),
            Timestamp(1000 * DAY),
        );
        assert!(report.deleted_layers.is_empty(), "{report:?}");
    }

    proptest! {
        #[test]
        fn kept_pinned_or_referenced_layers_are_never_deleted(
            spec in proptest::collection::vec((0u32..4, 0u64..200, proptest::collection::vec(0u32..30, 1..5)), 1..25),
            index_children in proptest::collection::vec((0u64..200, proptest::collection::vec(0usize..25, 1..3)), 0..4),
            pinned_layers in proptest::collection::btree_set(0u32..30, 0..4),
            now_day in 0u64..300,
        ) {
            let mut images: Vec<ImageRecord> = spec.iter().enumerate().map(|(i, (repo, day, layers))| {
                manifest(&format!("r{repo}"), i as u32, *day, &layers.iter().map(|l| l + 10_000).collect::<Vec<_>>())
            }).collect();
            for (k, (day, children)) in index_children.iter().enumerate() {
                images.push(ImageRecord {
                    repository: "idx".into(),
                    digest: digest(5_000 + k as u32),
                    pushed_at: Timestamp(day * DAY),
                    content: ImageContent::Index { children: children.iter().filter(|&&c| c < spec.len()).map(|&c| digest(c as u32)).collect() },
                });
            }
            let pins = RetentionPins { images: BTreeSet::new(), layers: pinned_layers.iter().map(|l| digest(l + 10_000)).collect() };
            let rules = RetentionRules { grace_period_secs: 0, ..RetentionRules::default() };
            let ledger = RetentionLedger::new();
            let report = evaluate(&rules, &images, &pins, &ledger, Timestamp(now_day * DAY));
            let deleted: BTreeSet<_> = report.deleted_layers.iter().map(|(d, _)| d.clone()).collect();
            for image in &images {
                let kept = report.kept.contains_key(&image.digest);
                if let (true, ImageContent::Manifest { layers }) = (kept, &image.content) {
                    for (l, _) in layers {
                        prop_assert!(!deleted.contains(l), "a layer of a kept image was deleted");
                    }
                }
                if let (true, ImageContent::Index { children }) = (kept, &image.content) {
                    for c in children {
                        prop_assert!(report.kept.contains_key(c), "an index child was not kept");
                    }
                }
            }
            for p in &pins.layers {
                prop_assert!(!deleted.contains(p));
            }
            prop_assert_eq!(report.bytes_freed, report.deleted_layers.iter().map(|(_, s)| s).sum::<u64>());
        }
    }
}
