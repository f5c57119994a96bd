//! MQTT topic names and topic filters: validation, matching, shared-subscription
//! prefixes, and whether one filter covers another. Pure string rules from the MQTT
//! specification (§4.7, §4.8.2); size limits are the broker's business, not this one's.

use super::{ascii, text};

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard (+ or #)")]
    WildcardInName,
    #[error("'#' must be the last level and stand alone")]
    MisplacedMultiLevel,
    #[error("'+' must stand alone in its level")]
    MisplacedSingleLevel,
    #[error("topic contains U+0000")]
    NullCharacter,
    #[error("topic contains U+{:04X}, a control character or non-character", u32::from(*.0))]
    DisallowedCharacter(char),
    #[error("shared subscription needs $share/<group>/<filter> with a group free of + # /")]
    InvalidShare,
}

/// A topic name a PUBLISH may carry: non-empty, no wildcards, no U+0000, control
/// character or non-character. (The codec refuses those characters in every string
/// already; the check here covers topics that come from elsewhere, e.g. a manifest.)
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    TopicName::new(topic).map(|_| ())
}

/// A topic name that passed the checks of [`validate_topic_name`], with its number
/// of levels, both found in one pass. A broker makes one per message, so its limits,
/// ACL checks and matching neither validate nor count the topic again; only
/// [`TopicName::new`] makes one, so holding one proves the check was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicName<'a> {
    name: &'a str,
    levels: usize,
}

impl<'a> TopicName<'a> {
    /// Checks `name` as [`validate_topic_name`] does and counts its levels.
    pub fn new(name: &'a str) -> Result<TopicName<'a>, TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        // One pass for what nearly every topic is: printable ASCII without wildcards.
        let separators = match ascii::topic_name_separators(name.as_bytes()) {
            Some(separators) => separators,
            None => {
                check_characters(name)?;
                if name.contains(['+', '#']) {
                    return Err(TopicError::WildcardInName);
                }
                name.bytes().filter(|&b| b == b'/').count()
            }
        };
        Ok(TopicName {
            name,
            levels: separators + 1,
        })
    }

    pub fn as_str(&self) -> &'a str {
        self.name
    }

    /// Levels, separated by `/` (`a//b` has three, `/` two).
    pub fn levels(&self) -> usize {
        self.levels
    }

    /// Whether it starts with `$`, which clients never publish to and wildcards in
    /// the first level never match (MQTT-4.7.2-1).
    pub fn is_dollar(&self) -> bool {
        self.name.starts_with('$')
    }
}

/// A topic filter a SUBSCRIBE may carry (including a `$share/<group>/` prefix).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_characters(filter)?; // the share group too
    let inner = match parse_shared(filter)? {
        Some((_, inner)) => inner,
        None => filter,
    };
    validate_plain_filter(inner)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

fn check_characters(topic: &str) -> Result<(), TopicError> {
    match text::first_disallowed(topic) {
        None => Ok(()),
        Some('\0') => Err(TopicError::NullCharacter),
        Some(c) => Err(TopicError::DisallowedCharacter(c)),
    }
}

/// Splits `$share/<group>/<filter>` into its group and filter; `None` for an ordinary
/// filter. The group must be non-empty and free of wildcards; the filter non-empty.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, inner) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::InvalidShare);
    }
    Ok(Some((group, inner)))
}

/// Whether a (non-shared, valid) filter matches a topic name. Wildcards in the first
/// level never match a topic that starts with `$` (MQTT-4.7.2-1). Walks both byte by
/// byte, one level at a time: it runs for every grant of every ACL check.
pub fn matches(filter: &str, topic: &str) -> bool {
    let (filter, topic) = (filter.as_bytes(), topic.as_bytes());
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    // `f` and `t` start a level each, in step.
    let (mut f, mut t) = (0, 0);
    loop {
        let level_end = |at: usize| filter.get(at).is_none_or(|&b| b == b'/');
        match filter.get(f) {
            Some(b'#') if level_end(f + 1) => return true,
            Some(b'+') if level_end(f + 1) => {
                f += 1;
                while t < topic.len() && topic[t] != b'/' {
                    t += 1;
                }
            }
            _ => {
                while f < filter.len() && filter[f] != b'/' {
                    if topic.get(t) != Some(&filter[f]) {
                        return false;
                    }
                    f += 1;
                    t += 1;
                }
                if t < topic.len() && topic[t] != b'/' {
                    return false;
                }
            }
        }
        // Both at the end of a level.
        match (f == filter.len(), t == topic.len()) {
            (true, topic_done) => return topic_done,
            // "a/#" matches "a" too.
            (false, true) => return filter.get(f + 1) == Some(&b'#') && level_end(f + 2),
            (false, false) => {
                f += 1;
                t += 1;
            }
        }
    }
}

/// Whether every topic that `requested` matches is also matched by `grant` (both
/// valid, non-shared filters). Used to decide whether a subscription is allowed.
pub fn covers(grant: &str, requested: &str) -> bool {
    // A grant that starts with a wildcard never reaches `$`-topics, so it cannot
    // cover a request for them. (A request that starts with a wildcard cannot reach
    // `$`-topics either, so no special case is needed the other way round.)
    if requested.starts_with('$') && grant.starts_with(['+', '#']) {
        return false;
    }
    let mut requested_levels = requested.split('/');
    for g in grant.split('/') {
        if g == "#" {
            return true;
        }
        match requested_levels.next() {
            // `#` in the request reaches deeper than any single grant level.
            Some("#") => return false,
            Some("+") if g == "+" => {}
            Some("+") => return false,
            Some(r) if g == "+" || g == r => {}
            _ => return false,
        }
    }
    requested_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name("a\nb"),
            Err(TopicError::DisallowedCharacter('\n'))
        );
        assert_eq!(
            validate_topic_filter("a/\u{85}/#"),
            Err(TopicError::DisallowedCharacter('\u{85}'))
        );
        assert_eq!(
            validate_topic_filter("$share/g/\u{fdd0}"),
            Err(TopicError::DisallowedCharacter('\u{fdd0}'))
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "$SYS/#",
            "$share/g/a/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_topic_filter("a/#/b"),
            Err(TopicError::MisplacedMultiLevel)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MisplacedMultiLevel)
        );
        assert_eq!(
            validate_topic_filter("a/b+"),
            Err(TopicError::MisplacedSingleLevel)
        );
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("$share/g"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share//a"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share/g+/a"),
            Err(TopicError::InvalidShare)
        );
    }

    #[test]
    fn shared_prefix() {
        assert_eq!(parse_shared("$share/grp/a/+"), Ok(Some(("grp", "a/+"))));
        assert_eq!(parse_shared("a/b"), Ok(None));
    }

    /// The level-by-level definition [`matches`] must agree with.
    fn matches_by_levels(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && filter.starts_with(['+', '#']) {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in filter.split('/') {
            if level == "#" {
                return true;
            }
            match topic_levels.next() {
                Some(t) if level == "+" || level == t => {}
                _ => return false,
            }
        }
        topic_levels.next().is_none()
    }

    proptest::proptest! {
        /// Every filter and topic made of a few levels (empty ones, `$`, wildcards,
        /// prefixes of each other) is matched as the level-by-level definition says.
        #[test]
        fn matches_agrees_with_the_level_by_level_definition(
            filter in proptest::collection::vec(
                proptest::sample::select(vec!["a", "ab", "b", "", "$S", "+", "#", "a+", "#b"]), 1..6),
            topic in proptest::collection::vec(
                proptest::sample::select(vec!["a", "ab", "b", "", "$S", "+", "#"]), 1..6),
        ) {
            let (filter, topic) = (filter.join("/"), topic.join("/"));
            proptest::prop_assert_eq!(
                matches(&filter, &topic), matches_by_levels(&filter, &topic),
                "{:?} {:?}", filter, topic);
        }

        /// A topic name's level count is its number of `/`-separated parts, and it
        /// is accepted exactly when the character and wildcard rules accept it.
        #[test]
        fn topic_names_are_checked_and_counted_in_one_pass(
            name in "[a-c/+#$ \\x00-\\x1f\\x7f-\\u{a0}é\\u{fdd0}\\u{fffe}]{0,20}",
        ) {
            let expected = if name.is_empty() {
                Err(TopicError::Empty)
            } else if let Some(c) = text::first_disallowed(&name) {
                Err(if c == '\0' { TopicError::NullCharacter } else { TopicError::DisallowedCharacter(c) })
            } else if name.contains(['+', '#']) {
                Err(TopicError::WildcardInName)
            } else {
                Ok(name.split('/').count())
            };
            proptest::prop_assert_eq!(TopicName::new(&name).map(|t| t.levels()), expected);
        }
    }

    #[test]
    fn topic_name_levels_and_dollar() {
        let name = TopicName::new("a//b").unwrap();
        assert_eq!(
            (name.as_str(), name.levels(), name.is_dollar()),
            ("a//b", 3, false)
        );
        assert_eq!(TopicName::new("/").unwrap().levels(), 2);
        assert_eq!(TopicName::new("état/x").unwrap().levels(), 2);
        assert!(TopicName::new("$SYS/x").unwrap().is_dollar());
        assert_eq!(TopicName::new("a/é+"), Err(TopicError::WildcardInName));
        assert_eq!(
            TopicName::new("longer than eight/#"),
            Err(TopicError::WildcardInName)
        );
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("a/+", "a/"));
        assert!(matches("+/+", "/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("ab", "a"));
        assert!(!matches("a", "ab"));
        assert!(matches("a/#", "a/"));
        assert!(!matches("a/b/#", "a"));
    }

    #[test]
    fn coverage() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/#", "a"));
        assert!(covers("sensors/+/temp", "sensors/kitchen/temp"));
        assert!(covers("sensors/+/temp", "sensors/+/temp"));
        assert!(!covers("sensors/+/temp", "sensors/#"));
        assert!(!covers("sensors/kitchen/temp", "sensors/+/temp"));
        assert!(!covers("a/b", "a/b/c"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
        // `#` as a request reaches `$`-topics of nobody, so a `#` grant covers it.
        assert!(covers("#", "#"));
        assert!(!covers("a/+", "a/#"));
    }
}
