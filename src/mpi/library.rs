//! Which MPI this is: the library mpiswarm was built against, the one loaded at run time, and
//! the launcher's. A launcher of another MPI starts each rank as a world of one, which would
//! build one swarm per node and run the command N times: that is refused, naming both MPIs.

use anyhow::{Result, bail};

/// The library of `mpi.h` at build time (build.rs), e.g. "Open MPI 4.1.4 (via mpicc.openmpi)".
pub const BUILT_WITH: &str = env!("MPISWARM_BUILD_MPI");

/// The commit mpiswarm was built from (build.rs: git, or MPISWARM_GIT_COMMIT).
pub const COMMIT: &str = env!("MPISWARM_BUILD_COMMIT");

/// The MPI library loaded at run time, as `MPI_Get_library_version` (callable before MPI starts)
/// describes it: its first line, spaces collapsed.
pub fn loaded() -> String {
    let text = mpi::environment::library_version().unwrap_or_default();
    // Open MPI counts the string's terminating NUL in its length.
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\0');
    let words: Vec<&str> = first.split_whitespace().collect();
    if words.is_empty() {
        "an MPI library that does not say its version".to_owned()
    } else {
        words.join(" ")
    }
}

/// The families whose launchers cannot start each other's ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenMpi,
    /// MPICH and its derivatives (Intel MPI, MVAPICH): Hydra and PMI.
    Mpich,
}

impl Family {
    /// The family a library's description names, if it names one.
    pub fn of(description: &str) -> Option<Family> {
        let d = description.to_ascii_lowercase();
        if d.contains("open mpi") {
            Some(Family::OpenMpi)
        } else if ["mpich", "intel(r) mpi", "intel mpi", "mvapich"]
            .iter()
            .any(|n| d.contains(n))
        {
            Some(Family::Mpich)
        } else {
            None
        }
    }
}

/// Who started the ranks, as their environment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Open MPI's mpirun or prterun.
    OpenMpi,
    /// MPICH's Hydra (mpiexec.hydra, mpiexec.mpich).
    Hydra,
    /// Another PMI launcher (e.g. srun --mpi=pmi2).
    Pmi,
    /// Slurm's srun.
    Slurm,
}

/// The number of ranks the launcher started, and the variable that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherWorld {
    pub launcher: Launcher,
    pub variable: &'static str,
    pub size: u32,
}

impl LauncherWorld {
    /// From this process's environment (`None` when not under a launcher).
    pub fn from_env() -> Option<LauncherWorld> {
        LauncherWorld::from(|name| std::env::var(name).ok())
    }

    /// The first launcher whose rank and size variables are both set: Open MPI's before PMI's
    /// before Slurm's, since mpirun and Hydra start their daemons with srun inside a job, and
    /// the ranks inherit the daemons' Slurm variables.
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Option<LauncherWorld> {
        let number = |name: &str| get(name)?.trim().parse::<u32>().ok();
        let hydra = get("MPI_LOCALRANKID").is_some();
        [
            (
                Launcher::OpenMpi,
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
            ),
            (
                if hydra {
                    Launcher::Hydra
                } else {
                    Launcher::Pmi
                },
                "PMI_RANK",
                "PMI_SIZE",
            ),
            (Launcher::Slurm, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
        ]
        .into_iter()
        .find_map(|(launcher, rank, size)| {
            number(rank)?;
            Some(LauncherWorld {
                launcher,
                variable: size,
                size: number(size)?,
            })
        })
    }

    /// The MPI family whose ranks this launcher starts, when only one family's can be.
    fn family(&self) -> Option<Family> {
        match self.launcher {
            Launcher::OpenMpi => Some(Family::OpenMpi),
            Launcher::Hydra => Some(Family::Mpich),
            Launcher::Pmi | Launcher::Slurm => None,
        }
    }

    fn describe(&self) -> String {
        let who = match self.launcher {
            Launcher::OpenMpi => "Open MPI's mpirun",
            Launcher::Hydra => "MPICH's Hydra (mpiexec)",
            Launcher::Pmi => "a PMI launcher",
            Launcher::Slurm => "Slurm's srun",
        };
        format!("{who}, {}={}", self.variable, self.size)
    }
}

/// Whether the launcher is plainly another MPI's than the loaded library's: MPI will then start
/// as a world of one, so no daemon starts before MPI has said so.
pub fn launcher_is_foreign(launcher: Option<&LauncherWorld>, loaded: &str) -> bool {
    match (launcher.and_then(LauncherWorld::family), Family::of(loaded)) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

/// Refuses a world whose size is not the launcher's, naming both MPIs and the fix.
pub fn check_world(launcher: Option<&LauncherWorld>, mpi_size: i32, loaded: &str) -> Result<()> {
    let Some(launcher) = launcher else {
        return Ok(());
    };
    if i64::from(launcher.size) == i64::from(mpi_size) {
        return Ok(());
    }
    let built = BUILT_WITH
        .split_once(" (via")
        .map_or(BUILT_WITH, |(name, _)| name);
    bail!(
        "failed to start MPI: the launcher started {} rank(s) ({}) but MPI sees a world of \
         {mpi_size}: this mpiswarm is built with {BUILT_WITH} and loaded {loaded}, whose ranks \
         this launcher cannot join; load the module of the MPI mpiswarm was built with ({built}) \
         and start mpiswarm with that MPI's launcher (or srun with its PMI), or use an mpiswarm \
         built with the launcher's MPI",
        launcher.size,
        launcher.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Option<LauncherWorld> {
        LauncherWorld::from(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn the_launcher_is_read_from_its_own_variables() {
        assert_eq!(env(&[]), None);
        let hydra = env(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "3"),
            ("MPI_LOCALRANKID", "0"),
        ])
        .unwrap();
        assert_eq!((hydra.launcher, hydra.size), (Launcher::Hydra, 3));
        // mpirun inside a Slurm job: its daemons' srun variables are not the ranks'.
        let ompi = env(&[
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("SLURM_PROCID", "1"),
            ("SLURM_STEP_NUM_TASKS", "2"),
        ])
        .unwrap();
        assert_eq!((ompi.launcher, ompi.size), (Launcher::OpenMpi, 8));
        let srun = env(&[("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "4")]).unwrap();
        assert_eq!((srun.launcher, srun.size), (Launcher::Slurm, 4));
        // A size without a rank is not a launcher's (e.g. left over in a batch script).
        assert_eq!(env(&[("SLURM_STEP_NUM_TASKS", "4")]), None);
    }

    #[test]
    fn another_mpis_launcher_is_foreign_and_a_world_of_another_size_refused() {
        let hydra = env(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "3"),
            ("MPI_LOCALRANKID", "0"),
        ]);
        let open_mpi = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4";
        assert!(launcher_is_foreign(hydra.as_ref(), open_mpi));
        assert!(!launcher_is_foreign(hydra.as_ref(), "MPICH Version: 4.0.2"));
        let srun = env(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "3")]);
        assert!(!launcher_is_foreign(srun.as_ref(), open_mpi));
        let e = check_world(hydra.as_ref(), 1, open_mpi).unwrap_err();
        let text = format!("{e:#}");
        for part in [
            "3 rank(s)",
            "MPICH's Hydra",
            "PMI_SIZE=3",
            "world of 1",
            open_mpi,
        ] {
            assert!(text.contains(part), "{part} missing: {text}");
        }
        assert!(text.contains("load the module of the MPI"), "{text}");
        check_world(hydra.as_ref(), 3, open_mpi).unwrap();
        check_world(None, 1, open_mpi).unwrap();
    }

    #[test]
    fn families_by_description() {
        assert_eq!(Family::of("Open MPI v5.0.7"), Some(Family::OpenMpi));
        assert_eq!(Family::of("MPICH Version: 4.2.0"), Some(Family::Mpich));
        assert_eq!(
            Family::of("Intel(R) MPI Library 2021.10 for Linux* OS"),
            Some(Family::Mpich)
        );
        assert_eq!(Family::of("something else"), None);
    }
}
