//! The setup report left on the card (`moat-setup.txt`): where the broker listens,
//! the CA file and its SHA-256 fingerprint, the Tasmota key fingerprint, how to
//! connect Home Assistant, which identities exist, and the manifest's warnings (read
//! on a PC, where a journal is out of reach). Its content depends only on the
//! manifest, the policy and the certificates (no timestamps), so an unchanged setup
//! rewrites nothing. It never holds a password, a hash or a key.

use std::fmt::Write as _;
use std::path::Path;

use crate::export::{self, ExportError};
use crate::manifest::Warning;
use crate::policy::{Credential, Policy};

/// Renders the report. `ca_card_name` is the CA file's name on the card; `warnings`
/// are the installed manifest's.
pub fn render(
    policy: &Policy,
    state: &Path,
    ca_card_name: &str,
    ca_fingerprint: &str,
    warnings: &[Warning],
) -> Result<String, ExportError> {
    let hosts = export::broker_hosts(policy)?;
    let tasmota = crate::pki::rsa_fingerprint_sha1(state)?;
    let mut t = String::new();
    let _ = writeln!(t, "moat setup report");
    let _ = writeln!(t, "=================");
    let _ = writeln!(
        t,
        "Written by `moat firstboot`. It holds no password and no key; passwords are\n\
         stored on the broker as argon2id hashes only."
    );
    if !warnings.is_empty() {
        let _ = writeln!(t);
        let _ = writeln!(t, "Warnings from moat.yaml (it works, but look at these):");
        for warning in warnings {
            let _ = writeln!(t, "  {warning}");
        }
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "Broker");
    let _ = writeln!(t, "  names:     {}", hosts.join(", "));
    let _ = writeln!(
        t,
        "             (clients must use one of these: the certificate covers nothing else)"
    );
    if policy.hostnames.is_empty() && policy.addresses.is_empty() {
        for line in [
            "  WARNING: moat.yaml names no broker.hostnames or broker.addresses, so the",
            "  certificate covers only localhost and no LAN client can verify it. Add the",
            "  name (or fixed IP address) clients use, then reboot.",
        ] {
            let _ = writeln!(t, "{line}");
        }
    }
    let _ = writeln!(t, "  TLS port:  {}", policy.listen_tls().port());
    let plain: Vec<&str> = policy
        .identities()
        .filter(|i| i.plaintext)
        .map(|i| i.name.as_str())
        .collect();
    if let Some(addr) = policy.listen_plain()
        && !plain.is_empty()
    {
        let _ = writeln!(
            t,
            "  plain port: {} (no TLS; only for {})",
            addr.port(),
            plain.join(", ")
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "CA certificate: {ca_card_name} (on this card)");
    let _ = writeln!(t, "  SHA-256 fingerprint: {ca_fingerprint}");
    if let Some(fingerprint) = &tasmota {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Tasmota pins the RSA server key (`moat export NAME` prints the whole Backlog line):"
        );
        let _ = writeln!(
            t,
            "  SetOption103 1; SetOption132 1; MqttFingerprint1 {fingerprint}"
        );
    }
    let ca_on_card = Path::new(ca_card_name);
    for identity in policy
        .identities()
        .filter(|i| i.roles.iter().any(|r| r == "homeassistant"))
    {
        let settings = export::client_settings(policy, state, &identity.name, Some(ca_on_card))?;
        for snippet in settings
            .snippets
            .iter()
            .filter(|s| s.client == "homeassistant")
        {
            let _ = writeln!(t);
            let _ = writeln!(t, "Home Assistant (user {})", identity.name);
            for line in snippet.text.lines() {
                let _ = writeln!(t, "  {line}");
            }
        }
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "Identities");
    for identity in policy.identities() {
        let roles = if identity.roles.is_empty() {
            String::new()
        } else {
            format!(" (role {})", identity.roles.join(", "))
        };
        let credential = match &identity.credential {
            Credential::PasswordHash(_) => "password",
            Credential::PasswordFile(_) => "password file",
            Credential::Certificate => "client certificate (bundle in the state directory)",
        };
        let plaintext = if identity.plaintext {
            ", plaintext allowed"
        } else {
            ""
        };
        let _ = writeln!(
            t,
            "  {} {}{roles}: {credential}{plaintext}",
            identity.kind.as_str(),
            identity.name
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "Settings for any identity (Zigbee2MQTT, Tasmota, ESPHome, Shelly): run\n\
         `moat export NAME` on the broker."
    );
    Ok(t)
}
