//! Frame codec micro-benchmarks: encoding and parsing whole frames, without I/O or crypto.
//!
//! Run with `cargo bench -p rexec-shared --bench frame`. The codec should cost next to
//! nothing beside the AEAD (see the `seal` bench); these figures catch a regression that
//! makes it copy or allocate per frame.

// Test code: a failed expectation is a failed test, so unwrap, expect and panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rexec_shared::frame::{self, MAX_FRAME_LEN};

/// Payload sizes: a control message, a small write, and the agent's pipe chunk.
const SIZES: [usize; 3] = [64, 16 * 1024, 256 * 1024];

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_encode");
    for size in SIZES {
        let payload = vec![0xa5u8; size];
        // Reused like the transport's buffers, so this measures the codec, not the allocator.
        let mut out = Vec::with_capacity(size + frame::HEADER_LEN);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                frame::encode(0x20, black_box(payload), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_parse");
    for size in SIZES {
        let mut buf = Vec::new();
        frame::encode(0x20, &vec![0x5au8; size], &mut buf);
        // Parsing reads the header and borrows the payload: its cost is per frame, whatever
        // the size, and must stay so (a copy here would show up as growth with size).
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| match frame::parse(black_box(buf), MAX_FRAME_LEN) {
                Ok(Some((f, used))) => (f.kind, used),
                _ => unreachable!("a whole frame was encoded"),
            })
        });
    }
    group.finish();
}

/// Many small frames back to back, as a burst of short output lines arrives in one read.
fn parse_stream(c: &mut Criterion) {
    const FRAMES: usize = 1024;
    let mut buf = Vec::new();
    for i in 0..FRAMES {
        frame::encode(0x20, &[i as u8; 80], &mut buf);
    }
    let mut group = c.benchmark_group("frame_parse_stream");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("1024x80B", |b| {
        b.iter(|| {
            let mut rest = black_box(&buf[..]);
            let mut seen = 0;
            while let Ok(Some((_, used))) = frame::parse(rest, MAX_FRAME_LEN) {
                rest = &rest[used..];
                seen += 1;
            }
            seen
        })
    });
    group.finish();
}

criterion_group!(benches, encode, parse, parse_stream);
criterion_main!(benches);
