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

    /// The MPI launcher that the environment `get` describes, if any.
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

/// This process's place in an MPI job: the joined MPI session (feature `mpi`; without it no
/// process can be one, so the type has no value).
#[cfg(feature = "mpi")]
pub type MpiJob = std::sync::Arc<crate::mpi::MpiSession>;
/// This process's place in an MPI job: the joined MPI session (feature `mpi`; without it no
/// process can be one, so the type has no value).
#[cfg(not(feature = "mpi"))]
pub type MpiJob = std::convert::Infallible;

/// Joins the MPI job this process was launched into (mpirun, srun, an MPI operator), if any:
/// `None` for a process on its own (or the only rank of its job). Refuses launches that cannot
/// work: see [`check_launch`] and [`check_mpi_world`]. `timeout` bounds the wait for the other
/// ranks; `stop` (a signal) interrupts it.
pub fn join_mpi_job(
    timeout: std::time::Duration,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<MpiJob>> {
    let env = |k: &str| std::env::var(k).ok();
    let launcher = MpiEnv::from_env(env);
    let slurm_tasks = slurm_step_tasks(env);
    let Some(launcher) = check_launch(launcher, slurm_tasks, cfg!(feature = "mpi"))? else {
        return Ok(None);
    };
    #[cfg(feature = "mpi")]
    {
        let session = crate::mpi::MpiSession::init(timeout, Some(stop.clone()))?;
        if !check_mpi_world(session.size(), slurm_tasks, &launcher)? {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(session)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (timeout, stop, launcher);
        Ok(None)
    }
}

/// What the environment says about a launch, before MPI starts: the launcher when this process
/// should join an MPI job, `None` when it trains alone. Errors: `srun` started several tasks but
/// no MPI process manager connects them (each would train alone); or a launcher started several
/// processes and this kiln was built without MPI (`mpi_compiled` false).
pub fn check_launch(
    launcher: Option<MpiEnv>,
    slurm_tasks: Option<usize>,
    mpi_compiled: bool,
) -> anyhow::Result<Option<MpiEnv>> {
    let slurm_tasks = slurm_tasks.unwrap_or(1);
    let Some(launcher) = launcher else {
        if slurm_tasks > 1 {
            anyhow::bail!(
                "srun started {slurm_tasks} tasks, but no MPI process manager connects them, so each would train alone: run srun --mpi=pmix (srun --mpi=list shows the plugins), or mpirun inside the allocation"
            );
        }
        return Ok(None);
    };
    if !mpi_compiled {
        let size = launcher.size.unwrap_or(slurm_tasks);
        if size > 1 || launcher.size.is_none() {
            anyhow::bail!(
                "this process is one of {} processes of an MPI job ({} is set), but this kiln was built without the `mpi` feature; rebuild with cargo build --release -p kiln-cli --features mpi (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev)",
                launcher.size.map_or("several".to_string(), |s| s.to_string()),
                launcher.var
            );
        }
        return Ok(None);
    }
    Ok(Some(launcher))
}

/// After MPI started: whether this process is one of several ranks (`false`: it is alone).
/// Refuses `srun` tasks that MPI sees each alone (no PMI plugin connects them).
pub fn check_mpi_world(
    mpi_size: usize,
    slurm_tasks: Option<usize>,
    launcher: &MpiEnv,
) -> anyhow::Result<bool> {
    let slurm_tasks = slurm_tasks.unwrap_or(1);
    if mpi_size == 1 && slurm_tasks > 1 {
        anyhow::bail!(
            "srun started {slurm_tasks} tasks, but MPI sees each alone ({} = {:?}): run srun --mpi=pmix (srun --mpi=list shows the plugins), or mpirun inside the allocation",
            launcher.var,
            launcher.size
        );
    }
    Ok(mpi_size > 1)
}

/// The devices of one rank of an MPI job, from `--devices`: one device per process, and for a
/// CUDA rank without one, the GPU of its local rank (`cuda:<local rank>`).
pub fn rank_devices(
    devices: Vec<String>,
    cuda: bool,
    local_rank: Option<usize>,
) -> anyhow::Result<Vec<String>> {
    if devices.len() > 1 {
        anyhow::bail!(
            "--devices {}: this process is one rank of an MPI job, which trains one device per process; give each rank one device (or none: a CUDA rank takes cuda:<local rank>), or run one process with several --devices",
            devices.join(",")
        );
    }
    if devices.is_empty() && cuda {
        return Ok(vec![format!("cuda:{}", local_rank.unwrap_or(0))]);
    }
    Ok(devices)
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

    fn mpirun(size: usize) -> Option<MpiEnv> {
        Some(MpiEnv {
            var: "OMPI_COMM_WORLD_SIZE",
            size: Some(size),
        })
    }

    #[test]
    fn launches_that_cannot_work_are_refused_before_mpi_starts() {
        // Alone, or inside a one-task srun: no MPI.
        assert_eq!(check_launch(None, None, true).unwrap(), None);
        assert_eq!(check_launch(None, Some(1), false).unwrap(), None);
        // srun with several tasks but no launcher variables: each task would train alone.
        let e = check_launch(None, Some(4), true).unwrap_err().to_string();
        assert!(
            e.contains("srun started 4 tasks") && e.contains("--mpi=pmix"),
            "{e}"
        );
        // mpirun -np 2 of a kiln without MPI.
        let e = check_launch(mpirun(2), None, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("one of 2 processes") && e.contains("--features mpi"),
            "{e}"
        );
        // mpirun -np 1 of a kiln without MPI trains alone; with MPI it joins.
        assert_eq!(check_launch(mpirun(1), None, false).unwrap(), None);
        assert_eq!(check_launch(mpirun(2), None, true).unwrap(), mpirun(2));
    }

    #[test]
    fn an_mpi_world_of_one_is_alone_unless_srun_started_more() {
        let l = mpirun(1).unwrap();
        assert!(!check_mpi_world(1, None, &l).unwrap());
        assert!(check_mpi_world(2, Some(2), &l).unwrap());
        let e = check_mpi_world(1, Some(2), &l).unwrap_err().to_string();
        assert!(e.contains("MPI sees each alone"), "{e}");
    }

    #[test]
    fn a_rank_trains_one_device_and_a_cuda_rank_defaults_to_its_local_gpu() {
        assert_eq!(rank_devices(vec![], true, Some(3)).unwrap(), vec!["cuda:3"]);
        assert!(rank_devices(vec![], false, Some(3)).unwrap().is_empty());
        assert_eq!(
            rank_devices(vec!["wgpu:1".into()], false, None).unwrap(),
            vec!["wgpu:1"]
        );
        let e = rank_devices(vec!["cpu".into(), "cpu".into()], false, None).unwrap_err();
        assert!(e.to_string().contains("one device per process"), "{e}");
    }
}
