//! The monitoring routes: `GET /v2/models/{name}/drift` (the model's drift report as JSON) and
//! `POST /v2/models/{name}/feedback` (true labels of an earlier request, for live accuracy).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::{about, model_name, read_body, AppState};
use crate::drift::FeedbackError;
use crate::error::ApiError;
use crate::protocol::parse_json;

/// The largest feedback body.
const MAX_FEEDBACK_BYTES: usize = 4 << 20;

/// `GET /v2/models/{name}/drift`.
pub(crate) async fn drift(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match model_name(path) {
        Ok(name) => name,
        Err(e) => return about(&state, "", e),
    };
    let answer = state
        .endpoint(&name)
        .map(|(endpoint, _)| Json(endpoint.monitor.json(&name)));
    about(&state, &name, answer)
}

/// `POST /v2/models/{name}/feedback` with `{"id": "<the infer request's id>", "labels": [...]}`:
/// one true label per sample of that request, a class name or index.
pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let deadline = Instant::now() + state.limits().timeout;
    let name = match model_name(path) {
        Ok(name) => name,
        Err(e) => return about(&state, "", e),
    };
    let answer = async {
        let (endpoint, _) = state.endpoint(&name)?;
        let body = read_body(body, MAX_FEEDBACK_BYTES, deadline).await?;
        let request: Value = parse_json(&body)?;
        let Some(classes) = endpoint.monitor.classes() else {
            return Err(ApiError::bad_request(format!(
                "model `{name}` takes no feedback: live accuracy is for classifiers whose export has a drift reference"
            )));
        };
        let id = request["id"].as_str().ok_or_else(|| {
            ApiError::bad_request(
                "the feedback needs \"id\": the id of the infer request whose samples the labels are of",
            )
        })?;
        let labels = labels(&request["labels"], classes)?;
        let (count, correct) = endpoint.monitor.feedback(id, &labels).map_err(|e| match e {
            FeedbackError::Unknown(message) => ApiError::not_found(message),
            FeedbackError::Invalid(message) => ApiError::bad_request(message),
        })?;
        state.metrics.drift.feedback(&name, count);
        Ok(Json(json!({
            "model": name, "id": id, "labels": count, "correct": correct,
        })))
    }
    .await;
    about(&state, &name, answer)
}

/// The class indices of `labels`: class names or indices.
fn labels(labels: &Value, classes: &[String]) -> Result<Vec<usize>, ApiError> {
    let Some(items) = labels.as_array().filter(|a| !a.is_empty()) else {
        return Err(ApiError::bad_request(
            "the feedback needs \"labels\": a list of one true label per sample (class names or indices)",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let index = match label {
                Value::String(s) => classes.iter().position(|c| c == s),
                Value::Number(n) => n.as_u64().map(|n| n as usize),
                _ => None,
            };
            index.filter(|&k| k < classes.len()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "labels[{i}] = {label} is not one of the model's classes ({}) or their indices 0 to {}",
                    classes.join(", "),
                    classes.len().saturating_sub(1)
                ))
            })
        })
        .collect()
}
