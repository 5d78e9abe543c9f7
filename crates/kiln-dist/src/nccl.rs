//! CUDA GPUs of many processes (one GPU per MPI rank): gradients are all-reduced by NCCL in GPU
//! memory, host values and fingerprints go through MPI ([`Mpi`]).
//!
//! Setup: every rank checks that it can load NCCL and open its device, and the ranks agree on it
//! (one MPI all-gather), so that a rank that cannot take part makes all of them fail instead of
//! hanging; rank 0 creates the NCCL unique id, MPI broadcasts it, and every rank joins the
//! communicator (`ncclCommInitRank`) on the device's primary context, the one CubeCL uses.
//!
//! `all_reduce_sum` works on the buffers of burn's CUDA backend (`Fusion<CubeBackend<CudaRuntime,
//! f32, i32, u8>>`): the input is resolved to its `CubeTensor` (which runs the fused operations
//! still queued for it) and made contiguous; the output is a new `empty` tensor, resolved the same
//! way through a clone so that the fusion tensor we return keeps the buffer; CubeCL gives the
//! device address of each buffer (`get_resource`, offsets included). Synchronization:
//! 1. before NCCL reads: `Backend::sync` on the CubeCL device waits until all the work submitted
//!    on this thread's stream is complete, which includes the kernels that wrote the input and
//!    allocated the output (`get_resource` first makes this stream wait for any other stream that
//!    last wrote the buffers);
//! 2. NCCL runs on a stream of our own, and the host waits for it (`cuStreamSynchronize`) before
//!    returning, so every later CubeCL kernel on the output is submitted after NCCL has finished;
//! 3. we hold both `CubeTensor`s (their memory cannot be reused) until then.
//!
//! Every NCCL call (and the waits above) runs under the session's watchdog.

use std::any::{Any, TypeId};
use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::result::{self as nccl, NcclError};
use cudarc::nccl::sys;

use crate::mpi::{Mpi, MpiSession};
use crate::Communicator;

/// The backend under fusion in [`Cuda`] (a type mismatch here fails to compile).
type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;

/// Gradients through NCCL on the GPU of this rank.
pub struct Nccl {
    session: Arc<MpiSession>,
    host: Mpi,
    comm: sys::ncclComm_t,
    /// The stream NCCL runs on, on the primary context of the device (CUDA ordinal) `ordinal`.
    stream: Arc<CudaStream>,
    ordinal: usize,
}

// SAFETY: the communicator is used by one thread at a time (NCCL allows that from any thread;
// the context is bound before each call); the session is covered by `Mpi`'s argument.
unsafe impl Send for Nccl {}

fn nccl_error(e: NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for every result code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    format!("{} ({:?})", text.to_string_lossy(), e.0)
}

impl Nccl {
    /// Creates the NCCL communicator of all the ranks of `session`, this rank on `device`.
    pub fn new(session: Arc<MpiSession>, device: &CudaDevice) -> Result<Nccl> {
        let (rank, world) = (session.rank(), session.size());
        let who = format!(
            "rank {rank} of {world} ({}, GPU {})",
            session.host(),
            device.index
        );
        let mut host = Mpi::new(session.clone());

        // Local setup; a panic here is the CUDA driver or NCCL library that cannot be loaded.
        let local = std::panic::catch_unwind(|| -> Result<(Arc<CudaStream>, i32)> {
            let stream = CudaContext::new(device.index)
                .and_then(|ctx| ctx.new_stream())
                .map_err(|e| anyhow!("cannot open CUDA device {}: {e:?}", device.index))?;
            let version = nccl::get_nccl_version()
                .map_err(|e| anyhow!("cannot query NCCL: {}", nccl_error(e)))?;
            Ok((stream, version))
        })
        .unwrap_or_else(|_| Err(anyhow!("cannot load the CUDA driver or the NCCL library")));
        let mine = local
            .as_ref()
            .map_or(0, |(_, v)| u64::try_from(*v).unwrap_or(0));
        let all = Communicator::<Cuda>::all_gather_u64(&mut host, mine, "checking NCCL")?;
        let (stream, version) = local.with_context(|| format!("{who}: NCCL setup"))?;
        if all.iter().any(|&v| v != all[0]) {
            bail!("{who}: the ranks cannot all use the same NCCL (versions by rank, 0 = unusable: {all:?})");
        }

        // Rank 0 creates the unique id; byte 0 says whether it could.
        let mut id_bytes = [0u8; 129];
        let mut id_error = String::new();
        if rank == 0 {
            match std::panic::catch_unwind(nccl::get_uniqueid) {
                Ok(Ok(id)) => {
                    id_bytes[0] = 1;
                    for (b, c) in id_bytes[1..].iter_mut().zip(id.internal) {
                        *b = u8::from_ne_bytes(c.to_ne_bytes());
                    }
                }
                Ok(Err(e)) => id_error = nccl_error(e),
                Err(_) => id_error = "panicked".into(),
            }
        }
        session.broadcast_bytes(&mut id_bytes, "broadcasting the NCCL unique id");
        if id_bytes[0] != 1 {
            bail!("{who}: rank 0 could not create the NCCL unique id {id_error}");
        }
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (c, b) in id.internal.iter_mut().zip(&id_bytes[1..]) {
            *c = c_char::from_ne_bytes([*b]);
        }

        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        {
            let _g = session.watchdog().guard("creating the NCCL communicator");
            stream.context().bind_to_thread()?;
            // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and world size
            // and its own rank; the device of this thread is bound just above.
            unsafe {
                nccl::comm_init_rank(&mut comm, i32::try_from(world)?, id, i32::try_from(rank)?)
            }
            .map_err(|e| anyhow!("{who}: ncclCommInitRank failed: {}", nccl_error(e)))?;
        }
        if rank == 0 {
            tracing::info!("NCCL {version}: communicator of {world} ranks ready");
        }
        Ok(Nccl {
            session,
            host,
            comm,
            stream,
            ordinal: device.index,
        })
    }

    fn who(&self) -> String {
        format!("rank {} of {}", self.session.rank(), self.session.size())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: `comm` was created by `comm_init_rank` and every operation on it has completed
        // (each collective synchronizes its stream).
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

/// The CubeCL tensor behind a tensor of [`Cuda`], once its queued operations have run.
fn resolve(x: Tensor<Cuda, 1>) -> CubeTensor<CudaRuntime> {
    let primitive = x.into_primitive().tensor();
    let client = primitive.client.clone();
    client.resolve_tensor_float::<Inner>(primitive)
}

/// The device address of the first of `n` f32 values of a contiguous tensor.
fn device_ptr(t: &CubeTensor<CudaRuntime>, n: usize) -> Result<u64> {
    if t.dtype != DType::F32 || !t.is_contiguous() {
        bail!("expected a contiguous f32 buffer, got {:?}", t.dtype);
    }
    let resource = t.client.get_resource(t.handle.clone())?;
    let resource = resource.resource();
    if resource.size < 4 * n as u64 {
        bail!("the buffer holds {} bytes, {} needed", resource.size, 4 * n);
    }
    Ok(resource.ptr)
}

impl Communicator<Cuda> for Nccl {
    fn rank(&self) -> usize {
        self.session.rank()
    }
    fn world(&self) -> usize {
        self.session.size()
    }
    fn engine(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, x: Tensor<Cuda, 1>, what: &str) -> Result<Tensor<Cuda, 1>> {
        let (n, dtype, device) = (x.dims()[0], x.dtype(), x.device());
        if n == 0 {
            return Ok(x);
        }
        if device.index != self.ordinal || !dtype.is_float() {
            let (who, ordinal) = (self.who(), self.ordinal);
            bail!("{who}: {what}: cannot all-reduce {dtype:?} values on {device:?} (NCCL is on GPU {ordinal})");
        }
        let x = if dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let out = Tensor::<Cuda, 1>::empty([n], (&device, DType::F32));
        let src = burn_cubecl::kernel::into_contiguous(resolve(x));
        let dst = resolve(out.clone());
        let context = || format!("{}: {what}", self.who());
        let src_ptr = device_ptr(&src, n).with_context(context)?;
        let dst_ptr = device_ptr(&dst, n).with_context(context)?;
        {
            let _g = self.session.watchdog().guard(what);
            Inner::sync(&src.device).map_err(|e| anyhow!("{}: {what}: {e}", self.who()))?;
            self.stream.context().bind_to_thread()?;
            // SAFETY: both addresses are live device buffers of at least `n` f32 on this
            // device (we hold their tensors), whose writers have completed (synced above).
            unsafe {
                nccl::all_reduce(
                    src_ptr as *const _,
                    dst_ptr as *mut _,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    self.stream.cu_stream().cast(),
                )
            }
            .map_err(|e| {
                anyhow!(
                    "{}: {what}: ncclAllReduce failed: {}",
                    self.who(),
                    nccl_error(e)
                )
            })?;
            self.stream
                .synchronize()
                .map_err(|e| anyhow!("{}: {what}: waiting for NCCL: {e:?}", self.who()))?;
        }
        drop((src, dst));
        Ok(if dtype == DType::F32 {
            out
        } else {
            out.cast(FloatDType::from(dtype))
        })
    }

    fn all_reduce_host(&mut self, x: &mut [f64], what: &str) -> Result<()> {
        Communicator::<Cuda>::all_reduce_host(&mut self.host, x, what)
    }

    fn all_gather_u64(&mut self, value: u64, what: &str) -> Result<Vec<u64>> {
        Communicator::<Cuda>::all_gather_u64(&mut self.host, value, what)
    }
}

/// [`Nccl`] seen as a communicator of `B`, when `B` is [`Cuda`]: tensors move through `Any`.
struct AsBackend<B> {
    inner: Nccl,
    _backend: PhantomData<fn() -> B>,
}

fn cast<T: 'static, U: 'static>(x: T) -> Result<U> {
    let boxed: Box<dyn Any> = Box::new(x);
    boxed
        .downcast::<U>()
        .map(|u| *u)
        .map_err(|_| anyhow!("NCCL works on burn's CUDA backend only"))
}

impl<B: Backend> Communicator<B> for AsBackend<B> {
    fn rank(&self) -> usize {
        self.inner.session.rank()
    }
    fn world(&self) -> usize {
        self.inner.session.size()
    }
    fn engine(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&mut self, x: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>> {
        cast(self.inner.all_reduce_sum(cast(x)?, what)?)
    }
    fn all_reduce_host(&mut self, x: &mut [f64], what: &str) -> Result<()> {
        self.inner.all_reduce_host(x, what)
    }
    fn all_gather_u64(&mut self, value: u64, what: &str) -> Result<Vec<u64>> {
        self.inner.all_gather_u64(value, what)
    }
}

/// An NCCL communicator for the (generic) trainer: `Some` when `B` is [`Cuda`], `None` otherwise.
pub fn for_backend<B: Backend>(
    session: Arc<MpiSession>,
    device: &B::Device,
) -> Option<Result<Box<dyn Communicator<B>>>> {
    if TypeId::of::<B>() != TypeId::of::<Cuda>() {
        return None;
    }
    let device = (device as &dyn Any).downcast_ref::<CudaDevice>()?;
    Some(Nccl::new(session, device).map(|inner| {
        Box::new(AsBackend::<B> {
            inner,
            _backend: PhantomData,
        }) as Box<dyn Communicator<B>>
    }))
}
