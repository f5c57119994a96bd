//! The subscription tree: topic filters split into levels, with the subscribers of
//! each filter and the members of each shared group. It answers "who wants a message
//! on this topic" without scanning every subscription; it knows nothing of queues,
//! permissions or the wire.

use std::collections::HashMap;
use std::sync::Arc;

use moat_protocol::SubscriptionOptions;

use super::session::SessionLink;

/// One subscription as the router sees it.
#[derive(Clone)]
pub struct Subscription {
    pub session: Arc<SessionLink>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    /// The rights generation under which every topic of the filter may be received
    /// ([`SessionLink::receive_cover`]); `None`: check each delivery.
    pub receive_cover: Option<u64>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscription>,
    /// Round-robin cursor over `members`.
    next: usize,
}

/// Hashes the literal levels of the tree. Routing looks up every level of every
/// message's topic, and SipHash (std's default) made those lookups a tenth of a
/// QoS 1 message's cost. foldhash is seeded at random per map, and the keys are the
/// levels of filters that authenticated clients hold (bounded per client by
/// `max_subscriptions`), so colliding keys cannot be planted cheaply.
type LevelHasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Node {
    /// Literal levels. The wildcard levels have fields of their own, so matching a
    /// topic costs one map lookup per level instead of three (`#`, `+`, literal).
    children: HashMap<Box<str>, Node, LevelHasher>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    subscribers: HashMap<u64, Subscription>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.shared.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_default(),
            "#" => self.hash.get_or_insert_default(),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

/// A match found by [`SubscriptionTree::collect`]: borrowed from the tree, so a
/// match costs no reference-count update on its session (two atomic operations per
/// recipient per message, a copy dropped for a lagging subscriber included).
pub struct Matched<'tree> {
    pub subscription: &'tree Subscription,
    /// True for the one member chosen from a shared group.
    pub shared: bool,
}

/// An empty match list that keeps `buffer`'s allocation and outlives the tree's
/// borrow, so routing one message allocates no list. Collecting a `Vec`'s own
/// iterator into elements of the same layout reuses its allocation (std's in-place
/// collection); `filter_map` yields nothing, so no element is converted.
#[expect(
    clippy::unnecessary_filter_map,
    reason = "`filter` cannot change the element type, which is the point"
)]
pub fn recycle<'any>(mut buffer: Vec<Matched<'_>>) -> Vec<Matched<'any>> {
    buffer.clear();
    buffer.into_iter().filter_map(|_| None).collect()
}

#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
}

impl SubscriptionTree {
    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a session's subscription to `filter` (in `group` if shared).
    /// Returns true if it replaced an existing one.
    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        subscription: Subscription,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let session_id = subscription.session.id;
        let replaced = match group {
            None => node.subscribers.insert(session_id, subscription).is_some(),
            Some(group) => {
                let members = &mut node.shared.entry(group.into()).or_default().members;
                match members.iter_mut().find(|m| m.session.id == session_id) {
                    Some(existing) => {
                        *existing = subscription;
                        true
                    }
                    None => {
                        members.push(subscription);
                        false
                    }
                }
            }
        };
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes a session's subscription; returns whether it existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Appends every subscription matching `topic` to `out`: all ordinary ones, and
    /// one chosen member of each matching shared group (online members first).
    /// Returns whether the ordinary ones may name a session twice: only when they
    /// come from more than one filter, since a filter holds one subscription per
    /// session (its subscribers are keyed by session id). Routing merges overlaps
    /// only then.
    pub fn collect<'tree>(&'tree mut self, topic: &str, out: &mut Vec<Matched<'tree>>) -> bool {
        let dollar = topic.starts_with('$');
        let mut filters = 0;
        collect_at(&mut self.root, Some(topic), true, dollar, out, &mut filters);
        filters > 1
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, session_id: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(&session_id).is_some(),
            Some(group) => {
                let Some(shared) = node.shared.get_mut(group) else {
                    return false;
                };
                let before = shared.members.len();
                shared.members.retain(|m| m.session.id != session_id);
                let removed = shared.members.len() != before;
                if shared.members.is_empty() {
                    node.shared.remove(group);
                }
                removed
            }
        };
    };
    let Some(child) = node.child_mut(first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, session_id);
    if child.is_empty() {
        node.remove_child(first);
    }
    removed
}

/// `rest` is what is left of the topic (`None` once every level is consumed); it is
/// split one level at a time, so routing a message allocates nothing here.
/// `filters` counts the matching filters with ordinary subscribers.
fn collect_at<'tree>(
    node: &'tree mut Node,
    rest: Option<&str>,
    root: bool,
    dollar: bool,
    out: &mut Vec<Matched<'tree>>,
    filters: &mut usize,
) {
    // Wildcards in the first level never match `$`-topics.
    let wildcards_allowed = !(root && dollar);
    let split = rest.map(|rest| match rest.split_once('/') {
        Some((first, tail)) => (first, Some(tail)),
        None => (rest, None),
    });
    match split {
        Some((first, rest)) => {
            if wildcards_allowed {
                if let Some(hash) = node.hash.as_deref_mut() {
                    visit_node(hash, out, filters);
                }
                if let Some(plus) = node.plus.as_deref_mut() {
                    collect_at(plus, rest, false, dollar, out, filters);
                }
            }
            if let Some(literal) = node.children.get_mut(first) {
                collect_at(literal, rest, false, dollar, out, filters);
            }
        }
        None => {
            // All levels consumed: this node's subscribers match, and so does a "#"
            // below it ("a/#" matches "a").
            let Node {
                hash,
                subscribers,
                shared,
                ..
            } = node;
            if let Some(hash) = hash.as_deref_mut() {
                visit_node(hash, out, filters);
            }
            visit_members(subscribers, shared, out, filters);
        }
    }
}

fn visit_node<'tree>(node: &'tree mut Node, out: &mut Vec<Matched<'tree>>, filters: &mut usize) {
    visit_members(&node.subscribers, &mut node.shared, out, filters);
}

/// Adds one node's ordinary subscribers and one chosen member of each shared group.
fn visit_members<'tree>(
    subscribers: &'tree HashMap<u64, Subscription>,
    shared: &'tree mut HashMap<Box<str>, SharedGroup>,
    out: &mut Vec<Matched<'tree>>,
    filters: &mut usize,
) {
    if !subscribers.is_empty() {
        *filters += 1;
    }
    out.extend(subscribers.values().map(|subscription| Matched {
        subscription,
        shared: false,
    }));
    for group in shared.values_mut() {
        if let Some(subscription) = choose_member(group) {
            out.push(Matched {
                subscription,
                shared: true,
            });
        }
    }
}

fn choose_member(group: &mut SharedGroup) -> Option<&Subscription> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next % n;
    let online = (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| group.members[i].session.mailbox.is_online());
    let index = online.unwrap_or(start);
    group.next = index + 1;
    group.members.get(index)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::broker::mailbox::{Mailbox, QueueLimits};
    use crate::broker::permissions::Permissions;
    use moat_protocol::{QoS, RetainHandling, topic};

    struct NoRights;

    impl Permissions for NoRights {
        fn may_publish(&self, _: &str, _: moat_protocol::TopicName<'_>) -> bool {
            false
        }
        fn may_subscribe(&self, _: &str, _: &str) -> bool {
            false
        }
        fn may_receive(&self, _: &str, _: &str) -> bool {
            false
        }
        fn may_retain(&self) -> bool {
            false
        }
    }

    fn subscription(session_id: u64) -> Subscription {
        let link = SessionLink::new(
            session_id,
            Arc::from(format!("c{session_id}").as_str()),
            Arc::from("owner"),
            Mailbox::new(QueueLimits {
                max_messages: 1,
                max_bytes: 1024,
                max_inflight: 1,
            }),
            Arc::new(NoRights),
        );
        Subscription {
            session: Arc::new(link),
            options: SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
            identifier: None,
            receive_cover: None,
        }
    }

    /// Topic levels: ordinary, empty, and `$`-prefixed ones (which only matter
    /// first, MQTT-4.7.2-1, but may appear anywhere).
    fn topic_level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$SYS", "$x"])
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(topic_level(), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("a topic name is not empty", |t| !t.is_empty())
    }

    /// Valid filters: the topic levels plus `+` anywhere and `#` as the last level.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$SYS", "$x", "+", "#"]);
        prop::collection::vec(level, 1..5)
            .prop_map(|levels| {
                let end = levels
                    .iter()
                    .position(|l| *l == "#")
                    .map_or(levels.len(), |i| i + 1);
                levels[..end].join("/")
            })
            .prop_filter("a valid filter", |f| {
                topic::validate_topic_filter(f).is_ok()
            })
    }

    #[test]
    fn a_recycled_match_list_is_empty_and_keeps_its_allocation() {
        let mut tree = SubscriptionTree::default();
        tree.insert("a/#", None, subscription(1));
        tree.insert("a/b", None, subscription(2));
        let mut buffer: Vec<Matched<'static>> = Vec::with_capacity(16);
        let address = buffer.as_ptr() as usize;
        let mut matches = std::mem::take(&mut buffer);
        tree.collect("a/b", &mut matches);
        assert_eq!(matches.len(), 2);
        buffer = recycle(matches);
        assert!(buffer.is_empty());
        assert_eq!((buffer.as_ptr() as usize, buffer.capacity()), (address, 16));
    }

    fn matched_ids(tree: &mut SubscriptionTree, topic_name: &str) -> BTreeSet<u64> {
        let mut out = Vec::new();
        tree.collect(topic_name, &mut out);
        out.iter().map(|m| m.subscription.session.id).collect()
    }

    /// Whether the tree says the matches of `topic_name` may name a session twice.
    fn may_overlap(tree: &mut SubscriptionTree, topic_name: &str) -> bool {
        tree.collect(topic_name, &mut Vec::new())
    }

    proptest! {
        /// The tree finds exactly the filters `topic::matches` accepts, for every
        /// topic, `$` topics and empty levels included, and forgets removed ones.
        #[test]
        fn the_tree_agrees_with_topic_matches(
            filters in prop::collection::vec(filter(), 1..24),
            topics in prop::collection::vec(topic_name(), 1..12),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut tree = SubscriptionTree::default();
            for (id, f) in filters.iter().enumerate() {
                prop_assert!(topic::validate_topic_filter(f).is_ok(), "generated {f:?}");
                prop_assert!(!tree.insert(f, None, subscription(id as u64)));
            }
            prop_assert_eq!(tree.len(), filters.len());
            let mut live: BTreeSet<u64> = (0..filters.len() as u64).collect();
            for index in &removed {
                let id = index.index(filters.len());
                let existed = live.remove(&(id as u64));
                prop_assert_eq!(tree.remove(&filters[id], None, id as u64), existed);
            }
            prop_assert_eq!(tree.len(), live.len());
            for t in &topics {
                let expected: BTreeSet<u64> = live
                    .iter()
                    .copied()
                    .filter(|&id| topic::matches(&filters[id as usize], t))
                    .collect();
                prop_assert_eq!(matched_ids(&mut tree, t), expected.clone(), "topic {:?}", t);
                // Overlaps are possible exactly when the matches come from more than
                // one filter.
                let matching_filters: BTreeSet<&str> =
                    expected.iter().map(|&id| filters[id as usize].as_str()).collect();
                prop_assert_eq!(may_overlap(&mut tree, t), matching_filters.len() > 1, "topic {:?}", t);
            }
        }
    }

    #[test]
    fn wildcards_at_the_first_level_never_match_dollar_topics() {
        let mut tree = SubscriptionTree::default();
        tree.insert("#", None, subscription(1));
        tree.insert("+/broker", None, subscription(2));
        tree.insert("$SYS/#", None, subscription(3));
        tree.insert("a/#", None, subscription(4));
        assert_eq!(matched_ids(&mut tree, "$SYS/broker"), BTreeSet::from([3]));
        assert_eq!(matched_ids(&mut tree, "x/broker"), BTreeSet::from([1, 2]));
        // "a/#" matches its parent level too.
        assert_eq!(matched_ids(&mut tree, "a"), BTreeSet::from([1, 4]));
    }

    #[test]
    fn matches_from_one_filter_cannot_overlap_and_shared_members_do_not_count() {
        let mut tree = SubscriptionTree::default();
        for id in 1..=3 {
            tree.insert("a/b", None, subscription(id));
            tree.insert("a/b", Some("g"), subscription(id));
        }
        assert!(!may_overlap(&mut tree, "a/b"));
        // One more filter, matched by another session: still one per session, but
        // only a second look could tell, so the router merges.
        tree.insert("a/+", None, subscription(9));
        assert!(may_overlap(&mut tree, "a/b"));
        assert!(!may_overlap(&mut tree, "a/c"));
    }
}
