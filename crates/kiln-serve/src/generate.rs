//! The generation routes of language models, after Triton's generate extension:
//! `POST /v2/models/{name}/generate` answers `{"model_name", "text_output", "tokens"}`, and
//! `POST /v2/models/{name}/generate_stream` sends the text as server-sent events while it is
//! generated. Both take `{"text_input": "...", "parameters": {"max_tokens", "temperature",
//! "top_k", "seed"}}`, the parameters also beside `text_input`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_infer::Sampling;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::{Endpoint, Work, TEXT_INPUT};
use crate::error::ApiError;
use crate::protocol::parse_json;
use crate::routes::{about, admit, queue, read_body, submit, wait, AppState, InFlight};
use crate::worker::{Done, Job};

/// `POST /v2/models/{name}/generate`.
pub async fn generate(
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
        let body = read_body(body, state.limits().max_body_bytes, deadline).await?;
        let (sampling, id) = request(endpoint, &body)?;
        let work = Work::Generate(sampling);
        let Done::Generation(generation) =
            submit(served, work, a.pending, deadline, state.limits()).await?
        else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the worker answered samples",
            ));
        };
        let mut answer = json!({
            "model_name": a.name,
            "text_output": generation.text,
            "tokens": generation.tokens,
        });
        if let Some(id) = id {
            answer["id"] = id;
        }
        Ok(Json(answer))
    }
    .await;
    about(&state, &a.name, answer)
}

/// `POST /v2/models/{name}/generate_stream`: one event `{"model_name", "text_output"}` per piece
/// of text as it is generated, then a last one with the rest of the text (if any), `"tokens"`
/// (every generated token id) and `"finished": true`; an error after the stream started is an event `{"error": ...}`. A client
/// that disconnects stops the generation.
pub async fn generate_stream(
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
    let started = async {
        let body = read_body(body, state.limits().max_body_bytes, deadline).await?;
        let (sampling, _) = request(endpoint, &body)?;
        let (reply, answer) = oneshot::channel();
        let (pieces_tx, pieces) = mpsc::unbounded_channel();
        queue(
            served,
            Job {
                work: Work::Generate(sampling),
                queued: Instant::now(),
                reply,
                pending: Some(a.pending),
                stream: Some(pieces_tx),
            },
        )?;
        Ok::<_, ApiError>((pieces, answer))
    }
    .await;
    let (pieces, answer) = match started {
        Ok(channels) => channels,
        Err(e) => return about(&state, &a.name, e),
    };
    let stream = Streaming {
        name: a.name.clone(),
        sent: String::new(),
        pieces,
        answer: Some(answer),
        deadline,
        state: state.clone(),
        _in_flight: a.in_flight,
    };
    let events = futures_util::stream::unfold(stream, Streaming::next);
    about(&state, &a.name, Sse::new(events).into_response())
}

/// A generation being streamed.
struct Streaming {
    name: String,
    /// The text sent so far.
    sent: String,
    pieces: mpsc::UnboundedReceiver<String>,
    answer: Option<oneshot::Receiver<Result<Done, String>>>,
    deadline: Instant,
    state: Arc<AppState>,
    _in_flight: InFlight,
}

impl Streaming {
    /// The next event, and the stream to take the one after from.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        let answer = self.answer.take()?;
        let piece = tokio::time::timeout_at(self.deadline.into(), self.pieces.recv()).await;
        let event = match piece {
            Ok(Some(text)) => {
                self.answer = Some(answer);
                self.sent.push_str(&text);
                json!({"model_name": self.name, "text_output": text})
            }
            // The generation ended (or failed): its answer is ready, or the deadline passed.
            Ok(None) | Err(_) => match wait(answer, self.deadline, self.state.limits()).await {
                Ok(Done::Generation(g)) => json!({
                    "model_name": self.name,
                    "text_output": g.text.strip_prefix(self.sent.as_str()).unwrap_or(""),
                    "tokens": g.tokens,
                    "finished": true,
                }),
                Ok(Done::Samples(_)) => json!({"error": "the worker answered samples"}),
                Err(e) => json!({"error": e.message}),
            },
        };
        let event = Event::default().data(event.to_string());
        Some((Ok(event), self))
    }
}

/// The sampling (and the `id`) of a generation request's body; a 400 naming what is wrong.
fn request(endpoint: &Endpoint, body: &[u8]) -> Result<(Sampling, Option<Value>), ApiError> {
    let mut request: Map<String, Value> = parse_json(body)?;
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
    Ok((endpoint.sampling(prompt, &parameters)?, id))
}
