//! Replays the fuzz corpora of the node's decoders (Range headers, the configuration file) through
//! the same checks the fuzz targets run (`fuzz/checks/`).

#[path = "../../fuzz/checks/config.rs"]
mod config;
#[path = "../../fuzz/checks/range.rs"]
mod range_check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

// The range check names the parser `crate::range`, as the fuzz target compiles it in by path.
use shoal_node::pullthrough::range;

#[test]
fn every_range_header_corpus_input_resolves_inside_the_blob_or_is_refused() {
    replay::replay("range", range_check::check);
}

#[test]
fn every_config_corpus_input_loads_or_is_refused_with_a_reason() {
    replay::replay("config", config::check);
}
