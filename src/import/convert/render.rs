//! The manifest text of an import: YAML written by hand (double-quoted scalars, flow
//! lists) so that it reads like one a person wrote.

use super::*;

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn flow_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", parts.join(", "))
}

pub(super) fn render(
    conf_path: &Path,
    listen: &[(&'static str, String, u16)],
    limits: &[(&'static str, u64)],
    identities: &[Identity],
) -> String {
    let mut out = format!(
        "# Imported from {} by `moat import mosquitto`.\n# The import printed what it could not carry over; `moat check` shows who may do what.\nversion: 1\n",
        quoted(&conf_path.display().to_string())
    );
    out.push_str("broker:\n  listen:\n");
    for (kind, address, port) in listen {
        out.push_str(&format!(
            "    {kind}: {{ address: {}, port: {port} }}\n",
            quoted(address)
        ));
    }
    if !limits.is_empty() {
        out.push_str("  limits:\n");
        for (key, value) in limits {
            out.push_str(&format!("    {key}: {value}\n"));
        }
    }
    for (section, devices) in [("users", false), ("devices", true)] {
        let members: Vec<&Identity> = identities
            .iter()
            .filter(|i| i.certificate == devices)
            .collect();
        if members.is_empty() {
            continue;
        }
        out.push_str(&format!("{section}:\n"));
        for id in members {
            out.push_str(&format!("  {}:\n", quoted(&id.name)));
            if let Some(hash) = &id.hash {
                out.push_str(&format!("    password_hash: {}\n", quoted(hash)));
            }
            if id.certificate {
                out.push_str("    certificate: true\n");
            }
            if id.plaintext {
                out.push_str("    plaintext: true\n");
            }
            if !id.publish.is_empty() {
                out.push_str(&format!("    publish: {}\n", flow_list(&id.publish)));
            }
            if !id.subscribe.is_empty() {
                out.push_str(&format!("    subscribe: {}\n", flow_list(&id.subscribe)));
            }
        }
    }
    out
}
