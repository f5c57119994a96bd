//! `--upnp`: asks the router which ports it forwards to this host, over UPnP IGD.
//! SSDP M-SEARCH to 239.255.255.250:1900 for an InternetGatewayDevice, HTTP GET of its
//! description, then SOAP `GetGenericPortMappingEntry` on the WANIPConnection (or
//! WANPPPConnection) service for index 0, 1, ... until the router says there are no
//! more. A mapping whose internal client is one of this host's addresses and whose
//! internal port is a broker port is a FAIL. Plain std sockets, small HTTP/1.1 with
//! `Connection: close`; every read is bounded in time and size. moat only reads:
//! it never calls AddPortMapping or anything else that changes the router.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use super::Finding;
use super::host::HostFacts;
use crate::policy::Policy;

const CHECK: &str = "upnp";
const SSDP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);
const SEARCH_TARGET: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/// How long to wait for SSDP answers.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest HTTP response read.
const MAX_RESPONSE: u64 = 256 * 1024;
/// Most gateways and mappings looked at.
const MAX_GATEWAYS: usize = 4;
pub const MAX_MAPPINGS: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum UpnpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad URL {0:?} (only http://host[:port]/path is supported)")]
    Url(String),
    #[error("HTTP {status} from {url}")]
    Status { status: u16, url: String },
    #[error("malformed HTTP response from {0}")]
    Malformed(String),
    #[error("no WANIPConnection or WANPPPConnection service in {0}")]
    NoService(String),
}

/// One port forwarding the router reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub external_port: u16,
    pub protocol: String,
    pub internal_client: String,
    pub internal_port: u16,
    pub description: String,
}

/// `http://host:port/path` split into (host:port, path).
fn split_url(url: &str) -> Result<(String, String), UpnpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| UpnpError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(UpnpError::Url(url.to_owned()));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// Resolves a control URL from the description against the description's location.
pub fn resolve(location: &str, reference: &str) -> Result<String, UpnpError> {
    if reference.starts_with("http://") {
        return Ok(reference.to_owned());
    }
    let (authority, _) = split_url(location)?;
    let path = if reference.starts_with('/') {
        reference.to_owned()
    } else {
        format!("/{reference}")
    };
    Ok(format!("http://{authority}{path}"))
}

/// The text of the first `<name>...</name>` element (no namespace prefix), if any.
pub fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

/// The service type and control URL of the first WAN connection service.
pub fn wan_service(description: &str) -> Option<(String, String)> {
    description.split("<service>").skip(1).find_map(|service| {
        let service_type = tag(service, "serviceType")?;
        let wanted = service_type.contains(":WANIPConnection:")
            || service_type.contains(":WANPPPConnection:");
        wanted.then(|| {
            Some((
                service_type.to_owned(),
                tag(service, "controlURL")?.to_owned(),
            ))
        })?
    })
}

/// The SSDP `LOCATION` header of an M-SEARCH answer.
pub fn ssdp_location(answer: &str) -> Option<String> {
    answer.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    })
}

/// Decodes a `Transfer-Encoding: chunked` body (bounded by the input).
fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// One HTTP/1.1 exchange with `Connection: close`; returns (status, body).
fn http(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), UpnpError> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| UpnpError::Url(url.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response)?;
    let malformed = || UpnpError::Malformed(url.to_owned());
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let raw_body = &response[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(raw_body).ok_or_else(malformed)?
    } else {
        raw_body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// SSDP discovery: the description locations of the gateways that answered.
pub fn discover() -> Result<Vec<String>, UpnpError> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_multicast_ttl_v4(2)?;
    let search = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {SEARCH_TARGET}\r\n\r\n"
    );
    socket.send_to(search.as_bytes(), SSDP_ADDR)?;
    let deadline = Instant::now() + DISCOVERY_WAIT;
    let mut locations = Vec::new();
    let mut buffer = [0u8; 2048];
    while locations.len() < MAX_GATEWAYS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buffer) {
            Ok((n, _)) => {
                let answer = String::from_utf8_lossy(&buffer[..n]);
                if let Some(location) = ssdp_location(&answer)
                    && !locations.contains(&location)
                {
                    locations.push(location);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(locations)
}

fn soap_envelope(service_type: &str, index: u16) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:GetGenericPortMappingEntry xmlns:u=\"{service_type}\">\
         <NewPortMappingIndex>{index}</NewPortMappingIndex>\
         </u:GetGenericPortMappingEntry></s:Body></s:Envelope>\r\n"
    )
}

/// Parses a `GetGenericPortMappingEntryResponse`.
pub fn parse_mapping(xml: &str) -> Option<Mapping> {
    Some(Mapping {
        external_port: tag(xml, "NewExternalPort")?.parse().ok()?,
        protocol: tag(xml, "NewProtocol")?.to_owned(),
        internal_client: tag(xml, "NewInternalClient")?.to_owned(),
        internal_port: tag(xml, "NewInternalPort")?.parse().ok()?,
        description: tag(xml, "NewPortMappingDescription")
            .unwrap_or_default()
            .to_owned(),
    })
}

/// Every port mapping of the gateway described at `location`.
pub fn mappings(location: &str) -> Result<Vec<Mapping>, UpnpError> {
    let (status, description) = http(location, "GET", &[], "")?;
    if status != 200 {
        return Err(UpnpError::Status {
            status,
            url: location.to_owned(),
        });
    }
    let (service_type, control) =
        wan_service(&description).ok_or_else(|| UpnpError::NoService(location.to_owned()))?;
    let control = resolve(location, &control)?;
    let action = format!("\"{service_type}#GetGenericPortMappingEntry\"");
    let mut found = Vec::new();
    for index in 0..MAX_MAPPINGS {
        let (status, body) = http(
            &control,
            "POST",
            &[
                ("Content-Type", "text/xml; charset=\"utf-8\""),
                ("SOAPAction", &action),
            ],
            &soap_envelope(&service_type, index),
        )?;
        // The end of the list is a SOAP fault (713 SpecifiedArrayIndexInvalid), HTTP 500.
        if status != 200 {
            break;
        }
        match parse_mapping(&body) {
            Some(mapping) => found.push(mapping),
            None => break,
        }
    }
    Ok(found)
}

/// Judges the mappings of one gateway against this host and its broker ports.
pub fn judge(
    location: &str,
    mappings: &[Mapping],
    facts: &HostFacts,
    broker_ports: &[u16],
) -> Vec<Finding> {
    let to_this_host: Vec<&Mapping> = mappings
        .iter()
        .filter(|m| {
            m.internal_client
                .parse::<IpAddr>()
                .is_ok_and(|ip| facts.has_address(ip))
        })
        .collect();
    let mut findings = Vec::new();
    for m in &to_this_host {
        let what = format!(
            "the router at {location} forwards external {}/{} to this host's {}:{}{}",
            m.external_port,
            m.protocol,
            m.internal_client,
            m.internal_port,
            if m.description.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", m.description)
            }
        );
        if broker_ports.contains(&m.internal_port) {
            findings.push(Finding::fail(
                CHECK,
                format!("{what}: the broker port is exposed to the internet"),
                "delete this port mapping in the router and turn UPnP off there; moat never asks for one",
            ));
        } else {
            findings.push(Finding::warn(
                CHECK,
                what,
                "delete the mapping in the router unless you meant to open that service",
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "the router at {location} reports {} port mapping(s), none to this host",
                mappings.len()
            ),
        ));
    }
    findings
}

pub fn check(policy: &Policy, facts: &HostFacts) -> Vec<Finding> {
    let broker_ports = policy.listener_ports();
    let locations = match discover() {
        Ok(l) => l,
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!("UPnP discovery failed: {e}"),
                "check the router's port forwarding page by hand",
            )];
        }
    };
    if locations.is_empty() {
        return vec![Finding::pass(
            CHECK,
            "no UPnP gateway answered (UPnP is off or absent): nothing can have opened a port by UPnP",
        )];
    }
    let mut findings = Vec::new();
    for location in locations {
        match mappings(&location) {
            Ok(found) => findings.extend(judge(&location, &found, facts, &broker_ports)),
            Err(e) => findings.push(Finding::warn(
                CHECK,
                format!("the UPnP gateway at {location} did not list its mappings: {e}"),
                "check the router's port forwarding page by hand",
            )),
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::doctor::host::HostAddress;

    const DESCRIPTION: &str = "<?xml version=\"1.0\"?><root><device><serviceList>\
        <service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/l3f</controlURL></service>\
        </serviceList><deviceList><device><serviceList>\
        <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>\
        <controlURL>/ctl/IPConn</controlURL></service></serviceList></device></deviceList></device></root>";

    #[test]
    fn the_wan_service_and_its_control_url_are_found() {
        let (service, control) = wan_service(DESCRIPTION).unwrap();
        assert_eq!(service, "urn:schemas-upnp-org:service:WANIPConnection:1");
        assert_eq!(control, "/ctl/IPConn");
        assert_eq!(
            resolve("http://192.168.1.1:49000/desc.xml", &control).unwrap(),
            "http://192.168.1.1:49000/ctl/IPConn"
        );
        assert_eq!(
            resolve("http://gw/desc.xml", "ctl").unwrap(),
            "http://gw:80/ctl"
        );
        assert!(wan_service("<root/>").is_none());
    }

    #[test]
    fn ssdp_answers_and_mapping_responses_are_parsed() {
        let answer = "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nLocation: http://192.168.1.1:49000/desc.xml\r\nST: x\r\n\r\n";
        assert_eq!(
            ssdp_location(answer).as_deref(),
            Some("http://192.168.1.1:49000/desc.xml")
        );
        let xml = "<s:Envelope><s:Body><u:GetGenericPortMappingEntryResponse>\
                   <NewRemoteHost></NewRemoteHost><NewExternalPort>8883</NewExternalPort>\
                   <NewProtocol>TCP</NewProtocol><NewInternalPort>8883</NewInternalPort>\
                   <NewInternalClient>192.168.1.10</NewInternalClient><NewEnabled>1</NewEnabled>\
                   <NewPortMappingDescription>mqtt</NewPortMappingDescription>\
                   </u:GetGenericPortMappingEntryResponse></s:Body></s:Envelope>";
        let m = parse_mapping(xml).unwrap();
        assert_eq!(m.external_port, 8883);
        assert_eq!(m.internal_client, "192.168.1.10");
        assert_eq!(m.description, "mqtt");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"ff\r\nshort").is_none());
    }

    #[test]
    fn a_mapping_to_the_broker_port_fails() {
        let facts = HostFacts {
            listening: vec![],
            addresses: vec![HostAddress {
                ip: "192.168.1.10".parse().unwrap(),
                interface: String::new(),
            }],
        };
        let mapping = |client: &str, port: u16| Mapping {
            external_port: port,
            protocol: "TCP".into(),
            internal_client: client.into(),
            internal_port: port,
            description: String::new(),
        };
        let f = judge("gw", &[mapping("192.168.1.10", 8883)], &facts, &[8883]);
        assert_eq!(f[0].status, Status::Fail);
        let f = judge("gw", &[mapping("192.168.1.10", 22)], &facts, &[8883]);
        assert_eq!(f[0].status, Status::Warn);
        let f = judge("gw", &[mapping("192.168.1.99", 8883)], &facts, &[8883]);
        assert_eq!(f[0].status, Status::Pass);
    }
}
