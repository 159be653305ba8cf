//! The sealed session: one AEAD key, IV and frame counter per direction.
//!
//! Every frame after the handshake is `len | kind | ciphertext | tag`, sealed with
//! nonce = IV XOR counter, where the counter starts at 0, counts frames in one direction, is
//! never sent and never wraps. The 5 header bytes are the associated data, so length and kind
//! are authenticated too. A dropped, reordered, replayed or altered frame fails to open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::ProtocolError;
use crate::frame::{self, HEADER_LEN};

/// The one cipher suite: AES-256-GCM, as implemented by `ring`. On this project's x86_64
/// machines it seals about 6x faster than RustCrypto's `aes-gcm` (stitched AES-NI/VAES and
/// carry-less multiply code against separate CTR and GHASH passes) and than either crate's
/// ChaCha20-Poly1305; `shared/benches/seal.rs` measures all four and docs/benchmarks.md has the
/// figures. The bytes on the wire are the same as with any other AES-256-GCM. ChaCha20-Poly1305
/// is also a 256-bit AEAD with 96-bit nonces, so naming it here is the only edit a switch
/// would need.
pub static CIPHER: &ring::aead::Algorithm = &ring::aead::AES_256_GCM;

/// Bytes the AEAD adds to each frame.
pub const TAG_LEN: usize = 16;

/// Largest plaintext that fits in one sealed frame.
pub const MAX_PLAINTEXT: usize = frame::MAX_FRAME_LEN - 1 - TAG_LEN;

/// Key material for one direction.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DirectionKeys {
    /// AEAD key.
    pub key: [u8; 32],
    /// Per-direction IV, XORed with the frame counter to form each nonce.
    pub iv: [u8; 12],
}

struct Direction {
    cipher: LessSafeKey,
    iv: [u8; 12],
    counter: u64,
}

impl Direction {
    fn new(keys: &DirectionKeys) -> Self {
        // `ring` refuses only a key of the wrong length, and `key` is 32 bytes by type.
        #[allow(clippy::expect_used)]
        let key = UnboundKey::new(CIPHER, &keys.key).expect("AES-256-GCM takes a 32-byte key");
        Self {
            cipher: LessSafeKey::new(key),
            iv: keys.iv,
            counter: 0,
        }
    }

    /// The nonce for the next frame, advancing the counter; refuses to wrap.
    fn next_nonce(&mut self) -> Result<[u8; 12], ProtocolError> {
        if self.counter == u64::MAX {
            return Err(ProtocolError::CounterExhausted);
        }
        let mut nonce = self.iv;
        for (n, c) in nonce[4..].iter_mut().zip(self.counter.to_be_bytes()) {
            *n ^= c;
        }
        self.counter += 1;
        Ok(nonce)
    }
}

/// Seals frames in one direction.
pub struct Sealer(Direction);

/// Opens frames in one direction.
pub struct Opener(Direction);

impl Sealer {
    /// A sealer whose counter starts at 0.
    pub fn new(keys: &DirectionKeys) -> Self {
        Self(Direction::new(keys))
    }

    /// Appends one sealed frame of `kind` carrying `plaintext` to `out`.
    pub fn seal(
        &mut self,
        kind: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        let sealed = self.seal_in_place(kind, out, start);
        if sealed.is_err() {
            out.truncate(start);
        }
        sealed
    }

    /// Seals the frame that starts at `out[start]`: `HEADER_LEN` placeholder bytes followed by
    /// the plaintext up to the end of `out`. The header is written and the tag appended, so
    /// streaming data read straight into `out` is sealed without being copied.
    pub fn seal_in_place(
        &mut self,
        kind: u8,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), ProtocolError> {
        let Some(len) = out.len().checked_sub(start + HEADER_LEN) else {
            return Err(ProtocolError::Malformed(
                "frame buffer without room for a header",
            ));
        };
        if len > MAX_PLAINTEXT {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: MAX_PLAINTEXT,
            });
        }
        let nonce = self.0.next_nonce()?;
        let header = frame::header(kind, len + TAG_LEN);
        out[start..start + HEADER_LEN].copy_from_slice(&header);
        let tag = self
            .0
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut out[start + HEADER_LEN..],
            )
            .map_err(|_| ProtocolError::Integrity)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Test hook: moves the counter, to exercise the wrap guard without sealing 2^64 frames.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_counter_for_test(&mut self, counter: u64) {
        self.0.counter = counter;
    }
}

impl Opener {
    /// An opener whose counter starts at 0.
    pub fn new(keys: &DirectionKeys) -> Self {
        Self(Direction::new(keys))
    }

    /// Opens a sealed frame in place: `payload` is the frame's ciphertext and tag, `header` its
    /// 5 header bytes. Returns the plaintext, a prefix of `payload`.
    pub fn open<'a>(
        &mut self,
        header: [u8; HEADER_LEN],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], ProtocolError> {
        let Some(ct_len) = payload.len().checked_sub(TAG_LEN) else {
            return Err(ProtocolError::Integrity);
        };
        let nonce = self.0.next_nonce()?;
        let plain = self
            .0
            .cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                payload,
            )
            .map_err(|_| ProtocolError::Integrity)?;
        debug_assert_eq!(plain.len(), ct_len);
        Ok(plain)
    }

    /// Test hook: moves the counter, to exercise the wrap guard without opening 2^64 frames.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_counter_for_test(&mut self, counter: u64) {
        self.0.counter = counter;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse, MAX_FRAME_LEN};

    fn keys(byte: u8) -> DirectionKeys {
        DirectionKeys {
            key: [byte; 32],
            iv: [byte ^ 0x5a; 12],
        }
    }

    /// Seals each message into one stream of bytes.
    fn sealed_stream(messages: &[(u8, &[u8])]) -> Vec<u8> {
        let mut sealer = Sealer::new(&keys(1));
        let mut out = Vec::new();
        for (kind, body) in messages {
            sealer.seal(*kind, body, &mut out).unwrap();
        }
        out
    }

    /// Splits a stream into its frames' bytes.
    fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
        let mut rest = stream;
        let mut out = Vec::new();
        while let Some((_, used)) = parse(rest, MAX_FRAME_LEN).unwrap() {
            out.push(rest[..used].to_vec());
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        out
    }

    /// Opens every frame of `stream` in order; stops at the first error.
    fn open_all(stream: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ProtocolError> {
        let mut opener = Opener::new(&keys(1));
        let mut out = Vec::new();
        for mut f in frames(stream) {
            let header: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
            let plain = opener.open(header, &mut f[HEADER_LEN..])?;
            out.push((header[4], plain.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let stream = sealed_stream(&[(0x20, b"out"), (0x21, b""), (0x22, b"\x00\x00")]);
        let opened = open_all(&stream).unwrap();
        assert_eq!(
            opened,
            [(0x20, b"out".to_vec()), (0x21, vec![]), (0x22, vec![0, 0])]
        );
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext_and_differs_per_frame() {
        let stream = sealed_stream(&[(0x20, b"secret-secret"), (0x20, b"secret-secret")]);
        let f = frames(&stream);
        assert!(!stream.windows(6).any(|w| w == b"secret"));
        assert_ne!(f[0], f[1], "the counter must change the nonce");
    }

    #[test]
    fn flipping_any_bit_fails_to_open() {
        let stream = sealed_stream(&[(0x20, b"payload")]);
        for byte in 0..stream.len() {
            for bit in 0..8 {
                let mut bad = stream.clone();
                bad[byte] ^= 1 << bit;
                // A flip in the length either makes the frame unparseable or fails to open.
                let result = std::panic::catch_unwind(|| match parse(&bad, MAX_FRAME_LEN) {
                    Ok(Some((_, used))) if used == bad.len() => open_all(&bad).is_err(),
                    _ => true,
                });
                assert!(
                    result.unwrap(),
                    "flip at byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn reordered_replayed_and_dropped_frames_fail() {
        let stream = sealed_stream(&[(0x20, b"one"), (0x20, b"two"), (0x20, b"three")]);
        let f = frames(&stream);
        let swapped = [f[1].clone(), f[0].clone(), f[2].clone()].concat();
        let replayed = [f[0].clone(), f[0].clone()].concat();
        let dropped = [f[0].clone(), f[2].clone()].concat();
        for bad in [swapped, replayed, dropped] {
            assert!(matches!(open_all(&bad), Err(ProtocolError::Integrity)));
        }
    }

    #[test]
    fn truncated_frame_is_incomplete_and_short_payload_fails() {
        let stream = sealed_stream(&[(0x20, b"whole")]);
        assert_eq!(
            parse(&stream[..stream.len() - 1], MAX_FRAME_LEN).unwrap(),
            None
        );
        let mut opener = Opener::new(&keys(1));
        let mut short = [0u8; TAG_LEN - 1];
        assert!(matches!(
            opener.open(frame::header(0x20, short.len()), &mut short),
            Err(ProtocolError::Integrity)
        ));
    }

    #[test]
    fn frames_are_standard_aes_256_gcm() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        // An independent implementation opens what we seal and seals what we open, so
        // changing the AEAD backend cannot change the bytes on the wire.
        let k = keys(1);
        let other = aes_gcm::Aes256Gcm::new((&k.key).into());
        let mut ours = Vec::new();
        Sealer::new(&k).seal(0x20, b"interop", &mut ours).unwrap();
        let header: [u8; HEADER_LEN] = ours[..HEADER_LEN].try_into().unwrap();
        let (ct, tag) = ours[HEADER_LEN..].split_at(ours.len() - HEADER_LEN - TAG_LEN);
        let mut plain = ct.to_vec();
        // The first frame's nonce is the IV itself (counter 0).
        other
            .decrypt_in_place_detached((&k.iv).into(), &header, &mut plain, tag.into())
            .unwrap();
        assert_eq!(plain, b"interop");

        let mut theirs = b"reverse".to_vec();
        let header = frame::header(0x21, theirs.len() + TAG_LEN);
        let tag = other
            .encrypt_in_place_detached((&k.iv).into(), &header, &mut theirs)
            .unwrap();
        theirs.extend_from_slice(&tag);
        let opened = Opener::new(&k).open(header, &mut theirs).unwrap();
        assert_eq!(opened, b"reverse");
    }

    #[test]
    fn wrong_key_fails() {
        let stream = sealed_stream(&[(0x20, b"x")]);
        let mut f = frames(&stream).remove(0);
        let header: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        let mut opener = Opener::new(&keys(2));
        assert!(opener.open(header, &mut f[HEADER_LEN..]).is_err());
    }

    #[test]
    fn counter_refuses_to_wrap() {
        let mut sealer = Sealer::new(&keys(1));
        sealer.set_counter_for_test(u64::MAX - 1);
        let mut out = Vec::new();
        sealer.seal(0x20, b"last", &mut out).unwrap();
        assert!(matches!(
            sealer.seal(0x20, b"one too many", &mut out),
            Err(ProtocolError::CounterExhausted)
        ));
        let mut opener = Opener::new(&keys(1));
        opener.set_counter_for_test(u64::MAX);
        let mut f = frames(&out).remove(0);
        let header: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        assert!(matches!(
            opener.open(header, &mut f[HEADER_LEN..]),
            Err(ProtocolError::CounterExhausted)
        ));
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let mut sealer = Sealer::new(&keys(1));
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert!(sealer.seal(0x20, &big, &mut Vec::new()).is_err());
        let mut out = Vec::new();
        sealer.seal(0x20, &big[..MAX_PLAINTEXT], &mut out).unwrap();
        assert!(parse(&out, MAX_FRAME_LEN).unwrap().is_some());
    }
}
