//! The data path end to end on loopback, each measured beside its baseline
//! in the same run:
//! - `bulk`: one flow's download through client -> edge -> connector -> app
//!   (SOCKS5 in; QUIC on both legs, or TLS on both legs: a TLS connection
//!   per client flow and the HTTP/2-multiplexed connector tunnel) against a
//!   direct TCP download from the app.
//! - `flow_setup`: a new flow (SOCKS5 CONNECT answered once the edge reports
//!   the app connected) against a direct TCP connect to the app. p50/p99 of
//!   a bounded sample are printed first.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lifeboat::demo::{socks_client, Topology, TopologyOptions, DR_HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BULK: u64 = 64 * 1024 * 1024;

async fn download(mut s: TcpStream, host: &str, n: u64) -> u64 {
    let req = format!("GET /bytes/{n} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let k = s.read(&mut buf).await.expect("read");
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    assert!(total > n, "short download: {total} of {n}");
    total
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.50), p(0.99))
}

async fn setup_samples(label: &str, socks: SocketAddr, app: SocketAddr, n: usize) {
    let mut tunnel = Vec::with_capacity(n);
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let s = socks_client::connect(socks, DR_HOST, app.port())
            .await
            .expect("flow");
        tunnel.push(t0.elapsed());
        drop(s);
        let t0 = Instant::now();
        let s = TcpStream::connect(app).await.expect("direct");
        direct.push(t0.elapsed());
        drop(s);
    }
    let (tp50, tp99) = percentiles(tunnel);
    let (dp50, dp99) = percentiles(direct);
    println!(
        "flow setup ({label}), {n} samples: p50 {:.0} us, p99 {:.0} us \
         (direct TCP connect: p50 {:.0} us, p99 {:.0} us)",
        tp50.as_secs_f64() * 1e6,
        tp99.as_secs_f64() * 1e6,
        dp50.as_secs_f64() * 1e6,
        dp99.as_secs_f64() * 1e6
    );
}

fn data_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let with = |t: &'static str| TopologyOptions {
        client_transport: t,
        connector_transport: t,
    };
    let quic = rt
        .block_on(Topology::start_with(with("quic")))
        .expect("quic topology");
    let tls = rt
        .block_on(Topology::start_with(with("tls")))
        .expect("tls topology");
    let app = quic.app;
    // Each topology has its own app (the segment's port is the app's).
    let paths = [("quic", quic.socks, quic.app), ("tls", tls.socks, tls.app)];
    for (label, socks, app) in paths {
        rt.block_on(setup_samples(label, socks, app, 2000));
    }

    let mut g = c.benchmark_group("bulk");
    g.throughput(Throughput::Bytes(BULK));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function(BenchmarkId::new("download", "direct-tcp"), |b| {
        b.to_async(&rt).iter(|| async move {
            download(TcpStream::connect(app).await.expect("connect"), "app", BULK).await
        })
    });
    for (label, socks, app) in paths {
        g.bench_function(
            BenchmarkId::new("download", format!("lifeboat-{label}")),
            |b| {
                b.to_async(&rt).iter(|| async move {
                    let s = socks_client::connect(socks, DR_HOST, app.port())
                        .await
                        .expect("flow");
                    download(s, DR_HOST, BULK).await
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("flow_setup");
    g.bench_function("direct-tcp-connect", |b| {
        b.to_async(&rt)
            .iter(|| async move { TcpStream::connect(app).await.expect("connect") })
    });
    for (label, socks, app) in paths {
        g.bench_function(format!("lifeboat-{label}"), |b| {
            b.to_async(&rt).iter(|| async move {
                socks_client::connect(socks, DR_HOST, app.port())
                    .await
                    .expect("flow")
            })
        });
    }
    g.finish();
    rt.block_on(quic.shutdown()).expect("shutdown");
    rt.block_on(tls.shutdown()).expect("shutdown");
}

criterion_group!(benches, data_path);
criterion_main!(benches);
