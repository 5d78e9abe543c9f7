//! Kiln's foundations: the run configuration, backend selection and the run directory.

#![warn(missing_docs)]

pub mod alloc;
pub mod backend;
pub mod compat;
pub mod config;
pub mod device_memory;
pub mod rundir;

pub use backend::{dispatch, dispatch_on, BackendKind, BackendTask};
pub use config::Config;
/// The names of everything in a run directory.
pub use kiln_checkpoint::layout;
pub use rundir::RunDir;

/// Kiln's version, recorded in every run directory.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
