//! The example job scripts, submitted as the unprivileged user to a real Slurm running over the
//! simulated hosts: the job succeeds, and nothing is left on any host afterwards, also when the
//! job is cancelled or reaches its time limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

fn slurm() {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        // Each test is its own process under nextest: restart Slurm only when it is not already
        // serving every host (a restart under a starting job's `sbatch --wait` can end it early).
        let states = launcher("sinfo").args(["-h", "-N", "-o", "%t"]).output();
        if states.is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
                && text.lines().count() == MAX_HOSTS
                && text.lines().all(|l| l.trim() == "idle")
        }) {
            return;
        }
        let out = Command::new(script("simcluster"))
            .arg("slurm-up")
            .output()
            .expect("slurm-up");
        assert!(
            out.status.success(),
            "slurm-up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A directory the test user can write job output and ready files to.
fn out_dir() -> PathBuf {
    user_dir()
}

fn example(name: &str) -> String {
    let from = root().join("examples/slurm").join(name);
    let to = shared_dir().join(name);
    std::fs::copy(&from, &to).unwrap();
    let _ = Command::new("chmod").arg("0755").arg(&to).status();
    to.display().to_string()
}

/// `sbatch` as the test user, with the simulated network's MPI settings in the environment.
fn sbatch(args: &[&str], extra_env: &[(&str, String)]) -> Command {
    let mut cmd = launcher("runuser");
    cmd.args(["-u", USER, "--", "env", "-i"])
        .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .arg(format!("HOME=/home/{USER}"))
        .arg(format!("MPISWARM={}", binary().display()))
        .arg(format!("OMPI_MCA_btl_tcp_if_include={SUBNET}"))
        .arg(format!("OMPI_MCA_oob_tcp_if_include={SUBNET}"))
        // What Open MPI picks by default on a node without fast interconnects: shared memory
        // between a node's tasks, TCP between nodes. (The crashes once blamed on TCP alone were
        // Slurm's fence, tested by srun_fences_in_the_example_wait_for_every_node.)
        .arg("OMPI_MCA_btl=self,vader,tcp")
        .arg(format!(
            "OMPI_MCA_orte_tmpdir_base={}",
            launcher_tmp().display()
        ))
        // Open MPI 5's launcher (PRRTE) reads its own variables.
        .arg(format!(
            "PRTE_MCA_prte_tmpdir_base={}",
            launcher_tmp().display()
        ));
    for (k, v) in extra_env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg("sbatch").args(args);
    cmd.current_dir("/tmp");
    cmd
}

fn job_output(job: &str) -> String {
    std::fs::read_to_string(out_dir().join(format!("job-{job}.out"))).unwrap_or_default()
}

/// Submits an example on 3 nodes and waits for it: (sbatch's output, job id, job log).
fn run_job(example_name: &str) -> (Output, String, String) {
    run_job_with(example_name, &[])
}

/// As `run_job`, with more sbatch flags (they override the script's own).
fn run_job_with(example_name: &str, flags: &[&str]) -> (Output, String, String) {
    run_job_env(example_name, flags, &[])
}

/// As `run_job_with`, with more variables in the job's environment (they override the harness's).
fn run_job_env(
    example_name: &str,
    flags: &[&str],
    env: &[(&str, String)],
) -> (Output, String, String) {
    let output = format!("{}/job-%j.out", out_dir().display());
    let script = example(example_name);
    let mut args = vec!["--wait", "--parsable", "-N", "3", "-o", &output];
    args.extend_from_slice(flags);
    args.push(&script);
    let out = run_with_deadline_or(sbatch(&args, env), Duration::from_secs(240), cancel_jobs);
    let job = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let log = job_output(&job);
    (out, job, log)
}

/// Past a job's deadline: what Slurm saw of the test user's jobs (their output, the slurmd log
/// errors about them), then every one of them cancelled, so that a hung job fails its own test
/// and leaves none of its processes to the next.
fn cancel_jobs() -> String {
    let squeue = launcher("squeue")
        .args(["-h", "-u", USER, "-o", "%i"])
        .output()
        .unwrap();
    let jobs = String::from_utf8_lossy(&squeue.stdout).into_owned();
    let mut said = String::new();
    for job in jobs.split_whitespace() {
        said += &format!("job {job}'s output:\n{}\n", job_output(job));
        said += &format!("slurmd's errors on job {job}:\n{}\n", slurmd_errors(job));
    }
    let _ = launcher("scancel")
        .args(["--full", "--quiet", &format!("--user={USER}")])
        .status();
    let gone = Instant::now() + Duration::from_secs(60);
    while Instant::now() < gone {
        let left = launcher("squeue")
            .args(["-h", "-u", USER, "-o", "%i"])
            .output()
            .unwrap();
        if left.stdout.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    said
}

/// The errors in every simulated host's slurmd log (its job steps' included) about `job`.
fn slurmd_errors(job: &str) -> String {
    let tag = format!("[{job}.");
    let Ok(logs) = std::fs::read_dir("/run/mpiswarm-sim/slurm") else {
        return "(no slurmd logs)".into();
    };
    let mut lines = String::new();
    for log in logs.flatten() {
        let name = log.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("slurmd-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains(&tag) && l.contains("error:"))
        {
            lines += &format!("{name}: {line}\n");
        }
    }
    lines
}

#[test]
fn a_job_runs_a_command_on_the_swarm_and_leaves_nothing() {
    let Some(_c) = cluster() else { return };
    slurm();
    let (out, job, log) = run_job("run-command.sbatch");
    assert!(
        out.status.success(),
        "job {job} failed: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("swarm of 3 nodes"), "{log}");
    for h in hosts(3) {
        assert!(log.contains(&format!("{h} Ready")), "{h} missing:\n{log}");
    }
    assert_clean(Duration::from_secs(5));
}

/// Starts the long-lived example; returns the waiting `sbatch --wait`, the job id and ready file.
fn long_lived(extra: &[&str]) -> (std::process::Child, String, PathBuf) {
    let ready = out_dir().join(format!("ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let output = format!("{}/job-%j.out", out_dir().display());
    let script = example("long-lived.sbatch");
    let mut args = vec!["--wait", "--parsable", "-N", "3", "-o", &output];
    args.extend_from_slice(extra);
    args.push(&script);
    let mut cmd = sbatch(&args, &[("READY_FILE", ready.display().to_string())]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // --parsable prints the id at once; --wait holds the process until the job ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let job = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            panic!(
                "the job ended before its swarm was ready: sbatch said {}\njob {job}'s output:\n{}",
                String::from_utf8_lossy(&out.stderr),
                job_output(&job)
            );
        }
        assert!(Instant::now() < deadline, "swarm not ready within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let squeue = launcher("squeue")
        .args(["-h", "-u", USER, "-o", "%i"])
        .output()
        .unwrap();
    let job = String::from_utf8_lossy(&squeue.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    assert!(!job.is_empty(), "no job in squeue");
    (child, job, ready)
}

#[test]
fn a_cancelled_job_leaves_nothing() {
    let Some(_c) = cluster() else { return };
    slurm();
    let (child, job, ready) = long_lived(&[]);
    assert!(residue().is_err(), "the swarm should be running");
    assert!(launcher("scancel").arg(&job).status().unwrap().success());
    let _ = wait_output(child, Duration::from_secs(90));
    assert!(!ready.exists(), "ready file left behind");
    assert_job_clean(&job, Duration::from_secs(5));
}

/// `assert_clean`, with the job's output in the failure: what its ranks said while they ended.
fn assert_job_clean(job: &str, limit: Duration) {
    if let Err(left) = wait_clean(limit) {
        panic!(
            "hosts not clean {limit:?} after job {job} ended:\n{left}\njob {job}'s output:\n{}",
            job_output(job)
        );
    }
}

/// Slurm's warning before the time limit (`#SBATCH --signal=B:USR1@60` in the script) is SIGUSR1 to
/// the batch shell, sent by slurmctld through the node's slurmd; `scancel --batch --signal=USR1`
/// sends it the same way, once the swarm is ready. Slurm's own timer is no clock for a test: it
/// "may send it up to 60 seconds earlier than specified" (sbatch(1)), and with a one-minute limit it
/// came during the bring-up in a fresh-clone run (teardown.rs covers a signal then).
#[test]
fn a_job_warned_of_its_time_limit_tears_down_on_usr1() {
    let Some(_c) = cluster() else { return };
    slurm();
    // The script's own limit (30 minutes, warned 60 s before): Slurm's warning stays far away.
    let (child, job, ready) = long_lived(&[]);
    let warned = launcher("scancel")
        .args(["--batch", "--signal=USR1", &job])
        .status()
        .unwrap();
    assert!(
        warned.success(),
        "scancel --batch --signal=USR1 {job} failed"
    );
    let out = wait_output(child, Duration::from_secs(150));
    let log = job_output(&job);
    assert!(
        log.contains("time limit near"),
        "USR1 never reached the batch shell:\n{log}"
    );
    assert!(
        log.contains("torn down: 3 host(s) clean"),
        "no clean teardown in the job log:\n{log}"
    );
    assert!(out.status.success(), "the job failed:\n{log}");
    assert!(!ready.exists());
    assert_clean(Duration::from_secs(5));
}

#[test]
fn a_step_killed_by_slurm_leaves_nothing_once_the_job_script_cleans_up() {
    let Some(_c) = cluster() else { return };
    slurm();
    // srun.sbatch with a long command; once its swarm is up, Slurm kills the whole step at once
    // (every rank and guard, as when a crashed task takes its step down): nothing of mpiswarm's
    // survives on the nodes to tear down, and the script's exit trap must clean them.
    let output = format!("{}/job-%j.out", out_dir().display());
    let script = example("srun.sbatch");
    let args = [
        "--wait",
        "--parsable",
        "-N",
        "3",
        "-o",
        &output,
        &script,
        "sleep",
        "100",
    ];
    let mut cmd = sbatch(&args, &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        // This job only: an earlier test's job may still be completing.
        let squeue = launcher("squeue")
            .args([
                "-h",
                "-u",
                USER,
                "-t",
                "RUNNING",
                "-n",
                "mpiswarm-srun",
                "-o",
                "%i",
            ])
            .output()
            .unwrap();
        let job = String::from_utf8_lossy(&squeue.stdout).trim().to_owned();
        if !job.is_empty() && job_output(&job).contains("swarm ready: 3 node(s)") {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "no swarm within 120 s: job {job:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(residue().is_err(), "the swarm should be running");
    let kill = launcher("scancel")
        .args(["--signal=KILL", &format!("{job}.0")])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_output(child, Duration::from_secs(120));
    assert!(
        !out.status.success(),
        "the job should fail with its step killed:\n{}",
        job_output(&job)
    );
    assert_clean(Duration::from_secs(5));
}

#[test]
fn srun_launches_the_ranks_through_pmix() {
    let Some(_c) = cluster() else { return };
    slurm();
    let (out, job, log) = run_job("srun.sbatch");
    assert!(out.status.success(), "job {job} failed:\n{log}");
    assert!(log.contains("swarm ready: 3 node(s)"), "{log}");
    for h in hosts(3) {
        assert!(log.contains(&h), "{h} missing:\n{log}");
    }
    assert_clean(Duration::from_secs(5));
}

/// Several tasks per node under srun: one daemon per node. Two, one per CPU of each simulated
/// node, as users launch one rank per core. Before srun.sbatch chose the ring fence, about one
/// step in twenty crashed here inside Open MPI 4.1's MPI_Init (a task segfaulted on a message
/// that came before it had registered its handlers): see the next test.
#[test]
fn srun_with_two_tasks_per_node_brings_up_one_daemon_per_node() {
    let Some(_c) = cluster() else { return };
    slurm();
    let (out, job, log) = run_job_with("srun.sbatch", &["--ntasks-per-node=2"]);
    assert!(out.status.success(), "job {job} failed:\n{log}");
    assert!(log.contains("swarm ready: 3 node(s)"), "{log}");
    assert_clean(Duration::from_secs(5));
}

/// Open MPI 4.1 ends MPI_Init with a PMIx fence without data and relies on it being a barrier.
/// Slurm's default ("mixed") runs such a fence on its tree collective, which on a step of fewer
/// nodes than TreeWidth lets each node through on its own; srun.sbatch asks for the ring. A probe
/// stands in for mpiswarm in that script: its last task reaches the fence 2 s late, and no task
/// may leave the fence before that (by default the other nodes' tasks left it at once).
#[test]
fn srun_fences_in_the_example_wait_for_every_node() {
    let Some(_c) = cluster() else { return };
    slurm();
    let probe = fence_probe();
    let env = [("MPISWARM", probe.display().to_string())];
    let (out, job, log) = run_job_env("srun.sbatch", &["--ntasks-per-node=2"], &env);
    assert!(out.status.success(), "job {job} failed:\n{log}");
    // The step of 6 tasks; the script's exit trap runs the probe again, one task per node.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("fence-probe ") && l.contains(" of=6 "))
        .collect();
    assert_eq!(lines.len(), 6, "every task's fence reported:\n{log}");
    let time = |line: &str, key: &str| -> f64 { probe_field(line, key).parse().unwrap() };
    let late = lines
        .iter()
        .find(|l| probe_field(l, "rank=") == "5")
        .unwrap();
    let late_arrival = time(late, "entered=");
    for line in &lines {
        assert!(
            time(line, "left=") >= late_arrival,
            "a task left the fence before the last one arrived ({line}):\n{log}"
        );
    }
}

fn probe_field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// tests/fixtures/pmix_fence_probe.c, built against the PMIx that Slurm and Open MPI use.
fn fence_probe() -> PathBuf {
    let src = shared_dir().join("pmix_fence_probe.c");
    let exe = shared_dir().join("pmix_fence_probe");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "pmix"])
        .output()
        .expect("run pkg-config (scripts/install-deps installs it)");
    assert!(
        flags.status.success(),
        "pkg-config knows no pmix: install libpmix-dev"
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(flags.split_whitespace())
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "failed to build the fence probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}
