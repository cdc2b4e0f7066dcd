//! Kademlia's record store, counted: libp2p's `MemoryStore` (bounded by its config) wrapped so
//! that the number of provider records it holds, this node's own and those it stores for other
//! members, is known at any time for the metrics. Every change goes through `add_provider` and
//! `remove_provider`, whichever part of Kademlia makes it (inbound requests, republishing,
//! expiry), and the count follows the store's own answer before and after each change.

use std::borrow::Cow;

use libp2p::kad::store::{MemoryStore, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

/// Provider records held, by whose they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProviderCounts {
    /// Records naming this node as the provider.
    pub(crate) local: usize,
    /// Records other members asked this node to store.
    pub(crate) remote: usize,
}

/// A `MemoryStore` that counts its provider records.
pub(crate) struct CountedStore {
    inner: MemoryStore,
    local: PeerId,
    counts: ProviderCounts,
}

impl CountedStore {
    pub(crate) fn new(local: PeerId, inner: MemoryStore) -> Self {
        Self {
            inner,
            local,
            counts: ProviderCounts::default(),
        }
    }

    /// The provider records held now.
    pub(crate) fn provider_counts(&self) -> ProviderCounts {
        self.counts
    }

    fn counts_for(&self, key: &RecordKey) -> ProviderCounts {
        let providers = self.inner.providers(key);
        let local = providers
            .iter()
            .filter(|record| record.provider == self.local)
            .count();
        ProviderCounts {
            local,
            remote: providers.len() - local,
        }
    }

    fn adjust(&mut self, before: ProviderCounts, after: ProviderCounts) {
        self.counts.local = (self.counts.local + after.local).saturating_sub(before.local);
        self.counts.remote = (self.counts.remote + after.remote).saturating_sub(before.remote);
    }
}

impl RecordStore for CountedStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(key)
    }

    fn put(&mut self, record: Record) -> Result<()> {
        self.inner.put(record)
    }

    fn remove(&mut self, key: &RecordKey) {
        self.inner.remove(key);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let key = record.key.clone();
        let before = self.counts_for(&key);
        let result = self.inner.add_provider(record);
        let after = self.counts_for(&key);
        self.adjust(before, after);
        result
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        let before = self.counts_for(key);
        self.inner.remove_provider(key, provider);
        let after = self.counts_for(key);
        self.adjust(before, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &RecordKey, provider: PeerId) -> ProviderRecord {
        ProviderRecord::new(key.clone(), provider, Vec::new())
    }

    #[test]
    fn provider_records_are_counted_by_whose_they_are() {
        let local = PeerId::random();
        let mut store = CountedStore::new(local, MemoryStore::new(local));
        let (one, two) = (RecordKey::new(b"one"), RecordKey::new(b"two"));
        let (a, b) = (PeerId::random(), PeerId::random());
        store.add_provider(record(&one, local)).unwrap();
        store.add_provider(record(&one, a)).unwrap();
        store.add_provider(record(&two, a)).unwrap();
        store.add_provider(record(&two, b)).unwrap();
        // Replacing a record in place adds nothing.
        store.add_provider(record(&two, b)).unwrap();
        store.add_provider(record(&one, local)).unwrap();
        assert_eq!(
            store.provider_counts(),
            ProviderCounts {
                local: 1,
                remote: 3
            }
        );
        store.remove_provider(&two, &a);
        store.remove_provider(&two, &a);
        store.remove_provider(&one, &local);
        assert_eq!(
            store.provider_counts(),
            ProviderCounts {
                local: 0,
                remote: 2
            }
        );
        assert_eq!(store.provided().count(), 0);
    }
}
