//! Feeds arbitrary bytes to the server-side decoder, either as the very first bytes of
//! a connection or after a valid CONNECT (3.1, 3.1.1 or 5), delivered in arbitrary chunks.
//! Every packet that decodes must re-encode and decode to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moat_protocol::{Codec, Packet, ProtocolVersion, Role};

const MAX_PACKET_SIZE: u32 = 64 * 1024;

/// A minimal valid CONNECT (client id "c", clean start, keep alive 60).
fn connect(version: ProtocolVersion) -> Vec<u8> {
    match version {
        ProtocolVersion::V31 => {
            vec![
                0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 1, b'c',
            ]
        }
        ProtocolVersion::V311 => {
            vec![
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c',
            ]
        }
        ProtocolVersion::V5 => {
            vec![
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 1, b'c',
            ]
        }
    }
}

fn server(version: Option<ProtocolVersion>) -> Codec {
    let mut codec = Codec::new(Role::Server, MAX_PACKET_SIZE);
    if let Some(version) = version {
        let mut buf = BytesMut::from(&connect(version)[..]);
        match codec.decode(&mut buf) {
            Ok(Some(Packet::Connect(_))) => {}
            other => panic!("the seed CONNECT did not decode: {other:?}"),
        }
    }
    codec
}

/// Encodes `packet` as a client would and checks it decodes back unchanged.
fn assert_stable(packet: &Packet, version: ProtocolVersion) {
    let mut client = Codec::new(Role::Client, MAX_PACKET_SIZE);
    client.set_version(version);
    let mut wire = BytesMut::new();
    client
        .encode(packet, &mut wire)
        .expect("a decoded packet re-encodes");
    let mut fresh = match packet {
        Packet::Connect(_) => server(None),
        _ => server(Some(version)),
    };
    let again = fresh.decode(&mut wire).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(wire.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let version = match mode & 0b11 {
        0 => None,
        1 => Some(ProtocolVersion::V311),
        2 => Some(ProtocolVersion::V31),
        _ => Some(ProtocolVersion::V5),
    };
    // The upper bits choose the chunk size the bytes arrive in (1..=64).
    let chunk = usize::from(mode >> 2) + 1;
    let mut codec = server(version);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let negotiated = codec.version().expect("a version once a packet decoded");
                    assert_stable(&packet, negotiated);
                }
                Ok(None) => break,
                // The connection would be closed here.
                Err(_) => return,
            }
        }
    }
});
