//! A real MPI application in containers: LAMMPS (examples/lammps) across 3 hosts, one container
//! per host, on each data path; its own output (the thermo table) must end at the last step with
//! the total energy of LAMMPS run natively on the same hosts, with the same input and ranks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Timesteps of each run: a few seconds natively here, enough to cross hosts thousands of times.
const STEPS: u64 = 200;
const ATOMS: u64 = 32_000;
/// The ranks, one per host.
const RANKS: usize = 3;
/// Busy-polling ranks starve each other and the network relays on 2 shared cores: every run,
/// native or not, yields when idle (as scripts/bench does).
const YIELD: [&str; 3] = ["--mca", "mpi_yield_when_idle", "1"];
/// The same binary, input, ranks and placement give the same trajectory; the check only allows
/// for a different order of floating-point sums (a wrong step or atom count moves it far more).
const ENERGY_TOLERANCE: f64 = 1e-4;

/// Builds the image (cached by the script) with the cluster's own LAMMPS, and copies the example's
/// scripts where the test user (rank 0 runs launch.sh) can read them; returns the image and the
/// copy of run.sh.
fn prepare() -> (PathBuf, PathBuf) {
    let examples = root().join("examples");
    let tar = shared_dir().join("lammps.tar");
    let built = launcher(&examples.join("lammps/build-image.sh").display().to_string())
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "examples/lammps/build-image.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    // launch.sh calls the MPI example's launch.sh beside it: the same layout in the copy.
    let copy = shared_dir().join("examples");
    for (dir, file) in [
        ("lammps", "run.sh"),
        ("lammps", "launch.sh"),
        ("lammps", "in.lj"),
        ("mpi-in-containers", "launch.sh"),
    ] {
        std::fs::create_dir_all(copy.join(dir)).unwrap();
        std::fs::copy(examples.join(dir).join(file), copy.join(dir).join(file)).unwrap();
    }
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&copy)
        .status();
    let _ = Command::new("chmod").arg("a+r").arg(&tar).status();
    (tar, copy.join("lammps/run.sh"))
}

/// LAMMPS natively on the first 3 hosts (the hosts' own lmp and mpirun, no containers); returns
/// its screen output.
fn native_run(input: &Path) -> String {
    let mut cmd = mpirun_launcher(RANKS, RANKS, &[]);
    cmd.args(YIELD)
        .arg("lmp")
        .arg("-in")
        .arg(input)
        // No log.lammps in the ranks' working directory (/tmp, where residue looks).
        .args(["-log", "none", "-var", "steps", &STEPS.to_string()]);
    // 4-8 s alone, 25 s in the suite; once (session 7) it printed nothing for 180 s.
    let out = run_with_deadline_or(cmd, Duration::from_secs(90), native_run_state);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "LAMMPS failed natively on {:?}:\n{stdout}\n{stderr}",
        hosts(RANKS)
    );
    stdout
}

/// What the native run's processes on the hosts were doing when it overstayed its deadline, for
/// the failure's message: each one's host, state, CPU used over a second, the system call it is
/// blocked in, and its threads' stacks (gdb), so that a hang says where it is.
fn native_run_state() -> String {
    // mpirun is root's (the launcher runs as the test harness); the rest the test user's.
    let launchers = Command::new("pgrep")
        .args(["-f", "^mpirun.openmpi .*-in .*in.lj"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pids: Vec<u32> = launchers
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .chain(
            ["^lmp", "orted", "simcluster"]
                .iter()
                .flat_map(|p| pids_matching(p)),
        )
        .collect();
    let ticks = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
            .unwrap_or_default();
        fields.get(12).copied().unwrap_or(0) + fields.get(13).copied().unwrap_or(0)
    };
    let before: Vec<u64> = pids.iter().map(|p| ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut report = String::from("the native run's processes at its deadline:\n");
    for (pid, before) in pids.iter().zip(before) {
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_owned();
        report += &format!(
            "pid {pid} on {:?}: {} {state}; {} CPU ticks in 1 s; syscall {}\n",
            host_of_tree(*pid),
            read("cmdline").replace('\0', " "),
            ticks(*pid).saturating_sub(before),
            read("syscall").trim()
        );
        let gdb = Command::new("timeout")
            .args(["20", "gdb", "-p", &pid.to_string(), "-batch", "-ex"])
            .arg("thread apply all bt 12")
            .output();
        if let Ok(gdb) = gdb {
            report += &String::from_utf8_lossy(&gdb.stdout)
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                .map(|l| format!("    {l}\n"))
                .collect::<String>();
        }
    }
    report
}

/// examples/lammps/run.sh inside a job on 3 hosts, as a job script would run it; returns its
/// output after checking that it passed in 3 containers.
fn container_run(mpiswarm_args: &str, lammps_dir: Option<&Path>) -> String {
    let (tar, run) = prepare();
    let hostfile = shared_dir().join("hosts-lammps");
    std::fs::write(
        &hostfile,
        hosts(RANKS)
            .iter()
            .map(|h| format!("{h} slots=8\n"))
            .collect::<String>(),
    )
    .unwrap();
    let mpirun = format!(
        "mpirun.openmpi --allow-run-as-root --hostfile {} -np {RANKS} --map-by node {} {}",
        hostfile.display(),
        mca_options().join(" "),
        launcher_tmp_option().join(" ")
    );
    let mut cmd = launcher(&run.display().to_string());
    cmd.current_dir("/tmp")
        .env("MPIRUN", mpirun)
        .env("MPISWARM_ARGS", mpiswarm_args)
        .env("LAMMPS_IMAGE_TAR", &tar)
        .env("MPISWARM", binary())
        .env("LAMMPS_ARGS", format!("-var steps {STEPS}"))
        .env("MPI_ORTERUN_ARGS", YIELD.join(" "));
    if let Some(dir) = lammps_dir {
        cmd.env("LAMMPS_DIR", dir);
    }
    let out = run_with_deadline(cmd, Duration::from_secs(240));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "LAMMPS in containers failed:\n{stdout}\n{stderr}"
    );
    let containers: String = hosts(RANKS)
        .iter()
        .map(|h| format!("mpi-{h}"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        stdout.contains(&format!("{RANKS} containers up ({containers})")),
        "one container per host expected:\n{stdout}"
    );
    assert!(
        stdout.contains("run.sh: LAMMPS loop time ") && stdout.contains(" timesteps/s ("),
        "run.sh's summary is missing:\n{stdout}"
    );
    assert_clean(Duration::from_secs(5));
    stdout
}

/// LAMMPS's thermo rows (step, total energy) from its screen output or log: the rows under each
/// header line that starts with "Step", up to the run's "Loop time" line.
fn thermo(out: &str) -> Vec<(u64, f64)> {
    let mut rows = Vec::new();
    let mut etotal = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"Step") {
            etotal = words.iter().position(|w| *w == "TotEng");
        } else if line.starts_with("Loop time of ") {
            etotal = None;
        } else if let Some(col) = etotal
            && let (Some(Ok(step)), Some(Ok(e))) = (
                words.first().map(|w| w.parse::<u64>()),
                words.get(col).map(|w| w.parse::<f64>()),
            )
        {
            rows.push((step, e));
        }
    }
    rows
}

/// The total energy of the thermo table's last row, which must be the run's last step; and the
/// run's own summary must say 3 processes, STEPS steps and ATOMS atoms.
fn final_energy(what: &str, out: &str) -> f64 {
    let summary = format!("on {RANKS} procs for {STEPS} steps with {ATOMS} atoms");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Loop time of ") && l.trim_end().ends_with(&summary)),
        "{what}: no \"Loop time ... {summary}\" line:\n{out}"
    );
    match thermo(out).last() {
        Some(&(step, energy)) if step == STEPS => energy,
        last => {
            panic!("{what}: the thermo table must end at step {STEPS}, ends at {last:?}:\n{out}")
        }
    }
}

fn assert_same_energy(native: f64, contained: f64, what: &str) {
    let relative = ((contained - native) / native).abs();
    assert!(
        relative <= ENERGY_TOLERANCE,
        "{what}: total energy at step {STEPS} {contained} in containers, {native} natively \
         (relative difference {relative:.2e} > {ENERGY_TOLERANCE:e})"
    );
    eprintln!("{what}: TotEng at step {STEPS}: {contained} in containers, {native} natively");
}

/// The overlay path, with the user's own directory (README: your own LAMMPS input): the input
/// is read from it in every container, and rank 0's log.lammps is written to it.
#[test]
fn lammps_in_containers_on_three_hosts_matches_a_native_run() {
    let Some(_c) = cluster() else { return };
    // A directory of the test user's, on the filesystem every simulated host shares.
    let dir = user_dir().join(format!("lammps.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(root().join("examples/lammps/in.lj"), dir.join("in.lj")).unwrap();
    let uid = uid_of(USER);
    for p in [dir.clone(), dir.join("in.lj")] {
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
    }

    let native = final_energy("native", &native_run(&dir.join("in.lj")));
    let stdout = container_run("", Some(&dir));
    let contained = final_energy("containers (overlay)", &stdout);
    assert_same_energy(native, contained, "overlay");
    // LAMMPS's own log, written by rank 0 in its container through the bind mount.
    let log = std::fs::read_to_string(dir.join("log.lammps"))
        .unwrap_or_else(|e| panic!("no log.lammps in {} ({e})", dir.display()));
    assert_eq!(
        final_energy("log.lammps", &log),
        contained,
        "log.lammps and the screen output disagree"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host path (where the userland has it), with the input the image carries.
#[test]
fn lammps_in_containers_on_the_host_network_matches_a_native_run() {
    let Some(_c) = cluster() else { return };
    if !host_path_available() {
        return;
    }
    let (_, run) = prepare();
    let input = run.with_file_name("in.lj");
    let native = final_energy("native", &native_run(&input));
    let stdout = container_run("--net host", None);
    let contained = final_energy("containers (--net host)", &stdout);
    assert_same_energy(native, contained, "--net host");
}

/// The parsing above, on LAMMPS's output as both userlands' versions print it (no cluster).
#[test]
fn thermo_rows_and_the_run_summary_are_read_from_lammps_output() {
    // LAMMPS 29 Sep 2021 (Debian 12): the header's words separated by one space.
    let old = "Per MPI rank memory allocation (min/avg/max) = 8.885 | 8.885 | 8.885 Mbytes\n\
               Step Temp PotEng KinEng TotEng Press \n       0            3   -6.7733681    4.4998594   -2.2735087   -3.7027964 \n\
               \x20    200    1.6505107   -4.7552492    2.4756887   -2.2795604    5.8216875 \n\
               Loop time of 21.8516 on 3 procs for 200 steps with 32000 atoms\n\n\
               Performance: 1976.975 tau/day, 4.576 timesteps/s\n";
    assert_eq!(thermo(old), [(0, -2.2735087), (200, -2.2795604)]);
    assert_eq!(final_energy("old", old), -2.2795604);
    // Newer versions (Debian 13's 4 Feb 2025) align the header over the columns; lines after the
    // table (the timing breakdown) are not rows.
    let new = "   Step          Temp          PotEng         KinEng         TotEng         Press     \n\
               \x20       0   3             -6.7733681      4.4998594     -2.2735087     -3.7027964    \n\
               \x20     200   1.6505107     -4.7552492      2.4756887     -2.2795604      5.8216875    \n\
               Loop time of 4.2 on 3 procs for 200 steps with 32000 atoms\n\
               Pair    | 2.0466     | 2.0891     | 2.1316     |   2.9 | 45.48\n\
               Nlocal:        16000.0 ave       16015 max       15985 min\n";
    assert_eq!(final_energy("new", new), -2.2795604);
}
