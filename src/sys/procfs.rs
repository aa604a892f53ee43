//! Processes as /proc shows them: one process's entry, every process, a process's descendants.
//! Read fresh each time; a process that is gone is simply absent.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub zombie: bool,
    /// Start time in clock ticks since boot: with the pid, identifies a process across pid reuse.
    pub start_time: u64,
    /// User plus system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident memory, in pages.
    pub rss_pages: u64,
    pub cmdline: String,
}

impl ProcInfo {
    /// The base name of argv[0].
    pub fn program(&self) -> &str {
        let argv0 = self.cmdline.split_whitespace().next().unwrap_or("");
        argv0.rsplit('/').next().unwrap_or(argv0)
    }
}

/// The fields of /proc/PID/stat that mpiswarm reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Zombie or dead: its pid is not yet free, but it runs no more.
    zombie: bool,
    ppid: i32,
    start_time: u64,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// Reads a process's /proc/PID/stat; `None` when it is gone.
fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a /proc/PID/stat line (proc_pid_stat(5)), the only place that does. The command name
/// (field 2) may hold spaces and ')': the other fields resume after the last ')'. The state, the
/// parent and the start time must be there; CPU time and resident memory count as 0 if not.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = line.get(line.rfind(')')? + 2..)?;
    // Numbered from field 3 (the state) on, as the man page numbers them from 1.
    let fields: Vec<&str> = rest.split(' ').collect();
    let number = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Stat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
        cpu_ticks: number(11) + number(12),
        rss_pages: number(21),
    })
}

/// Reads one process's entry; `None` when it is gone.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = stat(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        zombie: stat.zombie,
        start_time: stat.start_time,
        cpu_ticks: stat.cpu_ticks,
        rss_pages: stat.rss_pages,
        cmdline,
    })
}

/// CPU seconds and resident KiB of the live processes `procs`, summed by program (the base name
/// of argv[0]), largest CPU first.
pub fn usage_by_program(procs: &[ProcInfo]) -> Vec<(String, f64, u64)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page_kib = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
        / 1024;
    let mut by: HashMap<String, (f64, u64)> = HashMap::new();
    for p in procs {
        let entry = by.entry(p.program().to_owned()).or_default();
        entry.0 += p.cpu_ticks as f64 / ticks;
        entry.1 += p.rss_pages * page_kib;
    }
    let mut out: Vec<(String, f64, u64)> = by.into_iter().map(|(n, (c, r))| (n, c, r)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// The process `root` and its live descendants.
pub fn tree(root: i32) -> Vec<ProcInfo> {
    let mut procs = descendants(root);
    procs.extend(proc_info(root));
    procs
}

/// CPU seconds spent so far by the descendants of `root` running `program` (argv[0]'s base name).
pub fn program_cpu(root: i32, program: &str) -> f64 {
    usage_by_program(&descendants(root))
        .into_iter()
        .find(|(name, _, _)| name == program)
        .map_or(0.0, |(_, cpu, _)| cpu)
}

pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .collect()
}

/// The owner of every process on the node: one `stat` of its /proc directory each (a process's
/// directory belongs to its effective uid), not the three reads of `proc_info`: the pre-flight
/// check that looks for other users runs on every host at start-up.
pub fn process_owners() -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<i32>().ok()?;
            Some(e.metadata().ok()?.uid())
        })
        .collect()
}

/// Live descendants of `root`. Walks the tree through each process's children list when the
/// kernel has one (cost grows with the tree, not with every process on the node: on a node shared
/// by many daemons, or many simulated hosts, a scan of all /proc is what grows); otherwise scans.
pub fn descendants(root: i32) -> Vec<ProcInfo> {
    match children_lists() {
        true => walk(root)
            .into_iter()
            .filter_map(proc_info)
            .filter(|p| !p.zombie)
            .collect(),
        false => descendants_by_scan(root),
    }
}

fn descendants_by_scan(root: i32) -> Vec<ProcInfo> {
    let procs = all_processes();
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                stack.push(child.pid);
                if !child.zombie {
                    found.push((*child).clone());
                }
            }
        }
    }
    found
}

/// Whether this kernel lists each thread's children (/proc/PID/task/TID/children).
fn children_lists() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let tid = nix::unistd::gettid();
        std::path::Path::new(&format!("/proc/self/task/{tid}/children")).exists()
    })
}

/// Every descendant pid of `root`, from the children lists of each of their threads.
fn walk(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in list
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if seen.insert(child) {
                    stack.push(child);
                    found.push(child);
                }
            }
        }
    }
    found
}

/// Live descendants of `root` (pid and start time only): the cheap look that the kill loop
/// repeats until the tree is gone.
pub fn descendant_pids(root: i32) -> Vec<(i32, u64)> {
    if children_lists() {
        return walk(root).into_iter().filter_map(live_start_time).collect();
    }
    descendant_pids_by_scan(root)
}

/// `pid` and its start time, unless it is a zombie or gone.
fn live_start_time(pid: i32) -> Option<(i32, u64)> {
    let stat = stat(pid)?;
    (!stat.zombie).then_some((pid, stat.start_time))
}

fn descendant_pids_by_scan(root: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<(i32, bool, u64)>> = HashMap::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Some(stat) = stat(pid) else {
            continue;
        };
        children
            .entry(stat.ppid)
            .or_default()
            .push((pid, stat.zombie, stat.start_time));
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &(child, zombie, start) in children.get(&pid).into_iter().flatten() {
            stack.push(child);
            if !zombie {
                found.push((child, start));
            }
        }
    }
    found
}

/// True while the process that had `pid` and `start_time` runs (not reused, not a zombie).
/// One read of /proc/PID/stat: the teardown's kill loop asks this of every process it pins.
pub fn still_running(pid: i32, start_time: u64) -> bool {
    live_start_time(pid) == Some((pid, start_time))
}

/// Whether a Unix socket in this network namespace listens at `path` (from /proc/net/unix, so
/// without connecting: a connection would be taken for one of the listener's clients).
pub fn unix_listener_at(path: &Path) -> bool {
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| listens_at(&table, path))
}

/// `unix_listener_at` on a /proc/net/unix table: the Flags column has `__SO_ACCEPTCON` (0x10000)
/// for a listening socket; the path is the last column.
fn listens_at(table: &str, path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x10000;
    table.lines().skip(1).any(|line| {
        let Some((fields, named)) = columns(line, 7) else {
            return false;
        };
        u32::from_str_radix(fields[3], 16).is_ok_and(|f| f & ACCEPTCON != 0)
            && Path::new(named) == path
    })
}

/// The first `n` whitespace-separated columns of `line`, and the rest (which may hold spaces).
fn columns(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    while fields.len() < n {
        let end = rest.find(char::is_whitespace)?;
        fields.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    Some((fields, rest.trim_end()))
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    /// A stat line as the kernel prints it, with `comm` as the command name.
    fn stat_line(comm: &str, state: &str) -> String {
        format!(
            "4242 ({comm}) {state} 7 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 1 0 \
             123456 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_read_past() {
        let want = Stat {
            zombie: false,
            ppid: 7,
            start_time: 123456,
            cpu_ticks: 200,
            rss_pages: 300,
        };
        for comm in ["sleep", "a b", "x) S 1 2", "((", ") )", "my (odd) name", ""] {
            assert_eq!(parse_stat(&stat_line(comm, "S")), Some(want), "{comm:?}");
        }
        for dead in ["Z", "X"] {
            assert!(parse_stat(&stat_line("a) Z (b", dead)).is_some_and(|s| s.zombie));
        }
    }

    #[test]
    fn a_short_or_foreign_stat_line_is_no_process() {
        assert_eq!(parse_stat("4242 (sleep) S 7 4242\n"), None);
        assert_eq!(parse_stat("4242 sleep S 7"), None);
        assert_eq!(parse_stat("4242 (sleep)"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = proc_info(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(!me.zombie && me.start_time > 0);
        assert!(still_running(me.pid, me.start_time));
        assert!(!still_running(me.pid, me.start_time + 1));
    }

    #[test]
    fn the_walk_finds_what_the_scan_finds() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let found = crate::sys::deadline::poll_until(
            std::time::Instant::now() + std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(10),
            || {
                let mut walked = descendant_pids(me);
                walked
                    .retain(|(p, _)| proc_info(*p).is_some_and(|i| i.cmdline.starts_with("sleep")));
                (walked.len() == 2).then_some(walked)
            },
        );
        let mut walked = found.expect("two sleeps under sh");
        let mut scanned = descendant_pids_by_scan(me);
        scanned.retain(|p| walked.contains(p));
        walked.sort_unstable();
        scanned.sort_unstable();
        assert_eq!(walked, scanned);
        assert!(children_lists());
        for (pid, _) in &walked {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_listening_unix_socket_is_found_by_its_path_without_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b.end");
        assert!(!unix_listener_at(&path));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(unix_listener_at(&path));
        drop(listener);
        assert!(
            path.exists() && !unix_listener_at(&path),
            "the file outlives its listener"
        );
        let table = "Num RefCount Protocol Flags Type St Inode Path\n\
                     0: 00000002 00000000 00010000 0001 01 11 /r/j-h.end\n\
                     0: 00000003 00000000 00000000 0001 03 12 /r/k-h.end\n";
        assert!(listens_at(table, Path::new("/r/j-h.end")));
        assert!(
            !listens_at(table, Path::new("/r/k-h.end")),
            "connected, not listening"
        );
    }
}
