//! Replays every committed fuzz seed (`fuzz/corpus/<target>/*`) through the
//! same `lifeboat::fuzzing` functions the cargo-fuzz targets call, on
//! stable, so a regression the fuzzer once found stays found.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 7] = [
    ("preamble", lifeboat::fuzzing::preamble),
    ("wire", lifeboat::fuzzing::wire),
    ("record", lifeboat::fuzzing::record),
    ("config", lifeboat::fuzzing::config),
    ("segments", lifeboat::fuzzing::segments),
    ("dr_machine", lifeboat::fuzzing::dr_machine),
    ("limits", lifeboat::fuzzing::limits),
];

#[test]
fn every_corpus_file_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut seen = 0;
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            seen += 1;
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
        // A loop over files must prove it looked at some.
        assert!(
            seen >= 3,
            "corpus {name}: only {seen} files in {}",
            dir.display()
        );
    }
    assert!(failed.is_empty(), "seeds that fail: {failed:#?}");
}

/// The `limits` target reaches past validation: its in-range seeds are
/// accepted by both role configs, the absurd ones by neither.
#[test]
fn limits_seeds_reach_the_runtime_form() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/limits");
    for (seed, roles) in [
        ("typical", 2),
        ("upper-bounds", 2),
        ("absurd-durations", 0),
        ("absurd-sizes", 0),
        ("below-floor", 0),
    ] {
        let data = std::fs::read(root.join(seed)).unwrap();
        assert_eq!(lifeboat::fuzzing::limits_accepted(&data), roles, "{seed}");
    }
}
