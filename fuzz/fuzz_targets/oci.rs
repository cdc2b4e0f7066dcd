//! Fuzz target `oci`: the check in `checks/oci.rs`, which the crates' `fuzz_corpus` tests also
//! run over every file of `corpus/oci/`.
#![no_main]

#[path = "../checks/oci.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
