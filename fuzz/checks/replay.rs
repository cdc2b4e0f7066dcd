//! Replays a fuzz target's corpus (`fuzz/corpus/<target>/`, seeds and every input the fuzzer kept)
//! through its check, as each crate's `fuzz_corpus` test does: no input may panic, and whatever
//! decodes must re-encode or validate consistently (the check's assertions).

use std::path::PathBuf;

/// Runs `check` over every file of the target's corpus; fails on an empty or missing corpus, so the
/// replay can never pass without checking anything. Returns the number of files replayed.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("reading the corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for path in &files {
        let data = std::fs::read(path).expect("reading a corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
    files.len()
}
