//! One-way layers: every `crate::` path in `src/**/*.rs` must point at the same or a
//! lower layer than the file it is written in, and the file graph those paths make
//! must have no cycle.
//!
//! The layer table and the allow-list of known upward edges are in `src/layers.txt`;
//! the format is described at the top of that file. The test reads the sources as
//! text: comments are skipped, items behind `#[cfg(test)]` and files marked
//! `#![cfg(test)]` are skipped (test code is not part of the daemon's dependency
//! graph), and both `use crate::{a, b::c}`
//! groups and inline paths such as `crate::store::Store` count. `super::` and
//! `self::` paths stay inside one module and are not followed; `src/main.rs` is a
//! separate crate (it uses `meterd::`) at the top and is not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One row of the layer table: a module path prefix and its rank (higher is upper).
struct Layer {
    prefix: String,
    rank: u32,
}

/// One allow-listed edge: the file (module path) and the module it may reach.
struct Allowed {
    from: String,
    to: String,
    used: bool,
}

/// The parsed `src/layers.txt`.
struct Table {
    layers: Vec<Layer>,
    allowed: Vec<Allowed>,
}

impl Table {
    fn parse(text: &str) -> Table {
        let mut layers = Vec::new();
        let mut allowed = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["allow", from, "->", to] => allowed.push(Allowed {
                    from: from.to_string(),
                    to: to.to_string(),
                    used: false,
                }),
                [rank, prefix] => layers.push(Layer {
                    prefix: prefix.to_string(),
                    rank: rank
                        .parse()
                        .unwrap_or_else(|_| panic!("src/layers.txt:{}: bad rank", n + 1)),
                }),
                _ => panic!("src/layers.txt:{}: cannot read {line:?}", n + 1),
            }
        }
        Table { layers, allowed }
    }

    /// The rank of a module: the row with the longest matching prefix.
    fn rank(&self, module: &str) -> Option<u32> {
        self.layers
            .iter()
            .filter(|l| is_prefix(&l.prefix, module))
            .max_by_key(|l| {
                if l.prefix == "crate" {
                    0
                } else {
                    l.prefix.len()
                }
            })
            .map(|l| l.rank)
    }

    /// Whether the edge is in the allow-list (and marks the entry as used).
    fn allow(&mut self, from: &str, to: &str) -> bool {
        let mut hit = false;
        for a in &mut self.allowed {
            if a.from == from && is_prefix(&a.to, to) {
                a.used = true;
                hit = true;
            }
        }
        hit
    }
}

/// `prefix` names `module` or one of its ancestors (`crate` is the whole crate).
fn is_prefix(prefix: &str, module: &str) -> bool {
    prefix == "crate"
        || module == prefix
        || (module.starts_with(prefix) && module[prefix.len()..].starts_with("::"))
}

/// The module path of a source file, e.g. `store::keys` for `src/store/keys.rs`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    if parts.is_empty() {
        "crate".to_string()
    } else {
        parts.join("::")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments blanked out; string contents are kept (a path in
/// `#[serde(with = "crate::...")]` is a real dependency).
fn strip_comments(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                out.push(c[j]);
                j += 1;
            }
            out.push(' ');
            i = j;
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                } else {
                    out.push(c[i]);
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '"'); otherwise a lifetime.
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                out.push(' ');
                i = j + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                out.push(' ');
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Blanks every item behind `#[cfg(test)]` (to its `;` or its matching `}`).
fn strip_test_items(src: &str) -> String {
    let mut s = src.to_string();
    while let Some(at) = s.find("#[cfg(test)]") {
        let bytes = s.as_bytes();
        let mut i = at;
        while i < bytes.len() && bytes[i] != b'{' && bytes[i] != b';' {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            let mut depth = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        let end = (i + 1).min(s.len());
        s.replace_range(at..end, &" ".repeat(end - at));
    }
    s
}

fn tokens(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else if c[i].is_whitespace() {
            i += 1;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// Reads a path (and `{...}` groups) after `prefix::`, pushing every full path.
fn use_tree(t: &[String], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        match t.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match t.get(i).map(String::as_str) {
                        Some("}") | None => return i + 1,
                        Some(",") => i += 1,
                        _ => i = use_tree(t, i, path.clone(), out),
                    }
                }
            }
            Some(w) if w.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                if w != "self" {
                    path.push(w.to_string());
                }
                i += 1;
                if t.get(i).map(String::as_str) == Some("::") {
                    i += 1;
                    continue;
                }
                out.push(path);
                return i;
            }
            _ => {
                // `*` or the end of the path.
                if t.get(i).map(String::as_str) == Some("*") {
                    i += 1;
                }
                out.push(path);
                return i;
            }
        }
    }
}

/// Every `crate::` path the (cleaned) text names.
fn crate_paths(src: &str) -> Vec<Vec<String>> {
    let t = tokens(src);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < t.len() {
        let after_colons = i > 0 && t[i - 1] == "::";
        if t[i] == "crate" && t[i + 1] == "::" && !after_colons {
            i = use_tree(&t, i + 2, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Tarjan's strongly connected components; returns the components with a cycle.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(iw));
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// A shortest cycle through the first member of a strongly connected component (breadth
/// first inside the component), as the list of its files, the first repeated at the end.
fn shortest_cycle(graph: &BTreeMap<String, BTreeSet<String>>, comp: &[String]) -> Vec<String> {
    let members: BTreeSet<&String> = comp.iter().collect();
    let start = &comp[0];
    let mut parent: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in &graph[v] {
            if !members.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.clone()];
                let mut at = v;
                while at != start {
                    path.push(at.clone());
                    at = parent[at];
                }
                path.push(start.clone());
                path.reverse();
                return path;
            }
            if !parent.contains_key(w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    comp.to_vec()
}

#[test]
fn imports_go_one_way_and_files_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let text = fs::read_to_string(src.join("layers.txt")).expect("read src/layers.txt");
    let mut table = Table::parse(&text);

    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    // Module path -> file, for the files of the library crate.
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    let mut sources = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        if rel == Path::new("main.rs") {
            continue;
        }
        let module = module_of(rel);
        modules.insert(module.clone(), format!("src/{}", rel.display()));
        sources.push((module, fs::read_to_string(f).expect("read source")));
    }

    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &sources {
        let Some(from_rank) = table.rank(module) else {
            problems.push(format!("{module}: no row in src/layers.txt"));
            continue;
        };
        graph.entry(module.clone()).or_default();
        let cleaned = strip_test_items(&strip_comments(text));
        // A file compiled for tests only (`#![cfg(test)]`) is test code as a whole.
        if cleaned.contains("#![cfg(test)]") {
            continue;
        }
        let mut seen = BTreeSet::new();
        for path in crate_paths(&cleaned) {
            // The longest prefix of the path that is a file of the crate.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m));
            let Some(target) = target else {
                continue; // An item of lib.rs, or a macro path.
            };
            if &target == module || !seen.insert(target.clone()) {
                continue;
            }
            if table.allow(module, &target) {
                continue;
            }
            let Some(to_rank) = table.rank(&target) else {
                problems.push(format!("{target}: no row in src/layers.txt"));
                continue;
            };
            if to_rank > from_rank {
                problems.push(format!(
                    "upward import: {} (layer {from_rank}) uses crate::{} (layer {to_rank})",
                    modules[module],
                    path.join("::"),
                ));
            }
            graph.entry(module.clone()).or_default().insert(target);
        }
    }
    let modules = &modules;
    for comp in cycles(&graph) {
        let members: BTreeSet<&String> = comp.iter().collect();
        let edges: Vec<String> = comp
            .iter()
            .flat_map(|m| {
                let graph = &graph;
                graph[m]
                    .iter()
                    .filter(|t| members.contains(t))
                    .map(move |t| format!("{} -> {}", modules[m], modules[t]))
            })
            .collect();
        let path: Vec<&str> = shortest_cycle(&graph, &comp)
            .iter()
            .map(|m| modules[m].as_str())
            .collect();
        problems.push(format!(
            "import cycle: {}\n    among {} files, with the edges:\n      {}",
            path.join(" -> "),
            comp.len(),
            edges.join("\n      ")
        ));
    }
    for a in &table.allowed {
        if !a.used {
            problems.push(format!(
                "stale allow-list entry (no such import any more, remove it): allow {} -> {}",
                a.from, a.to
            ));
        }
    }
    if std::env::var_os("LAYERS_PRINT").is_some() {
        for (m, ts) in &graph {
            println!("{m} ({:?}) -> {:?}", table.rank(m), ts);
        }
    }
    assert!(
        problems.is_empty(),
        "layering (src/layers.txt) broken:\n  {}",
        problems.join("\n  ")
    );
}

/// Column family names, RocksDB batches and the journal's keys stay inside `store/` and
/// `journal/`: every other writer hands the journal a typed batch and reads through the
/// store's typed accessors (issue: the journal owns its record format and its commit).
#[test]
fn storage_names_stay_in_the_store_and_the_journal() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().unwrap().as_os_str();
        if first == "store" || first == "journal" {
            continue;
        }
        let text = fs::read_to_string(f).expect("read source");
        let cleaned = strip_test_items(&strip_comments(&text));
        for word in ["cf::", "WriteBatch", "rocksdb::", "journal_key"] {
            if cleaned.contains(word) {
                problems.push(format!("src/{}: uses `{word}`", rel.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "storage internals outside store/ and journal/:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn tokenizer_reads_groups_and_inline_paths() {
    let src = "use crate::{a, b::{c, d::E}, f::{self, G}};\n\
               // crate::commented::Out\n\
               fn x() { let s = \"// not a comment\"; crate::store::Store::open(); }\n\
               #[cfg(test)]\nmod tests { use crate::test_only::X; }\n\
               #[serde(with = \"crate::registry::amount_text\")]\n";
    let paths: Vec<String> = crate_paths(&strip_test_items(&strip_comments(src)))
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "a",
            "b::c",
            "b::d::E",
            "f",
            "f::G",
            "store::Store::open",
            "registry::amount_text"
        ]
    );
}

#[test]
fn tarjan_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "a");
    edge(&mut g, "c", "d");
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    assert_eq!(shortest_cycle(&g, &cycles(&g)[0]), ["a", "b", "c", "a"]);
}
