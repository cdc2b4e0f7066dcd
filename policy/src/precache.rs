//! Pre-cache: whether copying a layer ahead of demand pays, and how many
//! bytes of such copies an interval may move.
//!
//! This module owns the test every pre-cache transfer must pass
//! ([`evaluate`]), the budget that caps them ([`PrecacheBudget`]) and the
//! ledger of their outcomes ([`PrecacheLedger`]). It moves nothing: the
//! caller (the simulator's engine, the daemon's placement) asks, then starts
//! or skips the transfer.
//!
//! # When a copy pays
//!
//! A copy placed ahead of demand saves, at best, the transfer the first
//! demand for it would have made (later pulls would have hit the copy demand
//! brought in anyway), and it saves it only if that demand comes before the
//! copy is evicted. So, for a copy of `size` bytes:
//!
//! ```text
//! p_first   = calibration * (1 - exp(-forecast_pulls * min(survival, horizon) / horizon))
//! saved     = p_first * size * (cost(demand path) + latency_credit)
//! cost      = size * cost(source path) + displaced_hits * size * cost(origin)
//! pays     <=> saved > cost
//! ```
//!
//! `forecast_pulls` is the demand forecast where the copy lands over
//! `horizon`, `survival` the time a layer stays on the node unrequested
//! ([`crate::guard::AdaptiveGuard::survival_secs`]), `displaced_hits` the
//! expected hits per byte of what the copy pushes out (zero when it fits in
//! free space), and `calibration` the share of past pre-cache bytes that
//! were used ([`PrecacheLedger::calibration`]). Path costs weigh a byte
//! by the link it crosses ([`PrecacheConfig`]). A copy that travels the same
//! path the demand fetch would have taken saves no bytes, only time:
//! `latency_credit` is the value, in bytes per byte, put on having it there
//! before it is asked for. With the defaults a copy from the origin pays only
//! when its first pull is more than about 91% likely to come in time, which
//! keeps wasted pre-cache under 10% when the forecasts are calibrated, and the
//! ledger lowers the calibration when they are not.
//!
//! # Budget
//!
//! An interval may move at most [`PrecacheConfig::budget_fraction`] of the
//! bytes demand requested in the previous interval, times the guard's
//! [`crate::guard::AdaptiveGuard::precache_scale`].

use serde::{Deserialize, Serialize};

/// The kind of link a transfer crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TransferPath {
    /// Between two nodes of one region.
    Lan,
    /// Between two regions.
    InterRegion,
    /// From the origin registry.
    Origin,
}

/// Pre-cache settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecacheConfig {
    /// Most pre-cache bytes per interval, as a fraction of the bytes demand
    /// requested in the previous interval. Default 0.05.
    pub budget_fraction: f64,
    /// Value, in bytes per byte, of a layer being there before it is asked
    /// for (pull latency saved). Default 0.1.
    pub latency_credit: f64,
    /// Cost of a byte from the origin. Default 1.0.
    pub origin_byte_cost: f64,
    /// Cost of a byte between regions. Default 1.0 (WAN is WAN).
    pub inter_region_byte_cost: f64,
    /// Cost of a byte inside a region. Default 0.0.
    pub lan_byte_cost: f64,
    /// Weight of the prior in the ledger's calibration, in bytes: the ledger
    /// starts as if this many bytes of pre-cache had all been used. Default
    /// 100 MB.
    pub calibration_prior_bytes: f64,
}

impl Default for PrecacheConfig {
    fn default() -> Self {
        PrecacheConfig {
            budget_fraction: 0.05,
            latency_credit: 0.1,
            origin_byte_cost: 1.0,
            inter_region_byte_cost: 1.0,
            lan_byte_cost: 0.0,
            calibration_prior_bytes: 1e8,
        }
    }
}

/// Why a [`PrecacheConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrecacheConfigError {
    /// A negative or non-finite value.
    #[error("pre-cache setting {name} = {value} must be a finite number >= 0")]
    Negative {
        /// Which key.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

impl PrecacheConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), PrecacheConfigError> {
        for (name, value) in [
            ("budget_fraction", self.budget_fraction),
            ("latency_credit", self.latency_credit),
            ("origin_byte_cost", self.origin_byte_cost),
            ("inter_region_byte_cost", self.inter_region_byte_cost),
            ("lan_byte_cost", self.lan_byte_cost),
            ("calibration_prior_bytes", self.calibration_prior_bytes),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(PrecacheConfigError::Negative { name, value });
            }
        }
        Ok(())
    }

    /// The cost of one byte over `path`.
    pub fn byte_cost(&self, path: TransferPath) -> f64 {
        match path {
            TransferPath::Lan => self.lan_byte_cost,
            TransferPath::InterRegion => self.inter_region_byte_cost,
            TransferPath::Origin => self.origin_byte_cost,
        }
    }
}

/// One possible pre-cache copy, as [`evaluate`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecacheCandidate {
    /// Layer size in bytes.
    pub size: u64,
    /// Forecast pulls where the copy lands, over `horizon_secs`.
    pub forecast_pulls: f64,
    /// The forecast's horizon in seconds.
    pub horizon_secs: f64,
    /// How long a layer survives unrequested where it lands; `None` when not
    /// yet measured (then the horizon is used).
    pub survival_secs: Option<f64>,
    /// Where the copy would come from.
    pub source: TransferPath,
    /// Where the first demand fetch would come from without the copy.
    pub demand_path: TransferPath,
    /// Expected hits per byte of what the copy would push out (0 when it
    /// fits in free space).
    pub displaced_hits: f64,
}

/// The outcome of [`evaluate`], with the terms it was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrecacheVerdict {
    /// Probability the first pull comes while the copy is there.
    pub p_first: f64,
    /// Expected bytes saved (cost-weighted).
    pub expected_saved: f64,
    /// Expected cost (cost-weighted).
    pub expected_cost: f64,
    /// `expected_saved > expected_cost`.
    pub pays: bool,
}

/// Decides whether a copy pays. See the module docs for the formula.
pub fn evaluate(
    config: &PrecacheConfig,
    candidate: &PrecacheCandidate,
    calibration: f64,
) -> PrecacheVerdict {
    let size = candidate.size as f64;
    let horizon = candidate.horizon_secs.max(1.0);
    let window = candidate
        .survival_secs
        .unwrap_or(horizon)
        .clamp(0.0, horizon);
    let rate = candidate.forecast_pulls.max(0.0) / horizon;
    let p_first = calibration.clamp(0.0, 1.0) * (1.0 - (-rate * window).exp());
    let expected_saved =
        p_first * size * (config.byte_cost(candidate.demand_path) + config.latency_credit);
    let expected_cost = size * config.byte_cost(candidate.source)
        + candidate.displaced_hits.max(0.0) * size * config.origin_byte_cost;
    PrecacheVerdict {
        p_first,
        expected_saved,
        expected_cost,
        pays: expected_saved > expected_cost,
    }
}

/// Bytes of pre-cache transfers one interval may still start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecacheBudget {
    remaining: u64,
}

impl PrecacheBudget {
    /// The budget for an interval after one in which demand requested
    /// `last_demand_bytes`, scaled by the guard's `scale` (0-1).
    pub fn for_interval(config: &PrecacheConfig, last_demand_bytes: u64, scale: f64) -> Self {
        let bytes = last_demand_bytes as f64 * config.budget_fraction * scale.clamp(0.0, 1.0);
        PrecacheBudget {
            remaining: bytes.max(0.0) as u64,
        }
    }

    /// Takes `size` bytes from the budget if they fit.
    pub fn take(&mut self, size: u64) -> bool {
        if size > self.remaining {
            return false;
        }
        self.remaining -= size;
        true
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// What became of pre-cache copies: bytes later served from them and bytes
/// evicted before any hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PrecacheLedger {
    /// Bytes of pre-cache copies that served a request.
    pub hit_bytes: u64,
    /// Bytes of pre-cache copies evicted before any request.
    pub wasted_bytes: u64,
    /// Decayed hit bytes, for the calibration.
    recent_hit: f64,
    /// Decayed wasted bytes, for the calibration.
    recent_wasted: f64,
}

impl PrecacheLedger {
    /// A copy of `size` bytes served its first request.
    pub fn record_hit(&mut self, size: u64) {
        self.hit_bytes += size;
        self.recent_hit += size as f64;
    }

    /// A copy of `size` bytes left unrequested.
    pub fn record_waste(&mut self, size: u64) {
        self.wasted_bytes += size;
        self.recent_wasted += size as f64;
    }

    /// Keeps 95% of the recent counts (once per interval, a half-life of
    /// about 14 intervals), so the calibration forgets old outcomes and can
    /// recover after a bad spell, but not within a few intervals.
    pub fn decay(&mut self) {
        self.recent_hit *= 0.95;
        self.recent_wasted *= 0.95;
    }

    /// The share of recent pre-cache bytes that were used, starting from a
    /// prior of `prior_bytes` all used.
    pub fn calibration(&self, prior_bytes: f64) -> f64 {
        let prior = prior_bytes.max(0.0);
        let total = self.recent_hit + self.recent_wasted + prior;
        if total <= 0.0 {
            return 1.0;
        }
        ((self.recent_hit + prior) / total).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(forecast: f64, source: TransferPath, demand: TransferPath) -> PrecacheCandidate {
        PrecacheCandidate {
            size: 1_000_000,
            forecast_pulls: forecast,
            horizon_secs: 6.0 * 3600.0,
            survival_secs: Some(24.0 * 3600.0),
            source,
            demand_path: demand,
            displaced_hits: 0.0,
        }
    }

    #[test]
    fn a_copy_over_the_path_demand_would_take_pays_only_when_nearly_certain() {
        let c = PrecacheConfig::default();
        let sure = evaluate(
            &c,
            &candidate(10.0, TransferPath::Origin, TransferPath::Origin),
            1.0,
        );
        assert!(sure.pays, "{sure:?}");
        let maybe = evaluate(
            &c,
            &candidate(1.0, TransferPath::Origin, TransferPath::Origin),
            1.0,
        );
        assert!(maybe.p_first < 0.7 && !maybe.pays, "{maybe:?}");
        // Without a latency credit a same-path copy never pays.
        let no_credit = PrecacheConfig {
            latency_credit: 0.0,
            ..c.clone()
        };
        assert!(
            !evaluate(
                &no_credit,
                &candidate(100.0, TransferPath::Origin, TransferPath::Origin),
                1.0
            )
            .pays
        );
    }

    #[test]
    fn a_cheaper_source_pays_sooner_and_displacement_costs() {
        let c = PrecacheConfig::default();
        let lan = evaluate(
            &c,
            &candidate(1.0, TransferPath::Lan, TransferPath::Origin),
            1.0,
        );
        assert!(lan.pays);
        let mut crowded = candidate(10.0, TransferPath::Origin, TransferPath::Origin);
        crowded.displaced_hits = 0.5;
        assert!(!evaluate(&c, &crowded, 1.0).pays);
    }

    #[test]
    fn short_survival_and_poor_calibration_lower_the_odds() {
        let c = PrecacheConfig::default();
        let mut short = candidate(10.0, TransferPath::Origin, TransferPath::Origin);
        short.survival_secs = Some(600.0);
        assert!(!evaluate(&c, &short, 1.0).pays);
        let long = candidate(10.0, TransferPath::Origin, TransferPath::Origin);
        assert!(!evaluate(&c, &long, 0.8).pays);
    }

    #[test]
    fn the_budget_follows_last_interval_demand_and_the_guard() {
        let c = PrecacheConfig::default();
        let mut b = PrecacheBudget::for_interval(&c, 1_000_000, 1.0);
        assert_eq!(b.remaining(), 50_000);
        assert!(b.take(30_000));
        assert!(!b.take(30_000));
        assert!(b.take(20_000));
        assert_eq!(
            PrecacheBudget::for_interval(&c, 1_000_000, 0.0).remaining(),
            0
        );
    }

    #[test]
    fn the_ledger_calibrates_and_forgets() {
        let mut l = PrecacheLedger::default();
        assert_eq!(l.calibration(1e9), 1.0);
        l.record_waste(3_000_000_000);
        l.record_hit(1_000_000_000);
        assert!((l.calibration(1e9) - 0.4).abs() < 1e-9);
        for _ in 0..200 {
            l.decay();
        }
        assert!(l.calibration(1e9) > 0.99);
        assert_eq!(l.wasted_bytes, 3_000_000_000);
    }

    #[test]
    fn configs_are_checked() {
        assert!(PrecacheConfig::default().validate().is_ok());
        let bad = PrecacheConfig {
            budget_fraction: -1.0,
            ..PrecacheConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
