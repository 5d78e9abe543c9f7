//! The HTTP side of MLflow's REST API: requests bounded in time, MLflow's error codes, ids.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::Server;

/// A client of one MLflow server, each request bounded in time.
pub(super) struct Client {
    pub(super) server: Server,
    agent: ureq::Agent,
}

impl Client {
    pub(super) fn new(server: Server) -> Client {
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(15));
        // Server::from_vars checked the settings; a certificate file gone since then falls back.
        match super::tls::config(&server.trust) {
            Ok(Some(tls)) => agent = agent.tls_config(tls),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e:#}; trusting the public certificate authorities only"),
        }
        Client {
            server,
            agent: agent.build(),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.server.uri));
        match &self.server.auth {
            Some(a) => req.set("Authorization", a),
            None => req,
        }
    }

    /// Calls `api/2.0/mlflow/<endpoint>`; an error names the endpoint and MLflow's message.
    pub(super) fn call(&self, method: &str, endpoint: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/api/2.0/mlflow/{endpoint}");
        let req = self.request(method, &path);
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match sent {
            Ok(resp) => Ok(resp.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let reason: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let hint = match code {
                    401 | 403 => "; log in with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN",
                    _ => "",
                };
                Err(anyhow::Error::new(ApiError {
                    code: reason["error_code"].as_str().unwrap_or("").to_string(),
                    message: format!(
                        "MLflow {endpoint} at {}: HTTP {code}: {}{hint}",
                        self.server.uri,
                        reason["message"].as_str().unwrap_or(text.trim())
                    ),
                }))
            }
            Err(e) => Err(anyhow::anyhow!(
                "MLflow {endpoint} at {}: {e}{}",
                self.server.uri,
                transport_hint(&e.to_string())
            )),
        }
    }

    /// The experiment's id, creating it if missing.
    pub(super) fn experiment_id(&self) -> Result<String> {
        let name = &self.server.experiment;
        let by_name = |c: &Client| {
            let q = format!("experiments/get-by-name?experiment_name={}", encode(name));
            c.call("GET", &q, None)
        };
        match by_name(self) {
            Ok(v) => return id_of(&v["experiment"]["experiment_id"]),
            Err(e) if api_code(&e) == Some("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        match self.call("POST", "experiments/create", Some(json!({ "name": name }))) {
            Ok(v) => id_of(&v["experiment_id"]),
            // Another run created it meanwhile.
            Err(e) if api_code(&e) == Some("RESOURCE_ALREADY_EXISTS") => {
                id_of(&by_name(self)?["experiment"]["experiment_id"])
            }
            Err(e) => Err(e),
        }
    }

    /// Uploads `file` as the run's artifact `name` through the server's artifact proxy.
    pub(super) fn upload(&self, artifact_uri: &str, name: &str, file: &Path) -> Result<()> {
        let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
            bail!("the run's artifact store is {artifact_uri}, which Kiln does not write to; start the server with artifact serving (mlflow server's default)");
        };
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let path = format!(
            "/api/2.0/mlflow-artifacts/artifacts/{}/{name}",
            rest.trim_start_matches('/').trim_end_matches('/')
        );
        self.request("PUT", &path)
            .send_bytes(&bytes)
            .map(drop)
            .map_err(|e| {
                anyhow::anyhow!(
                    "MLflow artifact upload of {name} to {}: {e}",
                    self.server.uri
                )
            })
    }
}

/// What to set when a connection failed for a reason the user can fix.
fn transport_hint(error: &str) -> &'static str {
    if error.contains("invalid peer certificate") {
        "; if the server's certificate is from your own CA, set MLFLOW_TRACKING_SERVER_CERT_PATH to its PEM file (or MLFLOW_TRACKING_INSECURE_TLS=true to skip verification)"
    } else {
        ""
    }
}

/// An MLflow error response.
#[derive(Debug)]
struct ApiError {
    code: String,
    message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

pub(super) fn api_code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ApiError>().map(|a| a.code.as_str())
}

pub(super) fn id_of(v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .context("MLflow answered without the id it should have sent")
}

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
