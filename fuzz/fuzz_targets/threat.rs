//! Fuzz target `threat`: the check in `checks/threat.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/threat/`.
#![no_main]

#[path = "../checks/threat.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
