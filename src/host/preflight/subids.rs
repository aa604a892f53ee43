//! Subordinate ids, which rootless Docker maps into its user namespace: from /etc/subuid and
//! /etc/subgid, or from the service nsswitch.conf's `subid:` names (SSSD, FreeIPA), read with
//! `getsubids`. A fix proposes a range of the user's own, so that users' ranges never overlap.

use std::path::Path;

use super::check::{Check, Status, bad, ok};
use super::distro::Distro;

/// What rootless Docker needs: one full 16-bit range.
const NEEDED: u64 = 65536;

/// Where per-user ranges begin (shadow's default SUB_UID_MIN).
const FIRST_SUBID: u64 = 100_000;

/// The user ids or the group ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uid,
    Gid,
}

impl Kind {
    /// The check's name, and the file's and usermod's word.
    fn name(self) -> &'static str {
        match self {
            Kind::Uid => "subuid",
            Kind::Gid => "subgid",
        }
    }
}

/// Every `who:start:count` line of /etc/subuid (or subgid) that parses.
fn entries(text: &str) -> impl Iterator<Item = (&str, u64, u64)> {
    text.lines().filter_map(|line| {
        let mut parts = line.trim().split(':');
        let who = parts.next()?;
        let start = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        Some((who, start, count))
    })
}

/// Counts the ids /etc/subuid (or subgid) grants this user, by name or uid.
pub fn subid_count(text: &str, user: &str, uid: u32) -> u64 {
    entries(text)
        .filter(|(who, _, _)| *who == user || *who == uid.to_string())
        .map(|(_, _, count)| count)
        .sum()
}

/// login.defs' UID_MIN: the first uid of a regular user (1000 when it does not say).
pub fn uid_min(login_defs: &str) -> u32 {
    login_defs
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("UID_MIN")).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or(1000)
}

/// A range of the user's own: the first id is 100000 + 65536 × (uid − UID_MIN), so that each
/// regular user gets the next 65536 ids. `None` for a uid below UID_MIN, or one so high that the
/// range would not fit below 2^32.
pub fn proposed_range(uid: u32, uid_min: u32) -> Option<(u64, u64)> {
    let nth = u64::from(uid.checked_sub(uid_min)?);
    let start = FIRST_SUBID + NEEDED * nth;
    let end = start + NEEDED - 1;
    (end < u64::from(u32::MAX)).then_some((start, end))
}

/// The service nsswitch.conf's `subid:` line names, if it names one other than `files`.
pub fn subid_service(nsswitch: &str) -> Option<String> {
    nsswitch.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("subid:")?;
        let service = rest.split_whitespace().next()?;
        (service != "files").then(|| service.to_owned())
    })
}

/// The ids `getsubids` reports ("0: alice 100000 65536" per range).
pub fn getsubids_count(output: &str) -> u64 {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum()
}

/// This user's ids of `kind`, from the file or from the service nsswitch.conf names.
pub(super) fn check_subids(kind: Kind, distro: &Distro) -> Check {
    let uid = nix::unistd::getuid().as_raw();
    let user = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    if let Some(service) = subid_service(&nsswitch) {
        return from_service(kind, &user, &service, distro);
    }
    let file = format!("/etc/{}", kind.name());
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let login_defs = std::fs::read_to_string("/etc/login.defs").unwrap_or_default();
    files_check(kind, &user, uid, &text, uid_min(&login_defs))
}

/// The check on /etc/subuid's (or subgid's) `text`, with the fix it needs.
pub fn files_check(kind: Kind, user: &str, uid: u32, text: &str, uid_min: u32) -> Check {
    let name = kind.name();
    let count = subid_count(text, user, uid);
    if count >= NEEDED {
        return ok(name, format!("{count} ids for {user}"));
    }
    bad(
        name,
        Status::Fail,
        format!("/etc/{name} grants {user} {count} ids; rootless Docker needs {NEEDED}"),
        files_fix(kind, user, uid, text, uid_min),
    )
}

fn files_fix(kind: Kind, user: &str, uid: u32, text: &str, uid_min: u32) -> String {
    let name = kind.name();
    let Some((start, end)) = proposed_range(uid, uid_min) else {
        return format!(
            "ask your admin to grant {user} {NEEDED} ids no other user has: usermod \
             --add-{name}s FIRST-LAST {user} (on every node)"
        );
    };
    let mut fix = format!(
        "ask your admin: usermod --add-{name}s {start}-{end} {user} (on every node); a range \
         of each user's own, {FIRST_SUBID} + {NEEDED} x (uid {uid} - UID_MIN {uid_min}), so \
         that no two users' ranges overlap"
    );
    let taken = entries(text)
        .find(|(who, s, c)| *who != user && *who != uid.to_string() && *s <= end && start < s + c);
    if let Some((who, _, _)) = taken {
        fix.push_str(&format!(
            " (this one overlaps {who}'s in /etc/{name}: choose {NEEDED} free ids instead)"
        ));
    }
    fix
}

/// Ranges served by a service (SSSD, FreeIPA): only `getsubids` can tell what it grants.
fn from_service(kind: Kind, user: &str, service: &str, distro: &Distro) -> Check {
    let name = kind.name();
    let Some(tool) = super::tools::which("getsubids") else {
        return bad(
            name,
            Status::Warn,
            format!("sub-ids come from {service} (nsswitch.conf subid:), unchecked: no getsubids"),
            format!(
                "ask your admin to install getsubids ({}), or check that {service} grants \
                 {user} {NEEDED} ids",
                distro.install("getsubids")
            ),
        );
    };
    let args: &[&str] = match kind {
        Kind::Uid => &[user],
        Kind::Gid => &["-g", user],
    };
    let count = super::tools::output_within(&tool, args)
        .map(|out| getsubids_count(&out))
        .unwrap_or(0);
    service_check(name, user, service, count, &tool)
}

fn service_check(name: &str, user: &str, service: &str, count: u64, tool: &Path) -> Check {
    if count >= NEEDED {
        return ok(name, format!("{count} ids for {user} from {service}"));
    }
    bad(
        name,
        Status::Fail,
        format!(
            "{service} (nsswitch.conf subid:) grants {user} {count} ids ({}); rootless Docker \
             needs {NEEDED}",
            tool.display()
        ),
        format!(
            "ask your admin to give {user} a range of {NEEDED} sub-ids in {service}'s directory \
             (FreeIPA: ipa subid-generate --owner {user})"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subids_by_name_or_uid() {
        let text = "alice:100000:65536\nbob:165536:65536\n1002:231072:1000\n";
        assert_eq!(subid_count(text, "alice", 1000), 65536);
        assert_eq!(subid_count(text, "carol", 1002), 1000);
        assert_eq!(subid_count(text, "dave", 1003), 0);
        assert_eq!(subid_count("garbage\n", "alice", 1000), 0);
    }

    #[test]
    fn each_user_gets_a_range_of_its_own() {
        assert_eq!(proposed_range(1000, 1000), Some((100_000, 165_535)));
        assert_eq!(proposed_range(1001, 1000), Some((165_536, 231_071)));
        assert_eq!(proposed_range(1050, 1000), Some((3_376_800, 3_442_335)));
        assert_eq!(proposed_range(999, 1000), None);
        // Directory uids can be far above UID_MIN: no range below 2^32.
        assert_eq!(proposed_range(1_000_000, 1000), None);
        assert_eq!(uid_min("# x\nUID_MIN\t\t\t 5000\nUID_MAX 60000\n"), 5000);
        assert_eq!(uid_min(""), 1000);
    }

    #[test]
    fn the_fix_says_how_the_range_is_computed_and_what_it_overlaps() {
        let check = files_check(Kind::Uid, "carol", 1002, "alice:100000:65536\n", 1000);
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .fix
                .contains("usermod --add-subuids 231072-296607 carol")
                && check
                    .fix
                    .contains("100000 + 65536 x (uid 1002 - UID_MIN 1000)"),
            "{check:?}"
        );
        assert!(!check.fix.contains("overlaps"), "{check:?}");
        // An admin who gave everyone Debian's old advice: 100000-165535 each.
        let old = files_check(Kind::Gid, "bob", 1001, "alice:165000:65536\n", 1000);
        assert!(
            old.fix.contains("--add-subgids 165536-231071 bob")
                && old.fix.contains("overlaps alice's in /etc/subgid"),
            "{old:?}"
        );
        let fine = files_check(Kind::Uid, "alice", 1000, "alice:100000:65536\n", 1000);
        assert_eq!(fine.status, Status::Ok);
    }

    #[test]
    fn ranges_from_a_service() {
        assert_eq!(
            subid_service("passwd: files sss\nsubid: sss\n"),
            Some("sss".into())
        );
        assert_eq!(subid_service("subid:   files\n"), None);
        assert_eq!(subid_service("passwd: files\n"), None);
        assert_eq!(getsubids_count("0: alice 2147483648 65536\n"), 65536);
        assert_eq!(getsubids_count("Error fetching ranges\n"), 0);
        let short = service_check("subuid", "alice", "sss", 0, Path::new("/usr/bin/getsubids"));
        assert_eq!(short.status, Status::Fail);
        assert!(
            short.detail.contains("sss (nsswitch.conf subid:)"),
            "{short:?}"
        );
        let fine = service_check(
            "subuid",
            "alice",
            "sss",
            65536,
            Path::new("/usr/bin/getsubids"),
        );
        assert_eq!(fine.status, Status::Ok);
    }
}
