//! Fuzz target `trace`: the check in `checks/trace.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/trace/`.
#![no_main]

#[path = "../checks/trace.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
