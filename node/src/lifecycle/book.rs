//! The lifecycle book: every cached layer's state, why, since when, and the operator's pins.
//! A pure state machine: [`LifecycleBook::review`] takes the facts of every held layer and an
//! explicit `now`, runs `shoal-policy`'s `next_state` (the code the simulator runs) and says which
//! layers to remove; [`LifecycleBook::set_override`] records pins. No clock, no I/O.
//!
//! **Invariant:** a layer pinned keep or referenced by a retained image is never named for
//! removal (the policy keeps it out of Pending Deletion, and the book checks again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_policy::lifecycle::{
    lifecycle_score, next_state, LayerFacts, LifecycleConfig, LifecycleState,
};
use shoal_policy::Timestamp;
use shoal_proto::BlobDigest;

/// Pins recorded at most (layers with a pin).
pub const MAX_OVERRIDES: usize = 10_000;
/// Deleted layers remembered at most (the oldest are forgotten first).
pub const MAX_DELETED: usize = 10_000;
/// Longest pin reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// A state's name in the API and on disk.
pub fn state_name(state: &LifecycleState) -> &'static str {
    match state {
        LifecycleState::Active => "active",
        LifecycleState::Warm => "warm",
        LifecycleState::Cold => "cold",
        LifecycleState::PendingDeletion { .. } => "pending_deletion",
        LifecycleState::Deleted => "deleted",
    }
}

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Why, in the operator's words.
    pub reason: String,
    /// When it was set (seconds since the epoch).
    pub set_at: u64,
    /// When it lapses, if ever.
    pub expires_at: Option<u64>,
}

/// A layer's pins: keep and delete may both be set; keep wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    /// Keep the layer (Active, never deleted).
    pub keep: Option<PinRecord>,
    /// Delete the layer after the grace period, once no retained image references it.
    pub delete: Option<PinRecord>,
}

impl Pins {
    fn is_empty(&self) -> bool {
        self.keep.is_none() && self.delete.is_none()
    }
}

/// What the operator asks of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideAction {
    /// Pin keep.
    Keep,
    /// Pin delete.
    Delete,
    /// Remove the pins (both, or the one named).
    Clear,
}

/// Which pin `clear` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    /// The keep pin.
    Keep,
    /// The delete pin.
    Delete,
}

/// Why an override was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// The reason is too long.
    #[error("reason is longer than {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
    /// The expiry is not in the future.
    #[error("expires_at {0} is not in the future")]
    ExpiryPast(u64),
    /// Too many layers carry pins.
    #[error("too many pinned layers (at most {MAX_OVERRIDES}); clear some first")]
    TooMany,
}

/// A layer's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Its state.
    pub state: LifecycleState,
    /// When it entered that state.
    pub since: u64,
    /// When it was last reviewed.
    pub reviewed_at: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Usage score 0-100 at the last review.
    pub usage: f64,
    /// Threat score 0-100 at the last review.
    pub threat: f64,
    /// A retained image referenced it at the last review.
    pub referenced: bool,
    /// Deleted, and its removal from the store is still to be done.
    pub awaiting_removal: bool,
    /// One line: why it is in this state.
    pub reason: String,
}

/// The facts of one held layer at a review.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInput {
    /// The layer.
    pub digest: BlobDigest,
    /// Its size in bytes.
    pub size: u64,
    /// Usage score 0-100 (from its forecast).
    pub usage: f64,
    /// Threat score 0-100.
    pub threat: f64,
    /// A retained image references it.
    pub referenced: bool,
}

/// What a review changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReviewOutcome {
    /// Layers whose state changed: (layer, from, to).
    pub changes: Vec<(BlobDigest, &'static str, &'static str)>,
    /// Pins that lapsed.
    pub expired_pins: Vec<(BlobDigest, PinKind)>,
    /// Layers to remove from the store now.
    pub remove: Vec<BlobDigest>,
}

/// How many layers are in each state, with their bytes, and how many are pinned: what
/// `GET /status` and `shoal status` show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Layers Active.
    pub active: u64,
    /// Layers Warm.
    pub warm: u64,
    /// Layers Cold.
    pub cold: u64,
    /// Layers Pending Deletion.
    pub pending_deletion: u64,
    /// Layers Deleted (remembered, at most [`MAX_DELETED`]; their bytes are gone or going).
    pub deleted: u64,
    /// Bytes of the layers held (every state but Deleted).
    pub held_bytes: u64,
    /// Layers pinned keep.
    pub pinned_keep: u64,
    /// Layers pinned delete (a layer pinned both ways counts in both).
    pub pinned_delete: u64,
}

/// Every cached layer's lifecycle, and the pins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LifecycleBook {
    layers: BTreeMap<BlobDigest, LayerRecord>,
    pins: BTreeMap<BlobDigest, Pins>,
}

/// The book as written to disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BookFile {
    layers: Vec<(String, LayerRecord)>,
    pins: Vec<(String, Pins)>,
}

impl LifecycleBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer's record.
    pub fn record(&self, digest: &BlobDigest) -> Option<&LayerRecord> {
        self.layers.get(digest)
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = (&BlobDigest, &LayerRecord)> {
        self.layers.iter()
    }

    /// A layer's pins.
    pub fn pins(&self, digest: &BlobDigest) -> Pins {
        self.pins.get(digest).cloned().unwrap_or_default()
    }

    /// Layers pinned keep.
    pub fn kept(&self) -> impl Iterator<Item = &BlobDigest> {
        self.pins
            .iter()
            .filter(|(_, p)| p.keep.is_some())
            .map(|(d, _)| d)
    }

    /// Layers per state and pins, as of the last review.
    pub fn counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for record in self.layers.values() {
            let slot = match record.state {
                LifecycleState::Active => &mut counts.active,
                LifecycleState::Warm => &mut counts.warm,
                LifecycleState::Cold => &mut counts.cold,
                LifecycleState::PendingDeletion { .. } => &mut counts.pending_deletion,
                LifecycleState::Deleted => &mut counts.deleted,
            };
            *slot += 1;
            if record.state != LifecycleState::Deleted {
                counts.held_bytes += record.size;
            }
        }
        for pins in self.pins.values() {
            counts.pinned_keep += u64::from(pins.keep.is_some());
            counts.pinned_delete += u64::from(pins.delete.is_some());
        }
        counts
    }

    /// Whether the book knows the layer (a record or a pin).
    pub fn knows(&self, digest: &BlobDigest) -> bool {
        self.layers.contains_key(digest) || self.pins.contains_key(digest)
    }

    /// Sets or clears a pin. The state follows at the next review.
    pub fn set_override(
        &mut self,
        digest: BlobDigest,
        action: OverrideAction,
        clear: Option<PinKind>,
        reason: &str,
        expires_at: Option<u64>,
        now: u64,
    ) -> Result<Pins, OverrideError> {
        if reason.len() > MAX_REASON_BYTES {
            return Err(OverrideError::ReasonTooLong);
        }
        if let Some(at) = expires_at {
            if at <= now {
                return Err(OverrideError::ExpiryPast(at));
            }
        }
        if action != OverrideAction::Clear
            && !self.pins.contains_key(&digest)
            && self.pins.len() >= MAX_OVERRIDES
        {
            return Err(OverrideError::TooMany);
        }
        let pins = self.pins.entry(digest).or_default();
        let record = PinRecord {
            reason: reason.to_owned(),
            set_at: now,
            expires_at,
        };
        match (action, clear) {
            (OverrideAction::Keep, _) => pins.keep = Some(record),
            (OverrideAction::Delete, _) => pins.delete = Some(record),
            (OverrideAction::Clear, Some(PinKind::Keep)) => pins.keep = None,
            (OverrideAction::Clear, Some(PinKind::Delete)) => pins.delete = None,
            (OverrideAction::Clear, None) => *pins = Pins::default(),
        }
        let result = pins.clone();
        if result.is_empty() {
            self.pins.remove(&digest);
        }
        Ok(result)
    }

    /// Reviews every held layer at `now`: lapsed pins go, each layer's next state comes from the
    /// policy, and layers that reach Deleted are named for removal. Layers not held any more keep
    /// their record only when Deleted (the lifecycle removed them); others were evicted for room
    /// and are forgotten.
    pub fn review(
        &mut self,
        now: u64,
        inputs: &[LayerInput],
        config: &LifecycleConfig,
    ) -> ReviewOutcome {
        let mut outcome = ReviewOutcome::default();
        for (digest, pins) in self.pins.iter_mut() {
            for (kind, pin) in [
                (PinKind::Keep, &mut pins.keep),
                (PinKind::Delete, &mut pins.delete),
            ] {
                if pin
                    .as_ref()
                    .is_some_and(|p| p.expires_at.is_some_and(|at| at <= now))
                {
                    *pin = None;
                    outcome.expired_pins.push((*digest, kind));
                }
            }
        }
        self.pins.retain(|_, p| !p.is_empty());

        let mut held = std::collections::BTreeSet::new();
        for input in inputs {
            held.insert(input.digest);
            let pins = self.pins.get(&input.digest).cloned().unwrap_or_default();
            let facts = LayerFacts {
                usage: input.usage,
                threat: input.threat,
                referenced: input.referenced,
                pinned_keep: pins.keep.is_some(),
                pinned_delete: pins.delete.is_some(),
            };
            let previous = self.layers.get(&input.digest);
            // A layer deleted earlier and held again was pulled again: it starts afresh. One
            // whose removal did not happen yet (it was being read) stays Deleted.
            let current = match previous {
                None => LifecycleState::Active,
                Some(r) if r.state == LifecycleState::Deleted && !r.awaiting_removal => {
                    LifecycleState::Active
                }
                Some(r) => r.state,
            };
            let mut next = next_state(current, &facts, Timestamp(now), config);
            if next == LifecycleState::Deleted && (facts.pinned_keep || facts.referenced) {
                next = LifecycleState::Cold;
            }
            let since = match previous {
                Some(r) if r.state == next => r.since,
                _ => now,
            };
            if let Some(r) = previous {
                if state_name(&r.state) != state_name(&next) {
                    outcome
                        .changes
                        .push((input.digest, state_name(&r.state), state_name(&next)));
                }
            }
            let awaiting_removal = next == LifecycleState::Deleted;
            if awaiting_removal {
                outcome.remove.push(input.digest);
            }
            let reason = explain(&next, &facts, &pins, config, now);
            self.layers.insert(
                input.digest,
                LayerRecord {
                    state: next,
                    since,
                    reviewed_at: now,
                    size: input.size,
                    usage: input.usage,
                    threat: input.threat,
                    referenced: input.referenced,
                    awaiting_removal,
                    reason,
                },
            );
        }
        self.layers.retain(|d, r| {
            held.contains(d) || (r.state == LifecycleState::Deleted && !r.awaiting_removal)
        });
        self.forget_oldest_deleted();
        outcome
    }

    /// The store removed the layer (or never held it any more).
    pub fn removed(&mut self, digest: &BlobDigest) {
        if let Some(record) = self.layers.get_mut(digest) {
            record.awaiting_removal = false;
        }
    }

    /// Records a layer removed by retention: Deleted now, with `reason`.
    pub fn mark_deleted(&mut self, digest: BlobDigest, size: u64, now: u64, reason: String) {
        let record = self.layers.entry(digest).or_insert_with(|| LayerRecord {
            state: LifecycleState::Deleted,
            since: now,
            reviewed_at: now,
            size,
            usage: 0.0,
            threat: 0.0,
            referenced: false,
            awaiting_removal: false,
            reason: String::new(),
        });
        if record.state != LifecycleState::Deleted {
            record.since = now;
        }
        record.state = LifecycleState::Deleted;
        record.awaiting_removal = false;
        record.reason = reason;
        self.forget_oldest_deleted();
    }

    fn forget_oldest_deleted(&mut self) {
        let deleted: Vec<(u64, BlobDigest)> = self
            .layers
            .iter()
            .filter(|(_, r)| r.state == LifecycleState::Deleted && !r.awaiting_removal)
            .map(|(d, r)| (r.since, *d))
            .collect();
        if deleted.len() <= MAX_DELETED {
            return;
        }
        let mut deleted = deleted;
        deleted.sort();
        for (_, digest) in deleted.iter().take(deleted.len() - MAX_DELETED) {
            self.layers.remove(digest);
        }
    }

    /// The book in its file form.
    pub fn to_file(&self) -> BookFile {
        BookFile {
            layers: self
                .layers
                .iter()
                .map(|(d, r)| (d.to_string(), r.clone()))
                .collect(),
            pins: self
                .pins
                .iter()
                .map(|(d, p)| (d.to_string(), p.clone()))
                .collect(),
        }
    }

    /// The book from its file form; entries with a bad digest are dropped, and the bounds hold.
    pub fn from_file(file: BookFile) -> Self {
        let mut book = Self::default();
        for (digest, record) in file.layers {
            if let Ok(digest) = digest.parse() {
                book.layers.insert(digest, record);
            }
        }
        for (digest, pins) in file.pins.into_iter().take(MAX_OVERRIDES) {
            if let Ok(digest) = digest.parse() {
                if !pins.is_empty() {
                    book.pins.insert(digest, pins);
                }
            }
        }
        book.forget_oldest_deleted();
        book
    }
}

/// The one-line reason for a state.
fn explain(
    state: &LifecycleState,
    facts: &LayerFacts,
    pins: &Pins,
    config: &LifecycleConfig,
    now: u64,
) -> String {
    let score = lifecycle_score(facts.usage, facts.threat, config);
    if let Some(keep) = &pins.keep {
        return format!("pinned keep ({}): held Active", keep.reason);
    }
    match state {
        LifecycleState::PendingDeletion { since } => {
            let ends = since.0.saturating_add(config.grace_period_secs);
            let why = match &pins.delete {
                Some(pin) => format!("pinned delete ({})", pin.reason),
                None => format!(
                    "score {score:.1} at or below the cold threshold {}",
                    config.cold_threshold
                ),
            };
            format!(
                "{why}: deleted when the grace period ends in {}s",
                ends.saturating_sub(now)
            )
        }
        LifecycleState::Deleted => match &pins.delete {
            Some(pin) => format!("pinned delete ({}): grace period over, removed", pin.reason),
            None => "score stayed at or below the cold threshold through the grace period: removed"
                .to_owned(),
        },
        _ if facts.referenced && pins.delete.is_some() => {
            format!("pinned delete waits: a retained image references it (score {score:.1})")
        }
        _ if facts.referenced && score <= config.cold_threshold => {
            format!("score {score:.1} is low, but a retained image references it: kept Cold")
        }
        LifecycleState::Active => format!(
            "score {score:.1} (usage {:.1}, threat {:.1}) above the active threshold {}",
            facts.usage, facts.threat, config.active_threshold
        ),
        LifecycleState::Warm => format!(
            "score {score:.1} (usage {:.1}, threat {:.1}) above the warm threshold {}",
            facts.usage, facts.threat, config.warm_threshold
        ),
        LifecycleState::Cold => format!(
            "score {score:.1} (usage {:.1}, threat {:.1}) above the cold threshold {}",
            facts.usage, facts.threat, config.cold_threshold
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> BlobDigest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn input(c: char, usage: f64, referenced: bool) -> LayerInput {
        LayerInput {
            digest: d(c),
            size: 10,
            usage,
            threat: 0.0,
            referenced,
        }
    }

    fn config(grace: u64) -> LifecycleConfig {
        LifecycleConfig {
            grace_period_secs: grace,
            ..LifecycleConfig::default()
        }
    }

    #[test]
    fn a_pinned_delete_layer_is_removed_only_after_the_grace_period() {
        let mut book = LifecycleBook::new();
        let c = config(10);
        let busy = [input('a', 90.0, false)];
        assert!(book.review(100, &busy, &c).remove.is_empty());
        assert_eq!(book.record(&d('a')).unwrap().state, LifecycleState::Active);
        book.set_override(d('a'), OverrideAction::Delete, None, "old", None, 100)
            .unwrap();
        let outcome = book.review(101, &busy, &c);
        assert!(outcome.remove.is_empty());
        assert_eq!(outcome.changes, [(d('a'), "active", "pending_deletion")]);
        assert!(book.review(110, &busy, &c).remove.is_empty());
        let outcome = book.review(111, &busy, &c);
        assert_eq!(outcome.remove, [d('a')]);
        let record = book.record(&d('a')).unwrap();
        assert_eq!(record.state, LifecycleState::Deleted);
        assert!(
            record.reason.contains("pinned delete (old)"),
            "{}",
            record.reason
        );
        // Still held (being read): named again at the next review.
        assert_eq!(book.review(112, &busy, &c).remove, [d('a')]);
        book.removed(&d('a'));
        // Gone from the store: the record stays, Deleted.
        assert!(book.review(113, &[], &c).remove.is_empty());
        assert_eq!(book.record(&d('a')).unwrap().state, LifecycleState::Deleted);
    }

    #[test]
    fn keep_beats_delete_and_a_reference_holds_a_delete_pin() {
        let mut book = LifecycleBook::new();
        let c = config(0);
        let idle = [input('a', 0.0, false), input('b', 0.0, true)];
        for digest in [d('a'), d('b')] {
            book.set_override(digest, OverrideAction::Delete, None, "x", None, 0)
                .unwrap();
        }
        book.set_override(d('a'), OverrideAction::Keep, None, "y", None, 0)
            .unwrap();
        for now in 1..5 {
            assert!(book.review(now, &idle, &c).remove.is_empty());
        }
        assert_eq!(book.record(&d('a')).unwrap().state, LifecycleState::Active);
        assert_eq!(book.record(&d('b')).unwrap().state, LifecycleState::Cold);
        assert!(book.record(&d('b')).unwrap().reason.contains("references"));
        // Clearing keep lets delete act.
        book.set_override(
            d('a'),
            OverrideAction::Clear,
            Some(PinKind::Keep),
            "",
            None,
            5,
        )
        .unwrap();
        assert!(book.review(6, &idle, &c).remove.is_empty());
        assert_eq!(book.review(6, &idle, &c).remove, [d('a')]);
    }

    #[test]
    fn pins_lapse_at_their_expiry_and_bad_overrides_change_nothing() {
        let mut book = LifecycleBook::new();
        let c = config(100);
        book.set_override(d('a'), OverrideAction::Keep, None, "till 50", Some(50), 0)
            .unwrap();
        assert!(book.pins(&d('a')).keep.is_some());
        let outcome = book.review(50, &[input('a', 0.0, false)], &c);
        assert_eq!(outcome.expired_pins, [(d('a'), PinKind::Keep)]);
        assert!(book.pins(&d('a')).keep.is_none());
        let before = book.clone();
        assert_eq!(
            book.set_override(d('b'), OverrideAction::Keep, None, "x", Some(10), 20),
            Err(OverrideError::ExpiryPast(10))
        );
        assert_eq!(
            book.set_override(
                d('b'),
                OverrideAction::Keep,
                None,
                &"r".repeat(MAX_REASON_BYTES + 1),
                None,
                20
            ),
            Err(OverrideError::ReasonTooLong)
        );
        assert_eq!(book, before);
    }

    #[test]
    fn a_deleted_layer_pulled_again_starts_afresh_and_evicted_layers_are_forgotten() {
        let mut book = LifecycleBook::new();
        let c = config(0);
        book.review(0, &[input('a', 0.0, false), input('b', 90.0, false)], &c);
        assert_eq!(
            book.review(1, &[input('a', 0.0, false), input('b', 90.0, false)], &c)
                .remove,
            [d('a')]
        );
        book.removed(&d('a'));
        // b was evicted for room: forgotten. a was deleted: remembered.
        book.review(2, &[], &c);
        assert!(book.record(&d('b')).is_none());
        assert_eq!(book.record(&d('a')).unwrap().state, LifecycleState::Deleted);
        book.review(3, &[input('a', 90.0, false)], &c);
        assert_eq!(book.record(&d('a')).unwrap().state, LifecycleState::Active);
    }

    #[test]
    fn counts_follow_the_states_and_pins() {
        let mut book = LifecycleBook::new();
        let c = config(0);
        book.set_override(d('a'), OverrideAction::Keep, None, "k", None, 0)
            .unwrap();
        book.set_override(d('a'), OverrideAction::Delete, None, "d", None, 0)
            .unwrap();
        book.set_override(d('c'), OverrideAction::Delete, None, "d", None, 0)
            .unwrap();
        let layers = [
            input('a', 0.0, false),
            input('b', 90.0, false),
            input('c', 90.0, false),
        ];
        book.review(1, &layers, &c);
        assert_eq!(
            book.counts(),
            StateCounts {
                active: 2,
                pending_deletion: 1,
                held_bytes: 30,
                pinned_keep: 1,
                pinned_delete: 2,
                ..StateCounts::default()
            }
        );
        assert_eq!(book.review(2, &layers, &c).remove, [d('c')]);
        book.removed(&d('c'));
        book.review(3, &layers[..2], &c);
        let counts = book.counts();
        assert_eq!(
            (counts.active, counts.deleted, counts.held_bytes),
            (2, 1, 20)
        );
    }

    #[test]
    fn the_book_survives_its_file_form() {
        let mut book = LifecycleBook::new();
        book.set_override(d('a'), OverrideAction::Keep, None, "k", Some(99), 0)
            .unwrap();
        book.review(
            5,
            &[input('a', 40.0, true), input('b', 0.0, false)],
            &config(10),
        );
        let text = serde_json::to_string(&book.to_file()).unwrap();
        let restored = LifecycleBook::from_file(serde_json::from_str(&text).unwrap());
        assert_eq!(restored, book);
    }
}
