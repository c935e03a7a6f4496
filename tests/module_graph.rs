//! No import cycles: between the top-level modules of the library, and
//! between the files of one directory module (`trust/chain.rs` may not need
//! `trust/state.rs` if `state.rs` needs `chain.rs`). A directory's `mod.rs`
//! is its face (it declares and re-exports its files, which use its shared
//! types), so it is not a node of the file graph.
//!
//! The graph comes from the source text: every `crate::a::...` and
//! `super::b::...` path (in `use` lines and inline, with `{...}` groups),
//! outside comments and test modules (`tests.rs` files, `#[cfg(test)] mod`):
//! test fixtures may use higher layers, such as `pki` issuing certificates for
//! the `trust` tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles that are known and have their own work item. Each entry is the
/// complete set of modules of one cycle; a cycle that grows fails the test.
/// None today: keep it that way.
const ALLOWED: &[&[&str]] = &[];

/// Module path of a source file: `a/b.rs` and `a/b/mod.rs` are `[a, b]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The text of a file without comment lines and `#[cfg(test)]` modules
/// (rustfmt puts a module's closing brace alone at its indentation).
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let next_trimmed = next.trim_start();
                if next_trimmed.starts_with("mod ") && next_trimmed.ends_with('{') {
                    let close = format!("{}}}", &next[..next.len() - next_trimmed.len()]);
                    lines.by_ref().find(|l| *l == close);
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment after `prefix` at each occurrence: `crate::a::b` and
/// `crate::{a::b, c}` give `a` (and `c`).
fn heads<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        out.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Edges `from -> to` with the files that make each: between top-level
/// modules (key `""`) and between the files of each directory (key: its name).
fn graphs(src: &Path) -> BTreeMap<String, Graph> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut out: BTreeMap<String, Graph> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(src).expect("under src");
        let from = module_of(rel);
        let is_test = from.iter().any(|p| p == "tests");
        if from.is_empty() || is_test || ["main", "lib"].contains(&from[0].as_str()) {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(path).expect("read source"));
        let parent = &from[..from.len() - 1];
        let targets = heads(&code, "crate::")
            .into_iter()
            .map(|h| vec![h.to_string()])
            .chain(heads(&code, "super::").into_iter().map(|h| {
                let mut t = parent.to_vec();
                t.push(h.to_string());
                t
            }));
        let file = rel.display().to_string();
        for to in targets {
            let mut add = |graph: &str, a: &str, b: &str| {
                if a != b {
                    out.entry(graph.to_string())
                        .or_default()
                        .entry(a.to_string())
                        .or_default()
                        .entry(b.to_string())
                        .or_default()
                        .insert(file.clone());
                }
            };
            if is_module(src, &to[..1]) {
                add("", &from[0], &to[0]);
            }
            if from.len() >= 2 && to.len() >= 2 && from[0] == to[0] && is_module(src, &to[..2]) {
                add(&from[0], &from[1], &to[1]);
            }
        }
    }
    out
}

/// Whether `path` names a module of the crate (a file or a directory).
fn is_module(src: &Path, path: &[String]) -> bool {
    let base: PathBuf = path.iter().collect();
    src.join(&base).with_extension("rs").is_file() || src.join(&base).join("mod.rs").is_file()
}

/// The strongly connected sets of more than one node.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|n| (n, reach(n))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (n, r) in &reached {
        let set: BTreeSet<String> = r
            .iter()
            .filter(|m| reached.get(m).is_some_and(|back| back.contains(*n)))
            .cloned()
            .collect();
        if set.len() > 1 && !out.contains(&set) {
            out.push(set);
        }
    }
    out
}

fn describe(graph: &Graph, set: &BTreeSet<String>) -> String {
    let mut s = String::new();
    for a in set {
        for (b, files) in graph.get(a).into_iter().flatten() {
            if set.contains(b) {
                s.push_str(&format!("\n  {a} -> {b} ({files:?})"));
            }
        }
    }
    s
}

#[test]
fn no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = graphs(&src);
    let top = graphs.get("").expect("top-level edges");
    assert!(
        top.len() > 10 && top.get("edge").is_some_and(|e| e.contains_key("segments")),
        "the parser found too few edges: {top:?}"
    );
    assert!(
        graphs.get("trust").is_some_and(|g| !g.is_empty()),
        "no edges between the files of trust/"
    );
    let mut found = Vec::new();
    for (dir, graph) in &graphs {
        for set in cycles(graph) {
            let names: Vec<&str> = set.iter().map(String::as_str).collect();
            if dir.is_empty() && ALLOWED.contains(&names.as_slice()) {
                continue;
            }
            let place = if dir.is_empty() { "src" } else { dir };
            found.push(format!("cycle in {place}:{}", describe(graph, &set)));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The sans-IO cores (STYLE.md section 2): no runtime, resolver, file or
/// clock; their callers pass bytes and instants in.
const CORES: &[&str] = &[
    "preamble.rs",
    "refusal.rs",
    "wire.rs",
    "dr_mode.rs",
    "dr_mode/key.rs",
    "dr_mode/name.rs",
    "dr/record.rs",
    "dr/machine/mod.rs",
    "segments/mod.rs",
    "segments/compile.rs",
    "segments/lookup.rs",
    "segments/name.rs",
    "segments/table.rs",
];

#[test]
fn cores_read_no_clock_and_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "tokio",
        "hickory",
        "Instant::now",
        "SystemTime::now",
        "std::fs",
        "std::net::Tcp",
    ];
    for core in CORES {
        let text = std::fs::read_to_string(src.join(core)).expect("a core file");
        let code = non_test_code(&text);
        for word in forbidden {
            assert!(!code.contains(word), "src/{core} uses `{word}`");
        }
    }
}

#[test]
fn the_parser_reads_groups_and_skips_tests() {
    let code = non_test_code(
        "use crate::{a::X, b, c::{d, e}};\n// crate::comment\nfn f() { crate::f::g(); $crate::m; }\n#[cfg(test)]\nmod tests {\n    use crate::t;\n}\nuse super::{s, u::V};\n",
    );
    assert_eq!(heads(&code, "crate::"), ["a", "b", "c", "f"]);
    assert_eq!(heads(&code, "super::"), ["s", "u"]);
}
