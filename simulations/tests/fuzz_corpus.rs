//! Replays the fuzz corpora of the simulator's inputs (scenario files, traces and catalogs) through
//! the same checks the fuzz targets run (`fuzz/checks/`).

#[path = "../../fuzz/checks/replay.rs"]
mod replay;
#[path = "../../fuzz/checks/scenario.rs"]
mod scenario;
#[path = "../../fuzz/checks/trace.rs"]
mod trace;

#[test]
fn every_scenario_corpus_input_parses_valid_or_is_refused() {
    replay::replay("scenario", scenario::check);
}

#[test]
fn every_trace_and_catalog_corpus_input_reads_consistently_or_is_refused() {
    replay::replay("trace", trace::check);
}
