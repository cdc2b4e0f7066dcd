//! Proximity: how far the predicted demand for a layer sits from its copies.
//!
//! This module owns the RTT model between regions and to the origin
//! ([`DistanceMatrix`]) and the proximity score. For a layer with predicted
//! demand `d_r` in region `r`, and `rtt_r` the RTT from `r` to the nearest copy
//! (a region holding the layer, or the origin, whichever is closer):
//!
//! ```text
//! proximity(layer, r) = 100 * (d_r / Σ d) * (rtt_r / max_rtt)
//! proximity(layer)    = Σ_r proximity(layer, r)
//! ```
//!
//! It is 0 when every region that wants the layer already holds it, and 100
//! when all demand sits as far from any copy as anything can be. `max_rtt` is
//! the largest RTT in the matrix, origin included.
//!
//! The planner uses a variant, [`placement_proximity_score`], that ignores a
//! region's own copies when scoring that region: it measures what a copy in
//! the region saves over fetching from the nearest *other* copy. Otherwise a
//! copy the plan places would lower its own priority at the next planning
//! round, the copy would lose its place, be evicted, regain its priority and
//! be copied again: with tight disk budgets the plan oscillates.

use serde::Serialize;

use crate::RegionId;

/// Round-trip times between regions and from each region to the origin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistanceMatrix {
    regions: usize,
    rtt_ms: Vec<f64>,
    origin_rtt_ms: Vec<f64>,
    max_rtt_ms: f64,
}

/// Why a distance matrix is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistanceError {
    /// Rows of the wrong length.
    #[error("region RTT matrix must be {regions}x{regions} with {regions} origin RTTs")]
    Shape {
        /// Number of regions.
        regions: usize,
    },
    /// A negative or non-finite RTT.
    #[error("RTT from region {from} is {value} ms; RTTs must be finite and non-negative")]
    BadValue {
        /// Row.
        from: usize,
        /// The value.
        value: f64,
    },
}

impl DistanceMatrix {
    /// Builds the matrix from a square table of region-to-region RTTs (ms) and
    /// each region's RTT to the origin.
    pub fn new(
        rtt_ms: &[Vec<f64>],
        origin_rtt_ms: &[f64],
    ) -> Result<DistanceMatrix, DistanceError> {
        let n = rtt_ms.len();
        if origin_rtt_ms.len() != n || rtt_ms.iter().any(|row| row.len() != n) {
            return Err(DistanceError::Shape { regions: n });
        }
        let mut flat = Vec::with_capacity(n * n);
        let mut max = 0.0f64;
        for (from, row) in rtt_ms.iter().enumerate() {
            for &value in row.iter().chain(std::iter::once(&origin_rtt_ms[from])) {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(DistanceError::BadValue { from, value });
                }
                max = max.max(value);
            }
            flat.extend_from_slice(row);
        }
        Ok(DistanceMatrix {
            regions: n,
            rtt_ms: flat,
            origin_rtt_ms: origin_rtt_ms.to_vec(),
            max_rtt_ms: max,
        })
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.regions
    }

    /// RTT between two regions in ms.
    pub fn rtt(&self, a: RegionId, b: RegionId) -> f64 {
        self.rtt_ms[usize::from(a.0) * self.regions + usize::from(b.0)]
    }

    /// RTT from a region to the origin in ms.
    pub fn origin_rtt(&self, r: RegionId) -> f64 {
        self.origin_rtt_ms[usize::from(r.0)]
    }

    /// The largest RTT in the matrix, origin included.
    pub fn max_rtt(&self) -> f64 {
        self.max_rtt_ms
    }

    /// RTT from `region` to the nearest of `copies` or the origin.
    pub fn nearest_copy_rtt(&self, region: RegionId, copies: &[RegionId]) -> f64 {
        copies
            .iter()
            .map(|&c| self.rtt(region, c))
            .fold(self.origin_rtt(region), f64::min)
    }
}

/// Proximity of one layer in one region (0-100): this region's share of the
/// demand times its normalised distance to the nearest copy.
pub fn regional_proximity(
    matrix: &DistanceMatrix,
    demand: &[f64],
    region: RegionId,
    copies: &[RegionId],
) -> f64 {
    let total: f64 = demand.iter().sum();
    let d = demand.get(usize::from(region.0)).copied().unwrap_or(0.0);
    if total <= 0.0 || d <= 0.0 || matrix.max_rtt() <= 0.0 {
        return 0.0;
    }
    100.0 * (d / total) * (matrix.nearest_copy_rtt(region, copies) / matrix.max_rtt())
}

/// Proximity of one layer (0-100): the sum over regions of
/// [`regional_proximity`].
pub fn proximity_score(matrix: &DistanceMatrix, demand: &[f64], copies: &[RegionId]) -> f64 {
    (0..demand.len().min(matrix.regions()))
        .map(|r| regional_proximity(matrix, demand, RegionId(r as u16), copies))
        .sum::<f64>()
        .clamp(0.0, 100.0)
}

/// Like [`proximity_score`], but each region's distance is to the nearest
/// copy in *another* region (or the origin): the RTT a copy in that region
/// saves. A region's own copy does not lower its own score, so placing a copy
/// does not undo the reason it was placed. Used by the planner.
pub fn placement_proximity_score(
    matrix: &DistanceMatrix,
    demand: &[f64],
    copies: &[RegionId],
) -> f64 {
    let total: f64 = demand.iter().sum();
    if total <= 0.0 || matrix.max_rtt() <= 0.0 {
        return 0.0;
    }
    let mut score = 0.0;
    for (r, &d) in demand.iter().enumerate().take(matrix.regions()) {
        if d <= 0.0 {
            continue;
        }
        let region = RegionId(r as u16);
        let nearest = copies
            .iter()
            .filter(|&&c| c != region)
            .map(|&c| matrix.rtt(region, c))
            .fold(matrix.origin_rtt(region), f64::min);
        score += 100.0 * (d / total) * (nearest / matrix.max_rtt());
    }
    score.clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> DistanceMatrix {
        DistanceMatrix::new(&[vec![0.0, 80.0], vec![80.0, 0.0]], &[100.0, 20.0]).unwrap()
    }

    #[test]
    fn score_falls_as_copies_approach_demand() {
        let m = matrix();
        let demand = [10.0, 0.0];
        assert!((proximity_score(&m, &demand, &[]) - 100.0).abs() < 1e-9);
        assert!((proximity_score(&m, &demand, &[RegionId(1)]) - 80.0).abs() < 1e-9);
        assert_eq!(proximity_score(&m, &demand, &[RegionId(0)]), 0.0);
        assert_eq!(proximity_score(&m, &[0.0, 0.0], &[]), 0.0);
    }

    #[test]
    fn placement_score_ignores_a_region_s_own_copy() {
        let m = matrix();
        let demand = [10.0, 0.0];
        assert!((placement_proximity_score(&m, &demand, &[RegionId(0)]) - 100.0).abs() < 1e-9);
        assert!(
            (placement_proximity_score(&m, &demand, &[RegionId(0), RegionId(1)]) - 80.0).abs()
                < 1e-9
        );
    }

    #[test]
    fn bad_matrices_are_rejected() {
        assert!(DistanceMatrix::new(&[vec![0.0]], &[]).is_err());
        assert!(DistanceMatrix::new(&[vec![f64::NAN]], &[1.0]).is_err());
    }
}
