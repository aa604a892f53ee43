//! rootlesskit's own child among its processes: the init of the daemon's PID namespace, whose
//! network namespace the guard reaches into (the firewall, VXLAN learning).

use crate::sys::procfs::{ProcInfo, descendants};

/// rootlesskit's child inside the daemon's namespaces (the init of its PID namespace), with its
/// start time.
pub fn rootlesskit_child(rootlesskit: i32) -> Option<(i32, u64)> {
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let exe = |pid: &str| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        Some((m.dev(), m.ino()))
    };
    let own = Namespaces {
        user: ns("self", "user"),
        net: ns("self", "net"),
    };
    let candidates: Vec<Candidate> = descendants(rootlesskit)
        .into_iter()
        .filter(|p| p.ppid == rootlesskit)
        .map(|p| {
            let pid = p.pid.to_string();
            Candidate {
                namespaces: Namespaces {
                    user: ns(&pid, "user"),
                    net: ns(&pid, "net"),
                },
                exe: exe(&pid),
                process: p,
            }
        })
        .collect();
    pick_rootlesskit_child(&candidates, exe(&rootlesskit.to_string()), &own)
        .map(|p| (p.pid, p.start_time))
}

/// A process's user and network namespaces.
#[derive(Debug)]
struct Namespaces {
    user: Option<std::path::PathBuf>,
    net: Option<std::path::PathBuf>,
}

/// One of rootlesskit's children: its namespaces and its executable (device, inode).
struct Candidate {
    process: ProcInfo,
    namespaces: Namespaces,
    exe: Option<(u64, u64)>,
}

/// Among rootlesskit's children, its own child: rootlesskit's executable, in another user and
/// another network namespace than ours. rootlesskit's helpers are no match: slirp4netns is in
/// our network namespace, and `ip tuntap add`, run briefly in the child's namespaces, is another
/// executable (a guard that took it swept a process that was gone: learning stayed on).
fn pick_rootlesskit_child<'a>(
    candidates: &'a [Candidate],
    rootlesskit_exe: Option<(u64, u64)>,
    own: &Namespaces,
) -> Option<&'a ProcInfo> {
    let rootlesskit_exe = rootlesskit_exe?;
    candidates
        .iter()
        .find(|c| {
            c.exe == Some(rootlesskit_exe)
                && c.namespaces.user.is_some()
                && c.namespaces.user != own.user
                && c.namespaces.net.is_some()
                && c.namespaces.net != own.net
        })
        .map(|c| &c.process)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process table a guard saw on Debian 13 (rootlesskit 2) while it set up the network:
    /// `ip tuntap add` ran in the child's namespaces and was listed before the child.
    #[test]
    fn rootlesskits_child_is_told_from_a_helper_in_its_namespaces() {
        let ns = |user: &str, net: &str| Namespaces {
            user: Some(user.into()),
            net: Some(net.into()),
        };
        let candidate = |pid: i32, namespaces, exe| Candidate {
            process: ProcInfo {
                pid,
                ppid: 10,
                uid: 1001,
                zombie: false,
                start_time: pid as u64,
                cpu_ticks: 0,
                rss_pages: 0,
                cmdline: String::new(),
            },
            namespaces,
            exe: Some(exe),
        };
        let (rootlesskit, ip, slirp) = ((1, 100), (1, 200), (1, 300));
        let own = ns("user:[1]", "net:[1]");
        let helpers = [
            candidate(13, ns("user:[1]", "net:[1]"), (1, 400)), // newgidmap
            candidate(14, ns("user:[2]", "net:[2]"), ip),       // ip tuntap add
            candidate(15, ns("user:[2]", "net:[1]"), slirp),
        ];
        let child = candidate(12, ns("user:[2]", "net:[2]"), rootlesskit);
        let mut all: Vec<Candidate> = helpers.into_iter().collect();
        all.push(child);
        let picked = pick_rootlesskit_child(&all, Some(rootlesskit), &own).map(|p| p.pid);
        assert_eq!(picked, Some(12));
        // Before its network namespace exists, the child is not taken either.
        let early = [candidate(12, ns("user:[2]", "net:[1]"), rootlesskit)];
        assert_eq!(
            pick_rootlesskit_child(&early, Some(rootlesskit), &own).map(|p| p.pid),
            None
        );
    }
}
