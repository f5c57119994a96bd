//! The broker's table of sessions, found by client id. Every session has one entry,
//! and a hash table's every slot is as wide as an entry, used or not (about half
//! are, at 1 000 sessions): so the key is not stored beside the entry, it is the
//! client id its [`SessionLink`] already holds, and the entry keeps its expiry in
//! whole seconds. That took a slot from 80 bytes to 56 (about 50 bytes per idle
//! connection, issue 16). Knows nothing of what an entry means: attach, detach and
//! expiry are `sessions`'.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::session::{Kick, SessionLink};
use super::session_filters::SessionFilters;

/// The broker's bookkeeping of one session, beside what the router sees of it
/// ([`SessionLink`], whose client id is the entry's key).
pub(super) struct SessionEntry {
    pub link: Arc<SessionLink>,
    /// The session's filters (the tree holds options and identifiers), so they can
    /// be dropped on reload or expiry.
    pub subscriptions: SessionFilters,
    /// The live connection, if any: its id and its kill switch.
    pub connection: Option<(u64, Arc<Kick>)>,
    /// When an offline session ends.
    pub expires_at: Option<Instant>,
    /// The session expiry interval, in seconds as MQTT gives it (u32 on the wire).
    expiry_secs: u32,
}

impl SessionEntry {
    pub fn new(
        link: Arc<SessionLink>,
        connection: Option<(u64, Arc<Kick>)>,
        expiry: Duration,
        expires_at: Option<Instant>,
    ) -> SessionEntry {
        SessionEntry {
            link,
            subscriptions: SessionFilters::default(),
            connection,
            expires_at,
            expiry_secs: whole_secs(expiry),
        }
    }

    pub fn expiry(&self) -> Duration {
        Duration::from_secs(u64::from(self.expiry_secs))
    }

    pub fn set_expiry(&mut self, expiry: Duration) {
        self.expiry_secs = whole_secs(expiry);
    }
}

/// An interval as MQTT's whole seconds: rounded up, so a session kept at all is
/// kept for at least a second, and saturating at u32::MAX (136 years).
fn whole_secs(expiry: Duration) -> u32 {
    let secs = expiry.as_secs() + u64::from(expiry.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Sessions by client id. Client ids come from clients, so the hash is seeded
/// per table (std's SipHash), as `HashMap`'s is.
#[derive(Default)]
pub(super) struct SessionTable {
    entries: HashTable<SessionEntry>,
    hasher: std::collections::hash_map::RandomState,
}

impl SessionTable {
    fn hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, client_id: &str) -> Option<&SessionEntry> {
        self.entries
            .find(self.hash(client_id), |e| &*e.link.client_id == client_id)
    }

    pub fn get_mut(&mut self, client_id: &str) -> Option<&mut SessionEntry> {
        let hash = self.hash(client_id);
        self.entries
            .find_mut(hash, |e| &*e.link.client_id == client_id)
    }

    /// Files `entry` under its link's client id, replacing (and returning) the
    /// entry that was there.
    pub fn insert(&mut self, entry: SessionEntry) -> Option<SessionEntry> {
        let hash = self.hash(&entry.link.client_id);
        let hasher = &self.hasher;
        match self.entries.entry(
            hash,
            |e| e.link.client_id == entry.link.client_id,
            |e| hasher.hash_one(&*e.link.client_id),
        ) {
            Entry::Occupied(mut occupied) => Some(std::mem::replace(occupied.get_mut(), entry)),
            Entry::Vacant(vacant) => {
                vacant.insert(entry);
                None
            }
        }
    }

    pub fn remove(&mut self, client_id: &str) -> Option<SessionEntry> {
        let hash = self.hash(client_id);
        match self
            .entries
            .find_entry(hash, |e| &*e.link.client_id == client_id)
        {
            Ok(occupied) => Some(occupied.remove().0),
            Err(_) => None,
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &SessionEntry> {
        self.entries.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut SessionEntry> {
        self.entries.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::backpressure::tests::subscriber;

    /// Session `id` under client id `client-{client}`.
    fn link(id: u64, client: u64) -> Arc<SessionLink> {
        let mut link = subscriber(client, 10, 10);
        if let Some(inner) = Arc::get_mut(&mut link) {
            inner.id = id;
        }
        link
    }

    #[test]
    fn finds_replaces_and_removes_by_client_id() {
        let mut table = SessionTable::default();
        for (id, client) in [(1, 1), (2, 2), (3, 3)] {
            assert!(
                table
                    .insert(SessionEntry::new(
                        link(id, client),
                        None,
                        Duration::ZERO,
                        None
                    ))
                    .is_none()
            );
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.get("client-2").map(|e| e.link.id), Some(2));
        assert!(table.get("client-4").is_none());
        let old = table.insert(SessionEntry::new(link(4, 2), None, Duration::ZERO, None));
        assert_eq!(old.map(|e| e.link.id), Some(2), "the entry it replaced");
        assert_eq!(table.len(), 3);
        if let Some(entry) = table.get_mut("client-2") {
            entry.set_expiry(Duration::from_secs(60));
        }
        assert_eq!(
            table.get("client-2").map(SessionEntry::expiry),
            Some(Duration::from_secs(60))
        );
        assert_eq!(table.remove("client-1").map(|e| e.link.id), Some(1));
        assert!(table.remove("client-1").is_none());
        let mut ids: Vec<u64> = table.values().map(|e| e.link.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [3, 4]);
    }

    #[test]
    fn expiry_is_kept_in_whole_seconds_rounded_up_and_saturating() {
        assert_eq!(whole_secs(Duration::ZERO), 0);
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(whole_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn a_slot_is_no_wider_than_56_bytes() {
        assert!(std::mem::size_of::<SessionEntry>() <= 56);
    }
}
