//! Fused kernels for burn's CPU backends.
//!
//! burn's CPU backends run every tensor operation as its own pass over memory, most of them on
//! one thread, each allocating its result. Where Kiln's hot paths chain many such operations on
//! one buffer (an optimizer update is a dozen per parameter), these kernels do the whole chain in
//! one multi-threaded pass over the tensors' own host buffers, in place.
//!
//! Generic code reaches them through [`host`]: it recognizes the flex and ndarray tensor types at
//! run time and hands out their `f32` buffers; on any other backend (wgpu, cuda, whose fusion
//! compiles such chains into one kernel anyway) it declines and the caller takes burn's
//! tensor-op path.

#![warn(missing_docs)]

pub mod adamw;
pub mod host;
