//! Fuzz target `records`: the check in `checks/records.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/records/`.
#![no_main]

#[path = "../checks/records.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
