//! Fuzz target `config`: the check in `checks/config.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/config/`.
#![no_main]

#[path = "../../checks/config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
