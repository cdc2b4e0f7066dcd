//! Fuzz target `wire`: the check in `checks/wire.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/wire/`.
#![no_main]

#[path = "../checks/wire.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
