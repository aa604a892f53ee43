//! The layer rule of ARCHITECTURE.md, checked on the source tree: a folder under src/ may use
//! its own files and the folders below it, never one above; and no two files use each other,
//! directly or around a loop. A unit test, so that it runs wherever the unit tests run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use syn::visit::{self, Visit};

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

/// The paths a module's source names: `crate::a::b`, each member of `use crate::a::{b, c::{d}}`,
/// and `super::b` (resolved against the enclosing module), each as a path from the crate's root.
/// Paths inside macro calls are read from their tokens.
fn named_paths(module: &str, text: &str) -> Vec<String> {
    let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{module} does not parse: {e}"));
    let mut names = Names {
        within: module.split("::").map(str::to_owned).collect(),
        tests: 0,
        paths: Vec::new(),
    };
    names.visit_file(&file);
    names.paths
}

/// Collects the paths of one file; `within` is the module being read, inline modules included,
/// `tests` how many of those are `#[cfg(test)]`.
struct Names {
    within: Vec<String>,
    tests: usize,
    paths: Vec<String>,
}

impl Names {
    /// Records a path given as its segments, if it starts at `crate` or `super`.
    fn record(&mut self, segments: &[String]) {
        let mut base: Vec<String> = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            // A file's inline tests may reach into its children: that is no loop of the program.
            Some("super") if self.tests > 0 => return,
            Some("super") => self.within.clone(),
            _ => return,
        };
        let mut rest = segments;
        if rest[0] == "crate" {
            rest = &rest[1..];
        }
        while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
            base.pop();
            rest = tail;
        }
        base.extend(rest.iter().cloned());
        self.paths.push(base.join("::"));
    }

    /// Records every leaf of a `use` tree, each with the prefix that leads to it.
    fn record_use(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.record_use(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.record_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.record_leaf(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.record(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.record_use(prefix, t)),
        }
    }

    fn record_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        // `use crate::a::{self}` names `crate::a`.
        if ident != "self" {
            path.push(ident.to_string());
        }
        self.record(&path);
    }

    /// Records the `crate::`/`super::` paths among a macro call's tokens.
    fn record_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let mut path: Vec<String> = Vec::new();
        let mut colons = 0;
        for token in tokens {
            match token {
                proc_macro2::TokenTree::Ident(i) => {
                    if colons != 2 {
                        self.record(&std::mem::take(&mut path));
                    }
                    path.push(i.to_string());
                    colons = 0;
                }
                proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
                other => {
                    self.record(&std::mem::take(&mut path));
                    colons = 0;
                    if let proc_macro2::TokenTree::Group(g) = other {
                        self.record_tokens(g.stream());
                    }
                }
            }
        }
        self.record(&path);
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.record_use(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.record(&segments);
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.record_tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    // `pub(super)` and `pub(crate)` say who may use an item; they use nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let tests = usize::from(item.attrs.iter().any(is_cfg_test));
        self.within.push(item.ident.to_string());
        self.tests += tests;
        visit::visit_item_mod(self, item);
        self.tests -= tests;
        self.within.pop();
    }
}

fn is_cfg_test(attr: &syn::Attribute) -> bool {
    attr.path().is_ident("cfg")
        && attr
            .meta
            .require_list()
            .is_ok_and(|list| list.tokens.to_string() == "test")
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
        "use crate::host::{engine::Engine, guard};\nuse super::SERVICE_CAP;\n\
         fn f() { mycrate::y(); tracing::info!(\"{}\", crate::sys::exit::CODE); }\n\
         #[cfg(test)]\nmod tests {\n    use super::*;\n}",
    );
    assert_eq!(
        got,
        [
            "host::engine::Engine",
            "host::guard",
            "swarm::collect::SERVICE_CAP",
            "sys::exit::CODE",
        ]
    );
}

/// A text scan that cut a group at its first `}` read nothing of this line (it named "", and
/// never `swarm::x`): a lower layer could use a higher one unseen.
#[test]
fn nested_groups_are_read_to_their_leaves() {
    let got = named_paths("sys::x", "use crate::{a::{b, c}, swarm::x};\n");
    assert_eq!(got, ["a::b", "a::c", "swarm::x"]);
    let mut modules = BTreeMap::new();
    modules.insert(
        "sys::x".to_owned(),
        "use crate::{a::{b, c}, swarm::x};\n".to_owned(),
    );
    modules.insert("swarm::x".to_owned(), String::new());
    let graph = graph(&modules);
    assert!(graph["sys::x"].contains("swarm::x"), "{graph:?}");
}
