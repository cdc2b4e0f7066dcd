//! Fuzz target `threat_scores`: the check in `checks/threat_scores.rs`, which `proto`'s `fuzz_corpus` test also
//! runs over every file of `corpus/threat_scores/`.
#![no_main]

#[path = "../checks/threat_scores.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
