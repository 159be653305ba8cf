//! Length-prefixed framing: the byte-level codec under both the handshake and the sealed session.
//!
//! A frame on the wire is `len: u32 BE | kind: u8 | payload: len-1 bytes`. The codec works on
//! byte slices only; the socket side lives in [`crate::transport`].

use crate::error::ProtocolError;

/// Bytes in the frame header: the 4-byte length and the kind byte.
pub const HEADER_LEN: usize = 5;

/// Largest `len` accepted once the session is established (kind byte + payload).
pub const MAX_FRAME_LEN: usize = 1024 * 1024 + 64;

/// Largest `len` accepted before authentication: handshake frames are tiny, so an
/// unauthenticated peer can make us hold at most this much.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 512;

/// One frame borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The kind byte.
    pub kind: u8,
    /// Everything after the kind byte.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// The 5 header bytes of this frame, as used for associated data.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header(self.kind, self.payload.len())
    }
}

/// The header for a frame of `kind` with `payload_len` payload bytes.
pub fn header(kind: u8, payload_len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(payload_len + 1)
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    [len[0], len[1], len[2], len[3], kind]
}

/// Appends one whole frame to `out`.
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
}

/// Parses the frame at the start of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, and `Ok(Some((frame, consumed)))` once it
/// is whole. The claimed length is checked against `max_len` as soon as the 4 length bytes are
/// there, before anything is allocated or awaited for it.
pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > max_len {
        return Err(ProtocolError::FrameTooLarge { len, max: max_len });
    }
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Frame {
        kind: buf[4],
        payload: &buf[HEADER_LEN..total],
    };
    Ok(Some((frame, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(kind, payload, &mut out);
        out
    }

    #[test]
    fn round_trips_one_frame() {
        let bytes = encoded(7, b"hello");
        assert_eq!(bytes, [0, 0, 0, 6, 7, b'h', b'e', b'l', b'l', b'o']);
        let (frame, used) = parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.kind, 7);
        assert_eq!(frame.payload, b"hello");
        assert_eq!(frame.header(), bytes[..HEADER_LEN]);
    }

    #[test]
    fn split_input_is_incomplete_at_every_cut() {
        let bytes = encoded(1, b"split across reads");
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut], MAX_FRAME_LEN).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        assert!(parse(&bytes, MAX_FRAME_LEN).unwrap().is_some());
    }

    #[test]
    fn merged_input_yields_each_frame_in_order() {
        let mut bytes = encoded(1, b"first");
        bytes.extend(encoded(2, b""));
        bytes.extend(encoded(3, b"third"));
        bytes.extend_from_slice(&[0, 0]); // start of a fourth frame

        let mut rest = &bytes[..];
        let mut seen = Vec::new();
        while let Some((frame, used)) = parse(rest, MAX_FRAME_LEN).unwrap() {
            seen.push((frame.kind, frame.payload.to_vec()));
            rest = &rest[used..];
        }
        assert_eq!(
            seen,
            [
                (1, b"first".to_vec()),
                (2, Vec::new()),
                (3, b"third".to_vec())
            ]
        );
        assert_eq!(rest, [0, 0]);
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let err = parse(&[0xff, 0xff, 0xff, 0xff], MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                ..
            }
        ));
        let just_over = (MAX_HANDSHAKE_FRAME_LEN as u32 + 1).to_be_bytes();
        assert!(parse(&just_over, MAX_HANDSHAKE_FRAME_LEN).is_err());
        let at_max = (MAX_HANDSHAKE_FRAME_LEN as u32).to_be_bytes();
        assert_eq!(parse(&at_max, MAX_HANDSHAKE_FRAME_LEN).unwrap(), None);
    }

    #[test]
    fn zero_length_is_rejected() {
        assert!(matches!(
            parse(&[0, 0, 0, 0], MAX_FRAME_LEN),
            Err(ProtocolError::EmptyFrame)
        ));
    }
}
