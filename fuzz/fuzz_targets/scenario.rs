//! Fuzz target `scenario`: the check in `checks/scenario.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/scenario/`.
#![no_main]

#[path = "../checks/scenario.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
