//! The broker core: sessions, the subscription tree, retained messages, routing,
//! wills and session expiry, plus the per-connection protocol driver that speaks
//! MQTT over any byte stream. It knows nothing of TLS, sockets or manifests: rights
//! arrive as [`Permissions`] and authentication through a [`Gatekeeper`].

pub mod connection;
pub mod mailbox;
pub mod permissions;
pub mod retained;
pub mod session;
pub mod stats;
pub mod subscriptions;
pub mod sys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::protocol::{QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic};

use mailbox::{Mailbox, Message, PushOutcome, QueueLimits};
pub use permissions::{Admission, ClientLimits, Gatekeeper, ListenerKind, PeerInfo, Permissions};
use retained::{RetainRefused, Retained, RetainedStore};
use session::{Kick, SessionLink};
use stats::Stats;
use subscriptions::{Matched, Subscription, SubscriptionTree};

/// Broker-wide limits (from the manifest; swapped on reload).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub max_packet_size_before_auth: u32,
    pub connect_timeout: Duration,
    pub max_keepalive: u16,
    pub max_inflight: u16,
    pub max_subscriptions: usize,
    pub max_user_properties: usize,
    pub max_user_property_bytes: usize,
    pub max_client_id_length: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// Topic aliases a client may use towards us.
    pub topic_alias_maximum: u16,
    /// Cap on a session's expiry interval (also used for 3.1.1 persistent sessions).
    pub max_session_expiry: Duration,
    /// Offline persistent sessions one identity may keep.
    pub max_sessions_per_identity: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size_before_auth: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 300,
            max_inflight: 20,
            max_subscriptions: 256,
            max_user_properties: 32,
            max_user_property_bytes: 8 * 1024,
            max_client_id_length: 128,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 * 1024 * 1024,
            topic_alias_maximum: 32,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_sessions_per_identity: 64,
        }
    }
}

/// A message entering the router.
pub struct Incoming {
    pub message: Message,
    /// The identity that published it (`None` for the broker's own `$SYS`).
    pub publisher: Option<Arc<str>>,
    /// The publishing session, for No Local.
    pub from_session: Option<u64>,
}

/// What routing did with a message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub matched: usize,
    pub retain_refused: bool,
}

/// A subscription as the session remembers it (to drop it on reload or expiry, and
/// to persist it).
#[derive(Clone)]
struct StoredSubscription {
    #[allow(dead_code)] // read by the durable store (issue 4)
    options: SubscriptionOptions,
}

struct SessionEntry {
    link: Arc<SessionLink>,
    subscriptions: HashMap<String, StoredSubscription>,
    /// The live connection, if any: its id and its kill switch.
    connection: Option<(u64, Arc<Kick>)>,
    expiry: Duration,
    /// When an offline session ends.
    expires_at: Option<Instant>,
}

/// A will waiting for its delay to pass.
struct PendingWill {
    session_id: u64,
    due: Instant,
    incoming: Incoming,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, SessionEntry>,
    tree: SubscriptionTree,
    retained: RetainedStore,
    pending_wills: Vec<PendingWill>,
    next_id: u64,
}

/// A connection asking for its session.
pub struct AttachRequest<'a> {
    pub client_id: &'a str,
    /// The authenticated identity.
    pub owner: &'a str,
    pub clean_start: bool,
    /// Session expiry interval the client asked for (capped by the config).
    pub expiry: Duration,
    pub permissions: Arc<dyn Permissions>,
    pub limits: QueueLimits,
    /// Closes this connection when another takes the session over.
    pub kick: Arc<Kick>,
}

/// What `Broker::attach` hands a connection.
pub struct Attached {
    pub session: Arc<SessionLink>,
    pub session_present: bool,
    pub connection_id: u64,
}

pub struct Broker {
    state: Mutex<State>,
    config: ArcSwap<BrokerConfig>,
    pub stats: Stats,
    started: Instant,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Arc::new(Broker {
            state: Mutex::new(State::default()),
            config: ArcSwap::from_pointee(config),
            stats: Stats::default(),
            started: Instant::now(),
        })
    }

    pub fn config(&self) -> Arc<BrokerConfig> {
        self.config.load_full()
    }

    pub fn set_config(&self, config: BrokerConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation keeps the state consistent between statements; a poisoned
        // lock (a bug elsewhere) must not take the whole broker down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a new connection to its session: takes over a live connection of the
    /// same client id (only for the same identity), resumes or starts the session.
    pub fn attach(&self, request: AttachRequest<'_>) -> Result<Attached, ReasonCode> {
        let AttachRequest {
            client_id,
            owner,
            clean_start,
            expiry,
            permissions,
            limits,
            kick,
        } = request;
        let config = self.config();
        let mut state = self.lock();
        state.next_id += 1;
        let connection_id = state.next_id;
        let expiry = expiry.min(config.max_session_expiry);

        if let Some(existing) = state.sessions.get(client_id) {
            if &*existing.link.owner != owner {
                return Err(ReasonCode::NotAuthorized);
            }
        } else if expiry > Duration::ZERO {
            let kept = state
                .sessions
                .values()
                .filter(|s| &*s.link.owner == owner)
                .count();
            if kept >= config.max_sessions_per_identity {
                return Err(ReasonCode::QuotaExceeded);
            }
        }

        let mut session_present = false;
        let resumed = match state.sessions.get_mut(client_id) {
            Some(entry) => {
                if let Some((_, old)) = entry.connection.take() {
                    old.kick(ReasonCode::SessionTakenOver);
                }
                if clean_start {
                    None
                } else {
                    session_present = true;
                    entry.connection = Some((connection_id, Arc::clone(&kick)));
                    entry.expiry = expiry;
                    entry.expires_at = None;
                    entry.link.set_permissions(Arc::clone(&permissions));
                    Some(Arc::clone(&entry.link))
                }
            }
            None => None,
        };
        let session = match resumed {
            Some(link) => {
                // A reconnect cancels a delayed will.
                let id = link.id;
                state.pending_wills.retain(|w| w.session_id != id);
                link
            }
            None => {
                self.remove_session_locked(&mut state, client_id);
                state.next_id += 1;
                let link = Arc::new(SessionLink::new(
                    state.next_id,
                    Arc::from(client_id),
                    Arc::from(owner),
                    Mailbox::new(limits),
                    permissions,
                ));
                state.sessions.insert(
                    Arc::clone(&link.client_id),
                    SessionEntry {
                        link: Arc::clone(&link),
                        subscriptions: HashMap::new(),
                        connection: Some((connection_id, kick)),
                        expiry,
                        expires_at: None,
                    },
                );
                link
            }
        };
        drop(state);
        session.mailbox.set_online(true, limits);
        self.stats.connected(1);
        Ok(Attached {
            session,
            session_present,
            connection_id,
        })
    }

    /// Detaches a connection. The session stays for its expiry interval (if any);
    /// a will is published now or after its delay.
    pub fn detach(
        &self,
        session: &Arc<SessionLink>,
        connection_id: u64,
        expiry: Option<Duration>,
        will: Option<(Incoming, Duration)>,
    ) {
        self.stats.connected(-1);
        let config = self.config();
        let mut state = self.lock();
        let Some(entry) = state.sessions.get_mut(&*session.client_id) else {
            drop(state);
            self.publish_will(will);
            return;
        };
        let current = entry.link.id == session.id
            && entry
                .connection
                .as_ref()
                .is_some_and(|(id, _)| *id == connection_id);
        if !current {
            // Taken over: the new connection owns the session now.
            drop(state);
            self.publish_will(will);
            return;
        }
        entry.connection = None;
        if let Some(expiry) = expiry {
            entry.expiry = expiry.min(config.max_session_expiry);
        }
        let session_expiry = entry.expiry;
        let session_ends = session_expiry.is_zero();
        if session_ends {
            self.remove_session_locked(&mut state, &session.client_id);
        } else {
            entry.expires_at = Some(Instant::now() + session_expiry);
            entry
                .link
                .mailbox
                .set_online(false, entry.link.mailbox.limits());
        }
        match will {
            // The will waits for its delay, but never past the session's end.
            Some((incoming, delay)) if !delay.is_zero() && !session_ends => {
                state.pending_wills.push(PendingWill {
                    session_id: session.id,
                    due: Instant::now() + delay.min(session_expiry),
                    incoming,
                });
            }
            other => {
                drop(state);
                self.publish_will(other);
            }
        }
    }

    fn publish_will(&self, will: Option<(Incoming, Duration)>) {
        if let Some((incoming, _)) = will {
            self.publish(incoming);
        }
    }

    fn remove_session_locked(&self, state: &mut State, client_id: &str) {
        if let Some(entry) = state.sessions.remove(client_id) {
            for (filter, _) in entry.subscriptions {
                remove_from_tree(&mut state.tree, &filter, entry.link.id);
            }
            // A will whose session ends is published now (MQTT-3.1.3-9 and §3.1.2.5).
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_wills)
                .into_iter()
                .partition(|w| w.session_id == entry.link.id);
            state.pending_wills = keep;
            for will in due {
                self.route_locked(state, will.incoming);
            }
        }
    }

    /// Routes a message to every matching subscriber and updates the retained store.
    pub fn publish(&self, incoming: Incoming) -> Routed {
        let mut state = self.lock();
        self.route_locked(&mut state, incoming)
    }

    fn route_locked(&self, state: &mut State, incoming: Incoming) -> Routed {
        let config = self.config();
        let mut routed = Routed::default();
        let message = incoming.message;
        if incoming.publisher.is_some() {
            self.stats.received(message.payload.len());
        }
        if message.retain {
            let retained = Retained {
                message: Message {
                    subscription_ids: Vec::new(),
                    ..message.clone()
                },
                publisher: incoming
                    .publisher
                    .clone()
                    .unwrap_or_else(|| Arc::from("$broker")),
            };
            if let Err(RetainRefused::QuotaExceeded) = state.retained.set(
                retained,
                config.max_retained_messages,
                config.max_retained_bytes,
            ) {
                routed.retain_refused = true;
            }
        }
        let mut matches = Vec::new();
        state.tree.collect(&message.topic, &mut matches);
        routed.matched = matches.len();
        deliver(&self.stats, &message, incoming.from_session, matches);
        routed
    }

    /// Adds (or replaces) a subscription and queues the matching retained messages
    /// as its retain handling asks. The caller has checked the permissions.
    pub fn subscribe(
        &self,
        session: &Arc<SessionLink>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> Result<(), ReasonCode> {
        let config = self.config();
        let mut state = self.lock();
        let Some(entry) = state.sessions.get_mut(&*session.client_id) else {
            return Err(ReasonCode::UnspecifiedError);
        };
        let existed = entry.subscriptions.contains_key(filter);
        if !existed && entry.subscriptions.len() >= config.max_subscriptions {
            return Err(ReasonCode::QuotaExceeded);
        }
        entry
            .subscriptions
            .insert(filter.to_owned(), StoredSubscription { options });
        let shared = topic::parse_shared(filter).ok().flatten();
        let (group, inner) = match shared {
            Some((group, inner)) => (Some(group), inner),
            None => (None, filter),
        };
        state.tree.insert(
            inner,
            group,
            Subscription {
                session: Arc::clone(session),
                options,
                identifier,
            },
        );
        let send_retained = group.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if !send_retained {
            return Ok(());
        }
        let retained = state.retained.matching(inner, Instant::now());
        drop(state);
        let permissions = session.permissions();
        for r in retained {
            if !permissions.may_receive(&session.client_id, &r.message.topic) {
                continue;
            }
            let mut message = r.message;
            message.qos = message.qos.min(options.qos);
            message.retain = true;
            message.subscription_ids = identifier.into_iter().collect();
            let outcome = session.mailbox.push(message);
            self.stats.pushed(session, outcome);
        }
        Ok(())
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &SessionLink, filter: &str) -> bool {
        let mut state = self.lock();
        let State { sessions, tree, .. } = &mut *state;
        let Some(entry) = sessions.get_mut(&*session.client_id) else {
            return false;
        };
        if entry.subscriptions.remove(filter).is_none() {
            return false;
        }
        remove_from_tree(tree, filter, session.id);
        true
    }

    /// Applies a new policy to live and stored sessions: `resolve` gives the new
    /// rights of an identity, or `None` if it no longer exists. Removed identities are
    /// disconnected and their sessions dropped; subscriptions no longer allowed are
    /// dropped. Returns (sessions removed, subscriptions dropped).
    pub fn reauthorize(
        &self,
        resolve: &dyn Fn(&str) -> Option<Arc<dyn Permissions>>,
    ) -> (usize, usize) {
        let mut state = self.lock();
        let mut removed_sessions = Vec::new();
        let mut dropped: Vec<(String, u64)> = Vec::new();
        for (client_id, entry) in state.sessions.iter_mut() {
            match resolve(&entry.link.owner) {
                None => {
                    if let Some((_, kick)) = entry.connection.take() {
                        kick.kick(ReasonCode::NotAuthorized);
                    }
                    removed_sessions.push(Arc::clone(client_id));
                }
                Some(permissions) => {
                    entry.subscriptions.retain(|filter, _| {
                        let keep = permissions.may_subscribe(client_id, filter);
                        if !keep {
                            dropped.push((filter.clone(), entry.link.id));
                        }
                        keep
                    });
                    entry.link.set_permissions(permissions);
                }
            }
        }
        for (filter, session_id) in &dropped {
            remove_from_tree(&mut state.tree, filter, *session_id);
        }
        for client_id in &removed_sessions {
            // Its will is not published: the identity is gone.
            if let Some(entry) = state.sessions.get(client_id) {
                let id = entry.link.id;
                state.pending_wills.retain(|w| w.session_id != id);
            }
            self.remove_session_locked(&mut state, client_id);
        }
        (removed_sessions.len(), dropped.len())
    }

    /// Expires offline sessions and publishes delayed wills that are due. Call about
    /// once a second.
    pub fn housekeeping(&self, now: Instant) {
        let mut state = self.lock();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_wills)
            .into_iter()
            .partition(|w| w.due <= now);
        state.pending_wills = keep;
        for will in due {
            self.route_locked(&mut state, will.incoming);
        }
        let expired: Vec<Arc<str>> = state
            .sessions
            .iter()
            .filter(|(_, e)| e.connection.is_none() && e.expires_at.is_some_and(|t| t <= now))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for client_id in expired {
            self.remove_session_locked(&mut state, &client_id);
        }
    }

    /// Tells every live connection that the server is going away.
    pub fn shutdown(&self) {
        let state = self.lock();
        for entry in state.sessions.values() {
            if let Some((_, kick)) = &entry.connection {
                kick.kick(ReasonCode::ServerShuttingDown);
            }
        }
    }

    /// Counts for `$SYS`: (sessions, subscriptions, retained messages).
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.sessions.len(), state.tree.len(), state.retained.len())
    }
}

fn remove_from_tree(tree: &mut SubscriptionTree, filter: &str, session_id: u64) {
    match topic::parse_shared(filter).ok().flatten() {
        Some((group, inner)) => tree.remove(inner, Some(group), session_id),
        None => tree.remove(filter, None, session_id),
    };
}

/// Pushes one message to each matching session: one copy per session for ordinary
/// subscriptions (highest QoS, every subscription identifier), one per shared group.
fn deliver(stats: &Stats, message: &Message, from_session: Option<u64>, matches: Vec<Matched>) {
    let mut merged: Vec<(Subscription, QoS, Vec<u32>)> = Vec::with_capacity(matches.len());
    // Index of each session's ordinary delivery in `merged`, to merge overlaps.
    let mut ordinary: HashMap<u64, usize> = HashMap::new();
    for m in matches {
        let sub = m.subscription;
        if sub.options.no_local && !m.shared && Some(sub.session.id) == from_session {
            continue;
        }
        if !m.shared {
            if let Some(&i) = ordinary.get(&sub.session.id) {
                let (_, qos, ids) = &mut merged[i];
                *qos = (*qos).max(sub.options.qos);
                ids.extend(sub.identifier);
                continue;
            }
            ordinary.insert(sub.session.id, merged.len());
        }
        let ids = sub.identifier.into_iter().collect();
        let qos = sub.options.qos;
        merged.push((sub, qos, ids));
    }
    for (sub, qos, ids) in merged {
        let session = &sub.session;
        if !session
            .permissions()
            .may_receive(&session.client_id, &message.topic)
        {
            continue;
        }
        let outgoing = Message {
            topic: Arc::clone(&message.topic),
            payload: message.payload.clone(),
            qos: message.qos.min(qos),
            retain: message.retain && sub.options.retain_as_published,
            properties: Arc::clone(&message.properties),
            subscription_ids: ids,
            expires_at: message.expires_at,
        };
        let outcome = session.mailbox.push(outgoing);
        stats.pushed(session, outcome);
    }
}

impl Stats {
    /// Counts a drop, and logs it: every drop is counted in `$SYS`, and the log gets
    /// the 1st, 10th, 100th ... drop of each session so a stuck client is visible
    /// without flooding the journal.
    fn pushed(&self, session: &SessionLink, outcome: PushOutcome) {
        if outcome != PushOutcome::DroppedFull {
            return;
        }
        self.dropped(1);
        let n = session.mailbox.dropped();
        if n.is_power_of_two() || n.is_multiple_of(1000) {
            tracing::warn!(
                client_id = %session.client_id,
                identity = %session.owner,
                dropped = n,
                "queue full: message dropped for a slow or offline client"
            );
        }
    }
}
