//! A server's life: bind the address, load every model on its own worker thread (the server
//! answers `live` but not `ready` meanwhile), serve, and on SIGTERM or Ctrl-C stop accepting,
//! answer what is in flight and return.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use tokio::sync::watch;

use crate::drift::DriftOptions;
use crate::endpoint::Kind;
use crate::metrics::{InfoLabels, Metrics};
use crate::routes::{router, AppState, Limits, Served};
use crate::worker::{self, Batching};

/// An export to serve and the name it is served as.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The name in the URLs (`/v2/models/{name}`).
    pub name: String,
    /// The export's directory (`kiln export --format kiln`).
    pub dir: PathBuf,
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The address to listen on (`127.0.0.1:8080`; port 0 picks a free one).
    pub address: String,
    /// Batching of concurrent requests for one model.
    pub batching: Batching,
    /// The server's limits.
    pub limits: Limits,
    /// The backend's name, for `kiln_model_info`.
    pub backend: String,
    /// Drift monitoring.
    pub drift: DriftOptions,
}

/// Serves `models` on `device` of backend `B` until SIGTERM or Ctrl-C. Once every model is
/// loaded, prints one JSON line to stdout: `{"event": "ready", "address": "127.0.0.1:PORT",
/// "models": [...]}`.
pub fn serve<B: Backend>(
    models: Vec<Exported>,
    options: ServeOptions,
    device: B::Device,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for m in &models {
        if !seen.insert(m.name.as_str()) {
            bail!(
                "two exports are served as `{}`; give each its own --name",
                m.name
            );
        }
        if !m.dir.is_dir() {
            bail!("{}: no such export directory", m.dir.display());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-serve-http")
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(run::<B>(models, options, device))
}

async fn run<B: Backend>(
    models: Vec<Exported>,
    options: ServeOptions,
    device: B::Device,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&options.address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server using the port? choose one with --port (0: any free port)",
                options.address
            )
        })?;
    let address: SocketAddr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());

    // One worker thread per model; each loads its model, then reports its endpoint.
    let mut served = HashMap::new();
    let mut workers = Vec::new();
    let mut loads = Vec::new();
    for m in &models {
        let (queue, jobs) = mpsc::channel();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let worker_pending = pending.clone();
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let (name, dir, device, metrics) = (
            m.name.clone(),
            m.dir.clone(),
            device.clone(),
            metrics.clone(),
        );
        let worker_options = worker::WorkerOptions {
            batching: options.batching,
            drift: options.drift,
        };
        let handle = std::thread::Builder::new()
            .name(format!("kiln-serve-{}", m.name))
            .spawn(move || {
                worker::run::<B>(
                    name,
                    dir,
                    device,
                    worker::Queue {
                        jobs,
                        pending: worker_pending,
                    },
                    worker_options,
                    metrics,
                    loaded_tx,
                )
            })
            .context("cannot start a worker thread")?;
        workers.push(handle);
        loads.push((m.name.clone(), loaded_rx));
        served.insert(
            m.name.clone(),
            Served {
                queue: Mutex::new(Some(queue)),
                endpoint: OnceLock::new(),
                pending,
            },
        );
    }
    let state = Arc::new(AppState::new(
        served,
        metrics.clone(),
        options.limits.clone(),
    ));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let draining = state.clone();
    let shutdown = async move {
        tokio::select! {
            _ = termination() => tracing::info!("stopping: no new connections; answering the requests in flight"),
            _ = stop_rx.changed() => {}
        }
        draining.stopping.store(true, Ordering::SeqCst);
        draining.ready.store(false, Ordering::SeqCst);
        let _ = drain_tx.send(true);
    };
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });

    // Wait for the models; a model that cannot load stops the server.
    let mut failure = None;
    for (name, rx) in loads {
        let result = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .context("a loading task failed")?;
        match result {
            Ok(Ok(endpoint)) => {
                let task = match &endpoint.kind {
                    Kind::Samples {
                        output: kiln_export::predict::SampleOutput::Classes(_),
                        ..
                    } => "classifier",
                    Kind::Samples { .. } => "regression",
                    Kind::Language { .. } => "language",
                };
                metrics.model_loaded(InfoLabels {
                    model: name.clone(),
                    architecture: endpoint.architecture.clone(),
                    task: task.into(),
                    quantization: endpoint.quantization.clone(),
                    format_version: endpoint.format_version.to_string(),
                    backend: options.backend.clone(),
                });
                let _ = state.models[&name].endpoint.set(Arc::new(endpoint));
            }
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(_) => {
                failure = Some(anyhow::anyhow!(
                    "model `{name}`: its worker stopped while loading"
                ));
                break;
            }
        }
    }
    if failure.is_none() && !state.stopping.load(Ordering::SeqCst) {
        state.ready.store(true, Ordering::SeqCst);
        if state.stopping.load(Ordering::SeqCst) {
            state.ready.store(false, Ordering::SeqCst);
        }
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        tracing::info!(
            "serving {} on http://{address} ({}; batches of up to {} samples within {} ms)",
            names.join(", "),
            options.backend,
            options.batching.max_batch,
            options.batching.max_delay.as_millis()
        );
        println!(
            "{}",
            serde_json::json!({"event": "ready", "address": address.to_string(), "models": names})
        );
    } else {
        let _ = stop_tx.send(true);
    }

    // Draining ends when every connection is closed; a client that never finishes its request
    // must not keep the process alive past the requests' own timeout.
    let mut server = server;
    let drain_limit = options.limits.timeout + Duration::from_secs(5);
    let served = tokio::select! {
        served = &mut server => served.context("the HTTP server task failed")?,
        _ = async {
            if drain_rx.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(drain_limit).await;
        } => {
            tracing::warn!(
                "connections still open {} s after the stop; closing them",
                drain_limit.as_secs()
            );
            server.abort();
            Ok(())
        }
    };
    // Close every queue: each worker answers what is left and returns.
    for m in state.models.values() {
        m.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    drop(state);
    tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await
    .context("joining the workers failed")?;
    if let Some(e) = failure {
        return Err(e);
    }
    served.context("the HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long the worker of a model waits by default for other requests to batch with.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(2);
