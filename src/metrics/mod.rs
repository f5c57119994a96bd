//! The optional Prometheus endpoint (`broker.metrics`): plain HTTP/1.1 `GET /metrics`
//! on its own port, LAN-only by the same network check as the MQTT listeners (the
//! kernel SYN filter, then [`crate::net::admission`] with its own small connection
//! budget, so scrapers and MQTT clients cannot starve each other), an optional bearer
//! token from a secret file, one request per connection under a deadline. It reads
//! the broker's, the authenticator's and the store's own counters (`collect`) and
//! never counts broker events itself; `homeassistant` shows the same health as Home
//! Assistant entities over MQTT. It must not touch MQTT sessions or the store's
//! contents.

pub mod collect;
pub mod homeassistant;
pub mod http;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::registry::Registry;

use crate::broker::ListenerKind;
use crate::net::admission::canonical_ip;
use crate::net::syn_filter::SynFilter;
use crate::net::{AdmissionControl, AdmissionSettings, Listener};
use crate::policy::{MetricsPlan, Networks, Policy};

pub use collect::Sources;
pub use token::{Token, TokenError};

/// Scrapes served at once; more are refused (and counted).
const MAX_SCRAPES: usize = 4;
/// Scrapes at once from one address.
const MAX_SCRAPES_PER_ADDRESS: usize = 2;
/// Longest a scraper may take to send its request, and to take the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The endpoint's own outcomes, by HTTP status (and refusals before any byte).
#[derive(Debug, Default)]
struct Outcomes {
    refused: AtomicU64,
    by_status: [AtomicU64; STATUSES.len()],
}

const STATUSES: [u16; 8] = [200, 400, 401, 404, 405, 408, 431, 500];

impl Outcomes {
    fn answered(&self, status: u16) {
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            self.by_status[i].fetch_add(1, Relaxed);
        }
    }
}

/// A running endpoint: what a reload may change (the networks and the token).
pub struct MetricsEndpoint {
    admission: Arc<AdmissionControl>,
    token: ArcSwapOption<Token>,
    registry: Registry,
    outcomes: Arc<Outcomes>,
    syn_filter: Option<SynFilter>,
    /// Where it listens (the port resolved).
    pub address: SocketAddr,
    /// What the manifest said at start.
    declared: SocketAddr,
}

fn admission_settings(networks: &Networks) -> AdmissionSettings {
    AdmissionSettings {
        networks: networks.clone(),
        max_connections: MAX_SCRAPES,
        max_connections_per_ip: MAX_SCRAPES_PER_ADDRESS,
    }
}

fn read_token(plan: &MetricsPlan) -> Result<Option<Arc<Token>>, TokenError> {
    plan.token_file
        .as_deref()
        .map(Token::read)
        .transpose()
        .map(|t| t.map(Arc::new))
}

impl MetricsEndpoint {
    /// Reads the token, binds the port and puts the SYN filter on it. The accept
    /// loop is [`MetricsEndpoint::serve`].
    pub async fn bind(
        plan: &MetricsPlan,
        networks: &Networks,
        sources: Sources,
    ) -> Result<(Arc<MetricsEndpoint>, Listener), MetricsError> {
        let token = read_token(plan)?;
        let addr = plan.address;
        let listener = Listener::bind(addr, ListenerKind::Plain, false)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let address = listener.local_addr().unwrap_or(addr);
        let syn_filter = SynFilter::install(&listener.socket, address, networks);
        let outcomes = Arc::new(Outcomes::default());
        let mut registry = collect::registry(sources);
        registry.register_collector(Box::new(OutcomesCollector(Arc::clone(&outcomes))));
        tracing::info!(address = %address, token = token.is_some(), "metrics endpoint listening");
        let endpoint = MetricsEndpoint {
            admission: AdmissionControl::new(admission_settings(networks)),
            token: ArcSwapOption::new(token),
            registry,
            outcomes,
            syn_filter,
            address,
            declared: addr,
        };
        Ok((Arc::new(endpoint), listener))
    }

    /// Takes a reloaded manifest's networks and token. A token file that cannot be
    /// read keeps the old token in force and says why.
    pub fn update(&self, plan: &MetricsPlan, networks: &Networks) {
        self.admission.update(admission_settings(networks));
        if let Some(filter) = &self.syn_filter {
            filter.update(networks);
        }
        match read_token(plan) {
            Ok(token) => self.token.store(token),
            Err(e) => tracing::error!("metrics token not reloaded, the previous one stays: {e}"),
        }
    }

    /// Accepts scrapes until the task is cancelled.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        loop {
            let (tcp, peer) = match listener.socket.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
            let slot = match self.admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.outcomes.refused.fetch_add(1, Relaxed);
                    tracing::info!(target: "moat::audit", %peer, ?refusal, "metrics scrape refused before reading");
                    continue;
                }
            };
            let endpoint = Arc::clone(&self);
            tokio::spawn(async move {
                let _slot = slot;
                endpoint.handle(tcp, peer).await;
            });
        }
    }

    async fn handle(&self, mut tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let read = tokio::time::timeout(REQUEST_DEADLINE, http::read_request(&mut tcp)).await;
        let response = match read {
            Ok(Ok(request)) => {
                let token = self.token.load();
                let response = http::answer(&request, token.as_deref(), || {
                    collect::render(&self.registry)
                });
                if response.status != 200 {
                    tracing::info!(target: "moat::audit", %peer, path = %request.path,
                        method = %request.method, status = response.status, "metrics request refused");
                }
                response
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "metrics request unreadable");
                match http::Response::for_read_error(&e) {
                    Some(response) => response,
                    None => return,
                }
            }
            Err(_) => {
                tracing::info!(%peer, "metrics request deadline passed");
                http::Response::text(408, "Request Timeout", "request not sent in time")
            }
        };
        self.outcomes.answered(response.status);
        let written =
            tokio::time::timeout(REQUEST_DEADLINE, http::write_response(&mut tcp, &response)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(%peer, "metrics answer not delivered");
        }
    }
}

/// Applies a reloaded manifest's `broker.metrics` to the running endpoint (if any)
/// and checks `broker.homeassistant` again. Turning either on or off, or moving the
/// endpoint, needs a restart: ports are bound and tasks started at start.
pub fn reload(running: Option<&MetricsEndpoint>, homeassistant_running: bool, policy: &Policy) {
    if policy.homeassistant != homeassistant_running {
        tracing::warn!(
            "broker.homeassistant changed to {}: restart moat to apply",
            policy.homeassistant
        );
    } else if policy.homeassistant {
        homeassistant::check_readers(policy);
    }
    let (plan, networks) = (policy.metrics.as_ref(), &policy.networks);
    match (running, plan) {
        (Some(endpoint), Some(plan)) => {
            endpoint.update(plan, networks);
            if plan.address != endpoint.declared {
                tracing::warn!(running = %endpoint.address, declared = %plan.address,
                    "broker.metrics moved: restart moat to listen there");
            }
        }
        (None, None) => {}
        (Some(endpoint), None) => tracing::warn!(address = %endpoint.address,
            "broker.metrics was removed: the endpoint keeps running until moat restarts"),
        (None, Some(plan)) => tracing::warn!(address = %plan.address,
            "broker.metrics was added: restart moat to start the endpoint"),
    }
}

/// The endpoint's own counters, next to the broker's.
#[derive(Debug)]
struct OutcomesCollector(Arc<Outcomes>);

impl prometheus_client::collector::Collector for OutcomesCollector {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        let metric = e.encode_descriptor(
            "moat_metrics_refused",
            "Scrape connections refused before reading (network or connection caps).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.refused.load(Relaxed)).encode(metric)?;
        let mut family = e.encode_descriptor(
            "moat_metrics_responses",
            "Answers of the metrics endpoint, by HTTP status (this one is counted at the next scrape).",
            None,
            MetricType::Counter,
        )?;
        for (status, n) in STATUSES.iter().zip(&self.0.by_status) {
            let code = status.to_string();
            let labels = [("code", code.as_str())];
            ConstCounter::new(n.load(Relaxed)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{LoadOptions, parse_str};
    use crate::policy::Policy;

    #[test]
    fn the_firewall_opens_the_metrics_port_to_the_allowed_networks_only() {
        let text =
            "version: 1\nbroker:\n  networks: [\"192.168.1.0/24\"]\n  metrics: { port: 9100 }\n";
        let loaded = parse_str(text, "t.yaml", LoadOptions::default()).unwrap();
        let policy = Policy::compile(&loaded.manifest).unwrap();
        let spec = crate::firewall::FirewallSpec::for_policy(&policy, false);
        assert_eq!(spec.broker_ports, [8883, 9100]);
        let ruleset = crate::firewall::render(&spec);
        assert!(ruleset.contains("192.168.1.0/24"), "{ruleset}");
        assert!(ruleset.contains("{ 8883, 9100 }"), "{ruleset}");
    }
}
