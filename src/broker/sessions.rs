//! Session life cycle: restoring persistent sessions at start, attaching a
//! connection (new session, resume, takeover of a live one, the per-identity
//! quota), detaching it (expiry, the will now or after its delay), ending
//! sessions, re-checking every session's rights on reload, and the once-a-second
//! housekeeping (expired sessions, delayed wills that are due). Routing and
//! subscriptions are `routing`'s; durable records are built by the `journal`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Snapshot, StoredInflightIn};
use moat_protocol::ReasonCode;

use super::journal::{self, Batch, Durable, Reservation, restored_message};
use super::mailbox::{InFlight, Mailbox, Message, QueueLimits};
use super::permissions::Permissions;
use super::retained::{RetainQuota, Retained};
use super::routing::{insert_into_tree, remove_from_tree};
use super::session::{Kick, SessionLink};
use super::{Broker, Incoming, PendingWill, Resolver, SessionEntry, State};

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

impl Broker {
    /// Rebuilds retained messages and persistent sessions from the store at start.
    /// Sessions whose owner no longer exists, and subscriptions no longer allowed,
    /// are dropped (and deleted from the store through `room`).
    pub fn restore(&self, snapshot: Snapshot, limits: QueueLimits, room: Reservation) -> Durable {
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
            let state_in_flight = journal::restored_in_flight(entry.state, now);
            inflight
                .entry(entry.client_id)
                .or_default()
                .push((entry.packet_id, state_in_flight));
        }
        let mut links: HashMap<String, Arc<SessionLink>> = HashMap::new();
        for restored in snapshot.sessions {
            let s = restored.session;
            let Some(permissions) = self.resolve(&s.owner) else {
                batch.push([journal::session_ended(&s.client_id)]);
                continue;
            };
            state.next_id += 1;
            let link = Arc::new(SessionLink::new(
                state.next_id,
                Arc::from(s.client_id.as_str()),
                state.owner(&s.owner),
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
            state.sessions.insert(SessionEntry::new(
                Arc::clone(&link),
                None,
                expiry,
                expires_at.or(Some(now + config.max_session_expiry)),
            ));
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
                batch.push([journal::unsubscribed(&sub.client_id, &sub.filter)]);
                continue;
            }
            let options = journal::options_from_byte(sub.options);
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
        let durable = batch.submit(room);
        drop(state);
        durable
    }

    /// Attaches a new connection to its session: takes over a live connection of the
    /// same client id (only for the same identity), resumes or starts the session.
    pub fn attach(
        &self,
        request: AttachRequest<'_>,
        room: Reservation,
    ) -> Result<(Attached, Durable), ReasonCode> {
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
                    entry.set_expiry(expiry);
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
                    state.owner(owner),
                    Mailbox::new(limits),
                    permissions,
                ));
                state.sessions.insert(SessionEntry::new(
                    Arc::clone(&link),
                    Some((connection_id, kick)),
                    expiry,
                    None,
                ));
                link
            }
        };
        let persistent = !expiry.is_zero();
        if persistent || session.is_persistent() {
            if persistent {
                batch.push([journal::session_kept(client_id, owner, expiry)]);
            } else {
                // A persistent session resumed with expiry 0 ends at this disconnect;
                // until then it is an ordinary session.
                batch.push([journal::session_ended(client_id)]);
            }
        }
        session.set_persistent(persistent && self.journal.is_enabled());
        let durable = batch.submit(room);
        drop(state);
        session.mailbox.set_online(true, limits);
        self.stats.connected(1);
        Ok((
            Attached {
                session,
                session_present,
                connection_id,
            },
            durable,
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
        room: Reservation,
    ) -> Durable {
        self.stats.connected(-1);
        let config = self.config();
        let mut state = self.lock();
        let mut batch = Batch::default();
        let current = state.sessions.get(&session.client_id).is_some_and(|entry| {
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
            let durable = batch.submit(room);
            drop(state);
            return durable;
        }
        let Some(entry) = state.sessions.get_mut(&session.client_id) else {
            return Durable::default();
        };
        entry.connection = None;
        if let Some(expiry) = expiry {
            entry.set_expiry(expiry.min(config.max_session_expiry));
        }
        let session_expiry = entry.expiry();
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
                batch.push(journal::session_disconnected(session, session_expiry));
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
        let durable = batch.submit(room);
        drop(state);
        durable
    }

    fn remove_session_locked(&self, state: &mut State, client_id: &str, batch: &mut Batch) {
        if let Some(entry) = state.sessions.remove(client_id) {
            for filter in entry.subscriptions {
                remove_from_tree(&mut state.tree, &filter, entry.link.id);
            }
            if entry.link.is_persistent() {
                batch.push([journal::session_ended(client_id)]);
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

    /// Applies a new policy to live and stored sessions: `resolve` gives the new
    /// rights of an identity, or `None` if it no longer exists. Removed identities are
    /// disconnected and their sessions dropped; subscriptions no longer allowed are
    /// dropped. Returns (sessions removed, subscriptions dropped).
    pub fn reauthorize(&self, resolver: Resolver, room: Reservation) -> (usize, usize, Durable) {
        let mut state = self.lock();
        // Under the lock, so an attach sees either the old rights and then this
        // pass, or the new rights (see `attach`).
        self.set_resolver(Arc::clone(&resolver));
        let mut batch = Batch::default();
        let mut removed_sessions = Vec::new();
        let mut dropped: Vec<(String, Arc<SessionLink>)> = Vec::new();
        for entry in state.sessions.values_mut() {
            let client_id = &entry.link.client_id;
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
                batch.push([journal::unsubscribed(&link.client_id, filter)]);
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
        // Names of identities that no longer exist are not kept.
        state.owners.retain(|owner| resolver(owner).is_some());
        let durable = batch.submit(room);
        drop(state);
        (removed_sessions.len(), dropped.len(), durable)
    }

    /// Expires offline sessions and publishes delayed wills that are due. Call about
    /// once a second.
    pub fn housekeeping(&self, now: Instant, room: Reservation) -> Durable {
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
            .values()
            .filter(|e| e.connection.is_none() && e.expires_at.is_some_and(|t| t <= now))
            .map(|e| Arc::clone(&e.link.client_id))
            .collect();
        for client_id in expired {
            self.remove_session_locked(&mut state, &client_id, &mut batch);
        }
        // Drops counted since the last second reach the denial counts.
        for entry in state.sessions.values() {
            super::backpressure::flush_drops(&self.stats, &entry.link);
        }
        let durable = batch.submit(room);
        drop(state);
        durable
    }
}
