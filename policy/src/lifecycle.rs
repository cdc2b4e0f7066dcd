//! Lifecycle: the state of each layer (Active, Warm, Cold, Pending Deletion,
//! Deleted) from the lifecycle design seed.
//!
//! This module owns the state machine. Inputs: the layer's usage score (0-100,
//! from its forecast), its threat score, whether any retained image references
//! it, operator pins, the previous state and `now`. The lifecycle score is the
//! usage score discounted by threat:
//!
//! ```text
//! score = usage * (1 - threat_discount * threat / 100)
//! ```
//!
//! and the state follows the seed's thresholds: above `active_threshold`
//! Active, above `warm_threshold` Warm, above `cold_threshold` Cold, else
//! Pending Deletion, which becomes Deleted after `grace_period_secs`.
//!
//! Rules that override the score, in order:
//!
//! 1. **Keep beats delete.** A [`Pin::Keep`] holds the layer Active, whatever
//!    the score and whatever other pins say.
//! 2. A layer referenced by a retained image is never Pending Deletion or
//!    Deleted: at worst it is Cold. A [`Pin::Delete`] on it waits (Pending
//!    Deletion is not entered) until nothing references it.
//! 3. A [`Pin::Delete`] puts an unreferenced layer into Pending Deletion at
//!    once; the grace period still applies.
//! 4. Pending Deletion that recovers a score above `cold_threshold` goes back
//!    to the state its score earns; Deleted does too when the layer is pulled
//!    again (its score rises), since it then exists again.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A layer's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleState {
    /// In use or high predicted use: fast storage.
    Active,
    /// Moderate predicted use.
    Warm,
    /// Low predicted use: cheap storage.
    Cold,
    /// Very low predicted use; deleted after the grace period.
    PendingDeletion {
        /// When the layer entered this state.
        since: Timestamp,
    },
    /// Removed from storage.
    Deleted,
}

impl LifecycleState {
    /// True when the lifecycle says the layer is to go: Deleted, or Pending
    /// Deletion past its grace period.
    pub fn says_delete(&self, now: Timestamp, config: &LifecycleConfig) -> bool {
        match *self {
            LifecycleState::Deleted => true,
            LifecycleState::PendingDeletion { since } => {
                now.since(since) >= config.grace_period_secs
            }
            _ => false,
        }
    }
}

/// An operator override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Pin {
    /// Keep the layer Active (beats [`Pin::Delete`]).
    Keep,
    /// Delete the layer (after the grace period, once nothing references it).
    Delete,
}

/// Thresholds and grace period. Keys and defaults per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Score above which a layer is Active. Default 60.
    pub active_threshold: f64,
    /// Score above which a layer is Warm. Default 30.
    pub warm_threshold: f64,
    /// Score above which a layer is Cold; below it, Pending Deletion. Default 5.
    pub cold_threshold: f64,
    /// Seconds in Pending Deletion before Deleted. Default 86400 (one day).
    pub grace_period_secs: u64,
    /// Fraction of the score a threat of 100 takes away. Default 0.3.
    pub threat_discount: f64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            active_threshold: 60.0,
            warm_threshold: 30.0,
            cold_threshold: 5.0,
            grace_period_secs: 86_400,
            threat_discount: 0.3,
        }
    }
}

/// What the state machine knows about a layer at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LayerFacts {
    /// Usage score 0-100.
    pub usage: f64,
    /// Threat score 0-100.
    pub threat: f64,
    /// A retained image references it.
    pub referenced: bool,
    /// A [`Pin::Keep`] is set.
    pub pinned_keep: bool,
    /// A [`Pin::Delete`] is set.
    pub pinned_delete: bool,
}

impl LayerFacts {
    /// Sets the pin flags from a list of pins.
    pub fn with_pins(mut self, pins: &[Pin]) -> Self {
        self.pinned_keep |= pins.contains(&Pin::Keep);
        self.pinned_delete |= pins.contains(&Pin::Delete);
        self
    }
}

/// The lifecycle score: usage discounted by threat (see module docs).
pub fn lifecycle_score(usage: f64, threat: f64, config: &LifecycleConfig) -> f64 {
    usage.clamp(0.0, 100.0)
        * (1.0 - config.threat_discount.clamp(0.0, 1.0) * threat.clamp(0.0, 100.0) / 100.0)
}

/// The next state of a layer. Pure: same inputs, same answer.
pub fn next_state(
    current: LifecycleState,
    facts: &LayerFacts,
    now: Timestamp,
    config: &LifecycleConfig,
) -> LifecycleState {
    if facts.pinned_keep {
        return LifecycleState::Active;
    }
    let score = lifecycle_score(facts.usage, facts.threat, config);
    let by_score = if score > config.active_threshold {
        Some(LifecycleState::Active)
    } else if score > config.warm_threshold {
        Some(LifecycleState::Warm)
    } else if score > config.cold_threshold {
        Some(LifecycleState::Cold)
    } else {
        None
    };
    if facts.referenced {
        return by_score.unwrap_or(LifecycleState::Cold);
    }
    if !facts.pinned_delete {
        if let Some(state) = by_score {
            return state;
        }
    }
    match current {
        LifecycleState::Deleted => LifecycleState::Deleted,
        LifecycleState::PendingDeletion { since }
            if now.since(since) >= config.grace_period_secs =>
        {
            LifecycleState::Deleted
        }
        LifecycleState::PendingDeletion { since } => LifecycleState::PendingDeletion { since },
        _ => LifecycleState::PendingDeletion { since: now },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_down_through_grace() {
        let c = LifecycleConfig::default();
        let idle = LayerFacts::default();
        let s = next_state(LifecycleState::Active, &idle, Timestamp(100), &c);
        assert_eq!(
            s,
            LifecycleState::PendingDeletion {
                since: Timestamp(100)
            }
        );
        let s = next_state(s, &idle, Timestamp(100 + c.grace_period_secs - 1), &c);
        assert!(matches!(s, LifecycleState::PendingDeletion { .. }));
        assert!(!s.says_delete(Timestamp(100 + c.grace_period_secs - 1), &c));
        let s = next_state(s, &idle, Timestamp(100 + c.grace_period_secs), &c);
        assert_eq!(s, LifecycleState::Deleted);
        let busy = LayerFacts {
            usage: 90.0,
            ..idle
        };
        assert_eq!(
            next_state(s, &busy, Timestamp(0), &c),
            LifecycleState::Active
        );
        let warm = LayerFacts {
            usage: 40.0,
            ..idle
        };
        assert_eq!(
            next_state(LifecycleState::Active, &warm, Timestamp(0), &c),
            LifecycleState::Warm
        );
        // Threat pushes a borderline layer down a state.
        let risky = LayerFacts {
            usage: 65.0,
            threat: 100.0,
            ..idle
        };
        assert_eq!(
            next_state(LifecycleState::Active, &risky, Timestamp(0), &c),
            LifecycleState::Warm
        );
    }

    #[test]
    fn keep_beats_delete() {
        let c = LifecycleConfig::default();
        let both = LayerFacts::default().with_pins(&[Pin::Delete, Pin::Keep]);
        assert_eq!(
            next_state(LifecycleState::Cold, &both, Timestamp(0), &c),
            LifecycleState::Active
        );
        let delete = LayerFacts {
            usage: 100.0,
            ..LayerFacts::default()
        }
        .with_pins(&[Pin::Delete]);
        assert!(matches!(
            next_state(LifecycleState::Active, &delete, Timestamp(0), &c),
            LifecycleState::PendingDeletion { .. }
        ));
    }

    fn any_state() -> impl Strategy<Value = LifecycleState> {
        prop_oneof![
            Just(LifecycleState::Active),
            Just(LifecycleState::Warm),
            Just(LifecycleState::Cold),
            (0u64..1_000_000).prop_map(|s| LifecycleState::PendingDeletion {
                since: Timestamp(s)
            }),
        ]
    }

    proptest! {
        #[test]
        fn pinned_or_referenced_layers_are_never_deleted(
            start in any_state(),
            steps in proptest::collection::vec((0.0f64..100.0, 0.0f64..100.0, any::<bool>(), any::<bool>(), any::<bool>(), 0u64..200_000), 1..30),
        ) {
            let c = LifecycleConfig::default();
            let mut state = start;
            let mut now = Timestamp(1_000_000);
            let mut pending_since = match start {
                LifecycleState::PendingDeletion { since } => Some(since),
                _ => None,
            };
            for (usage, threat, referenced, keep, delete, dt) in steps {
                now = now.plus(dt);
                let facts = LayerFacts { usage, threat, referenced, pinned_keep: keep, pinned_delete: delete };
                let was_deleted = state == LifecycleState::Deleted;
                state = next_state(state, &facts, now, &c);
                if keep {
                    prop_assert_eq!(state, LifecycleState::Active);
                }
                if referenced || keep {
                    prop_assert!(!state.says_delete(now, &c));
                }
                if let LifecycleState::PendingDeletion { since } = state {
                    pending_since = Some(since);
                }
                if state == LifecycleState::Deleted && !was_deleted {
                    // Only through a full grace period of Pending Deletion.
                    let since = pending_since.expect("deleted without pending");
                    prop_assert!(now.since(since) >= c.grace_period_secs);
                }
            }
        }
    }
}
