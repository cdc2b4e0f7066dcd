//! Priority: the design seed's pre-cache formula and its weights.
//!
//! ```text
//! priority = w_usage * usage + w_threat * threat + w_proximity * proximity
//! ```
//!
//! Each signal is on a 0-100 scale: `usage` is [`usage_score`] of the forecast
//! pulls over the planning horizon, `threat` comes from [`crate::threat`],
//! `proximity` from [`crate::proximity`]. The weights are configuration
//! ([`PolicyWeights`]); the defaults put usage first (0.6), proximity second
//! (0.3) and threat last (0.1). Threat raises pre-cache priority because a
//! vulnerable layer's users are about to roll out its patched successor and
//! scanners pull it for re-scans; it is kept small so that a dangerous layer
//! nobody uses does not crowd out useful ones (eviction removes those first).

use serde::{Deserialize, Serialize};

/// The weights of the three signals. Keys and defaults: `usage = 0.6`,
/// `threat = 0.1`, `proximity = 0.3`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyWeights {
    /// Weight of the usage forecast.
    pub usage: f64,
    /// Weight of the threat score.
    pub threat: f64,
    /// Weight of the proximity score.
    pub proximity: f64,
}

impl Default for PolicyWeights {
    fn default() -> Self {
        PolicyWeights {
            usage: 0.6,
            threat: 0.1,
            proximity: 0.3,
        }
    }
}

/// Why a set of weights is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    /// A negative or non-finite weight.
    #[error("weight {name} = {value} must be finite and non-negative")]
    Negative {
        /// Which weight.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// All weights zero.
    #[error("at least one weight must be positive")]
    AllZero,
}

impl PolicyWeights {
    /// Checks that every weight is finite and non-negative and one is positive.
    pub fn validate(&self) -> Result<(), WeightsError> {
        for (name, value) in [
            ("usage", self.usage),
            ("threat", self.threat),
            ("proximity", self.proximity),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(WeightsError::Negative { name, value });
            }
        }
        if self.usage + self.threat + self.proximity <= 0.0 {
            return Err(WeightsError::AllZero);
        }
        Ok(())
    }

    /// The pre-cache priority of a layer from its three 0-100 scores.
    pub fn priority(&self, usage: f64, threat: f64, proximity: f64) -> f64 {
        self.usage * usage + self.threat * threat + self.proximity * proximity
    }
}

/// Maps forecast pulls to a 0-100 usage score: `100 * f / (f + half)`, so
/// `half` pulls over the horizon score 50 and the score saturates towards 100.
pub fn usage_score(forecast_pulls: f64, half_saturation: f64) -> f64 {
    let f = forecast_pulls.max(0.0);
    if f == 0.0 {
        return 0.0;
    }
    100.0 * f / (f + half_saturation.max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_and_defaults() {
        let w = PolicyWeights::default();
        w.validate().unwrap();
        assert!((w.priority(100.0, 0.0, 0.0) - 60.0).abs() < 1e-9);
        assert!((w.priority(50.0, 100.0, 10.0) - (30.0 + 10.0 + 3.0)).abs() < 1e-9);
        let parsed: PolicyWeights = serde_json::from_str(r#"{"threat": 0.5}"#).unwrap();
        assert_eq!(parsed.usage, 0.6);
        assert_eq!(parsed.threat, 0.5);
        assert!(PolicyWeights { usage: -1.0, ..w }.validate().is_err());
        assert!(PolicyWeights {
            usage: 0.0,
            threat: 0.0,
            proximity: 0.0
        }
        .validate()
        .is_err());
    }

    #[test]
    fn usage_score_is_bounded_and_monotone() {
        assert_eq!(usage_score(0.0, 2.0), 0.0);
        assert!((usage_score(2.0, 2.0) - 50.0).abs() < 1e-9);
        assert!(usage_score(1e12, 2.0) <= 100.0);
        assert!(usage_score(3.0, 2.0) > usage_score(2.0, 2.0));
    }
}
