//! `Matcher::lookup` and `Matcher::explain` allocate nothing, proven with a
//! counting global allocator (its own test binary, so nothing else shares
//! the allocator). Counting is per thread: the test harness's other threads
//! do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::IpAddr;

use lifeboat::preamble::{Dest, Host};
use lifeboat::segments::{Lookup, Matcher, SegmentSpec};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: the allocator also runs while thread locals are torn down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made on this thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    COUNT.with(|c| c.set(0));
    ON.with(|on| on.set(true));
    let r = f();
    ON.with(|on| on.set(false));
    (COUNT.with(Cell::get), r)
}

fn specs(n: usize) -> Vec<SegmentSpec> {
    (0..n)
        .map(|i| {
            let (domains, cidrs) = match i % 4 {
                0 => (vec![format!("app{i}.corp.example")], vec![]),
                1 => (vec![format!("*.team{i}.corp.example")], vec![]),
                2 => (
                    vec![],
                    vec![format!("10.{}.{}.0/24", i / 256 % 256, i % 256)],
                ),
                _ => (vec![], vec![format!("fd00:{:x}::/32", i % 65536)]),
            };
            SegmentSpec {
                name: format!("s{i}"),
                domains,
                cidrs,
                tcp_ports: vec!["443".into(), "8000-8080".into()],
                connector_groups: vec!["dc1-dr".into()],
            }
        })
        .chain((0..3).map(|p| SegmentSpec {
            // Several segments on one key, split by port.
            name: format!("shared{p}"),
            domains: vec!["shared.example".into(), "*.shared.example".into()],
            cidrs: vec!["192.0.2.0/24".into()],
            tcp_ports: vec![(22 + p).to_string()],
            connector_groups: vec!["dc1-dr".into()],
        }))
        .collect()
}

fn probes() -> Vec<Dest> {
    let name = |n: &str, port| Dest {
        host: Host::Name(n.into()),
        port,
    };
    let ip = |a: &str, port| Dest {
        host: Host::Ip(a.parse::<IpAddr>().unwrap()),
        port,
    };
    let long = format!("{}example", "a.".repeat(130));
    vec![
        name("app0.corp.example", 443),
        name("APP4.Corp.Example.", 8080),
        name("x.y.team1.corp.example", 8000),
        name("app0.corp.example", 22),
        name("nowhere.example", 443),
        name("shared.example", 24),
        name("a.shared.example", 25),
        name("a..corp.example", 443),
        name("\u{e9}.corp.example", 443),
        name(&long, 443),
        name("", 443),
        ip("10.0.2.9", 443),
        ip("10.0.2.9", 1),
        ip("11.0.0.1", 443),
        ip("::ffff:10.0.2.9", 443),
        ip("fd00:3::1", 8080),
        ip("2001:db8::1", 443),
        ip("192.0.2.1", 23),
    ]
}

#[test]
fn lookups_allocate_nothing() {
    let m = Matcher::compile(&specs(10_000)).unwrap();
    let probes = probes();
    // Warm up: lazily initialised statics (none expected) would show here.
    for d in &probes {
        black_box(m.lookup(d));
    }
    let (n, hits) = allocations(|| {
        let mut hits = 0u32;
        for _ in 0..100 {
            for d in &probes {
                if let Lookup::Hit(s) = black_box(m.lookup(black_box(d))) {
                    hits += 1;
                    black_box(s);
                }
                black_box(m.explain(black_box(d)));
            }
        }
        hits
    });
    assert_eq!(n, 0, "lookups allocated {n} times");
    // The probes did exercise hits (exact, wildcard, v4, mapped v4, v6, shared key).
    assert_eq!(hits, 100 * 8);
}

#[test]
fn the_counter_counts() {
    let (n, v) = allocations(|| black_box(vec![1u8; 64]));
    assert!(n >= 1, "counting allocator saw nothing");
    drop(v);
}
