//! Trivy and Grype JSON reports (`shoal_policy::threat`). A report that parses gives every layer
//! a finite score from 0 to 100.

use shoal_policy::threat::{parse_grype, parse_report, parse_trivy, ThreatTable};

/// The first byte picks the reader (either by its keys, Trivy, Grype); the rest is the report.
pub fn check(data: &[u8]) {
    let Some((&selector, report)) = data.split_first() else {
        return;
    };
    let parsed = match selector % 3 {
        0 => parse_report(report),
        1 => parse_trivy(report),
        _ => parse_grype(report),
    };
    let Ok(parsed) = parsed else {
        return;
    };
    for finding in &parsed.findings {
        let score = finding.score();
        assert!(
            score.is_finite() && (0.0..=100.0).contains(&score),
            "finding score {score}"
        );
    }
    let mut table = ThreatTable::new();
    table.add_report(&parsed, None);
    for (_, layer) in table.layers() {
        let score = layer.score;
        assert!(
            score.is_finite() && (0.0..=100.0).contains(&score),
            "layer score {score}"
        );
    }
}
