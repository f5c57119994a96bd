//! The broker's [`Gatekeeper`] and [`Permissions`] over the compiled policy:
//! password identities through the bounded argon2 verifier, certificate identities
//! through the TLS layer's verified common name, the plaintext listener only for
//! identities marked `plaintext: true`. No identity, no entry.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{AuthError, Authenticator};
use crate::broker::permissions::AdmitFuture;
use crate::broker::{Admission, ClientLimits, Gatekeeper, ListenerKind, PeerInfo, Permissions};
use crate::net::admission::canonical_ip;
use crate::policy::{Credential, Identity, Policy};
use moat_protocol::{Connect, ReasonCode, TopicName};

/// The policy in force plus the argon2 hashes of `password_file` identities.
pub struct ActivePolicy {
    pub policy: Policy,
    pub file_hashes: HashMap<String, String>,
}

impl ActivePolicy {
    fn stored_hash<'a>(&'a self, identity: &'a Identity) -> Option<&'a str> {
        match &identity.credential {
            Credential::PasswordHash(hash) => Some(hash),
            Credential::PasswordFile(_) => self.file_hashes.get(&identity.name).map(String::as_str),
            Credential::Certificate => None,
        }
    }
}

/// An identity's rights, as the broker asks about them.
pub struct IdentityPermissions {
    identity: Arc<Identity>,
}

/// The broker-facing rights of an identity.
pub fn permissions_of(identity: &Arc<Identity>) -> Arc<dyn Permissions> {
    Arc::new(IdentityPermissions {
        identity: Arc::clone(identity),
    })
}

impl Permissions for IdentityPermissions {
    fn may_publish(&self, client_id: &str, topic: TopicName<'_>) -> bool {
        self.identity
            .acl
            .publish_allowed(&self.identity.name, client_id, topic)
    }

    fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.identity
            .acl
            .may_subscribe(&self.identity.name, client_id, filter)
            .allowed
    }

    fn may_receive(&self, client_id: &str, topic: &str) -> bool {
        self.identity
            .acl
            .receive_allowed(&self.identity.name, client_id, topic)
    }

    /// A subscribe grant that covers the filter matches every topic the filter
    /// matches (`topic::covers`), which is the receive check's own test.
    fn may_receive_all(&self, client_id: &str, filter: &str) -> bool {
        self.may_subscribe(client_id, filter)
    }

    fn may_retain(&self) -> bool {
        self.identity.may_retain
    }

    fn retained_quota(&self) -> usize {
        self.identity.max_retained_messages
    }

    fn max_subscriptions(&self) -> Option<usize> {
        Some(self.identity.max_subscriptions)
    }
}

pub struct PolicyGate {
    pub active: Arc<ArcSwap<ActivePolicy>>,
    pub auth: Arc<Authenticator>,
}

fn admission(identity: &Arc<Identity>) -> Admission {
    Admission {
        identity: identity.name.clone(),
        permissions: permissions_of(identity),
        limits: ClientLimits {
            max_packet_size: identity.max_packet_size,
            max_queued_messages: identity.max_queued_messages,
            max_queued_bytes: identity.max_queued_bytes,
        },
    }
}

fn audit_refusal(peer: &PeerInfo, username: &str, why: &str) {
    tracing::info!(target: "moat::audit", peer = %peer.addr, username, outcome = "refused", why, "authentication");
}

impl PolicyGate {
    async fn admit_inner(
        &self,
        connect: &Connect,
        peer: &PeerInfo,
    ) -> Result<Admission, ReasonCode> {
        let active = self.active.load_full();
        let identity = if let Some(name) = &peer.certificate_name {
            let Some(identity) = active.policy.identity(name) else {
                audit_refusal(peer, name, "certificate names no identity");
                return Err(ReasonCode::NotAuthorized);
            };
            if !matches!(identity.credential, Credential::Certificate) {
                audit_refusal(peer, name, "identity does not use a certificate");
                return Err(ReasonCode::NotAuthorized);
            }
            if connect.username.as_deref().is_some_and(|u| u != name) {
                audit_refusal(peer, name, "username differs from the certificate");
                return Err(ReasonCode::BadUserNameOrPassword);
            }
            tracing::info!(target: "moat::audit", peer = %peer.addr, username = %name, outcome = "accepted", method = "certificate", "authentication");
            Arc::clone(identity)
        } else {
            let Some(username) = connect.username.as_deref() else {
                audit_refusal(peer, "", "anonymous");
                return Err(ReasonCode::NotAuthorized);
            };
            let identity = active.policy.identity(username);
            let stored = identity.and_then(|i| active.stored_hash(i));
            let password = connect.password.as_deref().unwrap_or_default();
            let ip = canonical_ip(peer.addr.ip());
            match self.auth.verify(username, stored, password, ip).await {
                Ok(()) => {}
                Err(AuthError::Denied) => return Err(ReasonCode::BadUserNameOrPassword),
                Err(AuthError::Busy) => return Err(ReasonCode::ServerBusy),
                Err(AuthError::Throttled { .. }) => return Err(ReasonCode::ConnectionRateExceeded),
            }
            // verify() succeeds only against a stored hash, so the identity exists.
            let Some(identity) = identity else {
                return Err(ReasonCode::BadUserNameOrPassword);
            };
            Arc::clone(identity)
        };
        if peer.listener == ListenerKind::Plain && !identity.plaintext {
            audit_refusal(
                peer,
                &identity.name,
                "plaintext listener not allowed for this identity",
            );
            return Err(ReasonCode::NotAuthorized);
        }
        Ok(admission(&identity))
    }
}

impl Gatekeeper for PolicyGate {
    fn admit<'a>(&'a self, connect: &'a Connect, peer: &'a PeerInfo) -> AdmitFuture<'a> {
        Box::pin(self.admit_inner(connect, peer))
    }
}

/// How the broker finds an identity's current rights, for this policy.
pub fn resolver_for(policy: &Policy) -> crate::broker::Resolver {
    let mut rights: HashMap<String, Arc<dyn Permissions>> = policy
        .identities()
        .map(|identity| (identity.name.clone(), permissions_of(identity)))
        .collect();
    // A bridge's session belongs to its own identity, which no client can log in as.
    for plan in &policy.bridges {
        let bridge: Arc<dyn Permissions> = Arc::new(crate::bridge::rights::BridgeRights::new(plan));
        rights.insert(plan.local_identity(), bridge);
    }
    Arc::new(move |name: &str| rights.get(name).cloned())
}
