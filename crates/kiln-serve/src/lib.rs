//! `kiln serve`: Kiln exports over HTTP with the Open Inference Protocol v2 (the REST API that
//! KServe, Triton and Seldon speak), dynamic batching, a generation route for language models,
//! and Prometheus metrics.
//!
//! - [`protocol`]: the protocol's JSON (requests, responses, tensor data);
//! - [`endpoint`]: what one served model takes and gives, in the protocol's terms;
//! - [`worker`]: the thread that owns a model on its device and batches its requests;
//! - [`routes`]: the HTTP routes and the middleware that measures them;
//! - [`drift`]: each model's sliding window of inputs and predictions, compared with its
//!   export's drift reference, and its accuracy on labelled feedback;
//! - [`generate`]: the generation routes of language models (whole, or streamed as events);
//! - [`metrics`]: what `/metrics` exposes;
//! - [`serve`]: a server's life: bind, load, serve, drain on SIGTERM.

#![warn(missing_docs)]

pub mod drift;
pub mod endpoint;
pub mod error;
pub mod generate;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod worker;

pub use drift::DriftOptions;
pub use routes::Limits;
pub use server::{serve, Exported, ServeOptions, DEFAULT_MAX_DELAY};
pub use worker::Batching;
