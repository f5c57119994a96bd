//! The filters one session is subscribed to, kept next to its entry in the broker
//! state so they can be dropped on reload or expiry (the subscription tree holds
//! options and identifiers). Most sessions of a smart home subscribe to nothing
//! (sensors publish only), and the broker keeps one entry per session in a hash
//! table whose every slot is as wide as an entry: so the set is allocated only
//! once it holds a filter, and the slot holds one pointer instead of an empty
//! `HashSet` (48 bytes). Knows nothing of the tree, the store or permissions.

use std::collections::HashSet;

#[derive(Default, Debug)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every entry instead of an empty 48-byte set"
)]
pub struct SessionFilters(Option<Box<HashSet<String>>>);

impl SessionFilters {
    pub fn contains(&self, filter: &str) -> bool {
        self.0.as_ref().is_some_and(|set| set.contains(filter))
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.len())
    }

    pub fn insert(&mut self, filter: String) {
        self.0.get_or_insert_default().insert(filter);
    }

    /// Whether it was there. The last removal frees the set.
    pub fn remove(&mut self, filter: &str) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let removed = set.remove(filter);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// Keeps the filters `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&String) -> bool) {
        if let Some(set) = self.0.as_mut() {
            set.retain(keep);
            if set.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl IntoIterator for SessionFilters {
    type Item = String;
    type IntoIter = std::iter::Flatten<std::option::IntoIter<HashSet<String>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|set| *set).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nothing_until_a_filter_and_frees_the_set_with_the_last() {
        let mut filters = SessionFilters::default();
        assert!(filters.0.is_none());
        assert!(!filters.remove("a/#"));
        filters.insert("a/#".to_owned());
        filters.insert("b/+".to_owned());
        filters.insert("a/#".to_owned());
        assert_eq!(filters.len(), 2);
        assert!(filters.contains("a/#") && !filters.contains("c"));
        filters.retain(|f| f != "b/+");
        assert_eq!(filters.len(), 1);
        assert!(filters.remove("a/#"));
        assert!(filters.0.is_none(), "the last removal frees the set");
        filters.insert("x".to_owned());
        assert_eq!(filters.into_iter().collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn an_entry_slot_holds_one_pointer() {
        assert_eq!(
            std::mem::size_of::<SessionFilters>(),
            std::mem::size_of::<usize>()
        );
    }
}
