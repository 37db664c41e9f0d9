//! What the connection clock costs a request: one keep-alive request cycle (head read in
//! IDLE, marked read, body read, marked done) through `GuardedStream`, against the same reads
//! on the bare stream (both behind `Box<dyn IO>`, as Pingora holds a connection). The
//! difference is the per-request price of the idle and head deadlines: one more virtual call
//! per read and the phase atomics; the clock is read only when a read has to wait.

use std::io::Cursor;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use realmgate::downstream::{GuardedStream, Timeouts};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const REQUEST: &[u8] = b"GET /api/v1/users/7 HTTP/1.1\r\nhost: acme.qa.example.com\r\nauthorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln\r\naccept: */*\r\n\r\n";

/// A transport as Pingora holds it: behind `Box<dyn IO>` (dynamic dispatch, like a socket).
fn stream() -> pingora::protocols::Stream {
    Box::new(Cursor::new(REQUEST.repeat(2)))
}

fn bench(c: &mut Criterion) {
    let t = Timeouts {
        idle: Duration::from_secs(60),
        head: Duration::from_secs(10),
    };
    let mut g = c.benchmark_group("downstream");
    g.bench_function("request_cycle_bare", |b| {
        b.iter_batched(
            stream,
            |mut s| {
                let mut buf = [0u8; 256];
                futures::executor::block_on(async {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let m = s.read(&mut buf).await.unwrap_or(0);
                    (n, m)
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("request_cycle_guarded", |b| {
        b.iter_batched(
            || GuardedStream::new(stream(), Some(t)),
            |mut s| {
                let mut buf = [0u8; 256];
                futures::executor::block_on(async {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    s.head_read();
                    let m = s.read(&mut buf).await.unwrap_or(0);
                    s.request_done();
                    (n, m)
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
