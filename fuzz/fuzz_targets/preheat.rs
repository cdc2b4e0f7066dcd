//! Fuzz target `preheat`: the check in `checks/preheat.rs`, which `proto`'s `fuzz_corpus` test also
//! runs over every file of `corpus/preheat/`.
#![no_main]

#[path = "../checks/preheat.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
