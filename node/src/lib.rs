//! The Shoal daemon as a library: a pull-through OCI registry mirror backed by a shard store.
pub mod store;
