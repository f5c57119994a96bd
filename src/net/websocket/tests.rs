use super::stream::*;
use super::upgrade::*;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

/// RFC 6455 section 1.3's worked example.
#[test]
fn accept_key_matches_the_rfc() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

fn request(protocol: &str) -> String {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: moat\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

#[test]
fn requests_are_checked() {
    let ok = request("Sec-WebSocket-Protocol: mqtt\r\n");
    let up = parse_request(ok.as_bytes(), Vec::new()).unwrap();
    assert_eq!((up.path.as_str(), up.protocol), ("/mqtt", "mqtt"));
    let v31 = request("Sec-WebSocket-Protocol: mqttv3.1\r\n");
    assert_eq!(
        parse_request(v31.as_bytes(), Vec::new()).unwrap().protocol,
        "mqttv3.1"
    );
    assert_eq!(
        parse_request(request("").as_bytes(), Vec::new()),
        Err(WsError::NoMqttSubprotocol)
    );
    let post = ok.replacen("GET", "POST", 1);
    assert!(parse_request(post.as_bytes(), Vec::new()).is_err());
    let v8 = ok.replace("Version: 13", "Version: 8");
    assert!(parse_request(v8.as_bytes(), Vec::new()).is_err());
    let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
    assert!(parse_request(no_upgrade.as_bytes(), Vec::new()).is_err());
}

/// A client frame, masked as clients must.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn upgraded(
    protocol: &str,
) -> (
    Result<(WsStream<DuplexStream>, String), WsError>,
    DuplexStream,
) {
    let (server, mut client) = duplex(64 * 1024);
    client
        .write_all(request(protocol).as_bytes())
        .await
        .unwrap();
    (accept(server).await, client)
}

#[tokio::test]
async fn upgrade_then_frames_carry_bytes_both_ways() {
    let (server, mut client) = duplex(256 * 1024);
    let mut bytes = request("Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    // The first frame arrives in the same write as the request, and a message
    // is split across a binary frame and a continuation, with a ping between.
    bytes.extend(client_frame(OP_BINARY, false, b"hello "));
    bytes.extend(client_frame(OP_PING, true, b"p"));
    bytes.extend(client_frame(OP_CONTINUATION, true, &vec![7u8; 70_000]));
    client.write_all(&bytes).await.unwrap();
    let (mut ws, path) = accept(server).await.unwrap();
    assert_eq!(path, "/mqtt");

    let mut got = vec![0u8; 6 + 70_000];
    ws.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..6], b"hello ");
    assert!(got[6..].iter().all(|&b| b == 7));

    ws.write_all(b"\x20\x02\x00\x00").await.unwrap();
    ws.flush().await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = client.read(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    let end = find_end(&response[..n]).unwrap();
    let mut frames = response[end..n].to_vec();
    while frames.len() < 3 + 6 {
        let m = client.read(&mut response).await.unwrap();
        frames.extend_from_slice(&response[..m]);
    }
    // The pong (echoing "p"), then our binary frame, unmasked.
    assert_eq!(&frames[..3], &[0x80 | OP_PONG, 1, b'p']);
    assert_eq!(
        &frames[3..9],
        &[0x80 | OP_BINARY, 4, 0x20, 0x02, 0x00, 0x00]
    );
}

/// Two frames in one write: the second must be read from the buffer without
/// waiting for more input (a SUBSCRIBE behind a CONNECT once waited forever).
#[tokio::test]
async fn a_buffered_second_frame_needs_no_more_input() {
    let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
    let (mut ws, _) = result.unwrap();
    let mut both = client_frame(OP_BINARY, true, b"one");
    both.extend(client_frame(OP_BINARY, true, b"two"));
    client.write_all(&both).await.unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(std::time::Duration::from_secs(5), ws.read_exact(&mut got))
        .await
        .expect("the second frame was buffered")
        .unwrap();
    assert_eq!(&got, b"onetwo");
}

#[tokio::test]
async fn close_is_answered_and_ends_the_stream() {
    let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
    let (mut ws, _) = result.unwrap();
    client
        .write_all(&client_frame(OP_CLOSE, true, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(ws.read(&mut buf).await.unwrap(), 0);
    assert!(ws.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn hostile_frames_are_errors() {
    for bad in [
        client_frame(OP_TEXT, true, b"{}"),
        client_frame(0x3, true, b""),
        client_frame(OP_PING, false, b""),
        client_frame(OP_PING, true, &[0u8; 126]),
        client_frame(OP_CONTINUATION, true, b"x"),
        // Unmasked.
        vec![0x82, 0x01, 0x00],
    ] {
        let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
        let (mut ws, _) = result.unwrap();
        client.write_all(&bad).await.unwrap();
        let mut buf = [0u8; 16];
        assert!(ws.read(&mut buf).await.is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn a_huge_declared_length_is_streamed_not_allocated() {
    let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
    let (mut ws, _) = result.unwrap();
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header.extend_from_slice(b"abc");
    client.write_all(&header).await.unwrap();
    let mut buf = [0u8; 16];
    let n = ws.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"abc");
    assert!(ws.incoming_capacity() == 0);
}

#[tokio::test]
async fn refusals_answer_http_errors() {
    let (result, mut client) = upgraded("").await;
    assert_eq!(result.err(), Some(WsError::NoMqttSubprotocol));
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");

    let (server, mut client) = duplex(64 * 1024);
    let flood = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST));
    client.write_all(flood.as_bytes()).await.unwrap();
    assert_eq!(accept(server).await.err(), Some(WsError::RequestTooLarge));
}

/// Reads the client side past the 101 response; returns the bytes after it.
async fn past_response(client: &mut DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "no 101 response");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = find_end(&got) {
            return got.split_off(end);
        }
    }
}

/// RFC 6455 section 7.1.1: our Close, then the client's, then the TCP close. The
/// stream must stay open for the client's Close (it used to be shut at once, and
/// mqtt.js's Close then hit a closed socket).
#[tokio::test]
async fn shutdown_waits_for_the_client_close() {
    let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
    let (mut ws, _) = result.unwrap();
    let mut frames = past_response(&mut client).await;
    let shutdown = tokio::spawn(async move { ws.shutdown().await });
    let mut buf = [0u8; 16];
    while frames.len() < 4 {
        let n = client.read(&mut buf).await.unwrap();
        frames.extend_from_slice(&buf[..n]);
    }
    assert_eq!(frames, [0x80 | OP_CLOSE, 2, 0x03, 0xE8], "Close 1000");
    // Still open: the client may send data and its Close.
    let waited =
        tokio::time::timeout(std::time::Duration::from_millis(200), client.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "the stream ended before the client's Close"
    );
    client
        .write_all(&client_frame(OP_BINARY, true, b"late data is dropped"))
        .await
        .unwrap();
    client
        .write_all(&client_frame(OP_CLOSE, true, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown ends once the client's Close arrived")
        .unwrap()
        .unwrap();
    assert_eq!(
        client.read(&mut buf).await.unwrap(),
        0,
        "then the stream ends"
    );
}

#[tokio::test]
async fn shutdown_stops_waiting_for_a_silent_client() {
    let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
    let (mut ws, _) = result.unwrap();
    past_response(&mut client).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(CLOSE_WAIT * 5, ws.shutdown())
        .await
        .expect("the wait is bounded")
        .unwrap();
    assert!(started.elapsed() >= CLOSE_WAIT, "{:?}", started.elapsed());
    // A second shutdown (the listener's, after the driver's) is a no-op.
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, [0x80 | OP_CLOSE, 2, 0x03, 0xE8]);
}
