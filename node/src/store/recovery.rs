//! Rebuilding the index from the source of truth, and checking the store (`shoal fsck`).
//!
//! The shard maps in `maps/` and the shard files in `shards/` are the truth; the sled index is
//! derived from them. After an unclean stop the index is rebuilt: every map that decodes, names
//! its own blob and whose shard files all exist with the right length is indexed; other maps are
//! removed (their blob is fetched again when asked for); shard files no indexed map uses are
//! deleted. `fsck` additionally reads every shard and checks its BLAKE3 hash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::Path;

use shoal_proto::records::{self, ShardRecord};
use shoal_proto::{BlobDigest, ShardHash, ShardMap};

use super::{io_context, Layout, ShardStore, StoreError, StoreStats, CLEAN_KEY};

/// What a rebuild found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Maps indexed.
    pub blobs: u64,
    /// Maps removed because they did not decode or a shard was missing.
    pub maps_removed: u64,
    /// Shard files removed because no map used them.
    pub orphan_shards_removed: u64,
}

fn list_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_context(format!("listing {}", dir.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_context(format!("listing {}", dir.display())))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

/// Shard files found on disk.
struct ShardFiles {
    /// Well-named shard files and their lengths.
    shards: Vec<(ShardHash, u64)>,
    /// Files under `shards/` that are not named like shards.
    strays: Vec<String>,
}

/// Every shard file in the store, by hash (files with other names are returned separately).
fn list_shard_files(layout: &Layout) -> Result<ShardFiles, StoreError> {
    let mut shards = Vec::new();
    let mut strays = Vec::new();
    for (fan, dir) in list_files(&layout.shards_dir())? {
        for (name, path) in list_files(&dir)? {
            match ShardHash::from_hex(&name) {
                Ok(hash) if name.starts_with(&fan) => {
                    let len = fs::metadata(&path)
                        .map_err(io_context(format!("stat {}", path.display())))?
                        .len();
                    shards.push((hash, len));
                }
                _ => strays.push(path.display().to_string()),
            }
        }
    }
    Ok(ShardFiles { shards, strays })
}

/// Reads and checks one map file: it must decode and name the blob in its file name.
fn read_map(name: &str, path: &Path) -> Result<ShardMap, String> {
    let digest = BlobDigest::from_hex(name).map_err(|e| format!("bad file name: {e}"))?;
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let map = ShardMap::decode(&bytes).map_err(|e| e.to_string())?;
    if map.blob_digest() != digest {
        return Err("map names another blob".into());
    }
    Ok(map)
}

/// Rebuilds the index from the shard maps and shard files (see the module docs).
pub fn rebuild_index(store: &ShardStore) -> Result<RebuildReport, StoreError> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let mut live = store.live();
    let shard_lens: HashMap<ShardHash, u64> =
        list_shard_files(layout)?.shards.into_iter().collect();
    inner.blobs.clear()?;
    inner.shards.clear()?;
    let mut report = RebuildReport::default();
    let mut refcounts: HashMap<ShardHash, (u64, u32)> = HashMap::new();
    let mut indexed = HashSet::new();
    for (name, path) in list_files(&layout.maps_dir())? {
        let usable = read_map(&name, &path).ok().filter(|map| {
            map.shards
                .iter()
                .all(|s| shard_lens.get(&s.shard_hash()) == Some(&u64::from(s.len)))
        });
        let Some(map) = usable else {
            tracing::warn!(map = %path.display(), "removing a shard map that is unreadable or misses shards");
            fs::remove_file(&path).map_err(io_context(format!("removing {}", path.display())))?;
            report.maps_removed += 1;
            continue;
        };
        let unique: BTreeMap<ShardHash, u32> =
            map.shards.iter().map(|s| (s.shard_hash(), s.len)).collect();
        for (hash, len) in unique {
            refcounts.entry(hash).or_insert((0, len)).0 += 1;
        }
        inner.blobs.insert(map.blob, map.encode())?;
        indexed.insert(map.blob);
        report.blobs += 1;
    }
    let mut stats = StoreStats {
        blobs: report.blobs,
        bytes: 0,
    };
    for (hash, (refcount, len)) in &refcounts {
        inner.shards.insert(
            hash.as_bytes(),
            records::encode(&ShardRecord {
                refcount: *refcount,
                len: *len,
            }),
        )?;
        stats.bytes += u64::from(*len);
    }
    for hash in shard_lens.keys() {
        if !refcounts.contains_key(hash) && !live.pinned.contains_key(hash) {
            let path = layout.shard_path(hash);
            fs::remove_file(&path).map_err(io_context(format!("removing {}", path.display())))?;
            report.orphan_shards_removed += 1;
        }
    }
    for key in inner.access.iter().keys() {
        let key = key?;
        if !indexed.iter().any(|d| d.as_slice() == key.as_ref()) {
            inner.access.remove(key)?;
        }
    }
    live.stats = stats;
    inner.db.flush()?;
    Ok(report)
}

/// What `fsck` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Shard maps read.
    pub maps_checked: u64,
    /// Shard files read and hashed.
    pub shards_checked: u64,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Maps that do not decode or name another blob, with the reason.
    pub bad_maps: Vec<String>,
    /// Shards whose bytes do not match their hash.
    pub corrupt_shards: Vec<ShardHash>,
    /// Shards a map lists that have no file.
    pub missing_shards: Vec<ShardHash>,
    /// Shard files no map uses (normal after an unclean stop: removed at the next start).
    pub orphan_shards: u64,
    /// Files under `shards/` that are not named like shards.
    pub stray_files: Vec<String>,
    /// Blobs with a map but no index entry, or the reverse (only checked after a clean stop).
    pub index_mismatches: Vec<String>,
    /// Whether the store was closed cleanly (otherwise the next start rebuilds the index).
    pub clean_shutdown: bool,
}

impl FsckReport {
    /// Whether anything is wrong that the next start would not fix by itself.
    pub fn is_clean(&self) -> bool {
        self.bad_maps.is_empty()
            && self.corrupt_shards.is_empty()
            && self.missing_shards.is_empty()
            && self.stray_files.is_empty()
            && self.index_mismatches.is_empty()
            && (!self.clean_shutdown || self.orphan_shards == 0)
    }
}

/// Checks a stopped store: every map, every shard's BLAKE3 hash, and the index against the maps.
/// With `repair`, removes what is bad (corrupt shards, unusable maps, strays) and rebuilds the
/// index, so the store restarts clean; blobs that lost shards are fetched again when asked for.
pub fn fsck(data_dir: &Path, repair: bool) -> Result<FsckReport, StoreError> {
    let layout = Layout::new(data_dir);
    if !layout.maps_dir().is_dir() {
        return Err(StoreError::Io {
            context: format!("{} is not a Shoal data directory", data_dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut report = FsckReport::default();
    let ShardFiles {
        shards: shard_files,
        strays,
    } = list_shard_files(&layout)?;
    report.stray_files = strays;
    let mut verified: HashMap<ShardHash, bool> = HashMap::new();
    let mut good_maps = BTreeSet::new();
    for (name, path) in list_files(&layout.maps_dir())? {
        report.maps_checked += 1;
        let map = match read_map(&name, &path) {
            Ok(map) => map,
            Err(reason) => {
                report
                    .bad_maps
                    .push(format!("{}: {reason}", path.display()));
                continue;
            }
        };
        let mut map_ok = true;
        for shard in &map.shards {
            let hash = shard.shard_hash();
            let ok = *verified.entry(hash).or_insert_with(|| {
                let Ok(bytes) = fs::read(layout.shard_path(&hash)) else {
                    report.missing_shards.push(hash);
                    return false;
                };
                report.shards_checked += 1;
                report.bytes_checked += bytes.len() as u64;
                let good = bytes.len() == shard.len as usize
                    && blake3::hash(&bytes).as_bytes() == hash.as_bytes();
                if !good {
                    report.corrupt_shards.push(hash);
                }
                good
            });
            map_ok &= ok;
        }
        if map_ok {
            good_maps.insert(map.blob);
        }
    }
    report.orphan_shards = shard_files
        .iter()
        .filter(|(hash, _)| !verified.contains_key(hash))
        .count() as u64;

    let db = super::open_index(&layout.index_dir()).map_err(|e| StoreError::Io {
        context: format!(
            "opening the index in {} (is shoald still running? stop it first)",
            data_dir.display()
        ),
        source: std::io::Error::other(e.to_string()),
    })?;
    let meta = db.open_tree("meta")?;
    report.clean_shutdown = meta.get(CLEAN_KEY)?.is_some();
    let blobs = db.open_tree("blobs")?;
    if report.clean_shutdown {
        let mut indexed = BTreeSet::new();
        for key in blobs.iter().keys() {
            if let Ok(bytes) = <[u8; 32]>::try_from(key?.as_ref()) {
                indexed.insert(bytes);
            }
        }
        for missing in good_maps.difference(&indexed) {
            report.index_mismatches.push(format!(
                "{} has a map but no index entry",
                BlobDigest::from_bytes(*missing)
            ));
        }
        for dangling in indexed.difference(&good_maps) {
            report.index_mismatches.push(format!(
                "{} is indexed but has no usable map",
                BlobDigest::from_bytes(*dangling)
            ));
        }
    }
    if repair {
        for hash in &report.corrupt_shards {
            let _ = fs::remove_file(layout.shard_path(hash));
        }
        for stray in &report.stray_files {
            let _ = fs::remove_file(stray);
        }
        // Forget the clean flag: the next open rebuilds the index, dropping maps that lost shards
        // and shards no map uses.
        meta.remove(CLEAN_KEY)?;
        db.flush()?;
    }
    Ok(report)
}
