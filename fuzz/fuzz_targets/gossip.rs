//! Fuzz target `gossip`: the check in `checks/gossip.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/gossip/`.
#![no_main]

#[path = "../checks/gossip.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
