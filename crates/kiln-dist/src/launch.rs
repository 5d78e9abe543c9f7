//! How this process was launched: alone, or as one rank of an MPI job (mpirun, srun, an MPI
//! operator), told apart by the environment the launchers set.

/// An MPI launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpiEnv {
    /// The variable that revealed the launcher.
    pub var: &'static str,
    /// Number of processes, when the launcher says.
    pub size: Option<usize>,
}

/// Variables set by MPI launchers for each rank, with the number of processes where they hold it.
const SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"];
const RANK_VARS: &[&str] = &["PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"];

impl MpiEnv {
    /// The MPI launcher this process runs under, if any.
    pub fn detect() -> Option<MpiEnv> {
        Self::from_env(|k| std::env::var(k).ok())
    }

    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<MpiEnv> {
        for var in SIZE_VARS {
            if let Some(v) = get(var) {
                return Some(MpiEnv {
                    var,
                    size: v.trim().parse().ok(),
                });
            }
        }
        for var in RANK_VARS {
            if get(var).is_some() {
                return Some(MpiEnv { var, size: None });
            }
        }
        None
    }
}

/// Number of tasks of the Slurm job step this process belongs to (inside `srun`), if any.
pub fn slurm_step_tasks(get: impl Fn(&str) -> Option<String>) -> Option<usize> {
    get("SLURM_STEP_ID")?;
    get("SLURM_STEP_NUM_TASKS")
        .or_else(|| get("SLURM_NTASKS"))
        .and_then(|v| v.trim().parse().ok())
}

/// Where this process sits among the processes of its node (for picking a local GPU).
pub fn local_rank(get: impl Fn(&str) -> Option<String>) -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .iter()
    .find_map(|k| get(k).and_then(|v| v.trim().parse().ok()))
}

/// This process's rank as its launcher announced it (before MPI is initialized), if any.
pub fn launcher_rank(get: impl Fn(&str) -> Option<String>) -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|k| get(k).and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launchers_are_recognized_by_their_variables() {
        assert_eq!(MpiEnv::from_env(env(&[])), None);
        assert_eq!(
            MpiEnv::from_env(env(&[("OMPI_COMM_WORLD_SIZE", "3")])),
            Some(MpiEnv {
                var: "OMPI_COMM_WORLD_SIZE",
                size: Some(3)
            })
        );
        assert_eq!(
            MpiEnv::from_env(env(&[("PMIX_RANK", "0")])),
            Some(MpiEnv {
                var: "PMIX_RANK",
                size: None
            })
        );
        let srun = env(&[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "2")]);
        assert_eq!(slurm_step_tasks(&srun), Some(2));
        assert_eq!(slurm_step_tasks(env(&[("SLURM_NTASKS", "4")])), None);
        assert_eq!(local_rank(env(&[("SLURM_LOCALID", "1")])), Some(1));
        assert_eq!(launcher_rank(env(&[("PMIX_RANK", "3")])), Some(3));
        assert_eq!(launcher_rank(env(&[])), None);
    }
}
