//! Fuzz target `shard_map`: the check in `checks/shard_map.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/shard_map/`.
#![no_main]

#[path = "../checks/shard_map.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
