use std::sync::OnceLock;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use super::records::{HEADER_LEN, is_ecdsa};
use super::*;
use crate::net::tls::{TlsSettings, handshake};
use crate::pki;

const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;

struct Fixture {
    settings: ArcSwap<TlsSettings>,
    ca: CertificateDer<'static>,
    ecdsa_cert: CertificateDer<'static>,
    rsa_cert: CertificateDer<'static>,
    device_chain: Vec<CertificateDer<'static>>,
    device_key: PrivateKeyDer<'static>,
}

/// A provisioned CA, server certificates (ECDSA and RSA) and one device.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let plan = pki::ProvisionPlan {
            hostnames: vec!["localhost".into()],
            machine_name: None,
            addresses: Vec::new(),
            rsa_server_key: true,
            certificate_devices: vec!["kitchen-sensor".into()],
        };
        pki::provision(&state, &plan).unwrap();
        let credentials = pki::load_server_credentials(&state).unwrap();
        let bundle = pki::device_bundle_dir(&state, "kitchen-sensor");
        Fixture {
            ca: credentials.ca.clone(),
            ecdsa_cert: credentials.ecdsa_chain[0].clone(),
            rsa_cert: credentials.rsa.as_ref().unwrap().0[0].clone(),
            device_chain: CertificateDer::pem_file_iter(bundle.join("cert.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            device_key: PrivateKeyDer::from_pem_file(bundle.join("key.pem")).unwrap(),
            settings: ArcSwap::from_pointee(TlsSettings::new(credentials).unwrap()),
        }
    })
}

/// A rustls client; `ecdsa: false` offers no ECDSA signature scheme (as a
/// small device would), which must get the RSA configuration.
fn client_config(
    version: &'static SupportedProtocolVersion,
    certificate: bool,
    ecdsa: bool,
) -> Arc<ClientConfig> {
    let f = fixture();
    let mut provider = rustls::crypto::ring::default_provider();
    if !ecdsa {
        let algorithms = &mut provider.signature_verification_algorithms;
        let mapping: Vec<_> = algorithms
            .mapping
            .iter()
            .filter(|(scheme, _)| !format!("{scheme:?}").starts_with("ECDSA"))
            .copied()
            .collect();
        algorithms.mapping = Box::leak(mapping.into_boxed_slice());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.ca.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    let config = if certificate {
        builder
            .with_client_auth_cert(f.device_chain.clone(), f.device_key.clone_key())
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn connect(
    config: Arc<ClientConfig>,
    addr: std::net::SocketAddr,
) -> io::Result<ClientStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// A handshaken server stream (with the client certificate's name) and client.
async fn pair(config: Arc<ClientConfig>) -> (TlsStream, Option<String>, ClientStream<TcpStream>) {
    let (listener, addr) = listener().await;
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        handshake(&fixture().settings, tcp).await
    };
    let (server, client) = tokio::join!(server, connect(config, addr));
    let (server, name) = server.unwrap();
    (server, name, client.unwrap())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn assert_idle(stream: &TlsStream) {
    assert_eq!(stream.incoming.capacity(), 0, "incoming ciphertext kept");
    assert_eq!(stream.outgoing.capacity(), 0, "outgoing ciphertext kept");
    assert_eq!(stream.plaintext.capacity(), 0, "plaintext kept");
}

/// Reads `len` bytes through small reads, as an idle connection does.
async fn read_small(stream: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < len {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "early end of file after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn exchange(version: &'static SupportedProtocolVersion) {
    let (mut server, name, mut client) = pair(client_config(version, false, true)).await;
    assert_eq!(name, None);
    assert_idle(&server);

    // Larger than a record both ways; the server reads in 512-byte pieces, so
    // most of each record waits in its plaintext buffer.
    let big = pattern(40_000);
    let (written, got) = tokio::join!(client.write_all(&big), read_small(&mut server, big.len()));
    written.unwrap();
    assert_eq!(got, big);
    let mut back = vec![0u8; big.len()];
    let (written, read) = tokio::join!(
        async {
            server.write_all(&big).await?;
            server.flush().await
        },
        client.read_exact(&mut back)
    );
    written.unwrap();
    read.unwrap();
    assert_eq!(back, big);

    // Many small records, several per socket read.
    for i in 0..500u32 {
        client.write_all(&i.to_be_bytes()).await.unwrap();
    }
    client.flush().await.unwrap();
    let got = read_small(&mut server, 2000).await;
    let expected: Vec<u8> = (0..500u32).flat_map(u32::to_be_bytes).collect();
    assert_eq!(got, expected);
    for i in 0..500u32 {
        server.write_all(&i.to_be_bytes()).await.unwrap();
    }
    server.flush().await.unwrap();
    let mut back = vec![0u8; 2000];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(back, expected);

    // Nothing is held once the traffic is over.
    assert_idle(&server);

    // Our close_notify reaches the client as a clean end of file, and theirs
    // reaches us as one.
    server.shutdown().await.unwrap();
    assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
    client.shutdown().await.unwrap();
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
    assert_idle(&server);
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn tls13_exchange_large_and_small_writes_and_close() {
    within(exchange(TLS13)).await;
}

#[tokio::test]
async fn tls12_exchange_large_and_small_writes_and_close() {
    within(exchange(TLS12)).await;
}

#[tokio::test]
async fn client_certificate_names_the_device() {
    within(async {
        for version in [TLS13, TLS12] {
            let (mut server, name, mut client) = pair(client_config(version, true, true)).await;
            assert_eq!(name.as_deref(), Some("kitchen-sensor"));
            client.write_all(b"hello").await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_small(&mut server, 5).await, b"hello");
        }
    })
    .await;
}

/// Parses the records in `bytes`: their payload lengths.
fn record_lengths(mut bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while let Some(header) = bytes.get(..HEADER_LEN) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        lengths.push(len);
        bytes = &bytes[HEADER_LEN + len..];
    }
    lengths
}

#[tokio::test]
async fn clients_without_ecdsa_get_rsa_and_small_records() {
    within(async {
        for (version, ecdsa) in [(TLS13, false), (TLS12, false), (TLS13, true)] {
            let (mut server, _, mut client) = pair(client_config(version, false, ecdsa)).await;
            let served = client.get_ref().1.peer_certificates().unwrap()[0].clone();
            let expected = if ecdsa {
                &fixture().ecdsa_cert
            } else {
                &fixture().rsa_cert
            };
            assert_eq!(&served, expected);

            // The unbuffered encrypt path honours max_fragment_size: 1024-byte
            // records (1019 bytes of plaintext each) for the RSA configuration.
            let data = pattern(5000);
            assert_eq!(
                server.drive(None, Outgoing::Data(&data)),
                Ok(Stop::Open(5000))
            );
            let lengths = record_lengths(server.outgoing.unsent());
            if ecdsa {
                assert_eq!(lengths.len(), 1, "{lengths:?}");
            } else {
                assert_eq!(lengths.len(), 5000usize.div_ceil(1019), "{lengths:?}");
                assert!(lengths.iter().all(|&len| len <= 1019 + 64), "{lengths:?}");
            }
            server.flush().await.unwrap();
            let mut back = vec![0u8; data.len()];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, data);
        }
    })
    .await;
}

#[tokio::test]
async fn tcp_close_without_close_notify_is_an_error() {
    within(async {
        let (mut server, _, mut client) = pair(client_config(TLS13, false, true)).await;
        client.get_mut().0.shutdown().await.unwrap();
        let err = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    })
    .await;
}

#[tokio::test]
async fn key_update_from_the_client_is_answered() {
    within(async {
        let (mut server, _, mut client) = pair(client_config(TLS13, false, true)).await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 100]).await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_small(&mut server, 100).await, [round; 100]);
            server.write_all(&[round; 100]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 100];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round; 100]);
        }
        assert_idle(&server);
    })
    .await;
}

#[tokio::test]
async fn a_first_record_that_is_not_tls_fails_with_an_alert() {
    within(async {
        let (listener, addr) = listener().await;
        let client = async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: moat\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        };
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            handshake(&fixture().settings, tcp).await.map(|_| ())
        };
        let (server, answer) = tokio::join!(server, client);
        assert_eq!(server.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
    })
    .await;
}

/// The ClientHello record a rustls client sends first.
fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

/// The same handshake message in two records.
fn split_record(record: &[u8], at: usize) -> Vec<u8> {
    let (header, body) = record.split_at(HEADER_LEN);
    let mut out = Vec::new();
    for part in [&body[..at], &body[at..]] {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[test]
fn a_hello_with_only_ecdhe_rsa_suites_gets_no_ecdsa_scheme() {
    // A Tasmota-like TLS 1.2 client: one ECDHE-RSA suite, yet ECDSA among its
    // signature algorithms. Only the RSA certificate can serve it.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let schemes = hello_signature_schemes(&client_hello(Arc::new(config))).unwrap();
    assert!(
        schemes.contains(&SignatureScheme::RSA_PKCS1_SHA256),
        "{schemes:?}"
    );
    assert!(schemes.iter().all(|s| !is_ecdsa(*s)), "{schemes:?}");
    // With every suite offered, its ECDSA schemes stay.
    let full = client_hello(client_config(&rustls::version::TLS12, false, true));
    let schemes = hello_signature_schemes(&full).unwrap();
    assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
}

#[test]
fn the_first_record_is_complete_or_not_a_hello() {
    let hello = client_hello(client_config(TLS13, false, false));
    assert!(first_record_complete(&hello));
    assert!(!first_record_complete(&hello[..hello.len() - 1]));
    assert!(!first_record_complete(&hello[..3]));
    assert!(!first_record_complete(&[]));
    assert!(first_record_complete(b"G"));
    assert!(first_record_complete(&[22, 3, 1, 0xff, 0xff]));
    let schemes = hello_signature_schemes(&hello).unwrap();
    assert!(!schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
    assert!(schemes.contains(&SignatureScheme::RSA_PSS_SHA256));
    // Not parseable up front: the caller falls back to ECDSA.
    let split = split_record(&hello, 100);
    assert!(first_record_complete(&split));
    assert_eq!(hello_signature_schemes(&split[..HEADER_LEN + 100]), None);
    assert_eq!(hello_signature_schemes(b"GET / HTTP/1.1\r\n"), None);
}

/// Relays one client to the server: the ClientHello re-framed as two records,
/// then every byte in small writes, so the server sees partial records.
async fn trickle_proxy(client_side: TcpListener, server: std::net::SocketAddr) {
    let (mut client, _) = client_side.accept().await.unwrap();
    let upstream = TcpStream::connect(server).await.unwrap();
    upstream.set_nodelay(true).unwrap();
    let mut hello = vec![0u8; HEADER_LEN];
    client.read_exact(&mut hello).await.unwrap();
    let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    hello.resize(HEADER_LEN + len, 0);
    client.read_exact(&mut hello[HEADER_LEN..]).await.unwrap();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = async move {
        let mut pending = split_record(&hello, 40);
        let mut buf = [0u8; 4096];
        loop {
            for piece in pending.chunks(7) {
                upstream_write.write_all(piece).await?;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return upstream_write.shutdown().await;
            }
            pending = buf[..n].to_vec();
        }
    };
    let down = tokio::io::copy(&mut upstream_read, &mut client_write);
    let _ = tokio::join!(up, down);
}

#[tokio::test]
async fn split_hello_and_partial_records() {
    within(async {
        let (listener, server_addr) = listener().await;
        let (proxy, proxy_addr) = self::listener().await;
        tokio::spawn(trickle_proxy(proxy, server_addr));
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            handshake(&fixture().settings, tcp).await
        };
        // A client without ECDSA, but its ClientHello cannot be parsed from the
        // first record, so it gets ECDSA... which it cannot verify.
        let (server, client) = tokio::join!(
            server,
            connect(client_config(TLS13, false, false), proxy_addr)
        );
        assert!(server.is_err() && client.is_err());

        let (proxy, proxy_addr) = self::listener().await;
        tokio::spawn(trickle_proxy(proxy, server_addr));
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            handshake(&fixture().settings, tcp).await
        };
        let (server, client) = tokio::join!(
            server,
            connect(client_config(TLS12, true, true), proxy_addr)
        );
        let ((mut server, name), mut client) = (server.unwrap(), client.unwrap());
        assert_eq!(name.as_deref(), Some("kitchen-sensor"));
        let data = pattern(3000);
        client.write_all(&data).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_small(&mut server, data.len()).await, data);
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_idle(&server);
    })
    .await;
}

#[tokio::test]
async fn a_read_that_drains_the_socket_clears_its_readiness() {
    within(async {
        let (mut server, _, mut client) = pair(client_config(TLS13, false, true)).await;
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        server.tcp.readable().await.unwrap();
        let n = poll_fn(|cx| server.poll_fill(cx)).await.unwrap();
        assert!(n > 0 && n < server.incoming.capacity(), "read {n} bytes");
        // The short read said the socket is empty: no read is left to learn it.
        let probe = server.tcp.try_io(Interest::READABLE, || Ok(()));
        assert_eq!(probe.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        // What arrives afterwards still wakes the reader.
        client.write_all(b"pong").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_small(&mut server, 8).await, b"pingpong");
    })
    .await;
}
