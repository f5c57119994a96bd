//! The broker core: sessions, the subscription tree, retained messages, routing,
//! wills and session expiry, plus the per-connection protocol driver that speaks
//! MQTT over any byte stream. It knows nothing of TLS, sockets or manifests: rights
//! arrive as [`Permissions`] and authentication through a [`Gatekeeper`]. Durable
//! state goes through the [`journal`]: every mutating call takes the slot its
//! caller reserved and returns the commit to wait for before acknowledging.

pub mod connection;
pub mod denials;
pub mod journal;
pub mod mailbox;
pub mod permissions;
pub mod retained;
pub mod session;
pub mod stats;
pub mod subscriptions;
pub mod sys;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::protocol::{QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic};
use crate::store::{
    Commit, InflightOut, Op, Slot, Snapshot, StoredInflightIn, StoredRetained, StoredSession,
    StoredSubscription as StoredSubscriptionRecord,
};

use denials::DenialKind;
use journal::{Batch, Journal, restored_message, stored_message};
use mailbox::{InFlight, Mailbox, Message, PushOutcome, QueueLimits};
pub use permissions::{
    Admission, ClientLimits, Gatekeeper, ListenerKind, PeerInfo, Permissions, PublishDenied,
    may_publish_message,
};
use retained::{RetainQuota, RetainRefused, Retained, RetainedStore};
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

struct SessionEntry {
    link: Arc<SessionLink>,
    /// The session's filters (the tree holds options and identifiers), so they can
    /// be dropped on reload or expiry.
    subscriptions: HashSet<String>,
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

/// Finds the current rights of an identity by name (for stored state whose owner
/// or publisher may have lost them).
pub type Resolver = Arc<dyn Fn(&str) -> Option<Arc<dyn Permissions>> + Send + Sync>;

pub struct Broker {
    state: Mutex<State>,
    config: ArcSwap<BrokerConfig>,
    pub stats: Stats,
    started: Instant,
    journal: Journal,
    resolver: RwLock<Option<Resolver>>,
}

/// The MQTT 5 subscription options byte, as stored.
fn options_byte(o: SubscriptionOptions) -> u8 {
    let handling = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | (handling << 4)
}

fn options_from_byte(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::AtMostOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    }
}

fn expiry_secs(expiry: Duration) -> u32 {
    u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Broker::with_journal(config, Journal::default())
    }

    pub fn with_journal(config: BrokerConfig, journal: Journal) -> Arc<Broker> {
        Arc::new(Broker {
            state: Mutex::new(State::default()),
            config: ArcSwap::from_pointee(config),
            stats: Stats::default(),
            started: Instant::now(),
            journal,
            resolver: RwLock::new(None),
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Sets how to find an identity's current rights (swapped on reload).
    pub fn set_resolver(&self, resolver: Resolver) {
        *self.resolver.write().unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    fn resolver_is_set(&self) -> bool {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn resolve(&self, identity: &str) -> Option<Arc<dyn Permissions>> {
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        resolver(identity)
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

    /// Rebuilds retained messages and persistent sessions from the store at start.
    /// Sessions whose owner no longer exists, and subscriptions no longer allowed,
    /// are dropped (and deleted from the store through `slot`).
    pub fn restore(
        &self,
        snapshot: Snapshot,
        limits: QueueLimits,
        slot: Option<Slot>,
    ) -> Option<Commit> {
        let now = Instant::now();
        let config = self.config();
        let mut state = self.lock();
        let mut batch = Batch::default();
        for r in snapshot.retained {
            let retained = Retained {
                message: restored_message(r.message, 0, now),
                publisher: Arc::from(r.publisher.as_str()),
            };
            if state
                .retained
                .set(
                    retained,
                    RetainQuota {
                        max_messages: config.max_retained_messages,
                        max_bytes: config.max_retained_bytes,
                        max_per_publisher: usize::MAX,
                    },
                )
                .is_err()
            {
                tracing::warn!(
                    "retained store over its quota after restart; some retained messages dropped"
                );
            }
        }
        let mut queued: HashMap<String, Vec<Message>> = HashMap::new();
        for q in snapshot.queued {
            queued
                .entry(q.client_id)
                .or_default()
                .push(restored_message(q.message, q.seq, now));
        }
        let mut inflight: HashMap<String, Vec<(u16, InFlight)>> = HashMap::new();
        for entry in snapshot.inflight_out {
            let state_in_flight = match entry.state {
                InflightOut::Published(m) => InFlight::Published(restored_message(m, 0, now)),
                InflightOut::Released => InFlight::Released,
            };
            inflight
                .entry(entry.client_id)
                .or_default()
                .push((entry.packet_id, state_in_flight));
        }
        let mut links: HashMap<String, Arc<SessionLink>> = HashMap::new();
        for restored in snapshot.sessions {
            let s = restored.session;
            let Some(permissions) = self.resolve(&s.owner) else {
                batch.push(Op::DeleteSession {
                    client_id: s.client_id,
                });
                continue;
            };
            state.next_id += 1;
            let link = Arc::new(SessionLink::new(
                state.next_id,
                Arc::from(s.client_id.as_str()),
                Arc::from(s.owner.as_str()),
                Mailbox::new(limits),
                permissions,
            ));
            link.set_persistent(true);
            link.mailbox.restore(
                queued.remove(&s.client_id).unwrap_or_default(),
                inflight.remove(&s.client_id).unwrap_or_default(),
            );
            let expiry = Duration::from_secs(u64::from(s.expiry_secs));
            let expires_at = restored
                .expires_in_secs
                .map(|secs| now + Duration::from_secs(u64::from(secs)));
            state.sessions.insert(
                Arc::clone(&link.client_id),
                SessionEntry {
                    link: Arc::clone(&link),
                    subscriptions: HashSet::new(),
                    connection: None,
                    expiry,
                    expires_at: expires_at.or(Some(now + config.max_session_expiry)),
                },
            );
            links.insert(s.client_id, link);
        }
        for StoredInflightIn {
            client_id,
            packet_id,
        } in snapshot.inflight_in
        {
            if let Some(link) = links.get(&client_id) {
                link.add_inbound_qos2(packet_id);
            }
        }
        for sub in snapshot.subscriptions {
            let Some(link) = links.get(&sub.client_id) else {
                continue;
            };
            if !link
                .permissions()
                .may_subscribe(&link.client_id, &sub.filter)
            {
                batch.push(Op::DeleteSubscription {
                    client_id: sub.client_id,
                    filter: sub.filter,
                });
                continue;
            }
            let options = options_from_byte(sub.options);
            if let Some(entry) = state.sessions.get_mut(sub.client_id.as_str()) {
                entry.subscriptions.insert(sub.filter.clone());
            }
            insert_into_tree(&mut state.tree, &sub.filter, link, options, sub.identifier);
        }
        tracing::info!(
            sessions = state.sessions.len(),
            retained = state.retained.len(),
            "durable state restored"
        );
        let commit = batch.submit(slot);
        drop(state);
        commit
    }

    /// Attaches a new connection to its session: takes over a live connection of the
    /// same client id (only for the same identity), resumes or starts the session.
    pub fn attach(
        &self,
        request: AttachRequest<'_>,
        slot: Option<Slot>,
    ) -> Result<(Attached, Option<Commit>), ReasonCode> {
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
        // Rights as of now, not as of the CONNECT: a reload that removed or changed
        // this identity while its password was being verified swapped the resolver
        // under this same lock, so it either sees this session or this sees it.
        let permissions = match self.resolver_is_set() {
            true => self.resolve(owner).ok_or_else(|| {
                tracing::info!(target: "moat::audit", identity = owner, client_id, "refused: the identity was removed while it logged in");
                ReasonCode::NotAuthorized
            })?,
            false => permissions,
        };
        let mut batch = Batch::default();
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
                self.remove_session_locked(&mut state, client_id, &mut batch);
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
                        subscriptions: HashSet::new(),
                        connection: Some((connection_id, kick)),
                        expiry,
                        expires_at: None,
                    },
                );
                link
            }
        };
        let persistent = !expiry.is_zero();
        if persistent || session.is_persistent() {
            if persistent {
                batch.push(Op::PutSession(StoredSession {
                    client_id: client_id.to_owned(),
                    owner: owner.to_owned(),
                    expiry_secs: expiry_secs(expiry),
                }));
            } else {
                // A persistent session resumed with expiry 0 ends at this disconnect;
                // until then it is an ordinary session.
                batch.push(Op::DeleteSession {
                    client_id: client_id.to_owned(),
                });
            }
        }
        session.set_persistent(persistent && self.journal.is_enabled());
        let commit = batch.submit(slot);
        drop(state);
        session.mailbox.set_online(true, limits);
        self.stats.connected(1);
        Ok((
            Attached {
                session,
                session_present,
                connection_id,
            },
            commit,
        ))
    }

    /// Detaches a connection. The session stays for its expiry interval (if any);
    /// a will is published now or after its delay.
    pub fn detach(
        &self,
        session: &Arc<SessionLink>,
        connection_id: u64,
        expiry: Option<Duration>,
        will: Option<(Incoming, Duration)>,
        slot: Option<Slot>,
    ) -> Option<Commit> {
        self.stats.connected(-1);
        let config = self.config();
        let mut state = self.lock();
        let mut batch = Batch::default();
        let current = state
            .sessions
            .get(&*session.client_id)
            .is_some_and(|entry| {
                entry.link.id == session.id
                    && entry
                        .connection
                        .as_ref()
                        .is_some_and(|(id, _)| *id == connection_id)
            });
        if !current {
            // Taken over (or removed): the new owner of the session decides.
            if let Some((incoming, _)) = will {
                self.route_locked(&mut state, incoming, &mut batch);
            }
            let commit = batch.submit(slot);
            drop(state);
            return commit;
        }
        let entry = state.sessions.get_mut(&*session.client_id)?;
        entry.connection = None;
        if let Some(expiry) = expiry {
            entry.expiry = expiry.min(config.max_session_expiry);
        }
        let session_expiry = entry.expiry;
        let session_ends = session_expiry.is_zero();
        if session_ends {
            self.remove_session_locked(&mut state, &session.client_id, &mut batch);
        } else {
            entry.expires_at = Some(Instant::now() + session_expiry);
            entry
                .link
                .mailbox
                .set_online(false, entry.link.mailbox.limits());
            if session.is_persistent() {
                batch.push(Op::PutSession(StoredSession {
                    client_id: session.client_id.to_string(),
                    owner: session.owner.to_string(),
                    expiry_secs: expiry_secs(session_expiry),
                }));
                batch.push(Op::SessionDisconnected {
                    client_id: session.client_id.to_string(),
                });
            }
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
            Some((incoming, _)) => {
                self.route_locked(&mut state, incoming, &mut batch);
            }
            None => {}
        }
        let commit = batch.submit(slot);
        drop(state);
        commit
    }

    fn remove_session_locked(&self, state: &mut State, client_id: &str, batch: &mut Batch) {
        if let Some(entry) = state.sessions.remove(client_id) {
            for filter in entry.subscriptions {
                remove_from_tree(&mut state.tree, &filter, entry.link.id);
            }
            if entry.link.is_persistent() {
                batch.push(Op::DeleteSession {
                    client_id: client_id.to_owned(),
                });
            }
            // A will whose session ends is published now (MQTT 5 §3.1.2.5).
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_wills)
                .into_iter()
                .partition(|w| w.session_id == entry.link.id);
            state.pending_wills = keep;
            for will in due {
                self.route_locked(state, will.incoming, batch);
            }
        }
    }

    /// Routes a message to every matching subscriber and updates the retained store.
    pub fn publish(&self, incoming: Incoming, slot: Option<Slot>) -> (Routed, Option<Commit>) {
        let mut state = self.lock();
        let mut batch = Batch::default();
        let routed = self.route_locked(&mut state, incoming, &mut batch);
        let commit = batch.submit(slot);
        drop(state);
        (routed, commit)
    }

    /// Routes an inbound QoS 2 message and records its packet id (awaiting PUBREL)
    /// in the same durable batch, so a resend after a crash is not routed twice.
    pub fn publish_exactly_once(
        &self,
        session: &SessionLink,
        packet_id: u16,
        incoming: Incoming,
        slot: Option<Slot>,
    ) -> (Routed, Option<Commit>) {
        let mut state = self.lock();
        let mut batch = Batch::default();
        let routed = self.route_locked(&mut state, incoming, &mut batch);
        session.add_inbound_qos2(packet_id);
        if session.is_persistent() {
            batch.push(Op::PutInflightIn(StoredInflightIn {
                client_id: session.client_id.to_string(),
                packet_id,
            }));
        }
        let commit = batch.submit(slot);
        drop(state);
        (routed, commit)
    }

    fn route_locked(&self, state: &mut State, incoming: Incoming, batch: &mut Batch) -> Routed {
        let config = self.config();
        let mut routed = Routed::default();
        let message = incoming.message;
        if incoming.publisher.is_some() {
            self.stats.received(message.qos, message.payload.len());
        }
        if message.retain {
            let publisher = incoming
                .publisher
                .clone()
                .unwrap_or_else(|| Arc::from("$broker"));
            let retained = Retained {
                message: Message {
                    subscription_ids: Vec::new(),
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
                Ok(()) if !message.topic.starts_with('$') && self.journal.is_enabled() => {
                    if message.payload.is_empty() {
                        batch.push(Op::DeleteRetained {
                            topic: message.topic.to_string(),
                        });
                    } else {
                        batch.push(Op::PutRetained(StoredRetained {
                            publisher: publisher.to_string(),
                            message: stored_message(&message, Instant::now()),
                        }));
                    }
                }
                Ok(()) => {}
            }
        }
        let mut matches = Vec::new();
        state.tree.collect(&message.topic, &mut matches);
        routed.matched = matches.len();
        routed.congested = deliver(&self.stats, &message, incoming.from_session, matches, batch);
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
        slot: Option<Slot>,
    ) -> (Vec<Result<(), ReasonCode>>, Option<Commit>) {
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
        let commit = batch.submit(slot);
        drop(state);
        (results, commit)
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
        let Some(entry) = state.sessions.get_mut(&*session.client_id) else {
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
            batch.push(Op::PutSubscription(StoredSubscriptionRecord {
                client_id: session.client_id.to_string(),
                filter: filter.to_owned(),
                options: options_byte(options),
                identifier,
            }));
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
                if !permissions.may_receive(&session.client_id, &r.message.topic) {
                    self.stats.denials.record(
                        &session.owner,
                        DenialKind::Receive,
                        &r.message.topic,
                    );
                    continue;
                }
                if !self.publisher_may_still_write(&r) {
                    continue;
                }
                let mut message = r.message;
                message.qos = message.qos.min(options.qos);
                message.retain = true;
                message.subscription_ids = identifier.into_iter().collect();
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
            may_publish_message(&*p, &retained.publisher, &retained.message.topic, true).is_ok()
        })
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(
        &self,
        session: &SessionLink,
        filter: &str,
        slot: Option<Slot>,
    ) -> (bool, Option<Commit>) {
        let mut state = self.lock();
        let State { sessions, tree, .. } = &mut *state;
        let Some(entry) = sessions.get_mut(&*session.client_id) else {
            return (false, None);
        };
        if !entry.subscriptions.remove(filter) {
            return (false, None);
        }
        remove_from_tree(tree, filter, session.id);
        let mut batch = Batch::default();
        if session.is_persistent() {
            batch.push(Op::DeleteSubscription {
                client_id: session.client_id.to_string(),
                filter: filter.to_owned(),
            });
        }
        let commit = batch.submit(slot);
        drop(state);
        (true, commit)
    }

    /// Applies a new policy to live and stored sessions: `resolve` gives the new
    /// rights of an identity, or `None` if it no longer exists. Removed identities are
    /// disconnected and their sessions dropped; subscriptions no longer allowed are
    /// dropped. Returns (sessions removed, subscriptions dropped).
    pub fn reauthorize(
        &self,
        resolver: Resolver,
        slot: Option<Slot>,
    ) -> (usize, usize, Option<Commit>) {
        let mut state = self.lock();
        // Under the lock, so an attach sees either the old rights and then this
        // pass, or the new rights (see `attach`).
        self.set_resolver(Arc::clone(&resolver));
        let mut batch = Batch::default();
        let mut removed_sessions = Vec::new();
        let mut dropped: Vec<(String, Arc<SessionLink>)> = Vec::new();
        for (client_id, entry) in state.sessions.iter_mut() {
            match resolver(&entry.link.owner) {
                None => {
                    if let Some((_, kick)) = entry.connection.take() {
                        kick.kick(ReasonCode::NotAuthorized);
                    }
                    removed_sessions.push(Arc::clone(client_id));
                }
                Some(permissions) => {
                    entry.subscriptions.retain(|filter| {
                        let keep = permissions.may_subscribe(client_id, filter);
                        if !keep {
                            dropped.push((filter.clone(), Arc::clone(&entry.link)));
                        }
                        keep
                    });
                    entry.link.set_permissions(permissions);
                }
            }
        }
        for (filter, link) in &dropped {
            remove_from_tree(&mut state.tree, filter, link.id);
            if link.is_persistent() {
                batch.push(Op::DeleteSubscription {
                    client_id: link.client_id.to_string(),
                    filter: filter.clone(),
                });
            }
        }
        for client_id in &removed_sessions {
            // Its will is not published: the identity is gone.
            if let Some(entry) = state.sessions.get(client_id) {
                let id = entry.link.id;
                state.pending_wills.retain(|w| w.session_id != id);
            }
            self.remove_session_locked(&mut state, client_id, &mut batch);
        }
        let commit = batch.submit(slot);
        drop(state);
        (removed_sessions.len(), dropped.len(), commit)
    }

    /// Expires offline sessions and publishes delayed wills that are due. Call about
    /// once a second.
    pub fn housekeeping(&self, now: Instant, slot: Option<Slot>) -> Option<Commit> {
        let mut state = self.lock();
        let mut batch = Batch::default();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_wills)
            .into_iter()
            .partition(|w| w.due <= now);
        state.pending_wills = keep;
        for will in due {
            self.route_locked(&mut state, will.incoming, &mut batch);
        }
        let expired: Vec<Arc<str>> = state
            .sessions
            .iter()
            .filter(|(_, e)| e.connection.is_none() && e.expires_at.is_some_and(|t| t <= now))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for client_id in expired {
            self.remove_session_locked(&mut state, &client_id, &mut batch);
        }
        let commit = batch.submit(slot);
        drop(state);
        commit
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

/// Adds a subscription to the tree; returns whether it is a shared one.
fn insert_into_tree(
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
        },
    );
    group.is_some()
}

fn remove_from_tree(tree: &mut SubscriptionTree, filter: &str, session_id: u64) {
    match topic::parse_shared(filter).ok().flatten() {
        Some((group, inner)) => tree.remove(inner, Some(group), session_id),
        None => tree.remove(filter, None, session_id),
    };
}

/// Queues a message for one session; a persistent session's QoS 1/2 message is
/// journaled at its queue position.
/// Returns whether the session's queue was full.
fn push_to(stats: &Stats, session: &Arc<SessionLink>, message: Message, batch: &mut Batch) -> bool {
    let qos = message.qos;
    let journal = session.is_persistent() && qos != QoS::AtMostOnce;
    let stored = journal.then(|| stored_message(&message, Instant::now()));
    let (outcome, seq) = session.mailbox.push_journaled(message, journal);
    if let (PushOutcome::Queued | PushOutcome::Crowded, Some(message)) = (outcome, stored) {
        batch.push(Op::Enqueue(crate::store::QueuedMessage {
            client_id: session.client_id.to_string(),
            seq,
            message,
        }));
        batch.staged_in(session);
    }
    stats.pushed(session, outcome);
    // Once the queue is crowded, before anything overflows, the publisher waits for
    // the subscriber to drain, unless this subscriber already let a publisher wait in
    // vain. For QoS 0 only while the subscriber's socket takes what it is sent: then
    // the broker is behind (its task needs the CPU the publishers take), and pausing
    // them keeps it fed. A client that is itself slow loses QoS 0 copies alone.
    matches!(outcome, PushOutcome::Crowded | PushOutcome::DroppedFull)
        && (qos != QoS::AtMostOnce || !session.mailbox.writer_blocked())
        && session.mailbox.worth_waiting_for()
}

/// Pushes one message to each matching session: one copy per session for ordinary
/// subscriptions (highest QoS, every subscription identifier), one per shared group.
/// Returns a session whose queue overflowed with a QoS 1/2 copy and is worth
/// waiting for (see `push_to`), if any.
fn deliver(
    stats: &Stats,
    message: &Message,
    from_session: Option<u64>,
    matches: Vec<Matched>,
    batch: &mut Batch,
) -> Option<Arc<SessionLink>> {
    let mut congested = None;
    let mut merged: Vec<(Subscription, QoS, Vec<u32>)> = Vec::with_capacity(matches.len());
    // Index of each session's ordinary delivery in `merged`, to merge overlaps; a
    // single match (the common case) needs no index.
    let may_overlap = matches.len() > 1;
    let mut ordinary: HashMap<u64, usize> = HashMap::new();
    for m in matches {
        let sub = m.subscription;
        if sub.options.no_local && !m.shared && Some(sub.session.id) == from_session {
            continue;
        }
        if !m.shared && may_overlap {
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
            stats
                .denials
                .record(&session.owner, DenialKind::Receive, &message.topic);
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
            seq: 0,
        };
        if push_to(stats, session, outgoing, batch) && congested.is_none() {
            congested = Some(Arc::clone(session));
        }
    }
    congested
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
