//! mosquitto's `acl_file` (mosquitto.conf(5), "acl_file"): `user NAME` starts a
//! user's section; `topic [read|write|readwrite|deny] TOPIC` grants to the current
//! user (to anonymous clients before any `user` line); `pattern [...] TOPIC` applies
//! to every client, with `%u`/`%c` substituted. As in mosquitto, the topic is the rest
//! of the line (it may hold spaces), the access word may be left out (read and write),
//! and any other line is an error. It only parses; `convert` maps rules to grants.

use std::path::Path;

use super::ImportError;
use super::source::{self, Origin, split_key};

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    pub fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
            Access::Deny => "deny",
        }
    }
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A `topic` line before any `user` line.
    Anonymous,
    /// A `topic` line in this user's section.
    User(String),
    /// A `pattern` line: everyone, with `%u`/`%c`.
    Pattern,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub origin: Origin,
    pub subject: Subject,
    pub access: Access,
    pub topic: String,
}

impl Rule {
    /// The line as mosquitto would print it, for the report.
    pub fn describe(&self) -> String {
        let kind = if self.subject == Subject::Pattern {
            "pattern"
        } else {
            "topic"
        };
        format!("{kind} {} {}", self.access.word(), self.topic)
    }
}

/// A parsed ACL file: its rules, and the users it names (even with no rules).
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    pub rules: Vec<Rule>,
    pub users: Vec<(String, Origin)>,
}

/// Reads and parses an ACL file named at `at`.
pub fn read(path: &Path, at: &Origin) -> Result<AclFile, ImportError> {
    let text = source::read_text(path, "acl_file", Some(at))?;
    parse(path, &text)
}

/// Parses ACL text.
pub fn parse(path: &Path, text: &str) -> Result<AclFile, ImportError> {
    let mut acl = AclFile::default();
    let mut current = Subject::Anonymous;
    for line in source::lines_of(path, text) {
        let (key, rest) = split_key(&line.text);
        let bad = |message: String| ImportError::Invalid {
            at: Some(line.origin.clone()),
            message,
        };
        match key {
            "user" => {
                if rest.is_empty() {
                    return Err(bad("`user` needs a name".into()));
                }
                acl.users.push((rest.to_string(), line.origin.clone()));
                current = Subject::User(rest.to_string());
            }
            "topic" | "pattern" => {
                let (first, tail) = split_key(rest);
                if first.is_empty() {
                    return Err(bad(format!("`{key}` needs a topic")));
                }
                // Like mosquitto: with one word it is the topic (read and write); with
                // more, the first must be the access type and the rest is the topic.
                let (access, topic) = if tail.is_empty() {
                    (Access::ReadWrite, first)
                } else {
                    let access = match first {
                        "read" => Access::Read,
                        "write" => Access::Write,
                        "readwrite" => Access::ReadWrite,
                        "deny" => Access::Deny,
                        other => {
                            return Err(bad(format!(
                                "access type {other:?} is not read, write, readwrite or deny"
                            )));
                        }
                    };
                    (access, tail)
                };
                let subject = if key == "pattern" {
                    Subject::Pattern
                } else {
                    current.clone()
                };
                acl.rules.push(Rule {
                    origin: line.origin.clone(),
                    subject,
                    access,
                    topic: topic.to_string(),
                });
            }
            other => {
                return Err(bad(format!(
                    "{other:?} is not an ACL line (expected user, topic or pattern)"
                )));
            }
        }
    }
    Ok(acl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<AclFile, ImportError> {
        parse(Path::new("acl"), text)
    }

    #[test]
    fn sections_patterns_and_anonymous_rules() {
        let acl = parse_str(
            "# anonymous\r\ntopic read public/#\r\n\r\nuser alice\ntopic home/alice/#\ntopic write a b/c\npattern read users/%u/#\nuser bob\ntopic deny secret/#\n",
        )
        .unwrap();
        let got: Vec<(Subject, Access, &str, usize)> = acl
            .rules
            .iter()
            .map(|r| (r.subject.clone(), r.access, r.topic.as_str(), r.origin.line))
            .collect();
        let alice = Subject::User("alice".into());
        assert_eq!(
            got,
            vec![
                (Subject::Anonymous, Access::Read, "public/#", 2),
                (alice.clone(), Access::ReadWrite, "home/alice/#", 5),
                (alice, Access::Write, "a b/c", 6),
                (Subject::Pattern, Access::Read, "users/%u/#", 7),
                (Subject::User("bob".into()), Access::Deny, "secret/#", 9),
            ]
        );
        assert_eq!(acl.users.len(), 2);
        assert_eq!(acl.rules[3].describe(), "pattern read users/%u/#");
    }

    #[test]
    fn hostile_lines_are_errors_with_the_line() {
        for (text, line, needle) in [
            ("user alice\ntopic sometimes a/b\n", 2, "access type"),
            ("topic\n", 1, "needs a topic"),
            ("\nuser\n", 2, "needs a name"),
            ("user a\nallow all\n", 2, "not an ACL line"),
        ] {
            let err = parse_str(text).unwrap_err().to_string();
            assert!(err.contains(&format!("acl:{line}")), "{text}: {err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
