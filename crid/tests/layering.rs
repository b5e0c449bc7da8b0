//! No import cycles between the files of the daemon (`crid/src`) and of the domain crate
//! (`sandbox/src`): every `crate::`/`super::` path a file names is an edge to the file that
//! defines it, and the graph must have no cycle. Inline `mod tests` blocks and comments do not
//! count. Keeps the layering of ARCHITECTURE.md (`cri` → `sandbox::Runtime` → backends, never
//! back up) from eroding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files of a crate: path relative to `src` → text.
fn sources(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

/// The module path of a file (`cri/mod.rs` → `[cri]`, `lib.rs` → `[]`).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its inline test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path starting with `crate::` or `super::` in `code`, one level of `{a, b::c}` groups
/// expanded, as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if code[..at].chars().last().is_some_and(ident_char) {
                continue;
            }
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(ident_char(c) || c == ':'))
                .unwrap_or(rest.len());
            let head: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if rest[end..].starts_with('{') {
                let group = &rest[end + 1..rest[end..].find('}').map_or(end + 1, |j| end + j)];
                for item in group.split(',') {
                    let item = item.split(" as ").next().unwrap_or_default().trim();
                    let mut p = head.clone();
                    if !item.is_empty() && item != "self" && !item.contains('{') {
                        p.extend(item.split("::").map(str::to_owned));
                    }
                    out.push(p);
                }
            } else {
                out.push(head);
            }
        }
    }
    out
}

/// The file that defines the longest prefix of `module` that is a file.
fn resolve(files: &BTreeSet<String>, module: &[String]) -> Option<String> {
    (1..=module.len()).rev().find_map(|n| {
        let base = module[..n].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|c| files.contains(c))
    })
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources(src);
    let files: BTreeSet<String> = sources.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (rel, text) in &sources {
        let here = module_of(rel);
        let mut to = BTreeSet::new();
        for p in paths(&code(text)) {
            let module = if p.first().is_some_and(|s| s == "crate") {
                p[1..].to_vec()
            } else {
                let ups = p.iter().take_while(|s| *s == "super").count();
                let mut m = here[..here.len().saturating_sub(ups)].to_vec();
                m.extend(p[ups..].iter().cloned());
                m
            };
            if let Some(t) = resolve(&files, &module) {
                if &t != rel {
                    to.insert(t);
                }
            }
        }
        edges.insert(rel.clone(), to);
    }
    edges
}

/// A cycle through `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn the_daemon_and_the_domain_crate_have_no_import_cycles() {
    for name in ["crid", "sandbox"] {
        let g = graph(&crate_src(name));
        assert!(g.len() > 10, "{name}: only {} files found", g.len());
        if let Some(cycle) = find_cycle(&g) {
            panic!("{name}: import cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a.rs", vec!["b.rs"]),
        ("b.rs", vec!["c/mod.rs"]),
        ("c/mod.rs", vec!["a.rs"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    assert!(find_cycle(&g).is_some());
    let p = paths("use crate::cri::{error::Failure, pod};\nlet x = super::super::y::z();");
    assert!(p.contains(&vec![
        "crate".into(),
        "cri".into(),
        "error".into(),
        "Failure".into()
    ]));
    assert!(p.contains(&vec!["crate".into(), "cri".into(), "pod".into()]));
    assert!(p.contains(&vec![
        "super".into(),
        "super".into(),
        "y".into(),
        "z".into()
    ]));
}
