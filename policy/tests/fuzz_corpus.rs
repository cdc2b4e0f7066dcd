//! Replays the fuzz corpus of the scanner report readers (Trivy, Grype) through the same check the
//! fuzz target runs (`fuzz/checks/threat.rs`).

#[path = "../../fuzz/checks/replay.rs"]
mod replay;
#[path = "../../fuzz/checks/threat.rs"]
mod threat;

#[test]
fn every_scanner_report_corpus_input_scores_within_bounds_or_is_refused() {
    replay::replay("threat", threat::check);
}
