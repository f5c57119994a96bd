//! Which Mosquitto listeners carry over: the first TLS and the first plain one, with
//! their addresses; WebSocket, extra and socket listeners are reported.

use super::settings::reason_for;
use super::*;

/// The listeners that carry over.
pub(super) struct Picked<'c> {
    pub(super) tls: Option<&'c Listener>,
    pub(super) plain: Option<&'c Listener>,
}

fn listener_item(l: &Listener) -> String {
    match &l.address {
        Some(a) => format!("listener {} {a}", l.port),
        None => format!("listener {}", l.port),
    }
}

pub(super) fn pick_listeners<'c>(
    conf: &'c Conf,
    options: &Options,
    report: &mut Report,
) -> Picked<'c> {
    let mut picked = Picked {
        tls: None,
        plain: None,
    };
    for l in conf.all_listeners() {
        let item = listener_item(l);
        let at = Some(&l.origin);
        if let Some(ws) = &l.websockets {
            report.dropped(
                Some(ws),
                format!("{item} (protocol websockets)"),
                "MQTT over WebSockets is not in moat yet; these clients must use MQTT over TLS",
            );
        } else if l.port == 0 || l.address.as_deref().is_some_and(|a| a.starts_with('/')) {
            report.dropped(at, item, "a Unix socket listener; moat listens on TCP only");
        } else if l.is_tls() {
            if picked.tls.is_none() {
                picked.tls = Some(l);
            } else {
                report.dropped(
                    at,
                    item,
                    "moat has one TLS listener; point these clients at it",
                );
            }
        } else if options.tls_only {
            report.dropped(at, item, "plaintext listener left out (--tls-only)");
        } else if picked.plain.is_none() {
            picked.plain = Some(l);
        } else {
            report.dropped(
                at,
                item,
                "moat has one plaintext listener; point these clients at it",
            );
        }
        for other in &l.other {
            let (key, _) = split_key(&other.text);
            report.dropped(Some(&other.origin), other.text.clone(), reason_for(key));
        }
    }
    if conf.all_listeners().next().is_none() {
        report.changed(
            None,
            "no listener",
            "mosquitto 2 without a listener serves localhost:1883 to anonymous clients; moat has no anonymous access and listens with TLS on 0.0.0.0:8883",
        );
    }
    match picked.tls {
        Some(t) => {
            report.changed(
                Some(&t.origin),
                listener_item(t),
                "kept as broker.listen.tls; its certfile/keyfile/cafile are not: moat serves a certificate from its own CA (`moat provision` writes <state>/ca.pem), so give clients the new CA (`moat export NAME`)",
            );
            if let Some(r) = t.require_certificate.as_ref().filter(|r| r.value) {
                report.changed(
                    Some(&r.origin),
                    "require_certificate true",
                    "moat asks password users for no client certificate; identities named by their certificate become devices with certificate: true",
                );
            }
        }
        None => report.changed(
            None,
            "broker.listen.tls",
            "mosquitto had no TLS listener; moat always runs one (0.0.0.0:8883)",
        ),
    }
    if let Some(p) = picked.plain {
        report.changed(
            Some(&p.origin),
            listener_item(p),
            "kept as broker.listen.plain, where only identities with plaintext: true may log in: the users who logged in there before got it. Move them to TLS, or import with --tls-only",
        );
    }
    picked
}

/// The manifest address of a listener: every interface when none was given.
pub(super) fn listen_address(l: &Listener, report: &mut Report) -> String {
    match l.address.as_deref() {
        None => "0.0.0.0".into(),
        Some("localhost") => "127.0.0.1".into(),
        Some(a) if a.parse::<IpAddr>().is_ok() => a.into(),
        Some(a) => {
            report.changed(
                Some(&l.origin),
                listener_item(l),
                format!("{a:?} is not an IP address; moat listens on 0.0.0.0 (set broker.listen address by hand)"),
            );
            "0.0.0.0".into()
        }
    }
}
