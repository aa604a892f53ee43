//! rootlesskit's own child among its processes: the init of the daemon's PID namespace, whose
//! network namespace the guard reaches into (the firewall, VXLAN learning); and rootlesskit's
//! start-up race with that child, told from its log.

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

/// Whether a rootlesskit child in `tree` is still setting up the daemon's namespaces: it has not
/// yet started the daemon's command (the only child of its that names dockerd). Meanwhile it has
/// directories of its own in /tmp (`rootlesskit-b*` for --copy-up, `rksys*` for /sys; /tmp is fixed
/// in its code, TMPDIR does not move them), which it removes just before it starts the command.
/// The child is rootlesskit run again as `/proc/self/exe` (its name in the process table is `exe`).
pub fn setting_up(tree: &[ProcInfo]) -> bool {
    let is_rootlesskit = |pid: i32| {
        tree.iter()
            .any(|p| p.pid == pid && p.program() == "rootlesskit")
    };
    let started_the_daemon = |child: &ProcInfo| {
        tree.iter()
            .any(|p| p.ppid == child.pid && matches!(p.program(), "sh" | "dockerd"))
    };
    tree.iter()
        .filter(|p| p.cmdline.starts_with("/proc/self/exe ") && is_rootlesskit(p.ppid))
        .any(|child| !started_the_daemon(child))
}

/// The line of rootlesskit's output that shows it lost its start-up race with its own child, if
/// `log` (one start's output) has one. rootlesskit sends the child its first message, then at
/// once runs `nsenter -t CHILD` to make the child's tap device; meanwhile the child re-executes
/// itself, and while a multi-threaded process execs, its /proc/PID/ns/ entries are briefly
/// absent (rootlesskit 1.1 pkg/parent/parent.go, pkg/child/child.go). nsenter then fails with
/// "No such file or directory" and rootlesskit exits; nothing is wrong with the host. Any other
/// nsenter error (e.g. "Operation not permitted") is a real refusal.
pub fn nsenter_race(log: &str) -> Option<&str> {
    log.lines().map(str::trim_end).find(|line| {
        let Some(rest) = line.strip_prefix("nsenter: cannot open /proc/") else {
            return false;
        };
        let Some((pid, rest)) = rest.split_once("/ns/") else {
            return false;
        };
        let Some((kind, error)) = rest.split_once(": ") else {
            return false;
        };
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !kind.is_empty()
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && error == "No such file or directory"
    })
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

    fn process(pid: i32, ppid: i32, cmdline: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            uid: 1001,
            zombie: false,
            start_time: pid as u64,
            cpu_ticks: 0,
            rss_pages: 0,
            cmdline: cmdline.into(),
        }
    }

    /// The child counts as set up once it runs the daemon's command (`sh`, then `dockerd`);
    /// `ip`, run during the setup, does not count.
    #[test]
    fn a_child_is_setting_up_until_it_starts_the_daemon() {
        let rootlesskit = "/usr/bin/rootlesskit --net=slirp4netns sh -c exec dockerd";
        let mut tree = vec![
            process(10, 1, rootlesskit),
            process(
                11,
                10,
                "/proc/self/exe --net=slirp4netns sh -c exec dockerd",
            ),
            process(12, 10, "slirp4netns --mtu 65520 11 tap0"),
            process(13, 11, "ip tuntap add name tap0 mode tap"),
        ];
        assert!(setting_up(&tree));
        tree.push(process(14, 11, "sh -c rm -f /run/docker && exec dockerd"));
        assert!(!setting_up(&tree));
        tree[4] = process(14, 11, "dockerd --config-file /tmp/s/daemon.json");
        assert!(!setting_up(&tree));
        // Before the child exists, nothing is being set up.
        assert!(!setting_up(&tree[..1]));
    }

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

    /// The race's lines in a host's daemon log (rootlesskit 1.1; the suite saw it about twice in
    /// several thousand daemon starts).
    const RACE: &str = "nsenter: cannot open /proc/12345/ns/net: No such file or directory\n\
        [rootlesskit:parent] error: failed to setup network &{...}: setting up tap tap0: ...\n\
        [rootlesskit:child ] error: parsing message from fd 3: EOF\n";

    #[test]
    fn the_nsenter_race_is_told_from_its_log() {
        assert_eq!(
            nsenter_race(RACE),
            Some("nsenter: cannot open /proc/12345/ns/net: No such file or directory")
        );
        // Another namespace of the same child, the same race.
        assert!(
            nsenter_race("nsenter: cannot open /proc/7/ns/user: No such file or directory\n")
                .is_some()
        );
    }

    #[test]
    fn other_failures_are_not_the_race() {
        for log in [
            // nsenter refused: the host cannot enter the namespaces, a retry would not help.
            "nsenter: cannot open /proc/12345/ns/net: Operation not permitted\n\
             [rootlesskit:parent] error: failed to setup network: exit status 1\n",
            "nsenter: reassociate to namespace 'ns/user' failed: Operation not permitted\n",
            "nsenter: cannot open /proc/self/ns/net: No such file or directory\n",
            "nsenter: cannot open /proc/12345/net: No such file or directory\n",
            "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: operation not permitted\n",
            "[rootlesskit:parent] error: failed to setup UID/GID map: newuidmap 4242 [0 1001 1 1 100000 65536] failed: : exit status 1\n",
            "time=\"2026-01-01T00:00:00Z\" level=fatal msg=\"nsenter: cannot open /proc/1/ns/net: No such file or directory\"\n",
            "",
        ] {
            assert_eq!(nsenter_race(log), None, "{log}");
        }
    }
}
