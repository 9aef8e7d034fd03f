//! The house's plan holds (ARCHITECTURE.md §4): every arrow between the rooms
//! of `src/` points down a floor, and no rooms form a circle. Read from the
//! source's own `crate::…`, `super::…` and child-module paths, so a new
//! import that breaks the plan fails here, not in a reviewer's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level rooms, lowest floor first. A room uses only rooms
/// on floors below its own.
const FLOORS: &[&[&str]] = &[
    &["backoff", "config", "metrics", "names", "timestamps"],
    &["filter"],
    &["auth", "db", "protocol"],
    &["feed"],
    &["install"],
    &["client", "http", "simulate"],
    &["server"],
];

/// Longest a file under `src/` may be, in lines of code before its tests.
const MOST_LINES: usize = 450;

/// A room: a file's module path, `a/b` for `src/a/b.rs` or `src/a/b/mod.rs`.
fn room_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let room = relative.to_string_lossy().replace('\\', "/");
    room.strip_suffix("/mod").unwrap_or(&room).to_string()
}

fn is_room(src: &Path, room: &str) -> bool {
    src.join(format!("{room}.rs")).exists() || src.join(room).join("mod.rs").exists()
}

/// The file's code, without its test module and comments.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names a room re-exports from its children (`pub use child::{A, B}`).
fn reexports(code: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in code.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((child, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            names.insert(item.trim().to_string(), child.trim().to_string());
        }
    }
    names
}

/// The room a path names: the longest prefix that is a room, or the child a
/// re-exported name comes from.
fn resolve(src: &Path, base: &str, segments: &[&str], exported: &BTreeMap<String, BTreeMap<String, String>>) -> String {
    let mut room = base.to_string();
    for segment in segments {
        let next = if room.is_empty() {
            segment.to_string()
        } else {
            format!("{room}/{segment}")
        };
        if is_room(src, &next) {
            room = next;
            continue;
        }
        if let Some(child) = exported.get(&room).and_then(|names| names.get(*segment)) {
            room = format!("{room}/{child}");
        }
        break;
    }
    room
}

/// Every `use`-like reference in `code` as path segments after its anchor.
fn references<'a>(code: &'a str, anchor: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(anchor) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + anchor.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                found.push(item.trim().split("::").map(str::trim).collect());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            found.push(rest[..end].split("::").filter(|s| !s.is_empty()).collect());
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each room and the rooms it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The rooms of the library and the arrows between them, and each room's lines of code.
fn arrows() -> (Graph, Vec<(String, usize)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    // The binary (the command line and the bench) sits above the library.
    all.retain(|f| !f.starts_with(src.join("bin")) && f.file_name().is_some_and(|n| n != "tests.rs"));
    let codes: Vec<(String, String)> = all.iter().map(|f| (room_of(&src, f), code_of(f))).collect();
    let exported: BTreeMap<String, BTreeMap<String, String>> = codes
        .iter()
        .map(|(room, code)| (room.clone(), reexports(code)))
        .collect();
    let mut graph = Graph::new();
    let mut sizes = Vec::new();
    for (room, code) in &codes {
        sizes.push((room.clone(), code.lines().filter(|l| !l.trim().is_empty()).count()));
        if room == "lib" {
            continue;
        }
        let parent = room.rsplit_once('/').map_or("", |(p, _)| p);
        let mut targets = BTreeSet::new();
        for path in references(code, "crate::") {
            targets.insert(resolve(&src, "", &path, &exported));
        }
        for path in references(code, "super::") {
            targets.insert(resolve(&src, parent, &path, &exported));
        }
        // A room's own children, named from it (`ws::general`), but not its re-exports.
        let own: String = code
            .split(';')
            .filter(|s| !s.trim().starts_with("pub use"))
            .collect::<Vec<_>>()
            .join(";");
        for child in codes.iter().filter_map(|(r, _)| r.strip_prefix(&format!("{room}/"))) {
            if !child.contains('/') && !references(&own, &format!("{child}::")).is_empty() {
                targets.insert(format!("{room}/{child}"));
            }
        }
        targets.retain(|t| !t.is_empty() && t != room && t != "lib");
        graph.entry(room.clone()).or_default().extend(targets);
    }
    (graph, sizes)
}

fn top(room: &str) -> &str {
    room.split('/').next().unwrap()
}

#[test]
fn every_arrow_points_down_a_floor() {
    let floor_of = |room: &str| FLOORS.iter().position(|floor| floor.contains(&top(room)));
    let (graph, _) = arrows();
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let Some(from_floor) = floor_of(from) else {
            wrong.push(format!("{from} is on no floor: add it to FLOORS"));
            continue;
        };
        for to in targets.iter().filter(|to| top(to) != top(from)) {
            match floor_of(to) {
                Some(to_floor) if to_floor < from_floor => {}
                _ => wrong.push(format!("{from} uses {to}, which is not on a lower floor")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_rooms_form_a_circle() {
    let (graph, _) = arrows();
    // Depth-first; a room met again while still on the path closes a circle.
    fn visit<'a>(
        room: &'a str,
        graph: &'a Graph,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|r| *r == room) {
            circles.push(format!("{} -> {room}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(room) {
            return;
        }
        path.push(room);
        for next in graph.get(room).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for room in graph.keys() {
        visit(room, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "{circles:#?}");
    assert!(
        graph
            .get("http/ws/session")
            .is_some_and(|t| t.contains("feed/subscriber")),
        "the reader sees the session's use of the subscriber: {graph:#?}"
    );
}

#[test]
fn no_room_is_too_large_to_read() {
    let (_, sizes) = arrows();
    let large: Vec<_> = sizes.iter().filter(|(_, lines)| *lines > MOST_LINES).collect();
    assert!(
        large.is_empty(),
        "{large:?} (at most {MOST_LINES} lines of code before the tests)"
    );
}
