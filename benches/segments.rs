//! The DR segment matcher at 1k, 10k and 100k segments (a third exact
//! names, a third wildcards, a third IPv4/IPv6 prefixes): lookups that hit
//! and miss, next to a plain `HashMap<String, usize>` of exact names and
//! the linear scan of `segments::reference`, measured in the same run;
//! compile time for 100k; memory and allocations, counted by this binary's
//! global allocator and printed.
//!
//! `cargo bench --bench segments` (add `-- lookup/100000` to filter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lifeboat::preamble::{Dest, Host};
use lifeboat::segments::{reference, Lookup, Matcher, SegmentSpec};

/// Counts allocations and live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to `System`; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Distinct destinations cycled through per benchmark (a power of two), so
/// a lookup is not one hot cache line.
const PROBES: usize = 4096;

/// `n` segments, one key each: exact `app{i}.dc{i%7}.corp.example`,
/// wildcard `*.team{i}.corp.example`, or a /24 (IPv4) or /48 (IPv6).
fn specs(n: usize) -> Vec<SegmentSpec> {
    (0..n)
        .map(|i| {
            let (domains, cidrs) = match i % 3 {
                0 => (vec![exact(i)], vec![]),
                1 => (vec![format!("*.team{i}.corp.example")], vec![]),
                _ if i % 2 == 0 => (vec![], vec![format!("{}.0/24", v4_net(i))]),
                _ => (
                    vec![],
                    vec![format!("fd00:{:x}:{:x}::/48", i >> 16, i & 0xffff)],
                ),
            };
            SegmentSpec {
                name: format!("segment-{i}"),
                domains,
                cidrs,
                tcp_ports: vec!["443".into(), "8000-8080".into()],
                connector_groups: vec!["dc1-dr".into()],
            }
        })
        .collect()
}

fn exact(i: usize) -> String {
    format!("app{i}.dc{}.corp.example", i % 7)
}

/// The first three octets of segment `i`'s /24.
fn v4_net(i: usize) -> String {
    format!("{}.{}.{}", 10 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

fn name(s: String, port: u16) -> Dest {
    Dest {
        host: Host::Name(s),
        port,
    }
}

fn ip(s: &str, port: u16) -> Dest {
    Dest {
        host: Host::Ip(s.parse::<IpAddr>().expect("literal")),
        port,
    }
}

/// Destinations of one kind for a config of `n` segments, spread over it.
fn probes(n: usize, kind: &str) -> Vec<Dest> {
    // Segment `i - i % m + r` (wrapping to `r`): the one of class `r` mod `m`
    // next to `i`.
    let of = |i: usize, m: usize, r: usize| Some(i - i % m + r).filter(|&j| j < n).unwrap_or(r);
    (0..PROBES)
        .map(|k| {
            let i = (k * 7919) % n;
            match kind {
                "exact-hit" => name(exact(of(i, 3, 0)), 443),
                "wildcard-hit" => name(format!("host{k}.team{}.corp.example", of(i, 3, 1)), 8080),
                "v4-hit" => ip(&format!("{}.{}", v4_net(of(i, 6, 2)), k % 250 + 1), 443),
                "v6-hit" => {
                    let j = of(i, 6, 5);
                    ip(
                        &format!("fd00:{:x}:{:x}::{:x}", j >> 16, j & 0xffff, k + 1),
                        443,
                    )
                }
                "exact-miss" => name(format!("app{i}.dc{}.elsewhere.example", i % 7), 443),
                "wrong-port" => name(exact(of(i, 3, 0)), 22),
                _ => ip(&format!("192.168.{}.{}", k % 250, k / 250 % 250), 443),
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    for n in SIZES {
        let specs = specs(n);
        let m = Matcher::compile(&specs).expect("bench config compiles");
        let compiled = m.segments().to_vec();
        // The baseline: exact names only, default (SipHash) HashMap.
        let names: HashMap<String, usize> = (0..n)
            .filter(|i| i % 3 == 0)
            .map(|i| (exact(i), i))
            .collect();
        let mut g = c.benchmark_group(format!("lookup/{n}"));
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(2));
        for kind in [
            "exact-hit",
            "wildcard-hit",
            "v4-hit",
            "v6-hit",
            "exact-miss",
            "wrong-port",
            "ip-miss",
        ] {
            let ps = probes(n, kind);
            let mut k = 0;
            g.bench_function(BenchmarkId::new("matcher", kind), |b| {
                b.iter(|| {
                    k = (k + 1) % PROBES;
                    black_box(m.lookup(black_box(&ps[k])));
                })
            });
            if kind == "exact-hit" || kind == "exact-miss" {
                let keys: Vec<&str> = ps
                    .iter()
                    .map(|d| match &d.host {
                        Host::Name(s) => s.as_str(),
                        Host::Ip(_) => "",
                    })
                    .collect();
                g.bench_function(BenchmarkId::new("hashmap", kind), |b| {
                    b.iter(|| {
                        k = (k + 1) % PROBES;
                        black_box(names.get(black_box(keys[k])));
                    })
                });
            }
            if kind == "exact-hit" || kind == "ip-miss" {
                g.bench_function(BenchmarkId::new("linear", kind), |b| {
                    b.iter(|| {
                        k = (k + 1) % PROBES;
                        black_box(reference::lookup(&compiled, black_box(&ps[k])));
                    })
                });
            }
            // Zero allocations, counted here too; and the probes are what
            // their name says.
            let before = ALLOCS.load(Relaxed);
            let hits = ps
                .iter()
                .filter(|d| matches!(black_box(m.lookup(d)), Lookup::Hit(_)))
                .count();
            let allocs = ALLOCS.load(Relaxed) - before;
            assert_eq!(allocs, 0, "{kind} at {n}: lookups allocated");
            let want = if kind.ends_with("-hit") { PROBES } else { 0 };
            assert_eq!(hits, want, "{kind} at {n}");
        }
        g.finish();
    }
}

fn compile(c: &mut Criterion) {
    let n = 100_000;
    let specs = specs(n);
    // Memory: live bytes held by the compiled matcher (the specs excluded).
    let (live0, allocs0) = (LIVE.load(Relaxed), ALLOCS.load(Relaxed));
    let t = Instant::now();
    let m = Matcher::compile(&specs).expect("bench config compiles");
    let took = t.elapsed();
    let bytes = LIVE.load(Relaxed) - live0;
    println!(
        "compile {n} segments: {:.0} ms once; matcher holds {:.1} MiB ({} bytes/segment), {} allocations",
        took.as_secs_f64() * 1e3,
        bytes as f64 / (1 << 20) as f64,
        bytes / n as isize,
        ALLOCS.load(Relaxed) - allocs0
    );
    drop(m);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function(BenchmarkId::new("matcher", n), |b| {
        b.iter(|| black_box(Matcher::compile(black_box(&specs)).expect("compiles")))
    });
    g.finish();
}

criterion_group!(benches, lookups, compile);
criterion_main!(benches);
