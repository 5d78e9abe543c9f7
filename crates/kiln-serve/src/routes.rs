//! The HTTP side: the Open Inference Protocol's routes, the generation route, `/metrics`, and
//! the middleware that counts and times every response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::endpoint::{Endpoint, Work, TEXT_INPUT};
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels};
use crate::protocol::{parse_json, InferRequest, InferResponse};
use crate::worker::{Done, Job};

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
    /// Inference requests being answered.
    in_flight: AtomicUsize,
    limits: Limits,
}

/// A served model: its worker's queue and, once loaded, its endpoint.
pub struct Served {
    /// The worker's queue; taken (closed) when the server stops.
    pub queue: Mutex<Option<Sender<Job>>>,
    /// Set when the worker has loaded the model.
    pub endpoint: OnceLock<Endpoint>,
}

impl AppState {
    /// The state of a server of `models` (not ready until [`AppState::ready`] is set).
    pub fn new(models: HashMap<String, Served>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        Self {
            models,
            metrics,
            ready: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            limits,
        }
    }

    /// The loaded endpoint of `name`: 404 for a model that is not served, 503 while loading.
    fn endpoint(&self, name: &str) -> Result<(&Endpoint, &Served), ApiError> {
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
struct InFlight<'a> {
    state: &'a AppState,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl<'a> InFlight<'a> {
    fn enter(state: &'a AppState, model: &str) -> Result<Self, ApiError> {
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
        Ok(Self { state, gauge })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
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
        .route("/v2/models/{name}/generate", post(generate))
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
fn about(state: &AppState, name: &str, response: impl IntoResponse) -> Response {
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

async fn model_metadata(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let answer = state.endpoint(&name).map(|(e, _)| Json(e.metadata()));
    about(&state, &name, answer)
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
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
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let body = read_body(body, &state.limits).await;
    let answer = answer_infer(&state, &name, body).await;
    about(&state, &name, answer)
}

async fn answer_infer(
    state: &AppState,
    name: &str,
    body: Result<Bytes, ApiError>,
) -> Result<Json<InferResponse>, ApiError> {
    let (endpoint, served) = state.endpoint(name)?;
    let _in_flight = InFlight::enter(state, name)?;
    let request: InferRequest = parse_json(&body?)?;
    let work = endpoint.decode(&request)?;
    let rows = match &work {
        Work::Samples { rows, .. } => *rows,
        Work::Generate(_) => 1,
    };
    let outputs = match submit(state, served, work).await? {
        Done::Samples(outputs) => endpoint.encode(outputs, rows, &request),
        Done::Generation(generation) => vec![crate::protocol::OutputTensor {
            name: crate::endpoint::TEXT_OUTPUT.into(),
            datatype: "BYTES",
            shape: vec![1],
            data: crate::protocol::Data::Bytes(vec![generation.text]),
        }],
    };
    Ok(Json(InferResponse {
        model_name: name.to_string(),
        id: request.id,
        outputs,
    }))
}

/// `POST /v2/models/{name}/generate`, Triton's generate extension: `{"text_input": "...",
/// "parameters": {"max_tokens": .., "temperature": .., "top_k": .., "seed": ..}}` (the
/// parameters may also stand beside `text_input`) gives `{"model_name", "text_output",
/// "tokens"}`.
async fn generate(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let body = read_body(body, &state.limits).await;
    let answer = answer_generate(&state, &name, body).await;
    about(&state, &name, answer)
}

async fn answer_generate(
    state: &AppState,
    name: &str,
    body: Result<Bytes, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (endpoint, served) = state.endpoint(name)?;
    let _in_flight = InFlight::enter(state, name)?;
    let mut request: Map<String, Value> = parse_json(&body?)?;
    let prompt = match request.remove(TEXT_INPUT) {
        Some(Value::String(prompt)) => prompt,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`{TEXT_INPUT}` is {other}; it is the prompt, a string"
            )))
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "the request has no `{TEXT_INPUT}` (the prompt)"
            )))
        }
    };
    let id = request.remove("id");
    let mut parameters = match request.remove("parameters") {
        None => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`parameters` is {other}; it is an object"
            )))
        }
    };
    parameters.extend(request);
    let sampling = endpoint.sampling(prompt, &parameters)?;
    let Done::Generation(generation) = submit(state, served, Work::Generate(sampling)).await?
    else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the worker answered samples",
        ));
    };
    let mut answer = json!({
        "model_name": name,
        "text_output": generation.text,
        "tokens": generation.tokens,
    });
    if let Some(id) = id {
        answer["id"] = id;
    }
    Ok(Json(answer))
}

/// Reads a request body of at most `limits.max_body_bytes` (413 above). The whole body is read
/// even when it is too large (and discarded), within the request timeout, so that the client
/// gets its answer instead of a connection reset while it is still sending.
async fn read_body(mut body: Body, limits: &Limits) -> Result<Bytes, ApiError> {
    let read = async {
        let mut bytes = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total <= limits.max_body_bytes {
                    bytes.extend_from_slice(&data);
                }
            }
        }
        if total > limits.max_body_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body has {total} bytes, over the server's limit of {} (--max-body-mb); send fewer samples per request",
                    limits.max_body_bytes
                ),
            ));
        }
        Ok(Bytes::from(bytes))
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (--timeout-ms)",
                limits.timeout.as_millis()
            ),
        )),
    }
}

/// Queues `work` for the model's worker and waits for it, up to the request timeout.
async fn submit(state: &AppState, served: &Served, work: Work) -> Result<Done, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        work,
        queued: Instant::now(),
        reply,
    };
    let sent = match &*served.queue.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(queue) => queue.send(job).is_ok(),
        None => false,
    };
    if !sent {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    match tokio::time::timeout(state.limits.timeout, answer).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within {} ms (--timeout-ms): the server is overloaded or the request too large",
                state.limits.timeout.as_millis()
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

const ROUTES: &str = "GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready, /metrics; POST /v2/models/{name}/infer, /v2/models/{name}/generate";

async fn no_route(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    body: Body,
) -> ApiError {
    let _ = read_body(body, &state.limits).await;
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
    let _ = read_body(body, &state.limits).await;
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the routes are {ROUTES}",
            uri.path()
        ),
    )
}
