//! Host names in Slurm's hostlist notation (`n[001-064,070]`, `msh[1-3]`), so that one message
//! can name a thousand hosts in one short line, as Slurm's own tools print node sets.

use std::collections::BTreeMap;

/// A host name split at its trailing number.
struct Numbered<'a> {
    prefix: &'a str,
    number: u64,
    /// Digits printed: more than the number needs when it has leading zeros.
    width: usize,
}

fn split(name: &str) -> Option<Numbered<'_>> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 18 {
        return None;
    }
    let (prefix, number) = name.split_at(name.len() - digits);
    Some(Numbered {
        prefix,
        number: number.parse().ok()?,
        width: digits,
    })
}

/// `names` (in any order, duplicates ignored) as a hostlist: hosts that differ only in a
/// trailing number share brackets, with runs of consecutive numbers as ranges; zero-padded
/// numbers keep their width. Groups come in order of prefix, then number.
pub fn compress<S: AsRef<str>>(names: &[S]) -> String {
    // (prefix, padded width or 0 when unpadded) -> numbers.
    let mut groups: BTreeMap<(&str, usize), Vec<u64>> = BTreeMap::new();
    let mut plain: Vec<&str> = Vec::new();
    for name in names {
        let name = name.as_ref();
        match split(name) {
            Some(n) => {
                let padded = n.width > 1 && name.as_bytes()[name.len() - n.width] == b'0';
                let width = if padded { n.width } else { 0 };
                groups.entry((n.prefix, width)).or_default().push(n.number);
            }
            None => plain.push(name),
        }
    }
    let mut parts: Vec<(String, u64, String)> = groups
        .into_iter()
        .map(|((prefix, width), mut numbers)| {
            numbers.sort_unstable();
            numbers.dedup();
            let first = numbers[0];
            (prefix.to_owned(), first, bracket(prefix, width, &numbers))
        })
        .collect();
    plain.sort_unstable();
    plain.dedup();
    parts.extend(plain.into_iter().map(|p| (p.to_owned(), 0, p.to_owned())));
    parts.sort();
    let texts: Vec<String> = parts.into_iter().map(|(_, _, text)| text).collect();
    texts.join(",")
}

/// One prefix's sorted numbers: `n7`, or `n[1-3,7]`.
fn bracket(prefix: &str, width: usize, numbers: &[u64]) -> String {
    let show = |n: u64| format!("{n:0width$}");
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        runs.push(if i == j {
            show(numbers[i])
        } else {
            format!("{}-{}", show(numbers[i]), show(numbers[j]))
        });
        i = j + 1;
    }
    match (numbers.len(), runs.as_slice()) {
        (1, [one]) => format!("{prefix}{one}"),
        _ => format!("{prefix}[{}]", runs.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::compress;

    #[test]
    fn consecutive_hosts_become_one_range() {
        assert_eq!(compress(&["msh1", "msh2", "msh3"]), "msh[1-3]");
        assert_eq!(compress(&["msh3", "msh1", "msh2", "msh1"]), "msh[1-3]");
        assert_eq!(compress(&["msh2"]), "msh2");
    }

    #[test]
    fn gaps_split_ranges_and_padding_is_kept() {
        let mut names: Vec<String> = (1..=64).map(|i| format!("n{i:03}")).collect();
        names.push("n070".into());
        assert_eq!(compress(&names), "n[001-064,070]");
        let eight: Vec<String> = [1, 2, 3, 5, 6, 8, 10, 11]
            .iter()
            .map(|i| format!("node{i}"))
            .collect();
        assert_eq!(compress(&eight), "node[1-3,5-6,8,10-11]");
        assert_eq!(compress(&["n9", "n10"]), "n[9-10]");
    }

    #[test]
    fn other_prefixes_and_unnumbered_names_stand_apart() {
        assert_eq!(
            compress(&["gpu2", "cpu1", "cpu2", "login", "gpu1", "cpu4"]),
            "cpu[1-2,4],gpu[1-2],login"
        );
        assert_eq!(compress(&["a.example.org"]), "a.example.org");
        let none: [&str; 0] = [];
        assert_eq!(compress(&none), "");
    }
}
