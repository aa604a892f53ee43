//! Test harness for the multi-host tests: the simulated cluster made by scripts/simcluster,
//! mpirun through its rsh agent, and checks of what is left on each host.
#![allow(dead_code)]

mod drained;
pub use drained::Drained;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Hosts the tests may use (scripts/test makes this many).
pub const MAX_HOSTS: usize = 4;
pub const SUBNET: &str = "10.77.0.0/24";
pub const USER: &str = "mpiswarm-test";
/// The rsh agent scripts/simcluster installs for the launchers (readable by the test user).
pub const AGENT: &str = "/run/mpiswarm-sim/rsh";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn script(name: &str) -> PathBuf {
    root().join("scripts").join(name)
}

/// The second userland the hosts run (`SIM_USERLAND=debian13`, see scripts/userland), or `None`
/// for the machine's own. The harness's commands inherit the variable, so scripts/simcluster
/// enters that userland for every command it runs on a host.
pub fn userland() -> Option<String> {
    std::env::var("SIM_USERLAND")
        .ok()
        .filter(|u| !u.is_empty() && u != "debian12")
}

/// A command of the cluster's userland run as root in the machine's own network namespace (a
/// launcher, a Slurm client): directly, or through `simcluster login` in a second userland.
pub fn launcher(program: &str) -> Command {
    if userland().is_some() {
        let mut cmd = Command::new(script("simcluster"));
        cmd.args(["login", program]);
        cmd
    } else {
        Command::new(program)
    }
}

/// Whether the hosts' stack has the host path (`up --net host`: rootlesskit 2 and Docker 26, the
/// second userland); says that the test is skipped when not.
pub fn host_path_available() -> bool {
    let available = userland().is_some();
    if !available {
        eprintln!("skipped: --net host needs rootlesskit 2 and Docker 26 (SIM_USERLAND=debian13)");
    }
    available
}

/// Whether rank 0's summary is sure to follow `sig` to mpirun. Both Open MPIs forward SIGUSR1 at
/// once and never escalate it. They end the job on SIGINT/SIGTERM (Open MPI 4.1 sends SIGTERM 1 s
/// after it and SIGKILL 1 s later; Open MPI 5, 250 ms and 500 ms), and then each rank leaves as
/// soon as its host is clean, waiting for the others' word only briefly (README, Signals).
pub fn graceful_signal(sig: &str) -> bool {
    sig == "USR1"
}

/// Open MPI's option for the launcher's session directory: Open MPI 5 (PRRTE) renamed it.
pub fn launcher_tmp_option() -> [String; 3] {
    let (kind, name) = if userland().is_some() {
        ("--prtemca", "prte_tmpdir_base")
    } else {
        ("--mca", "orte_tmpdir_base")
    };
    [
        kind.to_owned(),
        name.to_owned(),
        launcher_tmp().display().to_string(),
    ]
}

/// A root-owned, world-readable directory with what the test user's ranks need: the binary
/// (the checkout itself may sit in a directory the test user cannot enter), images, fixtures.
/// scripts/test makes one per run (`mktemp -d`, named in `MPISWARM_TEST_FILES`); a run of a few
/// tests without it uses `FALLBACK_SHARED_DIR`. Either is refused unless it is root's own real
/// directory that nobody else can write: a directory another user planted in /tmp would let it
/// swap the binary the test user runs.
pub fn shared_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("MPISWARM_TEST_FILES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(FALLBACK_SHARED_DIR));
        make_own_dir(&dir);
        let bin = dir.join("mpiswarm");
        let tmp = dir.join("mpiswarm.tmp");
        // A second userland needs mpiswarm built against its own MPI (scripts/test builds it).
        let built = std::env::var_os("MPISWARM_TEST_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mpiswarm")));
        std::fs::copy(&built, &tmp).expect("copy binary");
        chmod(&tmp, 0o755);
        std::fs::rename(&tmp, &bin).expect("install binary");
        for f in std::fs::read_dir(root().join("tests/fixtures"))
            .expect("fixtures")
            .flatten()
        {
            let to = dir.join(f.file_name());
            std::fs::copy(f.path(), &to).expect("copy fixture");
            chmod(&to, 0o644);
        }
        dir
    })
    .clone()
}

/// The shared directory when scripts/test did not name one.
pub const FALLBACK_SHARED_DIR: &str = "/tmp/mpiswarm-test-files";

/// Makes `dir` (mode 0755) unless it exists, then refuses it unless it is a real directory of
/// this user's that no other user can write.
pub fn make_own_dir(dir: &Path) {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("failed to create {}: {e}", dir.display()),
    }
    let meta = std::fs::symlink_metadata(dir).expect("inspect the shared test dir");
    let me = std::fs::metadata("/proc/self").expect("own uid").uid();
    assert!(
        meta.is_dir() && meta.uid() == me && meta.mode() & 0o022 == 0,
        "{} is not a directory of uid {me} that only it can write: remove it",
        dir.display()
    );
    chmod(dir, 0o755);
}

/// A directory the test user owns and only it can write, for the files its runs write (ready
/// files, reports, job output): mpiswarm refuses directories other users can write.
pub fn user_dir() -> PathBuf {
    let dir = shared_dir().join("user");
    std::fs::create_dir_all(&dir).expect("create the test user's dir");
    let uid = uid_of(USER);
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown the test user's dir");
    chmod(&dir, 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A new, empty directory under /tmp that the test user owns (e.g. a `--state-dir` whose
/// contents a test looks at); removed when dropped, since the hosts' residue check counts the
/// test user's files in /tmp.
pub struct UserScratch(pub PathBuf);

impl UserScratch {
    pub fn new(name: &str) -> UserScratch {
        let dir = PathBuf::from(format!("/tmp/mpiswarm-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch dir");
        let uid = uid_of(USER);
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown a scratch dir");
        UserScratch(dir)
    }
}

impl Drop for UserScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn binary() -> PathBuf {
    shared_dir().join("mpiswarm")
}

pub fn fixture(name: &str) -> String {
    shared_dir().join(name).display().to_string()
}

/// A fixture whose services meet in a directory every simulated host sees (they share one
/// filesystem, as nodes share a cluster file system), bind-mounted at /sync: `@SYNC@` in the
/// fixture becomes that directory. Lets a task wait for tasks on other hosts instead of for
/// a guessed time. Both go when this is dropped.
pub struct SyncedFixture {
    pub path: String,
    /// Holds the stack file and the shared directory.
    base: PathBuf,
}

impl SyncedFixture {
    pub fn new(name: &str, tag: &str) -> Self {
        let base = user_dir().join(format!("sync-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("dir");
        std::fs::create_dir_all(&dir).expect("create the sync dir");
        let uid = uid_of(USER);
        for d in [&base, &dir] {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).expect("chown the sync dir");
            chmod(d, 0o700);
        }
        let text = std::fs::read_to_string(root().join("tests/fixtures").join(name))
            .expect("read the fixture")
            .replace("@SYNC@", &dir.display().to_string());
        let path = base.join(name);
        std::fs::write(&path, text).expect("write the synced fixture");
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown the fixture");
        chmod(&path, 0o600);
        let path = path.display().to_string();
        Self { path, base }
    }
}

impl Drop for SyncedFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// An image archive in `docker save` format (busybox; `pad_mib` MiB of random data added), built
/// once per test run. Returns its path and the image id it must load as.
pub fn image_archive(tag: &str, pad_mib: u32) -> (String, String) {
    static BUILT: Mutex<Vec<(String, u32, String, String)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, path, id)) = built.iter().find(|b| b.0 == tag && b.1 == pad_mib) {
        return (path.clone(), id.clone());
    }
    let path = shared_dir().join(format!("image-{}.tar", built.len()));
    let out = Command::new(script("make-test-image"))
        .arg(&path)
        .arg(tag)
        .arg(pad_mib.to_string())
        .output()
        .expect("make-test-image");
    assert!(
        out.status.success(),
        "make-test-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = path.display().to_string();
    built.push((tag.to_owned(), pad_mib, path.clone(), id.clone()));
    (path, id)
}

/// The entry of the test user's state root (`/tmp/mpiswarm-<uid>`) whose name ends with
/// `suffix`, e.g. a host's state directory (`-msh1`) or end socket (`-msh1.end`); there is one
/// run at a time. Two are a failure, never a guess: a leftover of an earlier run would be taken
/// for this one's half the time (the order of a directory's entries).
pub fn state_entry(suffix: &str) -> Option<PathBuf> {
    let root = PathBuf::from("/tmp").join(format!("mpiswarm-{}", uid_of(USER)));
    let found: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "more than one state entry ending in {suffix} (one run at a time): {found:?}"
    );
    found.into_iter().next()
}

/// The Engine API socket of the running daemon on `host` (there is one run at a time).
pub fn host_socket(host: &str) -> Option<String> {
    state_entry(&format!("-{host}")).map(|p| p.join("docker.sock").display().to_string())
}

pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid")
}

/// Runs a docker CLI command against the daemon on `host`, on that host, as the test user.
pub fn docker_on(host: &str, args: &str) -> Output {
    let socket = host_socket(host).unwrap_or_else(|| panic!("no daemon socket for {host}"));
    on_host(host, &format!("DOCKER_HOST=unix://{socket} docker {args}"))
}

/// The simulated cluster, for one test at a time (2 cores, shared hosts): nextest runs the
/// multi-host tests one by one (.config/nextest.toml), and within one test binary this lock
/// does. `None` when not root: the multi-host tests are skipped (scripts/test runs them).
pub fn cluster() -> Option<MutexGuard<'static, ()>> {
    static LOCK: Mutex<()> = Mutex::new(());
    static READY: OnceLock<bool> = OnceLock::new();
    let root = *READY.get_or_init(|| {
        if !nix_is_root() {
            eprintln!(
                "skipping the multi-host tests: they make network namespaces and need root (run scripts/test)"
            );
            return false;
        }
        let status = Command::new(script("simcluster"))
            .args(["up", &MAX_HOSTS.to_string()])
            .status()
            .expect("run scripts/simcluster");
        assert!(status.success(), "scripts/simcluster up failed");
        true
    });
    if !root {
        return None;
    }
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Each test starts from clean hosts, and fails loudly if an earlier one left something.
    if let Err(left) = wait_clean(Duration::from_secs(5)) {
        // Fail this test, and clear what was left (a run killed outright leaves its state
        // directories for `mpiswarm cleanup`), so that one failure does not fail every later test.
        let _ = Command::new(script("simcluster"))
            .args(["up", &MAX_HOSTS.to_string()])
            .status();
        for h in hosts(MAX_HOSTS) {
            let _ = on_host(&h, &format!("{} cleanup", binary().display()));
        }
        // What cleanup cannot reach: the state of hosts that are gone.
        let _ = Command::new(script("simcluster")).arg("scrub").status();
        panic!("hosts not clean before the test: {left}");
    }
    Some(guard)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn host(i: usize) -> String {
    format!("msh{i}")
}

pub fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(host).collect()
}

/// Open MPI's options for the simulated cluster, from scripts/simcluster (their one source).
pub fn mca_options() -> Vec<String> {
    static OPTIONS: OnceLock<Vec<String>> = OnceLock::new();
    OPTIONS
        .get_or_init(|| {
            let out = Command::new(script("simcluster"))
                .arg("mca")
                .output()
                .expect("simcluster mca");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .clone()
}

/// An mpirun command over the first `nhosts` simulated hosts, ranks placed round-robin by node.
pub fn mpirun(np: usize, nhosts: usize, args: &[&str]) -> Command {
    mpirun_env(np, nhosts, &[], args)
}

/// As `mpirun`, with environment variables set for every rank (`-x NAME=VALUE`).
pub fn mpirun_env(np: usize, nhosts: usize, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = mpirun_launcher(np, nhosts, env);
    cmd.arg(binary()).args(args);
    cmd
}

/// The launcher part of `mpirun_env`: add the program to run (another than mpiswarm, e.g. an
/// MPI application run natively on the hosts) and its arguments.
pub fn mpirun_launcher(np: usize, nhosts: usize, env: &[(&str, &str)]) -> Command {
    let hostfile = std::env::temp_dir().join(format!("mpiswarm-test-hosts.{nhosts}"));
    let lines: String = hosts(nhosts)
        .iter()
        .map(|h| format!("{h} slots=32\n"))
        .collect();
    std::fs::write(&hostfile, lines).expect("write hostfile");
    let mut cmd = launcher("mpirun.openmpi");
    cmd.args(["--allow-run-as-root", "--hostfile"])
        .arg(&hostfile)
        .args(["-np", &np.to_string(), "--map-by", "node"])
        .args(mca_options())
        .args(launcher_tmp_option());
    for (name, value) in env {
        cmd.arg("-x").arg(format!("{name}={value}"));
    }
    // Ranks start in the launcher's working directory: make it one the test user can enter (the
    // checkout may be in root's home).
    cmd.current_dir("/tmp");
    cmd
}

/// Runs to completion with a deadline; a hang is a test failure, never a hung suite.
pub fn run_with_deadline(cmd: Command, limit: Duration) -> Output {
    run_with_deadline_or(cmd, limit, String::new)
}

/// As `run_with_deadline`; past the deadline, `state` says what the command's processes were
/// doing (taken before they are killed), for the failure's message.
pub fn run_with_deadline_or(
    mut cmd: Command,
    limit: Duration,
    state: impl FnOnce() -> String,
) -> Output {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("spawn");
    wait_output_or(child, limit, state)
}

pub fn wait_output(child: Child, limit: Duration) -> Output {
    wait_output_or(child, limit, String::new)
}

fn wait_output_or(child: Child, limit: Duration, state: impl FnOnce() -> String) -> Output {
    wait_drained(Drained::new(child), limit, state)
}

/// As `wait_output_or`, for a child whose output is already being read.
fn wait_drained(mut run: Drained, limit: Duration, state: impl FnOnce() -> String) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = run.child.try_wait().expect("try_wait") {
            return run.output(status);
        }
        if Instant::now() >= deadline {
            let state = state();
            // SIGTERM first: a launcher takes its daemons on the hosts down with it (killed, it
            // leaves them behind, and every later test fails on them as residue).
            let _ = Command::new("kill")
                .args(["-TERM", &run.child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(5);
            while run.child.try_wait().expect("try_wait").is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = run.kill();
            panic!(
                "command did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}\n{state}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The harness's own directories for `scripts/residue` to leave alone: the shared directory (and
/// the fallback one, which runs of a few tests use beside a whole suite's), and whatever the
/// caller named already.
fn residue_ignore() -> String {
    let shared = format!("{}:{FALLBACK_SHARED_DIR}", shared_dir().display());
    match std::env::var("RESIDUE_IGNORE") {
        Ok(more) if !more.is_empty() => format!("{shared}:{more}"),
        _ => shared,
    }
}

/// `scripts/residue` on every test host: Ok when nothing is left, else what is.
pub fn residue() -> Result<(), String> {
    residue_on(&hosts(MAX_HOSTS))
}

/// `scripts/residue` on some hosts.
pub fn residue_on(hosts: &[String]) -> Result<(), String> {
    let out = Command::new(script("residue"))
        .env("RESIDUE_IGNORE", residue_ignore())
        .args(hosts)
        .output()
        .expect("run residue");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Polls the residue check until the hosts are clean or `limit` passes.
pub fn wait_clean(limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match residue() {
            Ok(()) => return Ok(()),
            Err(left) if Instant::now() >= deadline => return Err(left),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn assert_clean(limit: Duration) {
    if let Err(left) = wait_clean(limit) {
        panic!("hosts not clean {limit:?} after the run:\n{left}");
    }
}

/// Runs a shell command on a simulated host as the test user.
pub fn on_host(host: &str, shell: &str) -> Output {
    Command::new(script("simcluster"))
        .args(["exec", host, shell])
        .output()
        .expect("simcluster exec")
}

/// Runs a shell command on a simulated host as root (inside its namespaces).
pub fn on_host_as_root(host: &str, shell: &str) -> Output {
    Command::new(script("simcluster"))
        .args(["root", host, "sh", "-c", shell])
        .output()
        .expect("simcluster root")
}

/// Network namespace (simulated host) a pid runs in.
pub fn host_of(pid: u32) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// The simulated host a process belongs to: its own network namespace's, or that of its nearest
/// ancestor in one (a daemon runs in rootlesskit's private namespace below its host).
pub fn host_of_tree(pid: u32) -> Option<String> {
    let mut pid = pid;
    for _ in 0..64 {
        if let Some(h) = host_of(pid) {
            return Some(h);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        pid = rest.split(' ').nth(1)?.parse().ok()?;
        if pid <= 1 {
            return None;
        }
    }
    None
}

/// Pids of processes of the test user on simulated host `host` whose command line matches
/// `pattern` (pgrep -f).
pub fn pids_matching_on(host: &str, pattern: &str) -> Vec<u32> {
    pids_matching(pattern)
        .into_iter()
        .filter(|p| host_of_tree(*p).as_deref() == Some(host))
        .collect()
}

/// Pids of processes of the test user whose command line matches `pattern` (pgrep -f).
pub fn pids_matching(pattern: &str) -> Vec<u32> {
    pgrep(&["-f", pattern])
}

/// Pids of processes of the test user named exactly `name` (pgrep -x).
pub fn pids_named(name: &str) -> Vec<u32> {
    pgrep(&["-x", name])
}

fn pgrep(how: &[&str]) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-u", USER])
        .args(how)
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `mpiswarm up` ranks: (pid, host), ordered by rank (lowest pid first per host is not rank
/// order, so ranks come from the environment).
pub fn ranks() -> Vec<(u32, String, u32)> {
    let mut found = Vec::new();
    for pid in pids_matching("mpiswarm up") {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env);
        let rank = env
            .split('\0')
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let (Some(rank), Some(host)) = (rank, host_of(pid)) {
            found.push((pid, host, rank));
        }
    }
    found.sort_by_key(|r| r.2);
    found
}

/// A swarm started in the background, waiting for a signal, with a ready file. Its output is
/// read as it comes (`Drained`).
pub struct Background {
    run: Option<Drained>,
    pub ready_file: PathBuf,
}

impl Background {
    pub fn start(np: usize, nhosts: usize, extra: &[&str]) -> Background {
        Self::start_within(np, nhosts, extra, Duration::from_secs(60))
    }

    /// As `start`, waiting up to `limit` for the swarm to be ready.
    pub fn start_within(np: usize, nhosts: usize, extra: &[&str], limit: Duration) -> Background {
        Self::start_env_within(np, nhosts, &[], extra, limit)
    }

    /// As `start_within`, with environment variables set for every rank.
    pub fn start_env_within(
        np: usize,
        nhosts: usize,
        env: &[(&str, &str)],
        extra: &[&str],
        limit: Duration,
    ) -> Background {
        // Not in a temporary directory: a run killed outright leaves its ready file (the user's
        // own file), and the residue check looks for every file of the user there.
        let ready_file = user_dir().join(format!("ready.{}", std::process::id()));
        let _ = std::fs::remove_file(&ready_file);
        let ready = ready_file.display().to_string();
        let mut args = vec!["up", "--ready-file", ready.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = mpirun_env(np, nhosts, env, &args);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut run = Drained::new(cmd.spawn().expect("spawn mpirun"));
        let deadline = Instant::now() + limit;
        while !ready_file.exists() {
            if let Ok(Some(status)) = run.child.try_wait() {
                let out = run.output(status);
                panic!(
                    "mpiswarm ended before it was ready:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if Instant::now() >= deadline {
                let out = run.kill();
                panic!(
                    "swarm not ready within {limit:?}:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Background {
            run: Some(run),
            ready_file,
        }
    }

    pub fn mpirun_pid(&self) -> u32 {
        self.run.as_ref().expect("running").child.id()
    }

    /// DOCKER_HOST of rank 0's daemon, from the ready file.
    pub fn docker_host(&self) -> String {
        let text = std::fs::read_to_string(&self.ready_file).expect("ready file");
        text.lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .expect("DOCKER_HOST in ready file")
            .to_owned()
    }

    /// Runs a docker CLI command against rank 0's daemon, on rank 0's host, as the test user.
    pub fn docker(&self, args: &str) -> Output {
        on_host(
            &host(1),
            &format!("DOCKER_HOST={} docker {args}", self.docker_host()),
        )
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.mpirun_pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(mut self, limit: Duration) -> Output {
        wait_drained(self.run.take().expect("running"), limit, String::new)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = run.child.kill();
            let _ = run.child.wait();
            let _ = std::fs::remove_file(&self.ready_file);
        }
    }
}

/// A directory in the shared test directory where the test user's runs may write files (ready
/// files, reports): `scripts/residue` leaves the test harness's own directory alone.
pub fn out_dir() -> PathBuf {
    user_dir()
}

/// Open MPI's session directories (the launcher's files, not mpiswarm's): in the harness's own
/// directory, so that the residue check's look at the temporary directories sees only what
/// mpiswarm leaves there (a launcher killed outright leaves its session directory behind).
pub fn launcher_tmp() -> PathBuf {
    let dir = shared_dir().join("launcher-tmp");
    std::fs::create_dir_all(&dir).expect("create the launcher temp dir");
    chmod(&dir, 0o1777);
    dir
}

/// One host's daemon tree as it runs now: its guard and every descendant of it.
#[derive(Debug, Clone)]
pub struct Tree {
    pub host: String,
    pub guard: u32,
    /// (pid, start time) of the guard's descendants: rootlesskit, its namespaced child,
    /// slirp4netns, dockerd, containerd, shims, containers.
    pub procs: Vec<(u32, u64)>,
    /// The host's state directory.
    pub dir: PathBuf,
}

/// (ppid, start time, zombie) of a process, from /proc.
pub fn proc_stat(pid: u32) -> Option<(u32, u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let zombie = matches!(*fields.first()?, "Z" | "X");
    Some((
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
        zombie,
    ))
}

/// Every host's daemon tree (one guard per host).
pub fn daemon_trees() -> Vec<Tree> {
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(ppid, start, _)| (pid, ppid, start)))
        .collect();
    let mut trees = Vec::new();
    for guard in pids_matching("mpiswarm guard") {
        let host = host_of(guard).unwrap_or_else(|| panic!("guard {guard} on no host"));
        let mut found = Vec::new();
        let mut parents = vec![guard];
        while let Some(parent) = parents.pop() {
            for (pid, ppid, start) in &procs {
                if *ppid == parent {
                    found.push((*pid, *start));
                    parents.push(*pid);
                }
            }
        }
        let dir = PathBuf::from(host_socket(&host).expect("state dir"))
            .parent()
            .expect("socket in a dir")
            .to_path_buf();
        trees.push(Tree {
            host,
            guard,
            procs: found,
            dir,
        });
    }
    trees.sort_by(|a, b| a.host.cmp(&b.host));
    trees
}

fn tree_left(tree: &Tree) -> Vec<String> {
    let mut left: Vec<String> = tree
        .procs
        .iter()
        .filter(|(pid, start)| proc_stat(*pid).is_some_and(|(_, s, zombie)| s == *start && !zombie))
        .map(|(pid, _)| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            format!(
                "process {pid} ({})",
                cmd.chars().take(80).collect::<String>()
            )
        })
        .collect();
    if tree.dir.exists() {
        left.push(format!("directory {}", tree.dir.display()));
    }
    left
}

/// Waits until every given tree's processes and state directory are gone; returns, per host,
/// when that host became clean (measured from `since`), or what was left at `limit` after it.
pub fn wait_gone(
    trees: &[Tree],
    since: Instant,
    limit: Duration,
) -> Result<Vec<(String, Duration)>, String> {
    let mut clean: Vec<Option<Duration>> = vec![None; trees.len()];
    loop {
        for (i, tree) in trees.iter().enumerate() {
            if clean[i].is_none() && tree_left(tree).is_empty() {
                clean[i] = Some(since.elapsed());
            }
        }
        if clean.iter().all(Option::is_some) {
            return Ok(trees
                .iter()
                .zip(clean)
                .map(|(t, c)| (t.host.clone(), c.expect("all clean")))
                .collect());
        }
        if since.elapsed() >= limit {
            let left: Vec<String> = trees
                .iter()
                .flat_map(|t| {
                    tree_left(t)
                        .into_iter()
                        .map(move |l| format!("{}: {l}", t.host))
                })
                .collect();
            return Err(left.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that every tree is gone within `limit` of `since`; prints when each host was clean.
pub fn assert_gone_within(what: &str, trees: &[Tree], since: Instant, limit: Duration) {
    match wait_gone(trees, since, limit) {
        Ok(times) => {
            for (host, t) in times {
                eprintln!("{what}: {host} clean {:.3} s after it", t.as_secs_f64());
            }
        }
        Err(left) => panic!("{what}: not clean within {limit:?}:\n{left}"),
    }
}

/// Sockets bound to the swarm ports on a host (in its network namespace).
pub fn swarm_listeners(host: &str) -> Vec<String> {
    let out = on_host_as_root(host, "ss -Htuanl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|a| [":2377", ":7946", ":4789"].iter().any(|p| a.ends_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Files of the test user (or of its sub-uids) in the node-local temporary directories, outside
/// the test harness's own directory.
pub fn user_temp_files() -> Vec<String> {
    let out = Command::new(script("residue"))
        .env("RESIDUE_IGNORE", residue_ignore())
        .output()
        .expect("run residue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": file "))
        .map(str::to_owned)
        .collect()
}

/// A command whose stderr lines are read as they come, each with the time it arrived (mpirun
/// forwards the ranks' lines as they are written): how long something took between two lines.
pub struct Streamed {
    child: Child,
    lines: std::sync::Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Streamed {
    pub fn start(mut cmd: Command) -> Streamed {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), line));
            }
        });
        Streamed {
            child,
            lines,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the command has ended.
    pub fn ended(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Every line so far, joined.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// When the first line containing `pattern` arrived, if one did.
    pub fn arrived(&self, pattern: &str) -> Option<Instant> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .find(|(_, l)| l.contains(pattern))
            .map(|(t, _)| *t)
    }

    /// Waits for a line containing `pattern`; panics (with the output) if the command ends or
    /// `limit` passes first.
    pub fn wait_for(&mut self, pattern: &str, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.arrived(pattern) {
                return t;
            }
            let ended = self.child.try_wait().expect("try_wait").is_some();
            if ended || Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "no line with {pattern:?} ({}):\n{}",
                    if ended {
                        "the command ended"
                    } else {
                        "too late"
                    },
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the end (killing the command after `limit`, then failing); its status and
    /// every line.
    pub fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("command did not finish within {limit:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The last lines: until the pipe ends (a process the launcher left may hold it open).
        if let Some(reader) = self.reader.take() {
            let grace = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (status, self.text())
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Major and minor release of `TOOL --version` as the test user runs it on `host` (the ranks'
/// PATH): e.g. the docker CLI that `docker stack deploy` runs, which need not be the daemon's
/// release (a machine may have a newer CLI in /usr/local/bin).
pub fn version_on(host: &str, tool: &str) -> Option<(u32, u32)> {
    let out = on_host(host, &format!("{tool} --version"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let word = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
