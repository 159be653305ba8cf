//! Sealed-frame throughput on one core: the two candidate AEADs side by side, and the
//! session's own `Sealer`/`Opener` (whichever cipher `session::Cipher` names).
//!
//! Run with `cargo bench -p rexec-shared --bench seal`. Sizes are 16, 64 and 256 KiB: the
//! agent reads pipes in 256 KiB chunks and seals each one in place, so the large size is what
//! bulk output costs, the small ones what interactive output costs. bench/run.sh turns the
//! results into MB/s in docs/benchmarks.md.

// Test code: a failed expectation is a failed test, so unwrap, expect and panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use aes_gcm::aead::{AeadInPlace, KeyInit, Nonce};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rexec_shared::frame::{self, HEADER_LEN, MAX_FRAME_LEN};
use rexec_shared::session::{DirectionKeys, Opener, Sealer};

const SIZES: [usize; 3] = [16 * 1024, 64 * 1024, 256 * 1024];

/// Encrypts `size` bytes in place with a fresh nonce each time, as a sealer does.
fn seal_raw<A: AeadInPlace + KeyInit>(c: &mut Criterion, name: &str) {
    let Ok(cipher) = A::new_from_slice(&[7u8; 32]) else {
        unreachable!("both ciphers take 32-byte keys")
    };
    let mut group = c.benchmark_group(format!("aead_seal/{name}"));
    for size in SIZES {
        let mut buf = vec![0x42u8; size];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let header = frame::header(0x20, size + 16);
                match cipher.encrypt_in_place_detached(
                    Nonce::<A>::from_slice(&nonce),
                    &header,
                    &mut buf,
                ) {
                    Ok(tag) => black_box(tag),
                    Err(_) => unreachable!("sizes are far below the AEAD's limit"),
                }
            })
        });
    }
    group.finish();
}

/// Decrypts and verifies `size` bytes: the receiving side's cost.
fn open_raw<A: AeadInPlace + KeyInit>(c: &mut Criterion, name: &str) {
    let Ok(cipher) = A::new_from_slice(&[7u8; 32]) else {
        unreachable!("both ciphers take 32-byte keys")
    };
    let mut group = c.benchmark_group(format!("aead_open/{name}"));
    for size in SIZES {
        let nonce = [1u8; 12];
        let header = frame::header(0x20, size + 16);
        let mut sealed = vec![0x42u8; size];
        let Ok(tag) =
            cipher.encrypt_in_place_detached(Nonce::<A>::from_slice(&nonce), &header, &mut sealed)
        else {
            unreachable!("sizes are far below the AEAD's limit")
        };
        let mut buf = sealed.clone();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // Decrypting in place changes the buffer: start from the sealed bytes again.
                // The copy costs a few percent; the same for both ciphers.
                buf.copy_from_slice(&sealed);
                let opened = cipher.decrypt_in_place_detached(
                    Nonce::<A>::from_slice(&nonce),
                    &header,
                    &mut buf,
                    &tag,
                );
                assert!(opened.is_ok());
            })
        });
    }
    group.finish();
}

/// ring's AEADs: seal and open, for the same sizes.
fn ring_aead(c: &mut Criterion, alg: &'static ring::aead::Algorithm, name: &str) {
    use ring::aead::{Aad, LessSafeKey, Nonce as RingNonce, UnboundKey};
    let Ok(unbound) = UnboundKey::new(alg, &[7u8; 32]) else {
        unreachable!("both ciphers take 32-byte keys")
    };
    let key = LessSafeKey::new(unbound);
    let mut group = c.benchmark_group(format!("aead_seal/{name}"));
    for size in SIZES {
        let mut buf = vec![0x42u8; size];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let header = frame::header(0x20, size + 16);
                let sealed = key.seal_in_place_separate_tag(
                    RingNonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut buf,
                );
                assert!(sealed.is_ok());
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group(format!("aead_open/{name}"));
    for size in SIZES {
        let header = frame::header(0x20, size + 16);
        let mut sealed = vec![0x42u8; size];
        let Ok(tag) = key.seal_in_place_separate_tag(
            RingNonce::assume_unique_for_key([1u8; 12]),
            Aad::from(header),
            &mut sealed,
        ) else {
            unreachable!("sizes are far below the AEAD's limit")
        };
        sealed.extend_from_slice(tag.as_ref());
        let mut buf = sealed.clone();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                let opened = key.open_in_place(
                    RingNonce::assume_unique_for_key([1u8; 12]),
                    Aad::from(header),
                    &mut buf,
                );
                assert!(opened.is_ok());
            })
        });
    }
    group.finish();
}

fn aeads(c: &mut Criterion) {
    ring_aead(c, &ring::aead::AES_256_GCM, "ring_aes256gcm");
    ring_aead(c, &ring::aead::CHACHA20_POLY1305, "ring_chacha20poly1305");
    seal_raw::<Aes256Gcm>(c, "aes256gcm");
    seal_raw::<ChaCha20Poly1305>(c, "chacha20poly1305");
    open_raw::<Aes256Gcm>(c, "aes256gcm");
    open_raw::<ChaCha20Poly1305>(c, "chacha20poly1305");
}

fn keys() -> DirectionKeys {
    DirectionKeys {
        key: [9u8; 32],
        iv: [3u8; 12],
    }
}

/// The agent's path: a buffer holding header room and a chunk, sealed in place.
fn session_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_seal_in_place");
    for size in SIZES {
        let mut sealer = Sealer::new(&keys());
        let mut buf = Vec::with_capacity(HEADER_LEN + size + 16);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                buf.clear();
                buf.resize(HEADER_LEN + size, 0x42);
                match sealer.seal_in_place(0x20, &mut buf, 0) {
                    Ok(()) => black_box(buf.len()),
                    Err(e) => unreachable!("sealing a valid frame failed: {e}"),
                }
            })
        });
    }
    group.finish();
}

/// ctl's path: parse a frame from the read buffer and open it in place.
fn session_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_open");
    for size in SIZES {
        let mut sealer = Sealer::new(&keys());
        let mut sealed = Vec::new();
        if let Err(e) = sealer.seal(0x20, &vec![0x42u8; size], &mut sealed) {
            unreachable!("sealing a valid frame failed: {e}");
        }
        let mut opener = Opener::new(&keys());
        let mut buf = sealed.clone();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                // As in `open_raw`: restore the sealed bytes, and rewind the counter so the
                // same frame opens again.
                buf.copy_from_slice(&sealed);
                opener.set_counter_for_test(0);
                let Ok(Some((f, _))) = frame::parse(&buf, MAX_FRAME_LEN) else {
                    unreachable!("the frame was encoded whole")
                };
                let header = f.header();
                let opened = opener.open(header, &mut buf[HEADER_LEN..]);
                assert!(opened.is_ok());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, aeads, session_seal, session_open);
criterion_main!(benches);
