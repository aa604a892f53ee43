//! The documentation keeps up with the code: every error a user can see has an entry in
//! docs/troubleshooting.md, every reference to a heading resolves, every flag of the CLI is in
//! the user guide, and README.md stays a front door. Needs no cluster: it reads the sources and
//! runs `mpiswarm ... --help`.
//!
//! How error texts are found: the first string literal of every `bail!`, `anyhow!`, `.context(`,
//! `.with_context(` and `error!` in src/ (test modules left out). A message is covered when its
//! longest fixed part (the text between `{}` placeholders and line breaks) appears, whitespace
//! aside, in a heading or a `>` quote of docs/troubleshooting.md. Prerequisite checks (`bad(` in
//! src/host/preflight) are covered by a heading that names the check in backticks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fixed parts shorter than this are formatting, not a message (`GET {path}: {}`).
const MIN_KEY: usize = 12;

/// Texts that never reach a user as an error of their own: each is a cause under a message that
/// has its entry, or a message between a rank and its guard.
const INTERNAL: &[&str] = &[
    // A fault the tests inject into debug builds; a release build has no way to it.
    "failed to listen for this host's ranks: fault injected",
    "fault injected by the tests: the teardown left something",
    "failed to install signal handlers: fault injected by the tests",
];

const TROUBLESHOOTING: &str = "docs/troubleshooting.md";
const USER_GUIDE: &str = "docs/user-guide.md";
const README_MAX_LINES: usize = 250;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn readme_is_a_front_door_of_at_most_250_lines() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move detail to docs/ and link it"
    );
}

// ---- error texts ------------------------------------------------------------------------------

/// One message template found in the sources.
struct Message {
    at: String,
    template: String,
}

/// The code of a source file without its test module (`#[cfg(test)]` followed by `mod x {`).
fn without_tests(code: &str) -> &str {
    let mut offset = 0;
    let mut lines = code.lines().peekable();
    while let Some(line) = lines.next() {
        let next = lines.peek().map(|l| l.trim()).unwrap_or("");
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            return &code[..offset];
        }
        offset += line.len() + 1;
    }
    code
}

/// The Rust string literal starting at `code[start]` (a `"`), unescaped; `{{`/`}}` kept.
fn literal(code: &str, start: usize) -> Option<String> {
    let mut out = String::new();
    let mut chars = code[start + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '\n' => {
                    while chars.peek().is_some_and(|c| c.is_whitespace()) {
                        chars.next();
                    }
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The first string literal among the call's arguments, if the call has one before its first
/// `;` (a call with only a variable has none).
fn first_literal(code: &str, open: usize) -> Option<String> {
    let rest = &code[open..];
    let quote = rest.find('"')?;
    if rest[..quote].contains([';', '{', ')']) {
        return None;
    }
    literal(code, open + quote)
}

fn messages() -> Vec<Message> {
    const CALLS: &[&str] = &[
        "bail!(",
        "anyhow!(",
        ".context(",
        ".with_context(",
        "error!(",
    ];
    let mut files = Vec::new();
    files_under(&root().join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".rs") || name == "tests.rs" || name == "layering.rs" {
            continue;
        }
        let all = std::fs::read_to_string(&file).unwrap();
        let code = without_tests(&all);
        for call in CALLS {
            for (at, _) in code.match_indices(call) {
                if let Some(template) = first_literal(code, at + call.len()) {
                    let line = code[..at].lines().count();
                    found.push(Message {
                        at: format!("{}:{line}", rel(&file)),
                        template,
                    });
                }
            }
        }
    }
    found
}

/// The longest fixed part of a template: its text between placeholders and line breaks.
fn key(template: &str) -> String {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                part.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                part.push('}');
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                parts.push(std::mem::take(&mut part));
            }
            '\n' => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    parts.push(part);
    parts
        .iter()
        .map(|p| squash(p.trim_matches(|c: char| c.is_whitespace() || ",:;(".contains(c))))
        .max_by_key(|p| p.len())
        .unwrap_or_default()
}

/// Headings and `>` quotes of the troubleshooting guide (a quote's lines joined), squashed.
fn quotable(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quote = String::new();
    for line in doc.lines() {
        let t = line.trim_start();
        if let Some(q) = t.strip_prefix('>') {
            quote.push(' ');
            quote.push_str(q);
            continue;
        }
        if !quote.is_empty() {
            out.push(squash(&std::mem::take(&mut quote)));
        }
        if t.starts_with('#') {
            out.push(squash(t));
        }
    }
    if !quote.is_empty() {
        out.push(squash(&quote));
    }
    out
}

#[test]
fn every_error_a_user_can_see_has_a_troubleshooting_entry() {
    let doc = quotable(&read(TROUBLESHOOTING));
    let mut missing = BTreeSet::new();
    for m in messages() {
        let key = key(&m.template);
        if key.len() < MIN_KEY || INTERNAL.contains(&key.as_str()) {
            continue;
        }
        if !doc.iter().any(|q| q.contains(&key)) {
            missing.insert(format!(
                "  {}: {:?}\n    add a heading or a `>` quote containing: {key}",
                m.at, m.template
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} error text(s) have no entry in {TROUBLESHOOTING} (say what the user sees, why, and \
         what to do; or, for a text that never reaches a user on its own, list its key in \
         INTERNAL in tests/docs.rs):\n{}",
        missing.len(),
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The names of the prerequisite checks (`bad("name", ...)` with a literal name).
fn check_names() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    files_under(&root().join("src/host/preflight"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let all = std::fs::read_to_string(&file).unwrap();
        let code = without_tests(&all);
        for (at, _) in code.match_indices("bad(") {
            let args = code[at + 4..].trim_start();
            if args.starts_with('"')
                && let Some(name) = literal(args, 0)
            {
                let line = code[..at].lines().count();
                names.insert((name, format!("{}:{line}", rel(&file))));
            }
        }
    }
    names
}

#[test]
fn every_prerequisite_check_has_a_troubleshooting_entry() {
    let doc = read(TROUBLESHOOTING);
    let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with('#')).collect();
    let missing: Vec<String> = check_names()
        .into_iter()
        .filter(|(name, _)| {
            let quoted = format!("`{name}`");
            !headings.iter().any(|h| h.contains(&quoted))
        })
        .map(|(name, at)| format!("  {at}: add a heading naming the check `{name}`"))
        .collect();
    assert!(
        missing.is_empty(),
        "prerequisite checks without an entry in {TROUBLESHOOTING}:\n{}",
        missing.join("\n")
    );
}

// ---- references to headings -------------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A markdown file's headings, as text (without `#`s), outside code blocks.
fn headings(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.push(line.trim_start_matches('#').trim().to_string());
        }
    }
    out
}

/// Whether `target` (a file under the root) has a heading that `wanted` names: by anchor, or
/// as the start of its text (case and backticks aside).
fn resolves(target: &Path, wanted: &str, by_anchor: bool) -> bool {
    let Ok(doc) = std::fs::read_to_string(target) else {
        return false;
    };
    let plain = |s: &str| squash(&s.replace('`', "").to_lowercase());
    headings(&doc).iter().any(|h| {
        if by_anchor {
            slug(h) == wanted
        } else {
            plain(h).starts_with(&plain(wanted))
        }
    })
}

/// The referring text of a file as prose: comment markers dropped, lines joined, so that a
/// reference wrapped over two comment lines is read whole.
fn prose(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.trim()
                .trim_start_matches("///")
                .trim_start_matches("//")
                .trim_start_matches('#')
                .trim()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every reference in `text` (found in `from`) that does not resolve, with the reason.
fn broken_references(from: &str, dir: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    // Markdown links to local files, with or without an anchor.
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let link = &rest[..end];
        if link.contains("://") || link.starts_with("mailto:") || link.contains(' ') {
            continue;
        }
        let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
        let target = if file.is_empty() {
            root().join(from)
        } else {
            dir.join(file)
        };
        if !target.exists() {
            broken.push(format!("{from}: link ({link}): no file {}", rel(&target)));
        } else if !anchor.is_empty() && !resolves(&target, anchor, true) {
            broken.push(format!(
                "{from}: link ({link}): no heading with anchor #{anchor}"
            ));
        }
    }
    // Prose references: `README: the data path`, `docs/networking.md: MTU`, `FILE.md#anchor`.
    let prose = prose(text);
    for (at, _) in prose.match_indices(": ") {
        let before = &prose[..at];
        let name = before
            .rsplit(|c: char| c.is_whitespace() || "([`\"'".contains(c))
            .next()
            .unwrap_or("");
        let target = match name {
            "README" => root().join("README.md"),
            n if n.ends_with(".md") && !n.contains('*') => root().join(n),
            _ => continue,
        };
        let rest = &prose[at + 2..];
        let end = rest
            .find(['.', ';', ',', ')', ']', '[', '"', '('])
            .unwrap_or(rest.len());
        let wanted = rest[..end].trim();
        if wanted.is_empty() {
            continue;
        }
        if !target.exists() {
            broken.push(format!(
                "{from}: \"{name}: {wanted}\": no file {}",
                rel(&target)
            ));
        } else if !resolves(&target, wanted, false) {
            broken.push(format!(
                "{from}: \"{name}: {wanted}\": {} has no heading starting with \"{wanted}\"",
                rel(&target)
            ));
        }
    }
    for (at, _) in prose.match_indices(".md#") {
        let before = &prose[..at + 3];
        let file = before
            .rsplit(|c: char| c.is_whitespace() || "([`\"'".contains(c))
            .next()
            .unwrap_or("");
        let anchor: String = prose[at + 4..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if text.contains(&format!("]({file}#{anchor})")) {
            continue; // a markdown link, checked above
        }
        let target = root().join(file);
        if !target.exists() || !resolves(&target, &anchor, true) {
            broken.push(format!("{from}: {file}#{anchor}: no such file or heading"));
        }
    }
    broken
}

fn mpiswarm_help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mpiswarm"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run mpiswarm --help");
    assert!(out.status.success(), "mpiswarm {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SUBCOMMANDS: &[&str] = &["up", "verify", "doctor", "cleanup"];

#[test]
fn every_reference_to_a_heading_resolves() {
    let mut files = Vec::new();
    for top in [
        "README.md",
        "DEVELOPING.md",
        "ARCHITECTURE.md",
        "bench/README.md",
    ] {
        files.push(root().join(top));
    }
    for dir in ["docs", "scripts", "examples"] {
        files_under(&root().join(dir), &mut files);
    }
    let mut broken = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // absent, or not text (a binary in examples)
        };
        let dir = file.parent().unwrap().to_path_buf();
        broken.extend(broken_references(&rel(&file), &dir, &text));
    }
    for sub in [&[][..], &["up"], &["verify"], &["doctor"], &["cleanup"]] {
        let from = format!("mpiswarm {} --help", sub.join(" "));
        broken.extend(broken_references(&from, &root(), &mpiswarm_help(sub)));
    }
    assert!(
        broken.is_empty(),
        "{} reference(s) to a heading do not resolve (fix the reference, or add the heading; a \
         prose reference is \"FILE: start of the heading\", FILE being README or a path ending in \
         .md):\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

// ---- flags ------------------------------------------------------------------------------------

/// The long flags an options list of `--help` shows.
fn flags(help: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in help.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("-v, ").unwrap_or(t);
        let t = if t.len() > 4 && t.starts_with('-') && t.as_bytes()[2] == b',' {
            t[4..].trim_start()
        } else {
            t
        };
        if let Some(name) = t.strip_prefix("--") {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && name != "help" && name != "version" {
                out.insert(format!("--{name}"));
            }
        }
    }
    out
}

/// Whether the guide names the flag in code: `--flag` followed by a space, `=` or the end of
/// the code span (so `--collect` is not found in `--collect-timeout`).
fn guide_names(guide: &str, flag: &str) -> bool {
    guide.match_indices(&format!("`{flag}")).any(|(at, m)| {
        let next = guide[at + m.len()..].chars().next();
        matches!(next, Some('`' | ' ' | '=' | ',' | '|'))
    })
}

#[test]
fn every_flag_in_help_is_in_the_user_guide() {
    let guide = read(USER_GUIDE);
    let mut missing = Vec::new();
    for sub in SUBCOMMANDS {
        for flag in flags(&mpiswarm_help(&[sub])) {
            if !guide_names(&guide, &flag) {
                missing.push(format!(
                    "  {flag} (mpiswarm {sub} --help): add it, in backticks, to {USER_GUIDE}"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from {USER_GUIDE}:\n{}",
        missing.join("\n")
    );
}

#[cfg(test)]
mod units {
    use super::*;

    #[test]
    fn a_key_is_the_longest_fixed_part() {
        assert_eq!(
            key("{flag} {}: cannot write in {}"),
            "cannot write in".to_string()
        );
        assert_eq!(key("a {{literal}} brace"), "a {literal} brace");
        assert_eq!(
            key("short {x}\nthe longer line here {y}"),
            "the longer line here"
        );
    }

    #[test]
    fn literals_are_unescaped_across_continued_lines() {
        let code = "bail!(\"one \\\n      two \\\"q\\\"\")";
        assert_eq!(first_literal(code, 6).unwrap(), "one two \"q\"");
    }

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(
            slug("Keeping what the job produced: --collect"),
            "keeping-what-the-job-produced---collect"
        );
    }

    #[test]
    fn flags_are_read_from_help() {
        let help = "Options:\n  -v, --verbose...  More\n      --state-dir <DIR>  Parent\n  \
                    -h, --help  Print help\n";
        let found: Vec<_> = flags(help).into_iter().collect();
        assert_eq!(found, vec!["--state-dir", "--verbose"]);
    }
}
