//! Images without a registry, stacks, and names that resolve and connect across hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The paper's check: 4 clients and 1 httpd; HTTP to `httpd` by name from a client on every
/// host, and at least two of the clients that got the page are on another host than httpd.
#[test]
fn paper_stack_serves_http_by_name_across_hosts() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let stack = fixture("paper-stack.yml");
    let bg = Background::start(
        3,
        3,
        &["--load", &image, "--stack", &stack, "--stack-name", "paper"],
    );

    let tasks =
        bg.docker("service ps paper_httpd --filter desired-state=running --format '{{.Node}}'");
    let httpd_host = String::from_utf8_lossy(&tasks.stdout).trim().to_owned();
    assert!(
        httpd_host.starts_with("msh"),
        "no running httpd task: {tasks:?}"
    );

    let mut served_cross_host = 0;
    let mut hosts_with_clients = 0;
    for h in hosts(3) {
        let ps = docker_on(&h, "ps -q --filter name=paper_client");
        let ids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            continue;
        }
        hosts_with_clients += 1;
        for id in ids {
            let out = docker_on(
                &h,
                &format!(
                    "exec {id} sh -c 'printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 httpd 80'"
                ),
            );
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(
                body.contains("hello from mpiswarm httpd"),
                "client {id} on {h} did not get the page from httpd on {httpd_host}: {out:?}"
            );
            if h != httpd_host {
                served_cross_host += 1;
            }
        }
    }
    assert!(
        hosts_with_clients >= 2,
        "clients ran on only {hosts_with_clients} host(s)"
    );
    assert!(
        served_cross_host >= 2,
        "only {served_cross_host} client(s) off httpd's host {httpd_host}"
    );
    bg.signal("INT");
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

/// 60 services, deployed by a CLI that prints more than a pipe holds: mpiswarm must read the
/// output while the CLI runs (docker 20.10's CLI itself prints one short line per service, so a
/// wrapper in front of it adds 128 KiB on each of stdout and stderr first).
#[test]
fn a_stack_of_60_services_deploys_though_the_cli_prints_more_than_a_pipe_holds() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let dir = shared_dir().join("noisy");
    std::fs::create_dir_all(&dir).unwrap();
    let mut compose = String::from("version: \"3.3\"\nservices:\n");
    for i in 0..60 {
        compose.push_str(&format!(
            "  s{i:02}:\n    image: mpiswarm/busybox:latest\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      replicas: 1\n      endpoint_mode: dnsrr\n"
        ));
    }
    let stack = dir.join("stack-60.yml");
    std::fs::write(&stack, compose).unwrap();
    let docker = dir.join("docker");
    std::fs::write(
        &docker,
        "#!/bin/sh\n# The real CLI, after 128 KiB on stdout and on stderr.\n\
         head -c 131072 /dev/zero | tr '\\0' o\nhead -c 131072 /dev/zero | tr '\\0' e >&2\n\
         exec /usr/bin/docker \"$@\"\n",
    )
    .unwrap();
    for f in [&dir, &stack, &docker] {
        let _ = std::process::Command::new("chmod")
            .arg("a+rx")
            .arg(f)
            .status();
    }
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        dir.display()
    );
    let stack = stack.display().to_string();
    let out = run_with_deadline(
        mpirun_env(
            3,
            3,
            &[("PATH", &path)],
            &[
                "up",
                "--load",
                &image,
                "--stack",
                &stack,
                "--stack-name",
                "many",
                "--timeout",
                "240s",
                "--",
                "true",
            ],
        ),
        Duration::from_secs(300),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("stack many: 60/60 replicas running"),
        "{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

#[test]
fn a_large_archive_reaches_every_host_intact() {
    let Some(_c) = cluster() else { return };
    let (image, id) = image_archive("mpiswarm/big:latest", 70);
    let size = std::fs::metadata(&image).unwrap().len();
    assert!(size > 64 << 20, "archive only {size} bytes");
    let bg = Background::start(3, 3, &["--load", &image]);
    for h in hosts(3) {
        let out = docker_on(&h, "image inspect --format '{{.Id}}' mpiswarm/big:latest");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            id,
            "image on {h}: {out:?}"
        );
    }
    bg.signal("TERM");
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

fn assert_fails_cleanly(args: &[&str], expect: &[&str]) {
    let mut all = vec!["up", "--timeout", "60s"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "true"]);
    let out = run_with_deadline(mpirun(3, 3, &all), RUN_LIMIT);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "should fail: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "error should mention {e:?}:\n{stderr}");
    }
    assert_clean(Duration::from_secs(3));
}

#[test]
fn a_broken_compose_file_fails_cleanly() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let broken = shared_dir().join("broken.yml");
    std::fs::write(
        &broken,
        "version: \"3.3\"\nservices:\n  web: [this is not a service\n",
    )
    .unwrap();
    assert_fails_cleanly(
        &["--load", &image, "--stack", &broken.display().to_string()],
        &["failed to deploy the stack", "msh1", "broken.yml"],
    );
}

#[test]
fn a_missing_image_fails_cleanly_and_names_the_task() {
    let Some(_c) = cluster() else { return };
    let stack = shared_dir().join("missing-image.yml");
    std::fs::write(
        &stack,
        "version: \"3.3\"\nservices:\n  ghost:\n    image: mpiswarm/nonexistent:1\n    command: [\"sleep\", \"60\"]\n",
    )
    .unwrap();
    assert_fails_cleanly(
        &["--stack", &stack.display().to_string()],
        &["ghost", "No such image"],
    );
}

#[test]
fn a_corrupt_archive_fails_cleanly() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let bytes = std::fs::read(&image).unwrap();
    let corrupt = shared_dir().join("corrupt.tar");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    assert_fails_cleanly(
        &["--load", &corrupt.display().to_string()],
        &["corrupt.tar", "load"],
    );
    assert_fails_cleanly(
        &["--load", "/nonexistent/image.tar"],
        &["/nonexistent/image.tar"],
    );
}

/// Parses verify's N×N table: (from, to) -> connected.
fn matrix(stdout: &str) -> Vec<(String, String, bool)> {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.starts_with("overlay probe"));
    lines.next();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut cells = Vec::new();
    for line in lines.take(header.len()) {
        let mut fields = line.split_whitespace();
        let from = fields.next().unwrap_or("").to_owned();
        for (to, cell) in header.iter().zip(fields) {
            cells.push((from.clone(), to.clone(), cell == "ok"));
        }
    }
    cells
}

/// Runs `verify` over 3 hosts with `extra` flags; returns the output and its N×N cells.
fn verify(extra: &[&str]) -> (std::process::Output, Vec<(String, String, bool)>) {
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let mut args = vec![
        "verify",
        "--load",
        &image,
        "--probe-image",
        "mpiswarm/busybox:latest",
    ];
    args.extend_from_slice(extra);
    let out = run_with_deadline(mpirun(3, 3, &args), RUN_LIMIT);
    let cells = matrix(&text(&out).0);
    assert_eq!(cells.len(), 9, "{}", text(&out).0);
    (out, cells)
}

#[test]
fn verify_connects_every_pair_and_fails_cross_host_without_the_remedy() {
    let Some(_c) = cluster() else { return };
    let (out, cells) = verify(&[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(cells.iter().all(|c| c.2), "{stdout}");
    assert_clean(Duration::from_secs(3));

    // With rootlesskit's builtin port driver, VXLAN from other hosts is dropped: the check must
    // see it, pair by pair, while each host still reaches its own probe.
    let (out, cells) = verify(&["--port-driver", "builtin"]);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "verify should fail with the builtin driver:\n{stdout}"
    );
    for (from, to, ok) in &cells {
        assert_eq!(*ok, from == to, "{from} -> {to}:\n{stdout}");
    }
    assert!(
        stderr.contains("msh1 -> msh2"),
        "failing pairs are named:\n{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

/// Remedy (b): the builtin port driver with learning off on the vxlan devices carries cross-host
/// overlay traffic too.
#[test]
fn verify_connects_every_pair_with_the_builtin_driver_and_learning_off() {
    let Some(_c) = cluster() else { return };
    let (out, cells) = verify(&["--port-driver", "builtin", "--vxlan-nolearning"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(cells.iter().all(|c| c.2), "{stdout}");
    assert_clean(Duration::from_secs(3));
}

/// `up` with `args` (after the image) on 3 hosts, `env` for every rank, stderr read as it comes.
fn streamed_up(env: &[(&str, &str)], args: &[&str]) -> Streamed {
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let mut all = vec!["up", "--load", &image];
    all.extend_from_slice(args);
    Streamed::start(mpirun_env(3, 3, env, &all))
}

/// Swarm's global orchestrator gives a constrained global service tasks on the eligible nodes
/// only: the stack is up as soon as those run (it used to wait for one task per node, until the
/// deadline).
#[test]
fn a_global_service_with_a_placement_constraint_converges_in_seconds() {
    let Some(_c) = cluster() else { return };
    let stack = fixture("constrained-global.yml");
    let run = streamed_up(
        &[],
        &[
            "--stack",
            &stack,
            "--stack-name",
            "cg",
            "--timeout",
            "90s",
            "--",
            "true",
        ],
    );
    let (status, stderr) = run.finish(RUN_LIMIT);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("stack cg: 5/5 replicas running"),
        "1 + 1 + 3 tasks:\n{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

/// A one-shot task (restart condition none) that exits 3 while the stack is coming up ends the
/// run within seconds, naming the service, its node, the exit code and its last log lines
/// (it used to wait for the whole --timeout, then blame a hung host).
#[test]
fn a_one_shot_task_exiting_3_fails_the_stack_phase_in_seconds_naming_it() {
    let Some(_c) = cluster() else { return };
    let synced = SyncedFixture::new("stack-fails.yml", "stack");
    let stack = synced.path.clone();
    let mut run = streamed_up(
        &[],
        &["--stack", &stack, "--stack-name", "sf", "--", "true"],
    );
    // The first progress line comes once the stack is deployed.
    let deployed = run.wait_for("stack sf: ", Duration::from_secs(90));
    let failed = run.wait_for("exit code 3", Duration::from_secs(60));
    let (status, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(125), "{stderr}");
    let took = failed - deployed;
    assert!(
        took < Duration::from_secs(15),
        "failure reported {took:?} after the deploy (the task exits after 4 s):\n{stderr}"
    );
    for needed in [
        "sf_failer.1",
        "on msh3",
        "failed with exit code 3",
        "will not be restarted (restart condition none)",
        "failing soon",
        "about to exit 3",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing:\n{stderr}");
    }
    assert!(!stderr.contains("did not arrive"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// At the deadline rank 0 says what it still waits for (service, tasks running of desired),
/// not that some host did not arrive.
#[test]
fn a_stack_never_up_names_what_rank_0_waits_for_at_the_deadline() {
    let Some(_c) = cluster() else { return };
    let stack = fixture("never-up.yml");
    let run = streamed_up(
        &[],
        &[
            "--stack",
            &stack,
            "--stack-name",
            "nu",
            "--timeout",
            "30s",
            "--",
            "true",
        ],
    );
    let (status, stderr) = run.finish(RUN_LIMIT);
    assert_eq!(status.code(), Some(125), "{stderr}");
    for needed in [
        "stack nu was not up before the deadline",
        "still waiting for:",
        "nu_blocked (replicated): 0/2 tasks running",
        "msh1 (rank 0)",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains("nu_fine"),
        "a service that runs is not awaited:\n{stderr}"
    );
    assert!(!stderr.contains("did not arrive"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// `--until-stack-jobs-complete` with the stack's work as the workload: tears down when the work is
/// done; the exit code is the work's.
fn work_gives_the_exit_code(stack: &str, name: &str, var: &str, code: i32, failed_task: &str) {
    let code_text = code.to_string();
    let env: Vec<(&str, &str)> = if code == 0 {
        Vec::new()
    } else {
        vec![(var, code_text.as_str())]
    };
    let run = streamed_up(
        &env,
        &[
            "--stack",
            stack,
            "--stack-name",
            name,
            "--until-stack-jobs-complete",
        ],
    );
    let (status, stderr) = run.finish(RUN_LIMIT);
    assert_eq!(status.code(), Some(code), "{stderr}");
    if code == 0 {
        assert!(
            stderr.contains(&format!("stack {name}: its work is done")),
            "{stderr}"
        );
    } else {
        for needed in [
            failed_task.to_owned(),
            format!("failed with exit code {code}"),
            format!("exiting with the failed task's code {code}"),
        ] {
            assert!(stderr.contains(&needed), "{needed:?} missing:\n{stderr}");
        }
    }
    assert!(stderr.contains("torn down: 3 host(s) clean"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// Work as one-shot services, which every docker CLI deploys (Debian 12's too).
#[test]
fn one_shot_work_runs_to_completion_and_its_status_is_the_exit_code() {
    let Some(_c) = cluster() else { return };
    let stack = fixture("one-shot-work.yml");
    work_gives_the_exit_code(&stack, "ow", "WORK_EXIT", 0, "");
    work_gives_the_exit_code(&stack, "ow", "WORK_EXIT", 4, "task ow_work.");
}

/// Swarm jobs (replicated-job, global-job) as the work, where the hosts' docker CLI deploys them
/// from a compose file (>= 23.0: Debian 13's 26.1, or a newer CLI on the PATH); Debian 12's
/// 20.10 refuses them, and the error says what is needed.
#[test]
fn a_replicated_job_stack_runs_to_completion_and_its_status_is_the_exit_code() {
    let Some(_c) = cluster() else { return };
    let stack = fixture("jobs.yml");
    let cli = version_on(&host(1), "docker");
    if cli.is_some_and(|v| v < (23, 0)) {
        let run = streamed_up(
            &[],
            &[
                "--stack",
                &stack,
                "--stack-name",
                "jobs",
                // The flag's old name still works.
                "--until-jobs-complete",
            ],
        );
        let (status, stderr) = run.finish(RUN_LIMIT);
        assert_eq!(status.code(), Some(125), "{stderr}");
        for needed in ["Unknown mode: replicated-job", "docker >= 23.0"] {
            assert!(stderr.contains(needed), "{needed:?} missing:\n{stderr}");
        }
        assert_clean(Duration::from_secs(3));
        eprintln!("job modes: refused as expected by docker CLI {cli:?} (>= 23.0 runs them)");
        return;
    }
    eprintln!("job modes with docker CLI {cli:?}");
    work_gives_the_exit_code(&stack, "jobs", "JOB_EXIT", 0, "");
    work_gives_the_exit_code(&stack, "jobs", "JOB_EXIT", 6, "task jobs_work.");
}

/// Overlays the user creates without options (a compose file's network, `docker network
/// create` in the command) get mpiswarm's overlay MTU on Docker >= 24 (daemon.json's
/// default-network-opts: Debian 13's 26.1); Docker 20.10 keeps its own default (1450 in
/// containers) and still starts (the key is not given to it).
#[test]
fn overlays_created_without_options_get_mpiswarms_mtu_where_docker_allows() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let stack = fixture("overlay-default.yml");
    let bg = Background::start(
        3,
        3,
        &["--load", &image, "--stack", &stack, "--stack-name", "od"],
    );
    for step in [
        "network create -d overlay --attachable mine",
        "service create -q --detach=false --name near --network mine --endpoint-mode dnsrr \
         --constraint node.hostname==msh3 mpiswarm/busybox:latest sleep 3600",
    ] {
        let done = bg.docker(step);
        assert!(done.status.success(), "{step}: {:?}", text(&done));
    }
    // Docker's overlay driver gives containers 50 bytes less than the network's MTU option.
    let want = if userland().is_some() {
        "65470"
    } else {
        "1450"
    };
    for (h, service) in [(host(2), "od_far"), (host(3), "near")] {
        let id = docker_on(&h, &format!("ps -q --filter name={service}"));
        let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container of {service} on {h}");
        let mtu = docker_on(&h, &format!("exec {id} cat /sys/class/net/eth0/mtu"));
        assert_eq!(
            String::from_utf8_lossy(&mtu.stdout).trim(),
            want,
            "{service} on {h}: {:?}",
            text(&mtu)
        );
    }
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{:?}", text(&out));
    assert_clean(Duration::from_secs(10));
}

/// The one-shot stack (tests/fixtures/one-shot-fails.yml, stack `os`): its one-shot task on the
/// third host exits 3 once the synced directory's `go` exists. `go_first` makes it before the
/// run; `command` (rank 0's, through `sh -c`) may make it with `touch GO` (replaced by its path).
/// The fixture's files go when the returned `SyncedFixture` is dropped, after the run.
fn one_shot_run(
    tag: &str,
    go_first: bool,
    flags: &[&str],
    command: &str,
) -> (Streamed, SyncedFixture) {
    let synced = SyncedFixture::new("one-shot-fails.yml", tag);
    let go = std::path::Path::new(&synced.path)
        .with_file_name("dir")
        .join("go");
    if go_first {
        std::fs::write(&go, "").unwrap();
    }
    let command = command.replace("GO", &go.display().to_string());
    let mut args = vec!["--stack", &synced.path, "--stack-name", "os"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", &command]);
    (streamed_up(&[], &args), synced)
}

/// What the failure of the one-shot task says: its service and slot, host, exit code and the
/// last line it printed.
fn names_the_failed_one_shot(stderr: &str) {
    for needed in [
        "os_oneshot.1",
        "on msh3",
        "failed with exit code 3",
        "one-shot gives up with 3",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing:\n{stderr}");
    }
}

/// The shape users met: a lasting service and a one-shot task that prints a line and exits 3 at
/// once, with `-- true`. The one-shot's few milliseconds of running do not make the stack up:
/// the run fails, naming the task (it used to count the task while it ran, call the swarm
/// ready and exit 0).
#[test]
fn a_one_shot_task_failing_at_once_fails_the_run_though_the_command_succeeds() {
    let Some(_c) = cluster() else { return };
    let (run, _synced) = one_shot_run("before", true, &[], "true");
    let (status, stderr) = run.finish(RUN_LIMIT);
    // Before readiness the stack phase fails: mpiswarm's own failure.
    assert_eq!(status.code(), Some(125), "{stderr}");
    names_the_failed_one_shot(&stderr);
    assert!(!stderr.contains("swarm ready"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// The one-shot fails while the command runs (the command makes its `go`): the failure is
/// reported within seconds, the command is stopped, and the run fails.
#[test]
fn a_one_shot_task_failing_while_the_command_runs_stops_it_and_fails_the_run() {
    let Some(_c) = cluster() else { return };
    let (mut run, _synced) = one_shot_run(
        "during",
        false,
        &[],
        "touch GO; sleep 45; echo 'the command ran to its end' >&2",
    );
    let ready = run.wait_for("swarm ready", Duration::from_secs(120));
    let failed = run.wait_for("exit code 3", Duration::from_secs(60));
    let (status, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(3),
        "the failed task's exit code: {stderr}"
    );
    let took = failed - ready;
    assert!(
        took < Duration::from_secs(10),
        "failure reported {took:?} after the swarm was ready:\n{stderr}"
    );
    names_the_failed_one_shot(&stderr);
    assert!(!stderr.contains("ran to its end"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// The command ends as soon as the manager knows of the failure, sooner than the next periodic
/// look: the look at the command's end still sees it, and the run fails.
#[test]
fn a_one_shot_task_failing_as_the_command_ends_fails_the_run() {
    let Some(_c) = cluster() else { return };
    let (run, _synced) = one_shot_run(
        "after",
        false,
        &[],
        "touch GO; for i in $(seq 300); do docker service ps os_oneshot \
         --format '{{.CurrentState}}' | grep -q Failed && exit 0; sleep 0.1; done; exit 9",
    );
    let (status, stderr) = run.finish(RUN_LIMIT);
    assert_eq!(
        status.code(),
        Some(3),
        "the failed task's exit code: {stderr}"
    );
    names_the_failed_one_shot(&stderr);
    assert_clean(Duration::from_secs(3));
}

/// `--allow-task-failures`: the failure is still reported at once, but the command runs on and
/// its exit code is the run's.
#[test]
fn with_allow_task_failures_a_failed_task_is_reported_and_the_command_runs_on() {
    let Some(_c) = cluster() else { return };
    let (mut run, _synced) = one_shot_run(
        "allowed",
        false,
        &["--allow-task-failures"],
        "touch GO; sleep 12; echo 'the command ran to its end' >&2; exit 5",
    );
    let failed = run.wait_for("exit code 3", Duration::from_secs(120));
    let ended = run.wait_for("ran to its end", Duration::from_secs(60));
    let (status, stderr) = run.finish(RUN_LIMIT);
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(failed < ended, "reported only after the command:\n{stderr}");
    names_the_failed_one_shot(&stderr);
    assert_clean(Duration::from_secs(3));
}
