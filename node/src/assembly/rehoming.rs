//! The decision behind re-homing through the blob's home, as a state machine driven by what the
//! home answered and an explicit `now` (no network, no clock); `assembly::rehome` is its thin
//! async shell, which asks the home when told and carries out the verdict.
//!
//! A fetch whose parent (or the holder whose map led) failed it mid-blob and that found no stored
//! copy elsewhere asks the blob's home for another place in the blob's tree, naming the member
//! that failed it (`ClaimAsk::WhoElseFetches`): the home places it under another live member, or
//! grants it the rest from the origin. A home that predates that request refuses it; it is then
//! asked plainly (`WhoFetches`), and while it still names the member that failed (that member's
//! lease runs: it may only have been slow), asked again every renewal period, for at most one
//! lease. The home is asked even when it is the member that failed: its claims are not its bytes.
//!
//! **Invariant:** a re-homing fetch never follows the member that failed it, never takes a copy
//! from it, and never follows a flight the home offers in answer to a plain claim (that flight may
//! follow this node, and a flight must never wait on its own follower).

use std::time::Instant;

use libp2p::PeerId;

use crate::p2p::{CLAIM_LEASE, RENEW_CLAIM_EVERY};

/// How the blob's home is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskHow {
    /// Naming the member that failed this node (`ClaimAsk::WhoElseFetches`).
    NamingTheFailed,
    /// A plain claim (`ClaimAsk::WhoFetches`), for a home that refused the naming request.
    Plainly,
}

/// What the blob's home answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeAnswer {
    /// Fetch the rest from the origin: the home granted this node the fetch.
    FetchIt,
    /// Follow this member (it fetches the blob or follows one that does).
    Follow(PeerId),
    /// The home's own stored copy (its map came back).
    StoredCopy,
    /// The home's own flight (its in-flight stream came back).
    OwnFlight,
    /// No answer: the home failed or went away, or predates the naming request and refused it.
    NoAnswer,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RehomeAction {
    /// Ask the blob's home at `at`, the way `how` says.
    AskHome {
        /// When.
        at: Instant,
        /// How.
        how: AskHow,
    },
    /// Follow this member, down the tree from it.
    Follow(PeerId),
    /// Take the home's stored copy.
    TakeCopy,
    /// Fetch the rest from the origin, as the home granted.
    FetchFromOrigin,
    /// No peer can help: go on from the origin without the home's word.
    GiveUp,
}

/// One re-home through the blob's home.
#[derive(Debug)]
pub struct Rehoming {
    local: PeerId,
    gone: PeerId,
    /// Past this, a home that still names `gone` is no longer asked again.
    patient_until: Instant,
    how: AskHow,
}

impl Rehoming {
    /// A re-home of this node (`local`) away from `gone`, starting at `now`; its first action.
    pub fn start(local: PeerId, gone: PeerId, now: Instant) -> (Self, RehomeAction) {
        let rehoming = Rehoming {
            local,
            gone,
            patient_until: now + CLAIM_LEASE + RENEW_CLAIM_EVERY,
            how: AskHow::NamingTheFailed,
        };
        let first = RehomeAction::AskHome {
            at: now,
            how: rehoming.how,
        };
        (rehoming, first)
    }

    /// The home (`home`) answered `answer` at `now`: what to do next.
    pub fn on_answer(&mut self, home: PeerId, answer: HomeAnswer, now: Instant) -> RehomeAction {
        match answer {
            HomeAnswer::FetchIt => RehomeAction::FetchFromOrigin,
            HomeAnswer::Follow(parent) if parent == self.local => RehomeAction::FetchFromOrigin,
            HomeAnswer::Follow(parent) if parent != self.gone => RehomeAction::Follow(parent),
            // Named again: its lease still runs (it may only have been slow). Ask again after a
            // renewal period, for at most one lease.
            HomeAnswer::Follow(_) if now < self.patient_until => {
                self.ask_again_at(now + RENEW_CLAIM_EVERY)
            }
            HomeAnswer::Follow(_) => RehomeAction::GiveUp,
            // Its bytes are suspect when it is the member that failed this node.
            HomeAnswer::StoredCopy if home == self.gone => RehomeAction::GiveUp,
            HomeAnswer::StoredCopy => RehomeAction::TakeCopy,
            HomeAnswer::OwnFlight => RehomeAction::GiveUp,
            HomeAnswer::NoAnswer if self.how == AskHow::NamingTheFailed => {
                // Refused (a home that predates the request) or failed: ask plainly, once.
                self.how = AskHow::Plainly;
                RehomeAction::AskHome {
                    at: now,
                    how: self.how,
                }
            }
            HomeAnswer::NoAnswer => RehomeAction::GiveUp,
        }
    }

    fn ask_again_at(&self, at: Instant) -> RehomeAction {
        RehomeAction::AskHome { at, how: self.how }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Case {
        local: PeerId,
        gone: PeerId,
        home: PeerId,
        other: PeerId,
        start: Instant,
    }

    fn case() -> Case {
        Case {
            local: PeerId::random(),
            gone: PeerId::random(),
            home: PeerId::random(),
            other: PeerId::random(),
            start: Instant::now(),
        }
    }

    #[test]
    fn the_home_is_first_asked_at_once_naming_the_member_that_failed() {
        let c = case();
        let (_, first) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            first,
            RehomeAction::AskHome {
                at: c.start,
                how: AskHow::NamingTheFailed
            }
        );
    }

    #[test]
    fn another_member_named_by_the_home_is_followed_at_once() {
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::Follow(c.other), c.start),
            RehomeAction::Follow(c.other)
        );
    }

    #[test]
    fn a_grant_or_being_named_oneself_sends_the_rest_to_the_origin() {
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::FetchIt, c.start),
            RehomeAction::FetchFromOrigin
        );
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::Follow(c.local), c.start),
            RehomeAction::FetchFromOrigin
        );
    }

    #[test]
    fn a_home_that_refuses_the_naming_request_is_asked_plainly_once() {
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        let now = c.start + Duration::from_millis(30);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::NoAnswer, now),
            RehomeAction::AskHome {
                at: now,
                how: AskHow::Plainly
            }
        );
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::NoAnswer, now),
            RehomeAction::GiveUp
        );
    }

    #[test]
    fn a_home_still_naming_the_failed_member_is_asked_again_each_renewal_for_one_lease() {
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        // An older home: refused, then asked plainly, it names the member that failed.
        let mut now = c.start;
        assert!(matches!(
            rehoming.on_answer(c.home, HomeAnswer::NoAnswer, now),
            RehomeAction::AskHome {
                how: AskHow::Plainly,
                ..
            }
        ));
        let mut asks = 0;
        loop {
            match rehoming.on_answer(c.home, HomeAnswer::Follow(c.gone), now) {
                RehomeAction::AskHome { at, how } => {
                    assert_eq!(how, AskHow::Plainly);
                    assert_eq!(at, now + RENEW_CLAIM_EVERY);
                    asks += 1;
                    now = at;
                }
                RehomeAction::GiveUp => break,
                other => panic!("followed the member that failed: {other:?}"),
            }
            assert!(asks < 100, "asked forever");
        }
        // At most one lease (and a renewal period) of asking.
        assert!(now >= c.start + CLAIM_LEASE);
        assert!(now <= c.start + CLAIM_LEASE + 2 * RENEW_CLAIM_EVERY);
        // Once its lease ran out the home places this node elsewhere, had it answered in time.
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        let later = c.start + CLAIM_LEASE;
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::Follow(c.other), later),
            RehomeAction::Follow(c.other)
        );
    }

    #[test]
    fn a_home_naming_the_failed_member_to_the_naming_request_is_asked_again_too() {
        // A home that lost the failed member's record of failure, or raced it: never followed.
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::Follow(c.gone), c.start),
            RehomeAction::AskHome {
                at: c.start + RENEW_CLAIM_EVERY,
                how: AskHow::NamingTheFailed
            }
        );
    }

    #[test]
    fn the_failed_members_copy_is_never_taken_and_another_homes_is() {
        let c = case();
        // The home is the member that failed (a liar, say): asked anyway, its copy not taken.
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.gone, HomeAnswer::StoredCopy, c.start),
            RehomeAction::GiveUp
        );
        // ...but its claims are: it names another member, which is followed.
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.gone, HomeAnswer::Follow(c.other), c.start),
            RehomeAction::Follow(c.other)
        );
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::StoredCopy, c.start),
            RehomeAction::TakeCopy
        );
    }

    #[test]
    fn the_homes_own_flight_offered_to_a_plain_claim_is_not_followed() {
        let c = case();
        let (mut rehoming, _) = Rehoming::start(c.local, c.gone, c.start);
        rehoming.on_answer(c.home, HomeAnswer::NoAnswer, c.start);
        assert_eq!(
            rehoming.on_answer(c.home, HomeAnswer::OwnFlight, c.start),
            RehomeAction::GiveUp
        );
    }
}
