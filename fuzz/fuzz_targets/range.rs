//! Fuzz target `range`: the check in `checks/range.rs`, which `node`'s `fuzz_corpus` test also
//! runs over every file of `corpus/range/`. The parser is the daemon's own source file, compiled
//! in by path, so this target builds without the daemon's dependencies.
#![no_main]

#[path = "../../node/src/pullthrough/range.rs"]
mod range;

#[path = "../checks/range.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
