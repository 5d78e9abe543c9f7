//! Kiln's foundations: the run configuration, backend selection and the run directory.

pub mod alloc;
pub mod backend;
pub mod compat;
pub mod config;
pub mod rundir;

pub use backend::{dispatch, dispatch_on, BackendKind, BackendTask};
pub use config::Config;
pub use rundir::RunDir;

/// Kiln's version, recorded in every run directory.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
