//! A raw HTTP/2 peer (RFC 9113) for what no real client does: floods of HEADERS + RST_STREAM,
//! stream errors on purpose, and never acknowledging a PING. Frames are written by hand;
//! header blocks use only HPACK literals without indexing (RFC 7541 section 6.2.2), so no
//! encoder state is needed.

#![allow(dead_code)] // each test uses a different subset

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes.
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface and an empty SETTINGS frame: the start of every connection.
pub fn handshake() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(
        name.len() < 127 && value.len() < 127,
        "one-byte HPACK lengths only"
    );
    out.push(0x00); // literal without indexing, new name
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// A HEADERS frame opening a gRPC POST to `path` with `content_type`.
pub fn request_headers(stream: u32, path: &str, content_type: &str, end_stream: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", content_type),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// RST_STREAM with `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A PRIORITY frame making `stream` depend on itself: a stream error (RFC 9113 section 5.3.1)
/// that the server answers by resetting the stream.
pub fn self_dependent_priority(stream: u32) -> Vec<u8> {
    let mut payload = stream.to_be_bytes().to_vec();
    payload.push(15); // weight
    frame(PRIORITY, 0, stream, &payload)
}

/// A frame read from the server.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY's error code and debug data.
    pub fn goaway(&self) -> Option<(u32, String)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            let code = u32::from_be_bytes(self.payload[4..8].try_into().expect("4 bytes"));
            (
                code,
                String::from_utf8_lossy(&self.payload[8..]).into_owned(),
            )
        })
    }

    /// The value of setting `id` in a (non-ACK) SETTINGS frame.
    pub fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS || self.flags & ACK != 0 {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|p| {
            (u16::from_be_bytes([p[0], p[1]]) == id)
                .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
        })
    }
}

/// The next frame, or `None` at EOF (or on a connection reset).
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// How a connection ended, as seen by a reader that never answers anything.
#[derive(Debug, Default)]
pub struct Ending {
    /// GOAWAY error code and debug data, if one came.
    pub goaway: Option<(u32, String)>,
    /// The connection was closed (EOF or reset) within the time allowed.
    pub closed: bool,
    /// RST_STREAM frames the server sent.
    pub resets_received: usize,
    /// PINGs (not ACKs) the server sent.
    pub pings: usize,
}

/// Reads frames until the connection closes or `within` passes.
pub async fn read_until_closed(r: &mut (impl AsyncRead + Unpin), within: Duration) -> Ending {
    let mut ending = Ending::default();
    let read = async {
        while let Some(f) = read_frame(r).await {
            match f.kind {
                GOAWAY => ending.goaway = ending.goaway.take().or(f.goaway()),
                RST_STREAM => ending.resets_received += 1,
                PING if f.flags & ACK == 0 => ending.pings += 1,
                _ => {}
            }
        }
    };
    ending.closed = tokio::time::timeout(within, read).await.is_ok();
    ending
}

/// Connects, writes `bytes` in one go while reading concurrently (the server may write as much
/// back), and returns how the connection ended.
pub async fn send_and_watch(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    within: Duration,
) -> Ending {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may close mid-write: that is one of the outcomes under test.
        let _ = w.write_all(&bytes).await;
        let _ = w.flush().await;
        w
    });
    let ending = read_until_closed(&mut r, within).await;
    drop(writer.await);
    ending
}
