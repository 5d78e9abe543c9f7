//! `kiln launch`: N data-parallel MPI processes of `kiln train` on this machine.

use anyhow::{bail, Context, Result};

use super::stop_on_signals;

/// Train on this machine as N data-parallel MPI processes: runs `mpirun -np N kiln train
/// ...` (needs a kiln built with --features mpi and OpenMPI's mpirun). On a cluster, launch
/// `kiln train` with mpirun or srun instead.
#[derive(clap::Args)]
pub struct Args {
    /// Number of processes (workers).
    #[arg(long, value_name = "N")]
    nproc: usize,
    /// An extra argument for mpirun (repeatable), e.g. --mpirun-arg=--host=a:2,b:2.
    #[arg(long = "mpirun-arg", value_name = "ARG", allow_hyphen_values = true)]
    mpirun_args: Vec<String>,
    /// The arguments of `kiln train`: CONFIG [--set KEY=VALUE ...] [--backend ...] or
    /// --resume RUN_DIR.
    #[arg(
        value_name = "TRAIN_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true
    )]
    train: Vec<String>,
}

/// Runs `mpirun -np N <this kiln> train ...` and fails with its status.
pub fn exec(args: Args) -> Result<()> {
    let nproc = args.nproc;
    if nproc == 0 {
        bail!("--nproc: must be at least 1");
    }
    if !cfg!(feature = "mpi") {
        bail!(
            "kiln launch runs data-parallel MPI processes, but this kiln was built without the `mpi` feature; rebuild with cargo build --release -p kiln-cli --features mpi (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
        );
    }
    let exe = std::env::current_exe().context("cannot find the path of this kiln binary")?;
    let mut cmd = std::process::Command::new("mpirun");
    // One core per process is OpenMPI's default binding for small jobs, which would leave each
    // worker's compute threads on a single core; --oversubscribe allows more processes than cores.
    cmd.args([
        "-np",
        &nproc.to_string(),
        "--bind-to",
        "none",
        "--oversubscribe",
    ])
    .args(&args.mpirun_args)
    .arg(&exe)
    .arg("train")
    .args(&args.train)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    tracing::info!("running {:?}", cmd);
    // Ctrl-C reaches mpirun and the workers; this process waits for them to stop.
    let _ = stop_on_signals()?;
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "kiln launch needs OpenMPI's mpirun on the PATH (Debian: apt-get install openmpi-bin)"
        ),
        Err(e) => return Err(e).context("cannot run mpirun"),
    };
    if status.success() {
        return Ok(());
    }
    bail!("mpirun -np {nproc} kiln train ... failed ({status}); the workers' errors are above")
}
