//! Usage: per-layer access events in time buckets, and forecasts of future
//! pulls.
//!
//! This module owns the usage history (a bounded window of per-bucket pull
//! counts per layer) and the three forecasting methods the issue names:
//! simple exponential smoothing ([`ses`]), Holt's linear trend ([`holt`]) and
//! Croston's method with the Syntetos-Boylan correction ([`croston_sba`]). The
//! method is chosen per series by [`select_method`]: a series whose average
//! demand interval (ADI, buckets per non-zero bucket) exceeds 1.32 is
//! intermittent and gets Croston/SBA; a smooth series with enough history gets
//! Holt; a short smooth one gets SES.
//!
//! A manifest pull is an immediate signal that its layers are about to be
//! pulled: [`UsageTracker::record_manifest_pull`] adds an "announced" demand to
//! each layer that decays with a half-life and is consumed by the layer pulls
//! that follow. It is added on top of the statistical forecast.
//!
//! Only completed buckets feed the statistical methods; time is `now`, never
//! the clock.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{LayerId, Timestamp};

/// How usage is bucketed and forecast. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Width of one bucket in seconds. Default 3600 (one hour).
    pub bucket_secs: u64,
    /// How many completed buckets of history each series keeps. Default 48.
    pub history_buckets: usize,
    /// Smoothing constant for the level (SES, Holt) in (0, 1]. Default 0.3.
    pub alpha: f64,
    /// Smoothing constant for Holt's trend in (0, 1]. Default 0.1.
    pub beta: f64,
    /// Smoothing constant for Croston's sizes and intervals. Default 0.1.
    pub croston_alpha: f64,
    /// ADI above which a series counts as intermittent. Default 1.32.
    pub adi_threshold: f64,
    /// Minimum buckets of history before Holt's trend is trusted. Default 8.
    pub min_trend_buckets: usize,
    /// Announced pulls added per layer by one manifest pull. Default 1.0.
    pub manifest_signal: f64,
    /// Half-life of the manifest signal in seconds. Default 900.
    pub manifest_half_life_secs: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            bucket_secs: 3600,
            history_buckets: 48,
            alpha: 0.3,
            beta: 0.1,
            croston_alpha: 0.1,
            adi_threshold: 1.32,
            min_trend_buckets: 8,
            manifest_signal: 1.0,
            manifest_half_life_secs: 900,
        }
    }
}

/// Why a [`UsageConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UsageConfigError {
    /// A smoothing constant outside (0, 1].
    #[error("smoothing constant {name} = {value} must be in (0, 1]")]
    Smoothing {
        /// Which key.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A zero bucket width or history length.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl UsageConfig {
    /// Checks ranges; call once when the config is loaded.
    pub fn validate(&self) -> Result<(), UsageConfigError> {
        for (name, value) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("croston_alpha", self.croston_alpha),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(UsageConfigError::Smoothing { name, value });
            }
        }
        if self.bucket_secs == 0 {
            return Err(UsageConfigError::Zero("bucket_secs"));
        }
        if self.history_buckets == 0 {
            return Err(UsageConfigError::Zero("history_buckets"));
        }
        Ok(())
    }
}

/// Which forecasting method a series was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForecastMethod {
    /// No demand in the window.
    Zero,
    /// Simple exponential smoothing.
    Ses,
    /// Holt's linear trend method.
    Holt,
    /// Croston's method with the SBA correction.
    CrostonSba,
}

/// A forecast for one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Forecast {
    /// The method used.
    pub method: ForecastMethod,
    /// Expected pulls over the horizon from the statistical method.
    pub statistical: f64,
    /// Announced pulls from manifest signals not yet consumed.
    pub announced: f64,
    /// Pulls already seen in the current, still open bucket: the freshest
    /// evidence there is, which the statistical part cannot see yet.
    pub current: f64,
}

impl Forecast {
    /// Expected pulls over the horizon, all parts together.
    pub fn total(&self) -> f64 {
        self.statistical + self.announced + self.current
    }
}

/// Simple exponential smoothing: the level after the last observation, which
/// is the forecast for every future period. Zero for an empty series.
pub fn ses(series: &[f64], alpha: f64) -> f64 {
    let Some(&first) = series.first() else {
        return 0.0;
    };
    series[1..]
        .iter()
        .fold(first, |level, &y| alpha * y + (1.0 - alpha) * level)
}

/// Holt's linear trend method: the sum of the forecasts for periods
/// `1..=horizon` (each clamped at zero, since pulls cannot be negative).
pub fn holt(series: &[f64], alpha: f64, beta: f64, horizon: u32) -> f64 {
    let (level, trend) = match series {
        [] => return 0.0,
        [only] => (*only, 0.0),
        [a, b, rest @ ..] => {
            let mut level = *b;
            let mut trend = b - a;
            for &y in rest {
                let previous = level;
                level = alpha * y + (1.0 - alpha) * (level + trend);
                trend = beta * (level - previous) + (1.0 - beta) * trend;
            }
            (level, trend)
        }
    };
    (1..=horizon)
        .map(|k| (level + f64::from(k) * trend).max(0.0))
        .sum()
}

/// Croston's method with the SBA (Syntetos-Boylan approximation) correction:
/// the expected demand per period, `(1 - alpha/2) * size / interval`, where
/// size and interval are the exponentially smoothed non-zero demand sizes and
/// the intervals between them. Zero for a series with no demand.
pub fn croston_sba(series: &[f64], alpha: f64) -> f64 {
    let mut state: Option<(f64, f64)> = None;
    let mut since_last = 0.0;
    for &y in series {
        since_last += 1.0;
        if y > 0.0 {
            state = Some(match state {
                None => (y, since_last),
                Some((size, interval)) => (
                    alpha * y + (1.0 - alpha) * size,
                    alpha * since_last + (1.0 - alpha) * interval,
                ),
            });
            since_last = 0.0;
        }
    }
    match state {
        Some((size, interval)) if interval > 0.0 => (1.0 - alpha / 2.0) * size / interval,
        _ => 0.0,
    }
}

/// Average demand interval: periods per non-zero period, counted from the
/// first non-zero period. `None` for a series with no demand.
pub fn average_demand_interval(series: &[f64]) -> Option<f64> {
    let start = series.iter().position(|&y| y > 0.0)?;
    let active = &series[start..];
    let nonzero = active.iter().filter(|&&y| y > 0.0).count();
    Some(active.len() as f64 / nonzero as f64)
}

/// Picks the method for a series: Croston/SBA when intermittent (ADI above
/// the threshold), Holt with enough history, else SES.
pub fn select_method(series: &[f64], config: &UsageConfig) -> ForecastMethod {
    match average_demand_interval(series) {
        None => ForecastMethod::Zero,
        Some(adi) if adi > config.adi_threshold => ForecastMethod::CrostonSba,
        Some(_) if series.len() >= config.min_trend_buckets => ForecastMethod::Holt,
        Some(_) => ForecastMethod::Ses,
    }
}

/// Expected pulls over `horizon` buckets for a series of completed buckets.
pub fn forecast_series(
    series: &[f64],
    horizon: u32,
    config: &UsageConfig,
) -> (ForecastMethod, f64) {
    let method = select_method(series, config);
    let h = f64::from(horizon);
    let value = match method {
        ForecastMethod::Zero => 0.0,
        ForecastMethod::Ses => h * ses(series, config.alpha),
        ForecastMethod::Holt => holt(series, config.alpha, config.beta, horizon),
        ForecastMethod::CrostonSba => h * croston_sba(series, config.croston_alpha),
    };
    (method, value.max(0.0))
}

/// The usage history of one layer: pull counts per bucket over a bounded
/// window, plus the decaying manifest signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSeries {
    /// Bucket index of `counts[0]`.
    first_bucket: u64,
    counts: VecDeque<u32>,
    announced: f64,
    announced_at: Timestamp,
    last_access: Option<Timestamp>,
    total_pulls: u64,
}

impl UsageSeries {
    fn bucket_of(now: Timestamp, config: &UsageConfig) -> u64 {
        now.0 / config.bucket_secs.max(1)
    }

    /// Adds `count` pulls at `now`. Pulls older than the window are dropped.
    pub fn record(&mut self, now: Timestamp, count: u32, config: &UsageConfig) {
        let bucket = Self::bucket_of(now, config);
        if self.counts.is_empty() {
            self.first_bucket = bucket;
            self.counts.push_back(0);
        }
        if bucket < self.first_bucket {
            return;
        }
        let last = self.first_bucket + self.counts.len() as u64 - 1;
        if bucket > last {
            let gap = bucket - last;
            if gap as usize > config.history_buckets + 1 {
                self.counts.clear();
                self.first_bucket = bucket;
                self.counts.push_back(0);
            } else {
                self.counts.extend(std::iter::repeat_n(0, gap as usize));
            }
        }
        let index = (bucket - self.first_bucket) as usize;
        self.counts[index] = self.counts[index].saturating_add(count);
        // Keep the current bucket plus `history_buckets` completed ones.
        while self.counts.len() > config.history_buckets + 1 {
            self.counts.pop_front();
            self.first_bucket += 1;
        }
        self.announced = (self.announced_now(now, config) - f64::from(count)).max(0.0);
        self.announced_at = now;
        self.last_access = Some(self.last_access.map_or(now, |t| t.max(now)));
        self.total_pulls += u64::from(count);
    }

    fn announced_now(&self, now: Timestamp, config: &UsageConfig) -> f64 {
        if self.announced <= 0.0 {
            return 0.0;
        }
        let age = now.since(self.announced_at) as f64;
        let half_life = config.manifest_half_life_secs.max(1) as f64;
        self.announced * 0.5f64.powf(age / half_life)
    }

    /// Adds announced pulls (from a manifest pull) at `now`.
    pub fn announce(&mut self, now: Timestamp, pulls: f64, config: &UsageConfig) {
        self.announced = self.announced_now(now, config) + pulls.max(0.0);
        self.announced_at = now;
    }

    /// The completed buckets of the window ending before `now`'s bucket,
    /// oldest first, with the idle buckets since the last pull as zeros.
    pub fn completed_buckets(&self, now: Timestamp, config: &UsageConfig) -> Vec<f64> {
        let current = Self::bucket_of(now, config);
        let window_start = current.saturating_sub(config.history_buckets as u64);
        if self.counts.is_empty() {
            return Vec::new();
        }
        let start = window_start.max(self.first_bucket);
        (start..current)
            .map(|b| {
                let i = b.wrapping_sub(self.first_bucket) as usize;
                f64::from(self.counts.get(i).copied().unwrap_or(0))
            })
            .collect()
    }

    /// The forecast of pulls over `horizon` buckets from `now`.
    pub fn forecast(&self, now: Timestamp, horizon: u32, config: &UsageConfig) -> Forecast {
        let series = self.completed_buckets(now, config);
        let (method, statistical) = forecast_series(&series, horizon, config);
        let current = Self::bucket_of(now, config);
        let last = self.first_bucket + self.counts.len() as u64;
        let open = if !self.counts.is_empty() && last == current + 1 {
            f64::from(*self.counts.back().expect("non-empty"))
        } else {
            0.0
        };
        Forecast {
            method,
            statistical,
            announced: self.announced_now(now, config),
            current: open,
        }
    }

    /// When the layer was last pulled.
    pub fn last_access(&self) -> Option<Timestamp> {
        self.last_access
    }

    /// Pulls ever recorded.
    pub fn total_pulls(&self) -> u64 {
        self.total_pulls
    }

    /// True when the window holds no pulls and no signal is left.
    pub fn is_idle(&self, now: Timestamp, config: &UsageConfig) -> bool {
        let current = Self::bucket_of(now, config);
        let window_start = current.saturating_sub(config.history_buckets as u64);
        let last = self.first_bucket + self.counts.len() as u64;
        (self.counts.is_empty() || last <= window_start) && self.announced_now(now, config) < 1e-3
    }
}

/// Usage histories for many layers (one tracker per node or per region).
#[derive(Debug, Clone, Default)]
pub struct UsageTracker {
    config: UsageConfig,
    series: BTreeMap<LayerId, UsageSeries>,
}

impl UsageTracker {
    /// An empty tracker.
    pub fn new(config: UsageConfig) -> Self {
        UsageTracker {
            config,
            series: BTreeMap::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &UsageConfig {
        &self.config
    }

    /// Records one pull of `layer` at `now`.
    pub fn record_pull(&mut self, now: Timestamp, layer: LayerId) {
        let config = &self.config;
        self.series.entry(layer).or_default().record(now, 1, config);
    }

    /// Records a manifest pull: each of its layers is announced as about to be
    /// pulled.
    pub fn record_manifest_pull(&mut self, now: Timestamp, layers: &[LayerId]) {
        let config = &self.config;
        for &layer in layers {
            self.series
                .entry(layer)
                .or_default()
                .announce(now, config.manifest_signal, config);
        }
    }

    /// Forecast pulls of `layer` over `horizon` buckets.
    pub fn forecast(&self, now: Timestamp, layer: LayerId, horizon: u32) -> Forecast {
        match self.series.get(&layer) {
            Some(s) => s.forecast(now, horizon, &self.config),
            None => Forecast {
                method: ForecastMethod::Zero,
                statistical: 0.0,
                announced: 0.0,
                current: 0.0,
            },
        }
    }

    /// The history of one layer, if any.
    pub fn series(&self, layer: LayerId) -> Option<&UsageSeries> {
        self.series.get(&layer)
    }

    /// Layers with any history, in order.
    pub fn layers(&self) -> impl Iterator<Item = LayerId> + '_ {
        self.series.keys().copied()
    }

    /// Drops series with nothing left in the window; returns how many.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.series.len();
        let config = &self.config;
        self.series.retain(|_, s| !s.is_idle(now, config));
        before - self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn croston_on_regular_intermittent_series() {
        // 4 pulls every 4th period: 1 per period, times the SBA factor.
        let series: Vec<f64> = (0..40)
            .map(|i| if i % 4 == 3 { 4.0 } else { 0.0 })
            .collect();
        let rate = croston_sba(&series, 0.1);
        assert!((rate - 0.95).abs() < 1e-9, "{rate}");
        let config = UsageConfig::default();
        assert_eq!(select_method(&series, &config), ForecastMethod::CrostonSba);
    }

    #[test]
    fn holt_follows_a_trend() {
        let series: Vec<f64> = (0..20).map(f64::from).collect();
        // Next three periods: 20, 21, 22.
        let sum = holt(&series, 0.5, 0.5, 3);
        assert!((sum - 63.0).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn method_selection() {
        let config = UsageConfig::default();
        assert_eq!(select_method(&[], &config), ForecastMethod::Zero);
        assert_eq!(select_method(&[0.0, 0.0], &config), ForecastMethod::Zero);
        assert_eq!(
            select_method(&[1.0, 2.0, 1.0], &config),
            ForecastMethod::Ses
        );
        assert_eq!(select_method(&[3.0; 12], &config), ForecastMethod::Holt);
    }

    #[test]
    fn tracker_buckets_and_forecasts() {
        let config = UsageConfig::default();
        let mut tracker = UsageTracker::new(config.clone());
        let layer = LayerId(7);
        for hour in 0..24u64 {
            for k in 0..5 {
                tracker.record_pull(Timestamp(hour * 3600 + k * 60), layer);
            }
        }
        let f = tracker.forecast(Timestamp(24 * 3600), layer, 2);
        assert_eq!(f.method, ForecastMethod::Holt);
        assert!((f.statistical - 10.0).abs() < 1e-6, "{f:?}");
        // Long idle: the series leaves the window and is pruned.
        assert_eq!(tracker.prune(Timestamp(24 * 3600 * 10)), 1);
    }

    #[test]
    fn manifest_signal_decays_and_is_consumed() {
        let config = UsageConfig::default();
        let mut tracker = UsageTracker::new(config);
        let layer = LayerId(1);
        tracker.record_manifest_pull(Timestamp(1000), &[layer]);
        let f = tracker.forecast(Timestamp(1000), layer, 1);
        assert!((f.announced - 1.0).abs() < 1e-9);
        let later = tracker.forecast(Timestamp(1900), layer, 1);
        assert!((later.announced - 0.5).abs() < 1e-9);
        tracker.record_pull(Timestamp(1000), layer);
        assert!(tracker.forecast(Timestamp(1000), layer, 1).announced < 1e-9);
    }

    proptest! {
        #[test]
        fn constant_series_forecasts_converge(c in 0.5f64..500.0, n in 30usize..200) {
            let series = vec![c; n];
            prop_assert!((ses(&series, 0.3) - c).abs() < 1e-9 * c.max(1.0));
            prop_assert!((holt(&series, 0.3, 0.1, 1) - c).abs() < 1e-6 * c.max(1.0));
            let sba = croston_sba(&series, 0.1);
            prop_assert!((sba - 0.95 * c).abs() < 1e-9 * c.max(1.0));
            let config = UsageConfig::default();
            let (_, total) = forecast_series(&series, 5, &config);
            prop_assert!((total - 5.0 * c).abs() < 1e-6 * c.max(1.0));
        }

        #[test]
        fn forecasts_are_finite_and_non_negative(series in proptest::collection::vec(0u32..1000, 0..100), h in 1u32..48) {
            let series: Vec<f64> = series.into_iter().map(f64::from).collect();
            let (_, total) = forecast_series(&series, h, &UsageConfig::default());
            prop_assert!(total.is_finite() && total >= 0.0);
        }
    }
}
