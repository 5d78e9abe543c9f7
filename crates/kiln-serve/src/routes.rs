//! The HTTP side: the Open Inference Protocol's routes, the generation route, `/metrics`, and
//! the middleware that counts and times every response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::endpoint::{Endpoint, Work};
use crate::error::ApiError;
use crate::generate;

mod monitor;
use crate::metrics::{Metrics, RequestLabels};
use crate::protocol::{parse_json, InferRequest, InferResponse};
use crate::worker::{Done, Job};

/// Bodies up to this size are parsed where they arrive; larger ones on a blocking thread.
const PARSE_INLINE_BYTES: usize = 256 << 10;

/// The limits a server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Inference requests received and not answered, over all models; one more is a 503.
    pub max_in_flight: usize,
    /// How long a request may take from arrival to answer; longer is a 504.
    pub timeout: Duration,
    /// The largest request body; larger is a 413.
    pub max_body_bytes: usize,
}

/// What every handler shares.
pub struct AppState {
    /// The served models by name.
    pub models: HashMap<String, Served>,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// Every model loaded, and not draining.
    pub ready: AtomicBool,
    /// SIGTERM (or a failed load) asked the server to stop.
    pub stopping: AtomicBool,
    /// Inference requests being answered.
    in_flight: Arc<AtomicUsize>,
    limits: Limits,
}

/// A served model: its worker's queue and, once loaded, its endpoint.
pub struct Served {
    /// The worker's queue; taken (closed) when the server stops.
    pub queue: Mutex<Option<Sender<Job>>>,
    /// Set when the worker has loaded the model.
    pub endpoint: OnceLock<Arc<Endpoint>>,
    /// Requests for the model being decoded or queued (the worker's batching waits only while
    /// there are some).
    pub pending: Arc<AtomicUsize>,
}

/// Counts a request in its model's `pending` until the worker takes it (or it fails first).
pub struct Pending(Arc<AtomicUsize>);

impl Pending {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppState {
    /// The state of a server of `models` (not ready until [`AppState::ready`] is set).
    pub fn new(models: HashMap<String, Served>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        Self {
            models,
            metrics,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limits,
        }
    }

    /// The server's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The loaded endpoint of `name`: 404 for a model that is not served, 503 while loading.
    pub(crate) fn endpoint(&self, name: &str) -> Result<(&Arc<Endpoint>, &Served), ApiError> {
        let served = self.models.get(name).ok_or_else(|| {
            let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
            names.sort_unstable();
            ApiError::not_found(format!(
                "no model `{name}`; this server serves {}",
                names.join(", ")
            ))
        })?;
        let endpoint = served
            .endpoint
            .get()
            .ok_or_else(|| ApiError::unavailable(format!("model `{name}` is still loading")))?;
        Ok((endpoint, served))
    }
}

/// The name of the served model a response is about, for the metrics' `model` label.
#[derive(Clone)]
struct ModelName(String);

/// Counts a request toward the in-flight bound (and the model's gauge) until dropped.
pub(crate) struct InFlight {
    counter: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl InFlight {
    fn enter(state: &AppState, model: &str) -> Result<Self, ApiError> {
        if !state.ready.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable(
                "the server is not ready (loading its models, or shutting down)",
            ));
        }
        let before = state.in_flight.fetch_add(1, Ordering::SeqCst);
        if before >= state.limits.max_in_flight {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable(format!(
                "the server is answering {before} requests, its bound (--max-in-flight); retry later"
            )));
        }
        let gauge = state.metrics.in_flight(model);
        gauge.inc();
        Ok(Self {
            counter: state.in_flight.clone(),
            gauge,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The router of a server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/generate", post(generate::generate))
        .route("/v2/models/{name}/drift", get(monitor::drift))
        .route("/v2/models/{name}/feedback", post(monitor::feedback))
        .route(
            "/v2/models/{name}/generate_stream",
            post(generate::generate_stream),
        )
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts and times every response by model, route and status.
async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    let response = next.run(request).await;
    let model = response
        .extensions()
        .get::<ModelName>()
        .map_or_else(String::new, |m| m.0.clone());
    let labels = RequestLabels {
        model,
        route,
        status: response.status().as_u16().to_string(),
    };
    state.metrics.observe_request(labels, started.elapsed());
    response
}

/// A response about `name`: labelled with it when it is a served model.
pub(crate) fn about(state: &AppState, name: &str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if state.models.contains_key(name) {
        response
            .extensions_mut()
            .insert(ModelName(name.to_string()));
    }
    response
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["generate"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready.load(Ordering::SeqCst);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match model_name(path) {
        Ok(name) => name,
        Err(e) => return e.into_response(),
    };
    let answer = state.endpoint(&name).map(|(e, _)| Json(e.metadata()));
    about(&state, &name, answer)
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match model_name(path) {
        Ok(name) => name,
        Err(e) => return e.into_response(),
    };
    let answer = match state.endpoint(&name) {
        Ok(_) if state.ready.load(Ordering::SeqCst) => {
            Ok(Json(json!({"name": name, "ready": true})).into_response())
        }
        Ok(_)
        | Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..
        }) => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": name, "ready": false})),
        )
            .into_response()),
        Err(e) => Err(e),
    };
    about(&state, &name, answer)
}

async fn infer(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (a, body) = match admit(&state, path, &headers, body).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let (endpoint, served, deadline) = (a.endpoint, a.served, a.deadline);
    let answer = async {
        let body = read_body(body, state.limits.max_body_bytes, deadline).await?;
        let body_len = body.len();
        let decode = {
            let endpoint = endpoint.clone();
            move || -> Result<(InferRequest, Work), ApiError> {
                let request: InferRequest = parse_json(&body)?;
                let work = endpoint.decode(&request)?;
                Ok((request, work))
            }
        };
        // A large body is parsed on a blocking thread, not on the threads that answer the
        // other connections (health probes among them).
        let (request, work) = if body_len > PARSE_INLINE_BYTES {
            tokio::task::spawn_blocking(decode).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decoding failed: {e}"),
                )
            })??
        } else {
            decode()?
        };
        let rows = match &work {
            Work::Samples { rows, .. } => *rows,
            Work::Generate(_) => 1,
        };
        let outputs = match submit(served, work, a.pending, deadline, &state.limits).await? {
            Done::Samples(outputs) => {
                if let Some(id) = &request.id {
                    endpoint.monitor.remember(id, &outputs);
                }
                endpoint.encode(outputs, rows, &request)
            }
            Done::Generation(generation) => vec![crate::protocol::OutputTensor {
                name: crate::endpoint::TEXT_OUTPUT.into(),
                datatype: "BYTES",
                shape: vec![1],
                data: crate::protocol::Data::Bytes(vec![generation.text]),
            }],
        };
        Ok::<_, ApiError>(Json(InferResponse {
            model_name: a.name.clone(),
            id: request.id,
            outputs,
        }))
    }
    .await;
    about(&state, &a.name, answer)
}

/// The model named in the path (a name that is not UTF-8 is a 400).
pub(crate) fn model_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name).map_err(|e| {
        ApiError::bad_request(format!("the model name in the path: {}", e.body_text()))
    })
}

/// A request admitted for a served model.
pub(crate) struct Admitted<'a> {
    /// The model's name.
    pub name: String,
    /// What it takes and gives.
    pub endpoint: &'a Arc<Endpoint>,
    /// Its worker's queue.
    pub served: &'a Served,
    /// The request's place under the in-flight bound.
    pub in_flight: InFlight,
    /// The request, counted as pending for the model's batching.
    pub pending: Pending,
    /// When the request must be answered (`--timeout-ms` after its arrival).
    pub deadline: Instant,
}

/// Admits a request for the model the path names: its loaded endpoint (404, 503 while loading),
/// a place under the in-flight bound (503), and a body in JSON (Triton's binary tensor
/// extension is a 400 that says so). A refused request is answered here (its body drained),
/// labelled with its model.
pub(crate) async fn admit<'a>(
    state: &'a AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Admitted<'a>, Body), Response> {
    let deadline = Instant::now() + state.limits.timeout;
    let name = match model_name(path) {
        Ok(name) => name,
        Err(e) => return Err(refuse(body, deadline, e).await),
    };
    let admitted = state.endpoint(&name).and_then(|(endpoint, served)| {
        if headers.contains_key("inference-header-content-length") {
            return Err(ApiError::bad_request(
                "binary tensor data (Inference-Header-Content-Length) is not supported; send the tensors as JSON (tritonclient: binary_data=False)",
            ));
        }
        let in_flight = InFlight::enter(state, &name)?;
        Ok((endpoint, served, in_flight))
    });
    match admitted {
        Ok((endpoint, served, in_flight)) => Ok((
            Admitted {
                pending: Pending::new(&served.pending),
                name,
                endpoint,
                served,
                in_flight,
                deadline,
            },
            body,
        )),
        Err(e) => Err(about(state, &name, refuse(body, deadline, e).await)),
    }
}

/// Answers a refused request with `error` once its body has been read (and dropped), so that
/// the client gets the answer instead of a reset connection.
async fn refuse(body: Body, deadline: Instant, error: ApiError) -> Response {
    let _ = read_body(body, 0, deadline).await;
    error.into_response()
}

/// Reads a request body of at most `limit` bytes (413 above). The whole body is read even when it
/// is too large (and discarded), until the request's deadline, so that the client gets its answer
/// instead of a connection reset while it is still sending.
pub(crate) async fn read_body(
    mut body: Body,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let read = async {
        let mut bytes = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total <= limit {
                    bytes.extend_from_slice(&data);
                }
            }
        }
        if total > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body has {total} bytes, over the server's limit of {limit} (--max-body-mb); send fewer samples per request",
                ),
            ));
        }
        Ok(Bytes::from(bytes))
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive before the request's timeout (--timeout-ms)",
        )),
    }
}

/// Queues `work` for the model's worker and waits for it until the request's deadline.
pub(crate) async fn submit(
    served: &Served,
    work: Work,
    pending: Pending,
    deadline: Instant,
    limits: &Limits,
) -> Result<Done, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        work,
        queued: Instant::now(),
        reply,
        pending: Some(pending),
        stream: None,
    };
    queue(served, job)?;
    wait(answer, deadline, limits).await
}

/// Puts `job` in the worker's queue (503 once the server is stopping).
pub(crate) fn queue(served: &Served, job: Job) -> Result<(), ApiError> {
    let sent = match &*served.queue.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(queue) => queue.send(job).is_ok(),
        None => false,
    };
    if !sent {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    Ok(())
}

/// The worker's answer, or 504 at the deadline (the worker then skips or stops the job).
pub(crate) async fn wait(
    answer: oneshot::Receiver<Result<Done, String>>,
    deadline: Instant,
    limits: &Limits,
) -> Result<Done, ApiError> {
    match tokio::time::timeout_at(deadline.into(), answer).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within {} ms (--timeout-ms): the server is overloaded or the request too large",
                limits.timeout.as_millis()
            ),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model's worker stopped",
        )),
        Ok(Ok(Err(message))) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)),
        Ok(Ok(Ok(done))) => Ok(done),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    for (name, served) in &state.models {
        if let Some(endpoint) = served.endpoint.get() {
            state.metrics.drift.set(name, &endpoint.monitor.gauges());
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

const ROUTES: &str = "GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready, /v2/models/{name}/drift, /metrics; POST /v2/models/{name}/infer, /v2/models/{name}/generate, /v2/models/{name}/generate_stream, /v2/models/{name}/feedback";

async fn no_route(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    body: Body,
) -> ApiError {
    let _ = read_body(body, 0, Instant::now() + state.limits.timeout).await;
    ApiError::not_found(format!(
        "no route {method} {}; the routes are {ROUTES}",
        uri.path()
    ))
}

async fn wrong_method(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    body: Body,
) -> ApiError {
    let _ = read_body(body, 0, Instant::now() + state.limits.timeout).await;
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the routes are {ROUTES}",
            uri.path()
        ),
    )
}
