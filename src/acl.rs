//! Access control lists: an identity's publish and subscribe grants, each a topic
//! filter that may hold `%u` (the identity name) or `%c` (the client id) as a whole
//! level, with the human-readable source of the rule. Deny by default; `#` and `+`
//! never match `$`-topics (the matching rules live in `moat_protocol::topic`).
//! This module decides; it does not log, count or know about sessions.

use std::borrow::Cow;

use moat_protocol::TopicName;
use moat_protocol::topic::{covers, matches, parse_shared, validate_topic_filter};

/// One grant: a filter pattern and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A valid MQTT filter; `%u` and `%c` may fill whole levels.
    pub pattern: String,
    /// Where the grant comes from, e.g. `role homeassistant: publish homeassistant/#`
    /// or `users.bob.subscribe[1] (line 12)`.
    pub source: String,
}

impl Grant {
    pub fn new(pattern: impl Into<String>, source: impl Into<String>) -> Self {
        Grant {
            pattern: pattern.into(),
            source: source.into(),
        }
    }

    /// The filter with `%u`/`%c` substituted, or `None` if a substituted value could
    /// change the filter's shape (empty, has `+ # /`, starts with `$`, has U+0000).
    pub fn resolve(&self, username: &str, client_id: &str) -> Option<Cow<'_, str>> {
        if !self.pattern.contains('%') {
            return Some(Cow::Borrowed(&self.pattern));
        }
        let mut out = String::with_capacity(self.pattern.len() + username.len());
        for (i, level) in self.pattern.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let value = match level {
                "%u" => username,
                "%c" => client_id,
                other => {
                    out.push_str(other);
                    continue;
                }
            };
            if !safe_substitution(value) {
                return None;
            }
            out.push_str(value);
        }
        Some(Cow::Owned(out))
    }
}

fn safe_substitution(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('$') && !value.contains(['+', '#', '/', '\0'])
}

/// The outcome of a check, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The source of the grant that allowed it; `None` means denied by default.
    pub rule: Option<String>,
}

impl Decision {
    fn allow(grant: &Grant) -> Self {
        Decision {
            allowed: true,
            rule: Some(grant.source.clone()),
        }
    }
    fn deny() -> Self {
        Decision {
            allowed: false,
            rule: None,
        }
    }
}

/// An identity's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    publish: Vec<Grant>,
    subscribe: Vec<Grant>,
}

impl Acl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a publish grant (the pattern must already be a validated filter).
    pub fn allow_publish(&mut self, grant: Grant) {
        self.publish.push(grant);
    }

    /// Adds a subscribe grant (the pattern must already be a validated filter).
    pub fn allow_subscribe(&mut self, grant: Grant) {
        self.subscribe.push(grant);
    }

    pub fn publish_grants(&self) -> &[Grant] {
        &self.publish
    }

    pub fn subscribe_grants(&self) -> &[Grant] {
        &self.subscribe
    }

    /// May `username` (connected as `client_id`) publish to `topic`? A topic name with
    /// wildcards or U+0000 is never allowed.
    pub fn may_publish(&self, username: &str, client_id: &str, topic: &str) -> Decision {
        TopicName::new(topic)
            .ok()
            .and_then(|topic| self.publish_grant(username, client_id, topic))
            .map_or_else(Decision::deny, Decision::allow)
    }

    /// [`Acl::may_publish`] for a topic name checked already, without naming the
    /// rule: nothing allocated, for the broker's per-message check.
    pub fn publish_allowed(&self, username: &str, client_id: &str, topic: TopicName<'_>) -> bool {
        self.publish_grant(username, client_id, topic).is_some()
    }

    fn publish_grant(
        &self,
        username: &str,
        client_id: &str,
        topic: TopicName<'_>,
    ) -> Option<&Grant> {
        let topic = topic.as_str();
        first_grant(&self.publish, username, client_id, |f| matches(f, topic))
    }

    /// May `username` subscribe to `filter`? A `$share/<group>/` prefix is stripped
    /// first; a subscribe grant must cover every topic the filter could match.
    pub fn may_subscribe(&self, username: &str, client_id: &str, filter: &str) -> Decision {
        let inner = match parse_shared(filter) {
            Ok(Some((_, inner))) => inner,
            Ok(None) => filter,
            Err(_) => return Decision::deny(),
        };
        if validate_topic_filter(inner).is_err() {
            return Decision::deny();
        }
        first_grant(&self.subscribe, username, client_id, |g| covers(g, inner))
            .map_or_else(Decision::deny, Decision::allow)
    }

    /// May a message on `topic` be delivered to `username`? (The delivery re-check:
    /// a subscribe grant must match the topic.)
    pub fn may_receive(&self, username: &str, client_id: &str, topic: &str) -> Decision {
        self.receive_grant(username, client_id, topic)
            .map_or_else(Decision::deny, Decision::allow)
    }

    /// [`Acl::may_receive`] without naming the rule (see [`Acl::publish_allowed`]).
    pub fn receive_allowed(&self, username: &str, client_id: &str, topic: &str) -> bool {
        self.receive_grant(username, client_id, topic).is_some()
    }

    fn receive_grant(&self, username: &str, client_id: &str, topic: &str) -> Option<&Grant> {
        if TopicName::new(topic).is_err() {
            return None;
        }
        first_grant(&self.subscribe, username, client_id, |f| matches(f, topic))
    }
}

fn first_grant<'a>(
    grants: &'a [Grant],
    username: &str,
    client_id: &str,
    test: impl Fn(&str) -> bool,
) -> Option<&'a Grant> {
    grants
        .iter()
        .find(|g| g.resolve(username, client_id).is_some_and(|f| test(&f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(publish: &[&str], subscribe: &[&str]) -> Acl {
        let mut acl = Acl::new();
        for (i, p) in publish.iter().enumerate() {
            acl.allow_publish(Grant::new(*p, format!("publish[{i}]")));
        }
        for (i, s) in subscribe.iter().enumerate() {
            acl.allow_subscribe(Grant::new(*s, format!("subscribe[{i}]")));
        }
        acl
    }

    #[test]
    fn deny_by_default_and_rule_names_the_grant() {
        let a = acl(&["a/b", "sensors/#"], &[]);
        assert_eq!(
            a.may_publish("u", "c", "x/y"),
            Decision {
                allowed: false,
                rule: None
            }
        );
        let d = a.may_publish("u", "c", "sensors/kitchen/temp");
        assert!(d.allowed);
        assert_eq!(d.rule.as_deref(), Some("publish[1]"));
        assert!(!a.may_subscribe("u", "c", "a/b").allowed);
    }

    #[test]
    fn placeholders_are_substituted_per_identity_and_client() {
        let a = acl(&["tele/%u/#", "clients/%c/state"], &["cmnd/%u/#"]);
        assert!(a.may_publish("plug-1", "c1", "tele/plug-1/STATE").allowed);
        assert!(!a.may_publish("plug-1", "c1", "tele/plug-2/STATE").allowed);
        assert!(
            a.may_publish("plug-1", "dev-42", "clients/dev-42/state")
                .allowed
        );
        assert!(
            !a.may_publish("plug-1", "dev-42", "clients/dev-43/state")
                .allowed
        );
        assert!(a.may_subscribe("plug-1", "c1", "cmnd/plug-1/#").allowed);
        assert!(!a.may_subscribe("plug-1", "c1", "cmnd/+/#").allowed);
        assert!(a.may_receive("plug-1", "c1", "cmnd/plug-1/POWER").allowed);
        assert!(!a.may_receive("plug-1", "c1", "cmnd/plug-2/POWER").allowed);
    }

    #[test]
    fn injected_values_never_widen_a_grant() {
        let a = acl(&["tele/%u/#", "c/%c"], &["cmnd/%u/#", "x/%c/y"]);
        for evil in ["+", "#", "a/b", "", "$SYS", "a+", "b#c", "nul\0"] {
            assert!(!a.may_publish(evil, "c", "tele/x/y").allowed, "{evil:?}");
            assert!(!a.may_subscribe(evil, "c", "cmnd/x/#").allowed, "{evil:?}");
            assert!(!a.may_publish("u", evil, "c/x").allowed, "{evil:?}");
            assert!(!a.may_subscribe("u", evil, "x/z/y").allowed, "{evil:?}");
        }
        // `a/b` as a name would otherwise make `tele/a/b/#` match this topic.
        assert!(!a.may_publish("a/b", "c", "tele/a/b/x").allowed);
        assert!(!a.may_publish("$SYS", "c", "tele/$SYS/x").allowed);
    }

    #[test]
    fn wildcards_never_reach_dollar_topics() {
        let a = acl(&["#", "+/broker/#"], &["#", "+/broker/+"]);
        assert!(!a.may_publish("u", "c", "$SYS/broker/load").allowed);
        assert!(!a.may_subscribe("u", "c", "$SYS/#").allowed);
        assert!(!a.may_subscribe("u", "c", "$SYS/broker/clients").allowed);
        assert!(!a.may_receive("u", "c", "$SYS/broker/clients").allowed);
        assert!(a.may_receive("u", "c", "home/x").allowed);
        let explicit = acl(&[], &["$SYS/#"]);
        assert!(explicit.may_subscribe("u", "c", "$SYS/broker/+").allowed);
        assert!(explicit.may_receive("u", "c", "$SYS/broker/load").allowed);
    }

    #[test]
    fn shared_subscriptions_are_checked_without_their_prefix() {
        let a = acl(&[], &["jobs/#"]);
        assert!(a.may_subscribe("u", "c", "$share/workers/jobs/+").allowed);
        assert!(!a.may_subscribe("u", "c", "$share/workers/other/#").allowed);
        assert!(!a.may_subscribe("u", "c", "$share/bad+group/jobs/x").allowed);
        assert!(!a.may_subscribe("u", "c", "$share/g").allowed);
    }

    #[test]
    fn subscriptions_must_be_covered_by_a_grant() {
        let a = acl(&[], &["sensors/+/temp"]);
        assert!(a.may_subscribe("u", "c", "sensors/kitchen/temp").allowed);
        assert!(a.may_subscribe("u", "c", "sensors/+/temp").allowed);
        assert!(!a.may_subscribe("u", "c", "sensors/#").allowed);
        assert!(!a.may_subscribe("u", "c", "sensors/+/+").allowed);
        assert!(!a.may_subscribe("u", "c", "#").allowed);
        assert!(!a.may_subscribe("u", "c", "sensors/kitchen/temp/x").allowed);
    }

    #[test]
    fn the_broker_check_agrees_with_the_named_decision() {
        let a = acl(&["tele/%u/#", "a/+/c", "#"], &[]);
        let b = acl(&["tele/%u/#", "a/+/c"], &[]);
        for topic in ["tele/u/x", "tele/v/x", "a/b/c", "a/b", "x", "$SYS/x"] {
            let name = TopicName::new(topic).unwrap();
            for acl in [&a, &b] {
                assert_eq!(
                    acl.publish_allowed("u", "c", name),
                    acl.may_publish("u", "c", topic).allowed,
                    "{topic}"
                );
            }
        }
    }

    #[test]
    fn malformed_requests_are_denied() {
        let a = acl(&["#"], &["#"]);
        assert!(!a.may_publish("u", "c", "a/+").allowed);
        assert!(!a.may_publish("u", "c", "").allowed);
        assert!(!a.may_subscribe("u", "c", "a/#/b").allowed);
        assert!(!a.may_subscribe("u", "c", "").allowed);
    }
}
