//! The layer rule of ARCHITECTURE.md, checked on the source tree: a folder under src/ may use
//! its own files and the folders below it, never one above; and no two files use each other,
//! directly or around a loop. A unit test, so that it runs wherever the unit tests run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The folders under src/, lowest first: each may use only itself and those before it.
const LAYERS: [&str; 7] = ["sys", "plan", "output", "host", "mpi", "swarm", "cmd"];

/// Every module's path (`host::guard`) and text, read from the folders of `LAYERS`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![(src.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, path)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut here = path.clone();
            if p.is_dir() {
                here.push(name);
                dirs.push((p, here));
            } else if path.is_empty() {
                // main.rs and this file: the root, which may use anything.
                continue;
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if stem != "mod" {
                    here.push(stem.to_owned());
                }
                found.insert(here.join("::"), std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    found
}

/// The paths a module's text names: `crate::a::b`, the members of `crate::a::{b, c::d}`, and
/// `super::b` (resolved against the module's parent), each as a path from the crate's root.
fn named_paths(module: &str, text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
        // Inside an inline `mod tests`, `super` is the file's own module: not a use of another.
        let own_tests = text.find("mod tests {").unwrap_or(text.len());
        for (at, _) in text.match_indices(prefix) {
            let part_of_a_name =
                at > 0 && text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            if part_of_a_name || (prefix == "super::" && at > own_tests) {
                continue;
            }
            let rest = &text[at + prefix.len()..];
            let mut heads = Vec::new();
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if rest[head.len()..].starts_with('{') && head.ends_with("::") {
                let group = &rest[head.len() + 1..rest.find('}').unwrap_or(rest.len())];
                for member in group.split(',') {
                    heads.push(format!("{head}{}", member.trim()));
                }
            } else {
                heads.push(head);
            }
            for h in heads {
                let full = if base.is_empty() {
                    h
                } else {
                    format!("{base}::{h}")
                };
                paths.push(full.trim_end_matches(':').to_owned());
            }
        }
    }
    paths
}

/// The module a path lands in: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get_key_value(&parts[..n].join("::")))
        .map(|(k, _)| k.as_str())
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or_default();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("{module} is in no layer of LAYERS"))
}

/// Each module and the other modules it uses.
fn graph(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    modules
        .iter()
        .map(|(m, text)| {
            let uses = named_paths(m, text)
                .iter()
                .filter_map(|p| resolve(p, modules))
                .filter(|to| *to != m)
                .collect();
            (m.as_str(), uses)
        })
        .collect()
}

#[test]
fn no_layer_uses_one_above_it_and_no_files_use_each_other() {
    let modules = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        modules.contains_key("host::guard"),
        "the source tree was not found"
    );
    let graph = graph(&modules);
    let mut wrong = Vec::new();
    for (from, uses) in &graph {
        for to in uses {
            if layer(to) > layer(from) {
                wrong.push(format!("{from} uses {to}, a layer above it"));
            }
        }
    }
    // A loop: a module from which a module it uses leads back to it.
    for (from, uses) in &graph {
        for to in uses {
            let mut seen = BTreeSet::new();
            let mut todo = vec![*to];
            while let Some(m) = todo.pop() {
                if m == *from {
                    wrong.push(format!("{from} uses {to}, which leads back to {from}"));
                    break;
                }
                if seen.insert(m) {
                    todo.extend(graph.get(m).into_iter().flatten());
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn paths_are_read_as_written() {
    let got = named_paths(
        "swarm::collect::out",
        "use crate::host::{engine::Engine, guard};\nuse super::SERVICE_CAP;\nmycrate::y\n\
         mod tests {\n    use super::*;\n}",
    );
    assert_eq!(
        got,
        [
            "host::engine::Engine",
            "host::guard",
            "swarm::collect::SERVICE_CAP"
        ]
    );
}
