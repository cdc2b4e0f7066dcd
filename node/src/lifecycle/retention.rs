//! Retention over the catalog: the images the cache holds, as `shoal-policy::retention` sees
//! them, and which blobs the images it keeps reference. Pure.
//!
//! An image's age is the time since this node first saw it (the cache has no push time; the
//! lifecycle remembers first sightings in its state file); a child of an index that no tag names
//! has no age of its own and is kept only with its index. Images pulled only by digest, with no
//! tag to name their repository, form one group (repository `""`). A manifest's config blob
//! counts as one of its layers: it goes when the image goes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shoal_policy::retention::{
    evaluate, ImageContent, ImageRecord, KeepReason, RetentionLedger, RetentionPins,
    RetentionReport, RetentionRules,
};
use shoal_policy::Timestamp;
use shoal_proto::BlobDigest;

use crate::catalog::{Catalog, ImageKind};

/// The policy crate's digest type for one of ours.
pub fn policy_digest(digest: &BlobDigest) -> shoal_policy::BlobDigest {
    // Both hold `sha256:` and 64 lowercase hex digits; ours is checked, so this cannot fail.
    shoal_policy::BlobDigest::parse(&digest.to_string()).expect("a valid digest stays valid")
}

fn node_digest(digest: &shoal_policy::BlobDigest) -> Option<BlobDigest> {
    digest.as_str().parse().ok()
}

/// The catalog's images as retention records; `first_seen` gives each one's age.
pub fn image_records(
    catalog: &Catalog,
    first_seen: &BTreeMap<BlobDigest, u64>,
) -> Vec<ImageRecord> {
    catalog
        .images
        .values()
        .map(|image| ImageRecord {
            repository: image.name().unwrap_or_default(),
            digest: policy_digest(&image.digest),
            // A child of an index that no tag names directly lives and dies with its index: it
            // is never "young" or "latest" on its own account.
            pushed_at: if image.parent.is_some() && image.tags.is_empty() {
                Timestamp(0)
            } else {
                Timestamp(first_seen.get(&image.digest).copied().unwrap_or(0))
            },
            content: match image.kind {
                ImageKind::Index => ImageContent::Index {
                    children: image
                        .children
                        .iter()
                        .map(|(c, _)| policy_digest(&c.digest))
                        .collect(),
                },
                ImageKind::Manifest => ImageContent::Manifest {
                    layers: image
                        .blobs()
                        .map(|b| (policy_digest(&b.digest), b.size))
                        .collect(),
                },
            },
        })
        .collect()
}

/// Blobs that the images `report` keeps reference (configs and layers).
pub fn retained_blobs(catalog: &Catalog, report: &RetentionReport) -> BTreeSet<BlobDigest> {
    let mut out = BTreeSet::new();
    for kept in report.kept.keys() {
        let Some(image) = node_digest(kept).and_then(|d| catalog.images.get(&d)) else {
            continue;
        };
        out.extend(image.blobs().map(|b| b.digest));
    }
    out
}

/// A retention pass as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    /// Nothing was (or will be) changed.
    pub dry_run: bool,
    /// Kept images and the first reason that kept each.
    pub kept_images: BTreeMap<String, String>,
    /// Images no rule keeps.
    pub expired_images: Vec<String>,
    /// Blobs this node holds that go: (digest, bytes).
    pub deleted_layers: Vec<(String, u64)>,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Listed blobs a real run could not remove yet (being read); the next run tries again.
    pub left_busy: Vec<String>,
}

fn reason_name(reason: KeepReason) -> &'static str {
    match reason {
        KeepReason::Pinned => "pinned",
        KeepReason::Young => "young",
        KeepReason::Latest => "latest",
        KeepReason::IndexChild => "index_child",
        KeepReason::Grace => "grace",
    }
}

/// Evaluates the rules (read-only) and keeps of the doomed blobs only those `held` here. Layers
/// pinned keep never go.
pub fn plan(
    rules: &RetentionRules,
    images: &[ImageRecord],
    kept_layers: &BTreeSet<BlobDigest>,
    ledger: &RetentionLedger,
    now: u64,
    held: impl Fn(&BlobDigest) -> bool,
) -> (RetentionReport, RetentionPlan) {
    let pins = RetentionPins {
        images: BTreeSet::new(),
        layers: kept_layers.iter().map(policy_digest).collect(),
    };
    let report = evaluate(rules, images, &pins, ledger, Timestamp(now));
    let mut plan = RetentionPlan {
        dry_run: true,
        kept_images: report
            .kept
            .iter()
            .map(|(d, r)| (d.to_string(), reason_name(*r).to_owned()))
            .collect(),
        expired_images: report
            .expired_images
            .iter()
            .map(|d| d.to_string())
            .collect(),
        ..RetentionPlan::default()
    };
    for (layer, size) in &report.deleted_layers {
        let Some(digest) = node_digest(layer) else {
            continue;
        };
        if held(&digest) {
            plan.deleted_layers.push((digest.to_string(), *size));
            plan.bytes_freed = plan.bytes_freed.saturating_add(*size);
        }
    }
    (report, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::sample;

    fn d(c: char) -> BlobDigest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn a_layer_shared_with_a_kept_image_survives_and_only_held_blobs_are_listed() {
        // `sample`: index 1 (origin/app) over 2 and 3 sharing `0`; untagged image 4.
        let catalog = sample();
        let rules = RetentionRules {
            keep_younger_than_secs: 0,
            keep_latest_per_repository: true,
            grace_period_secs: 0,
        };
        let first_seen = BTreeMap::from([(d('1'), 10), (d('2'), 10), (d('3'), 10), (d('4'), 5)]);
        let images = image_records(&catalog, &first_seen);
        let ledger = RetentionLedger::new();
        let (report, first) = plan(&rules, &images, &BTreeSet::new(), &ledger, 100, |_| true);
        // Every image is the latest of its group (or a kept index's child): nothing goes.
        assert!(first.deleted_layers.is_empty(), "{first:?}");
        assert_eq!(first.kept_images[&d('2').to_string()], "index_child");
        let retained = retained_blobs(&catalog, &report);
        assert!(retained.contains(&d('0')) && retained.contains(&d('7')));

        // Without keep-latest, everything is expired; `0` is listed once, and a layer not held
        // here or pinned keep is not listed.
        let rules = RetentionRules {
            keep_latest_per_repository: false,
            ..rules
        };
        let (_, second) = plan(
            &rules,
            &images,
            &BTreeSet::from([d('a')]),
            &ledger,
            100,
            |digest| *digest != d('b'),
        );
        let listed: Vec<&str> = second
            .deleted_layers
            .iter()
            .map(|(d, _)| d.as_str())
            .collect();
        let expected: Vec<String> = ['0', '7', 'c', 'e', 'f']
            .iter()
            .map(|c| d(*c).to_string())
            .collect();
        assert_eq!(listed, expected);
        assert_eq!(second.bytes_freed, 10 + 10 + 10 + 100 + 3);
    }
}
