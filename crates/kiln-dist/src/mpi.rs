//! Processes of an MPI job (mpirun, srun, an MPI operator): gradients and host values are
//! all-reduced by MPI on host buffers, so any backend works.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use mpi::Threading;

use crate::{Communicator, Watchdog};

/// MPI, initialized for the life of the process (finalized when dropped).
pub struct MpiSession {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    watchdog: Watchdog,
}

// SAFETY: MPI is initialized with MPI_THREAD_MULTIPLE requested, and Kiln calls MPI from one
// thread at a time anyway: the training thread of the process (which owns the communicators),
// besides MPI_Abort from the watchdog thread. The communicator handle itself is an immutable
// integer/pointer for the life of the session.
unsafe impl Send for MpiSession {}
unsafe impl Sync for MpiSession {}

/// Stops every process of the job (used by the watchdog).
fn abort_job() {
    // SAFETY: MPI_Abort may be called at any time after MPI_Init; it does not return normally.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
}

impl MpiSession {
    /// Joins the MPI job; fails after `timeout` if the other ranks never join.
    pub fn init(timeout: Duration, interrupt: Option<Arc<AtomicBool>>) -> Result<MpiSession> {
        let joining = Watchdog::new("this process".into(), timeout, interrupt.clone(), None);
        let universe = {
            let _g = joining.guard("joining the MPI job (MPI_Init)");
            match mpi::initialize_with_threading(Threading::Multiple) {
                Some((u, _)) => u,
                None => bail!("MPI was already initialized in this process"),
            }
        };
        let world = universe.world();
        let who = format!("rank {} of {}", world.rank(), world.size());
        let watchdog = Watchdog::new(who, timeout, interrupt, Some(Box::new(abort_job)));
        Ok(MpiSession {
            _universe: universe,
            world,
            watchdog,
        })
    }

    /// This process's rank in `MPI_COMM_WORLD`, `0..size()`.
    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Number of processes in the job (the size of `MPI_COMM_WORLD`).
    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// The processor (host) name, for messages.
    pub fn host(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
    }

    /// The watchdog of this process's collectives; past its deadline it calls `MPI_Abort`,
    /// which stops every process of the job.
    pub fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    /// `MPI_Allreduce` (sum) of host floats: what the MPI communicator does after copying the
    /// gradients to the host, and the reference of the all-reduce benchmark.
    pub fn all_reduce_f32(&self, send: &[f32], recv: &mut [f32], what: &str) {
        let _g = self.watchdog.guard(what);
        self.world
            .all_reduce_into(send, recv, SystemOperation::sum());
    }

    /// Sends `bytes` from rank 0 to every rank.
    pub fn broadcast_bytes(&self, bytes: &mut [u8], what: &str) {
        use mpi::traits::Root;
        let _g = self.watchdog.guard(what);
        self.world.process_at_rank(0).broadcast_into(bytes);
    }
}

/// Gradients through MPI on host memory.
pub struct Mpi {
    session: Arc<MpiSession>,
}

impl Mpi {
    /// A communicator over all the processes of `session` (no communication yet); its
    /// collectives block in MPI under the session's watchdog.
    pub fn new(session: Arc<MpiSession>) -> Mpi {
        Mpi { session }
    }
}

impl<B: Backend> Communicator<B> for Mpi {
    fn rank(&self) -> usize {
        self.session.rank()
    }
    fn world(&self) -> usize {
        self.session.size()
    }
    fn engine(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&mut self, x: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>> {
        let device = x.device();
        let n = x.dims()[0];
        let send: Vec<f32> = x
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| anyhow::anyhow!("{what}: cannot read the gradients: {e:?}"))?;
        let mut recv = vec![0f32; n];
        self.session.all_reduce_f32(&send, &mut recv, what);
        Ok(Tensor::from_data(TensorData::new(recv, [n]), &device))
    }

    fn all_reduce_host(&mut self, x: &mut [f64], what: &str) -> Result<()> {
        let send = x.to_vec();
        let _g = self.session.watchdog.guard(what);
        self.session
            .world
            .all_reduce_into(&send[..], x, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_u64(&mut self, value: u64, what: &str) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.session.size()];
        let _g = self.session.watchdog.guard(what);
        self.session.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }
}

impl MpiSession {
    /// Stops every process of the job (after an error on this one, so that the others do not
    /// wait for it until the timeout).
    pub fn abort(&self, code: i32) -> ! {
        use mpi::topology::Communicator as _;
        self.world.abort(code)
    }
}

/// This process's communicator in an MPI job: NCCL between GPUs when the backend is CUDA (in
/// builds with the `cuda` feature) unless `nccl` is `Some(false)`; otherwise MPI on host
/// buffers. `nccl == Some(true)` insists on NCCL.
pub fn process_communicator<B: Backend>(
    session: Arc<MpiSession>,
    device: &B::Device,
    nccl: Option<bool>,
) -> Result<Box<dyn Communicator<B>>> {
    #[cfg(feature = "cuda")]
    if nccl != Some(false) {
        if let Some(comm) = crate::nccl::for_backend::<B>(session.clone(), device) {
            return comm;
        }
    }
    let _ = device;
    if nccl == Some(true) {
        bail!(
            "distributed.engine = \"nccl\" needs the cuda backend (--backend cuda) of a kiln built with --features cuda,mpi; use distributed.engine = \"mpi\" for other backends"
        );
    }
    Ok(Box::new(Mpi::new(session)))
}
