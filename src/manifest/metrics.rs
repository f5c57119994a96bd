//! Validation of `broker.metrics:` (the Prometheus endpoint): its port must be a
//! port of its own, and its token file an absolute path. The endpoint itself lives in
//! `crate::metrics`; this module only judges the manifest's words.

use super::schema::{BrokerSpec, Spanned};
use super::validate::{Finding, Severity};

fn error<T>(at: &Spanned<T>, message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        line: at.referenced.line().max(1),
        column: at.referenced.column().max(1),
        message,
    }
}

/// Every error in `broker.metrics`, if present.
pub fn validate(broker: &BrokerSpec) -> Vec<Finding> {
    let Some(entry) = &broker.metrics else {
        return Vec::new();
    };
    let spec = &entry.value;
    let mut findings = Vec::new();
    let port = spec.socket_addr().port();
    let at_port = |message: String| match &spec.port {
        Some(p) => error(p, message),
        None => error(entry, message),
    };
    if port == 0 {
        findings.push(at_port(
            "broker.metrics: port 0 is not a port a scraper can connect to".into(),
        ));
    }
    for (transport, listener) in broker.listen.declared() {
        let taken =
            super::schema::ListenerSpec::socket_addr(listener.map(|l| &l.value), transport).port();
        if taken == port {
            findings.push(at_port(format!(
                "broker.metrics cannot share port {port} with the {} listener; give it another port (default {})",
                transport.key(),
                super::schema::MetricsSpec::DEFAULT_PORT
            )));
        }
    }
    if let Some(file) = &spec.token_file
        && !file.value.is_absolute()
    {
        findings.push(error(
            file,
            format!(
                "broker.metrics.token_file must be an absolute path, not {:?}",
                file.value.display().to_string()
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use crate::manifest::{LoadOptions, parse_str};
    use crate::policy::Policy;

    fn errors(broker: &str) -> Vec<String> {
        let text = format!("version: 1\nbroker:\n{broker}");
        match parse_str(&text, "t.yaml", LoadOptions::default()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn metrics_is_off_by_default_and_opens_its_port_when_declared() {
        let compile = |text: &str| {
            let loaded = parse_str(text, "t.yaml", LoadOptions::default()).unwrap();
            Policy::compile(&loaded.manifest).unwrap()
        };
        let off = compile("version: 1\n");
        assert!(off.metrics.is_none());
        assert_eq!(off.listener_ports(), [8883]);
        let on = compile(
            "version: 1\nbroker:\n  metrics: { address: \"192.168.1.2\", token_file: /run/secrets/scrape }\n",
        );
        let plan = on.metrics.as_ref().unwrap();
        assert_eq!(plan.address, "192.168.1.2:9883".parse().unwrap());
        assert_eq!(
            plan.token_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/scrape"))
        );
        assert_eq!(on.listener_ports(), [8883, 9883]);
    }

    #[test]
    fn a_shared_port_a_relative_token_file_or_an_unknown_key_is_refused() {
        let shared = errors("  metrics: { port: 8883 }\n");
        assert!(
            shared[0].contains("cannot share port 8883 with the tls listener"),
            "{shared:?}"
        );
        let relative = errors("  metrics: { token_file: token }\n");
        assert!(
            relative[0].contains("token_file must be an absolute path"),
            "{relative:?}"
        );
        let zero = errors("  metrics: { port: 0 }\n");
        assert!(zero[0].contains("port 0"), "{zero:?}");
        let unknown = errors("  metrics: { path: /x }\n");
        assert!(!unknown.is_empty());
        assert!(errors("  metrics: { port: 9100 }\n").is_empty());
    }
}
