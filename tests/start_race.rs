//! rootlesskit's start-up race with nsenter (it enters its child's namespaces while the child
//! re-executes itself, and nsenter finds no /proc/PID/ns/ entry), forced on real hosts by an
//! `nsenter` in front of the real one: the guard starts rootlesskit again, once; a host whose
//! nsenter always fails still fails fast, naming itself, and leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What the log says when the guard started rootlesskit again.
const RESTART_LINE: &str = "after losing its known race with nsenter";

/// How often the fake nsenter fails rootlesskit's call that races (`ip tuntap add` in its
/// child's namespaces) on each host.
#[derive(Clone, Copy)]
enum Fails {
    /// The first call only, as the race does.
    Once,
    /// Every call: a host that cannot enter the namespaces at all.
    Always,
}

/// A directory of this test's (not in a temporary directory of the hosts: it holds the test
/// user's marks) with an `nsenter` that fails like the race before it runs the real one. Each
/// failed call leaves a mark `<host>.<pid>` in `marks/`. Removed when dropped.
struct FakeNsenter {
    dir: PathBuf,
}

impl FakeNsenter {
    fn new(fails: Fails) -> FakeNsenter {
        let dir = shared_dir().join(format!("nsenter-race.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (bin, marks) = (dir.join("bin"), dir.join("marks"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&marks).unwrap();
        let uid = uid_of(USER);
        std::os::unix::fs::chown(&marks, Some(uid), Some(uid)).unwrap();
        let fail_now = match fails {
            // mkdir succeeds once per host: the first such call.
            Fails::Once => format!("mkdir \"{}/$host\" 2>/dev/null", marks.display()),
            Fails::Always => "true".to_owned(),
        };
        // Only rootlesskit's call that races fails (`-t PID ... ip tuntap add`): the guard's
        // own nsenter calls (the VXLAN sweeper) may come first.
        let script = format!(
            "#!/bin/sh\n\
             target=\nprev=\ntap=\n\
             for arg in \"$@\"; do\n\
             \x20 [ \"$prev\" = -t ] && target=$arg\n\
             \x20 [ \"$prev\" = ip ] && [ \"$arg\" = tuntap ] && tap=yes\n\
             \x20 prev=$arg\n\
             done\n\
             host=$(uname -n)\n\
             if [ -n \"$target\" ] && [ -n \"$tap\" ] && {fail_now}; then\n\
             \x20 : > \"{marks}/$host.$$\"\n\
             \x20 echo \"nsenter: cannot open /proc/$target/ns/net: No such file or directory\" >&2\n\
             \x20 exit 1\n\
             fi\n\
             exec /usr/bin/nsenter \"$@\"\n",
            marks = marks.display()
        );
        let nsenter = bin.join("nsenter");
        std::fs::write(&nsenter, script).unwrap();
        for p in [&dir, &bin, &marks, &nsenter] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeNsenter { dir }
    }

    /// The ranks' PATH: the fake first, then the system's.
    fn path(&self) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.join("bin").display()
        )
    }

    /// How many of rootlesskit's nsenter calls failed on `host`.
    fn failures_on(&self, host: &str) -> usize {
        std::fs::read_dir(self.dir.join("marks"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&format!("{host}."))
                    .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    }
}

impl Drop for FakeNsenter {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `up` over `n` hosts (with `net`'s flags), whose fake nsenter fails each host's first racing
/// call: every host is a Ready node, says the restart in its daemon log and in its guard's event,
/// and nothing is left. Returns the run's stdout and stderr (at -v).
fn race_on_every_host(n: usize, net: &[&str]) -> (String, String) {
    let fake = FakeNsenter::new(Fails::Once);
    let path = fake.path();
    // Rank 0's command sees every host's state directory (the hosts share a file system).
    let command = format!(
        "docker node ls --format '{{{{.Hostname}}}} {{{{.Status}}}}' && \
         grep -H '{RESTART_LINE}' \"${{TMPDIR:-/tmp}}/mpiswarm-$(id -u)\"/*/daemon.log"
    );
    let mut args = vec!["-v", "up"];
    args.extend_from_slice(net);
    args.extend_from_slice(&["--", "sh", "-c", &command]);
    let out = run_with_deadline(mpirun_env(n, n, &[("PATH", &path)], &args), RUN_LIMIT);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "mpiswarm failed:\n{stdout}\n{stderr}");
    for h in hosts(n) {
        assert_eq!(
            fake.failures_on(&h),
            1,
            "the fake nsenter did not fail exactly once on {h}"
        );
        assert!(
            stdout.lines().any(|l| l == format!("{h} Ready")),
            "{h} is not a Ready node:\n{stdout}\n{stderr}"
        );
        let said = stdout
            .lines()
            .filter(|l| {
                l.contains(&format!(
                    "-{h}/daemon.log:mpiswarm guard: rootlesskit (pid "
                ))
            })
            .count();
        assert_eq!(said, 1, "{h}'s daemon log lacks the restart:\n{stdout}");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(h.as_str()) && l.contains("rootlesskit started again (pid ")),
            "no restart event from {h}'s guard:\n{stderr}"
        );
    }
    assert_clean(Duration::from_secs(3));
    (stdout, stderr)
}

/// The race on every host at once: each guard starts rootlesskit again, the swarm forms over
/// all four hosts, and the helper that deepens the accept queues follows the second start.
#[test]
fn rootlesskit_is_started_again_after_its_nsenter_race_on_every_host() {
    let Some(_c) = cluster() else { return };
    let (_, stderr) = race_on_every_host(4, &[]);
    for h in hosts(4) {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(h.as_str()) && l.contains("guard: backlog deepened on port(s)")),
            "{h}'s guard did not deepen the second start's accept queues:\n{stderr}"
        );
    }
    // The first start's helper, stopped, says nothing.
    assert!(!stderr.contains("backlog not deepened"), "{stderr}");
}

/// The same on the host path (rootlesskit 2's detached network namespace, where rootlesskit
/// makes the tap device the same way).
#[test]
fn rootlesskit_is_started_again_after_its_nsenter_race_on_the_host_path() {
    let Some(_c) = cluster() else { return };
    if !host_path_available() {
        return;
    }
    race_on_every_host(2, &["--net", "host"]);
}

/// A host whose nsenter always fails: the guard tries a second start, no more, and the job fails
/// at once naming the host and nsenter's error, leaving nothing.
#[test]
fn an_nsenter_that_always_fails_ends_the_job_after_one_more_start() {
    let Some(_c) = cluster() else { return };
    let fake = FakeNsenter::new(Fails::Always);
    let path = fake.path();
    let t = Instant::now();
    let out = run_with_deadline(
        mpirun_env(
            2,
            2,
            &[("PATH", &path)],
            &["up", "--timeout", "60s", "--", "true"],
        ),
        RUN_LIMIT,
    );
    let took = t.elapsed();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "should have failed:\n{stderr}");
    for h in hosts(2) {
        assert_eq!(
            fake.failures_on(&h),
            2,
            "rootlesskit was not started exactly twice on {h}:\n{stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.contains(h.as_str())
                && l.contains("the rootless daemon exited during start-up")
                && l.contains("at its second start: the first lost its race with nsenter")),
            "the failure does not name {h}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("nsenter: cannot open /proc/"),
        "nsenter's error is not shown:\n{stderr}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// The helper that keeps VXLAN learning off (remedy (b) for rootlesskit's builtin port driver)
/// takes rootlesskit's pid: after the race it must follow the second start, or cross-host overlay
/// traffic is dropped and `verify` fails pair by pair.
#[test]
fn learning_stays_off_in_a_daemon_started_again_after_the_race() {
    let Some(_c) = cluster() else { return };
    let fake = FakeNsenter::new(Fails::Once);
    let path = fake.path();
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let out = run_with_deadline(
        mpirun_env(
            3,
            3,
            &[("PATH", &path)],
            &[
                "verify",
                "--load",
                &image,
                "--probe-image",
                "mpiswarm/busybox:latest",
                "--port-driver",
                "builtin",
                "--vxlan-nolearning",
            ],
        ),
        RUN_LIMIT,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "verify failed:\n{stdout}\n{stderr}");
    for h in hosts(3) {
        // Its first start failed: the daemon that passed is the second.
        assert_eq!(
            fake.failures_on(&h),
            1,
            "the fake nsenter did not fail exactly once on {h}"
        );
    }
    assert_clean(Duration::from_secs(3));
}
