//! Routing: a message from a client (or a will, or `$SYS`) to every matching
//! subscription, one copy per session and one per shared group, with the
//! receive right re-checked per subscriber, the retained store updated, and
//! backpressure signalled when a subscriber's queue fills; subscribing (with the
//! retained messages its retain handling asks for) and unsubscribing. Matching is
//! `subscriptions`'; queues are `mailbox`'s; durable records are built by the
//! `journal`. Knows nothing of the wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use moat_protocol::{QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic};

use super::backpressure;
use super::denials::DenialKind;
use super::journal::{self, Batch, Durable, Reservation, stored_message};
use super::mailbox::{Message, PushOutcome, SubscriptionIds};
use super::permissions::may_publish_message;
use super::retained::{RetainQuota, RetainRefused, Retained};
use super::session::SessionLink;
use super::stats::Stats;
use super::subscriptions::{self, Matched, Subscription, SubscriptionTree};
use super::{Broker, BrokerConfig, State};

/// A message entering the router.
pub struct Incoming {
    pub message: Message,
    /// How many retained messages the publisher may hold (usize::MAX for `$SYS`).
    pub retained_quota: usize,
    /// The identity that published it (`None` for the broker's own `$SYS`).
    pub publisher: Option<Arc<str>>,
    /// The publishing session, for No Local.
    pub from_session: Option<u64>,
}

/// What routing did with a message.
#[derive(Default)]
pub struct Routed {
    pub matched: usize,
    pub retain_refused: bool,
    /// A subscriber whose queue was full, so the message was dropped for it: the
    /// publisher should wait briefly for it to drain (backpressure).
    pub congested: Option<Arc<SessionLink>>,
}

impl Broker {
    /// Routes a message to every matching subscriber and updates the retained store.
    pub fn publish(&self, incoming: Incoming, mut room: Reservation) -> (Routed, Durable) {
        self.publish_keeping_room(incoming, &mut room)
    }

    /// [`Broker::publish`], leaving `room` in place when the message recorded nothing
    /// (see [`Batch::submit_keeping`]).
    pub fn publish_keeping_room(
        &self,
        incoming: Incoming,
        room: &mut Reservation,
    ) -> (Routed, Durable) {
        let mut state = self.lock();
        let mut batch = Batch::default();
        let routed = self.route_locked(&mut state, incoming, &mut batch);
        let durable = batch.submit_keeping(room);
        drop(state);
        (routed, durable)
    }

    /// Routes an inbound QoS 2 message and records its packet id (awaiting PUBREL)
    /// in the same durable batch, so a resend after a crash is not routed twice.
    pub fn publish_exactly_once(
        &self,
        session: &SessionLink,
        packet_id: u16,
        incoming: Incoming,
        room: Reservation,
    ) -> (Routed, Durable) {
        let mut state = self.lock();
        let mut batch = Batch::default();
        let routed = self.route_locked(&mut state, incoming, &mut batch);
        session.add_inbound_qos2(packet_id);
        if session.is_persistent() {
            batch.push([journal::exactly_once_received(session, packet_id)]);
        }
        let durable = batch.submit(room);
        drop(state);
        (routed, durable)
    }

    /// Routes under the lock the caller holds, adding the store operations to `batch`.
    pub(super) fn route_locked(
        &self,
        state: &mut State,
        incoming: Incoming,
        batch: &mut Batch,
    ) -> Routed {
        let mut routed = Routed::default();
        let message = incoming.message;
        if incoming.publisher.is_some() {
            self.stats.received(message.qos, message.payload().len());
        }
        if message.retain {
            let config = self.config();
            let publisher = incoming
                .publisher
                .clone()
                .unwrap_or_else(|| Arc::from("$broker"));
            let retained = Retained {
                message: Message {
                    subscription_ids: SubscriptionIds::None,
                    seq: 0,
                    ..message.clone()
                },
                publisher: Arc::clone(&publisher),
            };
            let quota = RetainQuota {
                max_messages: config.max_retained_messages,
                max_bytes: config.max_retained_bytes,
                max_per_publisher: incoming.retained_quota,
            };
            match state.retained.set(retained, quota) {
                Err(RetainRefused::QuotaExceeded) => routed.retain_refused = true,
                // `$SYS` is rebuilt at start, never stored.
                Ok(()) if !message.topic().starts_with('$') && self.journal.is_enabled() => {
                    batch.push([journal::retained(&publisher, &message, Instant::now())]);
                }
                Ok(()) => {}
            }
        }
        let mut matches = std::mem::take(&mut state.matches);
        let may_overlap = state.tree.collect(message.topic(), &mut matches);
        routed.matched = matches.len();
        routed.congested = deliver(
            &self.stats,
            &message,
            incoming.from_session,
            &mut matches,
            may_overlap,
            batch,
        );
        state.matches = subscriptions::recycle(matches);
        routed
    }

    /// Adds (or replaces) the subscriptions of one SUBSCRIBE and queues the matching
    /// retained messages as each one's retain handling asks, all in one durable
    /// batch. The caller has checked the permissions. One result per filter.
    pub fn subscribe(
        &self,
        session: &Arc<SessionLink>,
        requests: &[(&str, SubscriptionOptions)],
        identifier: Option<u32>,
        room: Reservation,
    ) -> (Vec<Result<(), ReasonCode>>, Durable) {
        let config = self.config();
        let mut state = self.lock();
        let mut batch = Batch::default();
        let results = requests
            .iter()
            .map(|&(filter, options)| {
                self.subscribe_locked(
                    &mut state, &mut batch, &config, session, filter, options, identifier,
                )
            })
            .collect();
        let durable = batch.submit(room);
        drop(state);
        (results, durable)
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe_locked(
        &self,
        state: &mut State,
        batch: &mut Batch,
        config: &BrokerConfig,
        session: &Arc<SessionLink>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> Result<(), ReasonCode> {
        let Some(entry) = state.sessions.get_mut(&session.client_id) else {
            return Err(ReasonCode::UnspecifiedError);
        };
        let existed = entry.subscriptions.contains(filter);
        let cap = session
            .permissions()
            .max_subscriptions()
            .unwrap_or(config.max_subscriptions);
        if !existed && entry.subscriptions.len() >= cap {
            return Err(ReasonCode::QuotaExceeded);
        }
        entry.subscriptions.insert(filter.to_owned());
        if session.is_persistent() {
            batch.push([journal::subscribed(session, filter, options, identifier)]);
        }
        let shared = insert_into_tree(&mut state.tree, filter, session, options, identifier);
        let send_retained = !shared
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            let retained = state.retained.matching(filter, Instant::now());
            let permissions = session.permissions();
            for r in retained {
                if !permissions.may_receive(&session.client_id, r.message.topic()) {
                    self.stats.denials.record(
                        &session.owner,
                        DenialKind::Receive,
                        r.message.topic(),
                    );
                    continue;
                }
                if !self.publisher_may_still_write(&r) {
                    continue;
                }
                let mut message = r.message;
                message.qos = message.qos.min(options.qos);
                message.retain = true;
                message.subscription_ids = identifier.into();
                // A subscriber's own retained burst: its queue cap applies, no one to slow down.
                let _ = push_to(&self.stats, session, message, batch);
            }
        }
        Ok(())
    }

    /// Revocation reaches stored state: a retained message whose publisher lost
    /// write access to its topic (or no longer exists) is withheld. The publisher's
    /// client id is not kept, so `%c` grants are judged with the identity's name.
    fn publisher_may_still_write(&self, retained: &Retained) -> bool {
        if &*retained.publisher == "$broker" {
            return true;
        }
        self.resolve(&retained.publisher).is_some_and(|p| {
            may_publish_message(&*p, &retained.publisher, retained.message.topic(), true).is_ok()
        })
    }

    /// Removes the subscriptions of one UNSUBSCRIBE, all in one durable batch;
    /// whether each existed.
    pub fn unsubscribe(
        &self,
        session: &SessionLink,
        filters: &[String],
        room: Reservation,
    ) -> (Vec<bool>, Durable) {
        let mut state = self.lock();
        let State { sessions, tree, .. } = &mut *state;
        let mut batch = Batch::default();
        let existed = filters
            .iter()
            .map(|filter| {
                let Some(entry) = sessions.get_mut(&session.client_id) else {
                    return false;
                };
                if !entry.subscriptions.remove(filter.as_str()) {
                    return false;
                }
                remove_from_tree(tree, filter, session.id);
                if session.is_persistent() {
                    batch.push([journal::unsubscribed(&session.client_id, filter)]);
                }
                true
            })
            .collect();
        let durable = batch.submit(room);
        drop(state);
        (existed, durable)
    }
}

/// Adds a subscription to the tree; returns whether it is a shared one.
pub(super) fn insert_into_tree(
    tree: &mut SubscriptionTree,
    filter: &str,
    session: &Arc<SessionLink>,
    options: SubscriptionOptions,
    identifier: Option<u32>,
) -> bool {
    let (group, inner) = match topic::parse_shared(filter).ok().flatten() {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    };
    tree.insert(
        inner,
        group,
        Subscription {
            session: Arc::clone(session),
            options,
            identifier,
            receive_cover: session.receive_cover(filter),
        },
    );
    group.is_some()
}

pub(super) fn remove_from_tree(tree: &mut SubscriptionTree, filter: &str, session_id: u64) {
    match topic::parse_shared(filter).ok().flatten() {
        Some((group, inner)) => tree.remove(inner, Some(group), session_id),
        None => tree.remove(filter, None, session_id),
    };
}

/// Queues a message for one session; a persistent session's QoS 1/2 message is
/// journaled at its queue position. A drop is counted and logged here.
fn push_to(
    stats: &Stats,
    session: &Arc<SessionLink>,
    message: Message,
    batch: &mut Batch,
) -> PushOutcome {
    let qos = message.qos;
    let journal = session.is_persistent() && qos != QoS::AtMostOnce;
    let stored = journal.then(|| stored_message(&message, Instant::now()));
    let (outcome, seq) = session.mailbox.push_journaled(message, journal);
    if outcome == PushOutcome::EvictedOldest {
        let evicted = session.mailbox.take_evicted();
        batch.push(
            evicted
                .into_iter()
                .map(|seq| journal::evicted(session, seq)),
        );
    }
    if let (
        PushOutcome::Queued | PushOutcome::Crowded | PushOutcome::EvictedOldest,
        Some(message),
    ) = (outcome, stored)
    {
        batch.queued(session, seq, message);
    }
    match outcome {
        PushOutcome::DroppedFull => backpressure::dropped(stats, session),
        // A keep-newest queue (a bridge's) reports its evictions itself.
        PushOutcome::EvictedOldest => stats.dropped(1),
        _ => {}
    }
    outcome
}

/// One delivery of a message: to one session (its overlapping subscriptions merged)
/// or to one member of a shared group.
struct Delivery<'tree> {
    subscription: &'tree Subscription,
    qos: QoS,
    ids: SubscriptionIds,
    /// To one member of a shared group: never merged with an ordinary delivery.
    shared: bool,
}

/// Up to this many matches, overlapping subscriptions are merged by a scan of the
/// deliveries so far (at most 28 comparisons) instead of a per-message index.
const SCAN_UP_TO: usize = 8;

/// Pushes one message to each matching session: one copy per session for ordinary
/// subscriptions (highest QoS, every subscription identifier), one per shared group.
/// `may_overlap` is [`SubscriptionTree::collect`]'s answer: when the matches come
/// from one filter no session appears twice among them, and each is delivered as it
/// is, with no merge (the common case: a fan-out to many subscribers of one topic).
/// Returns the session the publisher should wait for, if any
/// ([`backpressure::Crowding`]). Leaves `matches` empty (its buffer is reused).
fn deliver(
    stats: &Stats,
    message: &Message,
    from_session: Option<u64>,
    matches: &mut Vec<Matched<'_>>,
    may_overlap: bool,
    batch: &mut Batch,
) -> Option<Arc<SessionLink>> {
    let mut crowding = backpressure::Crowding::default();
    if !may_overlap || matches.len() < 2 {
        for m in matches.drain(..) {
            let sub = m.subscription;
            if sub.options.no_local && !m.shared && Some(sub.session.id) == from_session {
                continue;
            }
            let (qos, ids) = (sub.options.qos, sub.identifier.into());
            deliver_one(stats, message, sub, qos, ids, &mut crowding, batch);
        }
        return crowding.verdict(stats);
    }
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(matches.len());
    // To merge overlaps, each session's ordinary delivery is found by a scan of
    // `deliveries` for a few matches (no allocation per message: with a slow
    // subscriber next to a fast one the map cost ~150 instructions a message), and
    // through an index for many.
    let indexed = matches.len() > SCAN_UP_TO;
    // Sized once: growing it rehashed it three times for 8 subscribers.
    let index_size = if indexed { matches.len() } else { 0 };
    let mut ordinary: HashMap<u64, usize, SessionIds> =
        HashMap::with_capacity_and_hasher(index_size, SessionIds);
    for m in matches.drain(..) {
        let sub = m.subscription;
        if sub.options.no_local && !m.shared && Some(sub.session.id) == from_session {
            continue;
        }
        if !m.shared {
            let id = sub.session.id;
            let earlier = if indexed {
                ordinary.get(&id).copied()
            } else {
                deliveries
                    .iter()
                    .position(|d| !d.shared && d.subscription.session.id == id)
            };
            if let Some(i) = earlier {
                let delivery = &mut deliveries[i];
                delivery.qos = delivery.qos.max(sub.options.qos);
                delivery.ids.extend(sub.identifier);
                continue;
            }
            if indexed {
                ordinary.insert(id, deliveries.len());
            }
        }
        deliveries.push(Delivery {
            qos: sub.options.qos,
            ids: sub.identifier.into(),
            shared: m.shared,
            subscription: sub,
        });
    }
    for d in deliveries {
        deliver_one(
            stats,
            message,
            d.subscription,
            d.qos,
            d.ids,
            &mut crowding,
            batch,
        );
    }
    crowding.verdict(stats)
}

/// Checks the right to receive and queues one subscriber's copy of `message`
/// (`qos` and `ids` are its subscriptions' merged ones), noting how its queue took it.
fn deliver_one(
    stats: &Stats,
    message: &Message,
    sub: &Subscription,
    qos: QoS,
    ids: SubscriptionIds,
    crowding: &mut backpressure::Crowding,
    batch: &mut Batch,
) {
    let session = &sub.session;
    // Each delivery of one message has the same topic, so the overlapping
    // subscriptions merged into `sub` cover it if the first one does.
    if !session.may_receive(sub.receive_cover, message.topic()) {
        stats
            .denials
            .record(&session.owner, DenialKind::Receive, message.topic());
        return;
    }
    let qos = message.qos.min(qos);
    // A lagging client's full queue: nobody waits for it (see `backpressure`), so
    // its copy is counted as dropped before it is built.
    if let Some(drops) =
        session
            .mailbox
            .drop_if_full_and_nobody_waits(message.topic(), message.cost(), qos)
    {
        backpressure::counted(stats, session, drops);
        return;
    }
    let outgoing = Message {
        body: Arc::clone(&message.body),
        qos,
        retain: message.retain && sub.options.retain_as_published,
        subscription_ids: ids,
        seq: 0,
    };
    crowding.note(session, qos, push_to(stats, session, outgoing, batch));
}

/// Hashes the broker's own session ids (a counter, never chosen by a peer) with one
/// multiplication instead of SipHash: the fan-out index is built per message.
#[derive(Default, Clone, Copy)]
struct SessionIds;

impl std::hash::BuildHasher for SessionIds {
    type Hasher = SessionIdHasher;
    fn build_hasher(&self) -> SessionIdHasher {
        SessionIdHasher(0)
    }
}

struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing spreads sequential ids over the high bits the table uses.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use moat_protocol::RetainHandling;

    use super::*;
    use crate::broker::backpressure::tests::subscriber;
    use crate::broker::mailbox::Outbound;

    fn subscription(session: &Arc<SessionLink>, qos: QoS, id: u32) -> Subscription {
        Subscription {
            session: Arc::clone(session),
            options: SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
            identifier: Some(id),
            receive_cover: None,
        }
    }

    /// The tree's answer for these (subscription, shared) pairs.
    fn matched(subscriptions: &[(Subscription, bool)]) -> Vec<Matched<'_>> {
        subscriptions
            .iter()
            .map(|(subscription, shared)| Matched {
                subscription,
                shared: *shared,
            })
            .collect()
    }

    /// (QoS, subscription identifiers) of each copy queued for `session`.
    fn received(session: &SessionLink) -> Vec<(QoS, Vec<u32>)> {
        let mut out = Vec::new();
        session.mailbox.drain(Instant::now(), &mut out);
        out.into_iter()
            .filter_map(|sent| match sent {
                Outbound::Publish { message, .. } => {
                    Some((message.qos, message.subscription_ids.as_slice().to_vec()))
                }
                Outbound::PubRel { .. } => None,
            })
            .collect()
    }

    #[test]
    fn overlapping_subscriptions_merge_into_one_copy_per_session_by_scan_and_by_index() {
        let message = Message::new("a/b", Bytes::from_static(b"x"), QoS::ExactlyOnce, false);
        // A few matches (scanned) and more than SCAN_UP_TO (indexed): the same copies.
        for extra in [0, SCAN_UP_TO] {
            let (a, b) = (subscriber(1, 100, 100), subscriber(2, 100, 100));
            let mut subscriptions = vec![
                (subscription(&a, QoS::AtMostOnce, 1), false),
                (subscription(&b, QoS::AtLeastOnce, 5), false),
                (subscription(&a, QoS::ExactlyOnce, 2), false),
                // A shared group's member: its own copy, never merged.
                (subscription(&a, QoS::AtLeastOnce, 3), true),
            ];
            subscriptions.extend(
                (0..extra).map(|i| (subscription(&b, QoS::AtMostOnce, 10 + i as u32), false)),
            );
            let mut matches = matched(&subscriptions);
            let stats = Stats::default();
            deliver(
                &stats,
                &message,
                None,
                &mut matches,
                true,
                &mut Batch::default(),
            );
            assert_eq!(
                received(&a),
                [(QoS::ExactlyOnce, vec![1, 2]), (QoS::AtLeastOnce, vec![3])]
            );
            let b_ids: Vec<u32> = [5]
                .into_iter()
                .chain((0..extra).map(|i| 10 + i as u32))
                .collect();
            assert_eq!(received(&b), [(QoS::AtLeastOnce, b_ids)]);
        }
    }
    #[test]
    fn matches_from_one_filter_are_delivered_as_the_merging_path_delivers_them() {
        let message = Message::new("a/b", Bytes::from_static(b"x"), QoS::AtLeastOnce, false);
        // Few (scanned) and many (indexed) subscribers; one of them the publisher with
        // No Local; shared members next to ordinary subscriptions of the same sessions.
        for count in [1, 3, SCAN_UP_TO + 4] {
            let mut outcomes = Vec::new();
            for may_overlap in [false, true] {
                let sessions: Vec<_> = (0..count)
                    .map(|i| subscriber(i as u64 + 1, 100, 100))
                    .collect();
                let mut subscriptions: Vec<(Subscription, bool)> = sessions
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i % 3];
                        let mut sub = subscription(s, qos, i as u32 + 1);
                        sub.options.no_local = i == 0;
                        (sub, false)
                    })
                    .collect();
                subscriptions.push((
                    subscription(&sessions[count - 1], QoS::AtLeastOnce, 99),
                    true,
                ));
                let mut matches = matched(&subscriptions);
                let stats = Stats::default();
                let from_publisher = Some(sessions[0].id);
                let batch = &mut Batch::default();
                deliver(
                    &stats,
                    &message,
                    from_publisher,
                    &mut matches,
                    may_overlap,
                    batch,
                );
                assert!(matches.is_empty());
                outcomes.push(sessions.iter().map(|s| received(s)).collect::<Vec<_>>());
            }
            assert_eq!(outcomes[0], outcomes[1], "{count} subscribers");
            // The publisher's No Local subscription got nothing; every other one a copy.
            assert!(outcomes[0][0].is_empty() || count == 1);
            // One copy for each subscriber but the publisher, and one for the group.
            let copies: usize = outcomes[0].iter().map(Vec::len).sum();
            assert_eq!(copies, (count - 1) + 1, "{count} subscribers");
        }
    }
}
