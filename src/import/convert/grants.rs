//! ACL lines to grants: `topic`/`pattern` read, write and readwrite per user, full
//! access where mosquitto enforced none, and grants that overlap a `deny` left out
//! (moat has no deny rules: fail closed).

use super::*;

/// Fills every identity's grants from the ACL (or gives full access where mosquitto did).
pub(super) fn grant(identities: &mut [Identity], acl: &AclFile, addon: bool, report: &mut Report) {
    for rule in acl.rules.iter().filter(|r| r.subject == Subject::Anonymous) {
        report.dropped(
            Some(&rule.origin),
            rule.describe(),
            "comes before any `user` line, so it applies to anonymous clients; moat has none",
        );
    }
    // Patterns are checked once; a bad one is reported once, not per user.
    let mut patterns: Vec<&Rule> = Vec::new();
    for rule in acl.rules.iter().filter(|r| r.subject == Subject::Pattern) {
        match check_grant_filter(&rule.topic) {
            Err(e) if rule.access != Access::Deny => {
                report.dropped(Some(&rule.origin), rule.describe(), e)
            }
            _ => patterns.push(rule),
        }
    }
    let mut used_denies: Vec<&Origin> = Vec::new();
    for id in identities.iter_mut() {
        let own: Vec<&Rule> = acl
            .rules
            .iter()
            .filter(|r| r.subject == Subject::User(id.name.clone()))
            .collect();
        if id.full_access || (addon && own.is_empty() && !id.certificate) {
            id.publish = vec!["#".into()];
            id.subscribe = vec!["#".into()];
            let why = if id.full_access {
                "no acl_file applied to it, so mosquitto let it publish and subscribe everything"
            } else {
                "the Home Assistant add-on does not enforce ACLs (home-assistant/addons#4721), so it could publish and subscribe everything"
            };
            report.changed(
                Some(&id.origin),
                format!("user {}", id.name),
                format!("{why}: granted `#` both ways (which in moat does not cover $SYS). Narrow it, e.g. with a built-in role (docs/manifest.md)"),
            );
            continue;
        }
        let denies: Vec<&Rule> = own
            .iter()
            .chain(patterns.iter())
            .copied()
            .filter(|r| r.access == Access::Deny)
            .collect();
        for rule in own.iter().chain(patterns.iter()).copied() {
            if rule.access == Access::Deny {
                continue;
            }
            let item = format!("{} (user {})", rule.describe(), id.name);
            if rule.subject != Subject::Pattern {
                if rule.topic.contains("%u") || rule.topic.contains("%c") {
                    report.dropped(Some(&rule.origin), item, "mosquitto takes %u/%c in a `topic` line literally and moat would substitute them; write a `pattern` line if substitution was meant");
                    continue;
                }
                if let Err(e) = check_grant_filter(&rule.topic) {
                    report.dropped(Some(&rule.origin), item, e);
                    continue;
                }
            }
            let mine = substitute(&rule.topic, &id.name);
            if let Some(deny) = denies
                .iter()
                .find(|d| filters_intersect(&mine, &substitute(&d.topic, &id.name)))
            {
                used_denies.push(&deny.origin);
                report.dropped(
                    Some(&rule.origin),
                    item,
                    format!(
                        "overlaps `{}` ({}); moat has no deny rules, so this grant is left out to stay closed: grant the topics it should cover without the denied ones",
                        deny.describe(),
                        deny.origin
                    ),
                );
                continue;
            }
            if rule.access.reads() {
                push_unique(&mut id.subscribe, &rule.topic);
            }
            if rule.access.writes() {
                push_unique(&mut id.publish, &rule.topic);
            }
        }
        if id.publish.is_empty() && id.subscribe.is_empty() {
            report.changed(
                Some(&id.origin),
                format!("user {}", id.name),
                "no grant carried over: it may log in but publish and subscribe nothing",
            );
        }
    }
    // Only a user with narrower read rules than `#` can notice the difference.
    if identities
        .iter()
        .any(|id| id.subscribe.iter().any(|f| f != "#"))
    {
        report.changed(
            None,
            "read rules",
            "mosquitto 2.0 accepts a subscription wider than a user's read rules and drops each message they do not allow; moat refuses a subscription its grants do not cover (a failure code in the SUBACK, logged and counted): clients must subscribe to what they were granted",
        );
    }
    for deny in acl.rules.iter().filter(|r| r.access == Access::Deny) {
        if !used_denies.contains(&&deny.origin) {
            report.changed(
                Some(&deny.origin),
                deny.describe(),
                "not needed: it overlaps no grant, and moat denies whatever is not granted",
            );
        }
    }
}

fn push_unique(list: &mut Vec<String>, filter: &str) {
    if !list.iter().any(|f| f == filter) {
        list.push(filter.to_string());
    }
}

/// `%u` becomes the name; `%c` (unknown until a client connects) and any level with a
/// placeholder inside it become `+`, so an overlap test errs towards "overlaps".
fn substitute(filter: &str, name: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "%u" => name,
            l if l.contains("%u") || l.contains("%c") => "+",
            l => l,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether some topic matches both filters (`#` and `+` never match a `$` first level).
pub fn filters_intersect(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let dollar = |f: &[&str]| f.first().is_some_and(|l| l.starts_with('$'));
    let wild = |f: &[&str]| f.first().is_some_and(|l| *l == "+" || *l == "#");
    if (dollar(&a) && wild(&b)) || (dollar(&b) && wild(&a)) {
        return false;
    }
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if *x != "+" && *y != "+" && x != y {
                    return false;
                }
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_overlap() {
        for (a, b, want) in [
            ("#", "secret/x", true),
            ("a/+/c", "a/b/#", true),
            ("a/b", "a/b/#", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("+/b", "a/+", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker", true),
            ("+/x", "$SYS/x", false),
        ] {
            assert_eq!(filters_intersect(a, b), want, "{a} vs {b}");
            assert_eq!(filters_intersect(b, a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn placeholders_substitute_for_the_overlap_test() {
        assert_eq!(substitute("u/%u/#", "bob"), "u/bob/#");
        assert_eq!(substitute("c/%c/x-%u", "bob"), "c/+/+");
    }
}
