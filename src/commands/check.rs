//! `moat check [--explain NAME TOPIC] [--json]`: validates the manifest, prints its
//! warnings and who may publish and subscribe to what; with `--explain`, whether NAME
//! may publish and subscribe TOPIC and which rule decides. Exit 1 on an invalid
//! manifest.

use serde_json::{Value, json};

use super::{EXIT_FINDING, EXIT_OK};
use crate::acl::{Decision, Grant};
use crate::cli::{CheckArgs, GlobalArgs};
use crate::manifest::{ManifestError, load};
use crate::policy::{Identity, Policy};
use moat_protocol::topic::{validate_topic_filter, validate_topic_name};

pub fn run(global: &GlobalArgs, args: &CheckArgs) -> anyhow::Result<u8> {
    let path = &global.manifest;
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(err) => return Ok(report_invalid(global, &err)),
    };
    let policy = match Policy::compile(&loaded.manifest) {
        Ok(policy) => policy,
        Err(err) => return Ok(report_invalid(global, &err)),
    };
    for warning in &loaded.warnings {
        eprintln!("{}: {warning}", path.display());
    }
    if let Some(explain) = &args.explain {
        let [name, topic] = explain.as_slice() else {
            eprintln!("moat: --explain takes NAME and TOPIC");
            return Ok(super::EXIT_USAGE);
        };
        return Ok(explain_topic(global, &policy, name, topic));
    }
    if global.json {
        let identities: Vec<Value> = policy.identities().map(|i| identity_json(i)).collect();
        let warnings: Vec<Value> = loaded
            .warnings
            .iter()
            .map(|w| json!({"line": w.line, "column": w.column, "message": w.message}))
            .collect();
        println!(
            "{}",
            json!({"valid": true, "warnings": warnings, "identities": identities})
        );
    } else {
        print_table(&policy, &path.display().to_string(), loaded.warnings.len());
    }
    Ok(EXIT_OK)
}

fn report_invalid(global: &GlobalArgs, err: &ManifestError) -> u8 {
    eprintln!("{err}");
    if global.json {
        let errors: Vec<Value> = err
            .diagnostics()
            .iter()
            .map(|d| json!({"line": d.line, "column": d.column, "message": d.message}))
            .collect();
        println!(
            "{}",
            json!({"valid": false, "errors": errors, "error": err.to_string()})
        );
    }
    EXIT_FINDING
}

fn grants_json(grants: &[Grant]) -> Vec<Value> {
    grants
        .iter()
        .map(|g| json!({"filter": g.pattern, "source": g.source}))
        .collect()
}

fn identity_json(i: &Identity) -> Value {
    json!({
        "name": i.name,
        "kind": i.kind.as_str(),
        "credential": i.credential.kind(),
        "plaintext": i.plaintext,
        "retain": i.may_retain,
        "roles": i.roles,
        "publish": grants_json(i.acl.publish_grants()),
        "subscribe": grants_json(i.acl.subscribe_grants()),
        "max_queued_messages": i.max_queued_messages,
        "max_queued_bytes": i.max_queued_bytes,
        "max_packet_size": i.max_packet_size,
    })
}

fn list(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "(nothing)".to_string();
    }
    grants
        .iter()
        .map(|g| g.pattern.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(policy: &Policy, path: &str, warnings: usize) {
    let count = policy.identities().count();
    println!(
        "{path}: valid, {count} identit{}, {warnings} warning{}",
        if count == 1 { "y" } else { "ies" },
        if warnings == 1 { "" } else { "s" }
    );
    println!(
        "listeners: tls {}{}",
        policy.listen_tls(),
        policy
            .listen_plain()
            .map(|p| format!(", plain {p} (plaintext: true identities only)"))
            .unwrap_or_default()
    );
    if let Some(metrics) = &policy.metrics {
        println!(
            "metrics: http://{}/metrics ({}; firewall opens it to the networks below)",
            metrics.address,
            if metrics.token_file.is_some() {
                "bearer token required"
            } else {
                "no token"
            }
        );
    }
    let nets: Vec<String> = policy
        .networks
        .cidrs()
        .iter()
        .map(|n| n.to_string())
        .collect();
    println!("networks: {}", nets.join(", "));
    for i in policy.identities() {
        println!();
        println!(
            "{} ({}, {}, plaintext: {}, retain: {}, roles: {})",
            i.name,
            i.kind.as_str(),
            i.credential.kind(),
            if i.plaintext { "yes" } else { "no" },
            if i.may_retain { "yes" } else { "no" },
            if i.roles.is_empty() {
                "none".to_string()
            } else {
                i.roles.join(", ")
            }
        );
        println!("  publish:   {}", list(i.acl.publish_grants()));
        println!("  subscribe: {}", list(i.acl.subscribe_grants()));
    }
    for b in &policy.bridges {
        println!();
        println!("{}", crate::bridge::plan::describe(b));
    }
}

fn explain_topic(global: &GlobalArgs, policy: &Policy, name: &str, topic: &str) -> u8 {
    let Some(identity) = policy.identity(name) else {
        eprintln!(
            "moat: {}: no user or device named {name:?}",
            global.manifest.display()
        );
        return EXIT_FINDING;
    };
    // There is no live connection to explain, so %c is evaluated as the name.
    let client_id = name;
    let publish = match validate_topic_name(topic) {
        Ok(()) => Some(identity.acl.may_publish(name, client_id, topic)),
        Err(_) => None,
    };
    let subscribe = match validate_topic_filter(topic) {
        Ok(()) => Some(identity.acl.may_subscribe(name, client_id, topic)),
        Err(_) => None,
    };
    if global.json {
        let as_json = |d: &Option<Decision>| match d {
            Some(d) => json!({"allowed": d.allowed, "rule": d.rule}),
            None => json!({"allowed": false, "rule": null, "invalid": true}),
        };
        println!(
            "{}",
            json!({"name": name, "topic": topic, "publish": as_json(&publish), "subscribe": as_json(&subscribe)})
        );
        return EXIT_OK;
    }
    let describe = |d: &Option<Decision>, what: &str| match d {
        None => format!("DENIED: {topic:?} is not a valid {what}"),
        Some(Decision {
            allowed: true,
            rule: Some(rule),
        }) => format!("ALLOWED by {rule}"),
        Some(Decision { allowed: true, .. }) => "ALLOWED".to_string(),
        Some(Decision { allowed: false, .. }) => {
            "DENIED: no rule grants it: denied by default".to_string()
        }
    };
    println!(
        "{name} publish {topic}: {}",
        describe(&publish, "topic name (wildcards cannot be published to)")
    );
    println!(
        "{name} subscribe {topic}: {}",
        describe(&subscribe, "topic filter")
    );
    if identity
        .acl
        .publish_grants()
        .iter()
        .chain(identity.acl.subscribe_grants())
        .any(|g| g.pattern.split('/').any(|l| l == "%c"))
    {
        println!("(grants with %c were evaluated with the client id {client_id:?})");
    }
    EXIT_OK
}
