//! MLflow: a Kiln run as an MLflow run, over MLflow's REST API (`/api/2.0/mlflow/...`).
//!
//! The run's flattened config becomes its params, its scalars its metrics (sent with
//! `runs/log-batch`, at most 1000 metrics and 100 params per request, MLflow's limits), facts
//! about it tags (`kiln.version`, `backend`, `git.commit` also as `mlflow.source.git.commit`), and
//! at the end `config.toml` and `metrics.jsonl` artifacts, and when asked the final weights
//! (through the server's artifact proxy, `mlflow-artifacts:` URIs). Its status is `RUNNING` while it trains, then `FINISHED`, `FAILED` or
//! `KILLED` (a signal stopped it).
//!
//! The MLflow run's id is kept in the run directory (`mlflow.json`, with how many lines of
//! `metrics.jsonl` the server has confirmed): a resumed run continues the same MLflow run and sets
//! it `RUNNING` again, and `kiln sync` sends only the lines after those. Each point is sent with
//! the time of its line in `metrics.jsonl`, so sending a line twice gives the same point, which
//! MLflow's SQL stores keep once. A resumed run recomputes the steps after its checkpoint: the
//! interrupted attempt's points at those steps stay in MLflow (its API deletes no points), so a
//! step logged by both attempts shows two points there; TensorBoard and `metrics.jsonl` show the
//! resumed attempt's only.
//!
//! Credentials come from MLflow's usual variables: `MLFLOW_TRACKING_TOKEN` (a bearer token) or
//! `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic auth); for `https://`
//! servers with a private CA, `MLFLOW_TRACKING_SERVER_CERT_PATH` or
//! `MLFLOW_TRACKING_INSECURE_TLS` (see [`Trust`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod client;
mod tls;

use crate::record::{now, Record};
use crate::tracker::{RunInfo, RunStatus, Tracker};
use client::{id_of, Client};
pub use tls::Trust;

/// MLflow's limit of metrics per `log-batch` request.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// MLflow's limit of params per `log-batch` request.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// The file in the run directory that holds the MLflow run's id.
pub const STATE_FILE: &str = "mlflow.json";
/// Buffered points are sent at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Where and as whom to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    /// The tracking URI, `http://...` or `https://...`, without a trailing slash.
    pub uri: String,
    /// The experiment's name.
    pub experiment: String,
    /// `Authorization` header value, if any.
    auth: Option<String>,
    /// How an `https://` server's certificate is checked.
    trust: Trust,
}

impl Server {
    /// The server of `place` (a URI) or of `MLFLOW_TRACKING_URI`, the experiment `experiment` or
    /// `MLFLOW_EXPERIMENT_NAME` or `Default`, and the credentials and TLS settings of MLflow's
    /// variables.
    pub fn from_env(place: Option<&str>, experiment: Option<&str>) -> Result<Server> {
        Server::from_vars(place, experiment, |name| std::env::var(name).ok())
    }

    /// [`Server::from_env`] with the variables that `var` gives.
    pub fn from_vars(
        place: Option<&str>,
        experiment: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Server> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let uri = match place {
            Some(p) => p.to_string(),
            None => var("MLFLOW_TRACKING_URI").context(
                "tracking.mlflow = true needs MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000), or set tracking.mlflow to the URI",
            )?,
        };
        let uri = uri.trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            bail!("MLflow tracking URI {uri:?}: Kiln reports to a tracking server, so it must start with http:// or https://");
        }
        let experiment = experiment
            .map(str::to_string)
            .or_else(|| var("MLFLOW_EXPERIMENT_NAME"))
            .unwrap_or_else(|| "Default".into());
        let auth = match (
            var("MLFLOW_TRACKING_TOKEN"),
            var("MLFLOW_TRACKING_USERNAME"),
        ) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(user)) => {
                use base64::Engine;
                let pass = var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default();
                let creds =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {creds}"))
            }
            (None, None) => None,
        };
        let insecure = match var("MLFLOW_TRACKING_INSECURE_TLS").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => bail!("MLFLOW_TRACKING_INSECURE_TLS={v:?}: expected true or false"),
        };
        let trust = match (insecure, var("MLFLOW_TRACKING_SERVER_CERT_PATH")) {
            (true, Some(_)) => bail!("MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: MLflow refuses that too; keep one"),
            (true, None) => Trust::Insecure,
            (false, Some(path)) => Trust::Extra(path.into()),
            (false, None) => Trust::Public,
        };
        tls::config(&trust)?; // a bad certificate file is an error now, not at the first request

        if var("MLFLOW_TRACKING_CLIENT_CERT_PATH").is_some() {
            bail!("MLFLOW_TRACKING_CLIENT_CERT_PATH is set: Kiln does not send client certificates (mutual TLS); use a token or basic auth");
        }
        Ok(Server {
            uri,
            experiment,
            auth,
            trust,
        })
    }
}

/// What the run directory remembers of its MLflow run (`mlflow.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The server.
    pub tracking_uri: String,
    /// The experiment's id.
    pub experiment_id: String,
    /// The MLflow run's id.
    pub run_id: String,
    /// Where its artifacts go.
    pub artifact_uri: String,
    /// How many lines of `metrics.jsonl`, from the first, the server has.
    pub sent_lines: usize,
}

impl State {
    /// The state in `run_dir`, if the run was reported to MLflow before.
    pub fn read(run_dir: &Path) -> Result<Option<State>> {
        let path = run_dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "{} is damaged; delete it to report the run as a new MLflow run",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(STATE_FILE);
        let tmp = run_dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The tracker that reports a run to an MLflow server.
pub struct Mlflow {
    client: Client,
    run_dir: PathBuf,
    state: Option<State>,
    /// Points waiting to be sent, and how many records they came from.
    pending: Vec<Value>,
    pending_records: usize,
    last_flush: Instant,
    /// A line was lost (a failed request): later lines are sent but not counted as confirmed,
    /// so that `kiln sync` sends from the gap on.
    gap: bool,
    /// `kiln sync`: records before this many lines were sent already.
    skip: usize,
    seen: usize,
    log_weights: bool,
}

impl Mlflow {
    /// Reports the run in `run_dir` to `server`.
    pub fn new(server: Server, run_dir: PathBuf) -> Mlflow {
        Mlflow {
            client: Client::new(server),
            run_dir,
            state: None,
            pending: Vec::new(),
            pending_records: 0,
            last_flush: Instant::now(),
            gap: false,
            skip: 0,
            seen: 0,
            log_weights: false,
        }
    }

    /// At the end, also uploads the newest checkpoint's `model.safetensors` as the artifact
    /// `weights/model.safetensors` (`tracking.log_weights`).
    pub fn log_weights(mut self, on: bool) -> Mlflow {
        self.log_weights = on;
        self
    }

    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .context("the MLflow tracker got a record before the run started")
    }

    /// Sends the buffered points in batches of at most [`MAX_METRICS_PER_BATCH`].
    fn flush(&mut self) -> Result<()> {
        self.last_flush = Instant::now();
        if self.pending_records == 0 {
            return Ok(());
        }
        let run_id = self.state()?.run_id.clone();
        let metrics = std::mem::take(&mut self.pending);
        let records = std::mem::take(&mut self.pending_records);
        let mut result = Ok(());
        for batch in metrics.chunks(MAX_METRICS_PER_BATCH) {
            result = self
                .client
                .call(
                    "POST",
                    "runs/log-batch",
                    Some(json!({ "run_id": run_id, "metrics": batch })),
                )
                .map(drop);
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) if !self.gap => {
                let run_dir = self.run_dir.clone();
                let state = self.state()?;
                state.sent_lines += records;
                state.write(&run_dir)
            }
            Ok(()) => Ok(()),
            Err(e) => {
                self.gap = true;
                Err(e)
            }
        }
    }

    fn create_run(&self, run: &RunInfo) -> Result<State> {
        let experiment_id = self.client.experiment_id()?;
        let mut tags: Vec<Value> = run
            .tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        tags.push(json!({ "key": "mlflow.source.name", "value": "kiln" }));
        tags.push(json!({ "key": "kiln.run_dir", "value": run.run_dir.display().to_string() }));
        if let Some(commit) = run.tags.get("git.commit") {
            tags.push(json!({ "key": "mlflow.source.git.commit", "value": commit }));
        }
        if let Some(parent) = run.tags.get("parent_run_id") {
            tags.push(json!({ "key": "mlflow.parentRunId", "value": parent }));
        }
        let created = self.client.call(
            "POST",
            "runs/create",
            Some(json!({
                "experiment_id": experiment_id,
                "run_name": run.name,
                "start_time": (run.start_time * 1000.0) as i64,
                "tags": tags,
            })),
        )?;
        let info = &created["run"]["info"];
        let state = State {
            tracking_uri: self.client.server.uri.clone(),
            experiment_id,
            run_id: id_of(&info["run_id"])?,
            artifact_uri: info["artifact_uri"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            sent_lines: 0,
        };
        let params: Vec<Value> = run
            .params
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v.to_string() }))
            .collect();
        for batch in params.chunks(MAX_PARAMS_PER_BATCH) {
            self.client.call(
                "POST",
                "runs/log-batch",
                Some(json!({ "run_id": state.run_id, "params": batch })),
            )?;
        }
        Ok(state)
    }

    /// Tells `kiln sync` to send only the lines after the first `lines` (already on the server).
    pub fn skip_lines(&mut self, lines: usize) {
        self.skip = lines;
    }
}

impl Tracker for Mlflow {
    fn name(&self) -> &'static str {
        "mlflow"
    }

    fn start(&mut self, run: &RunInfo) -> Result<()> {
        let earlier =
            State::read(&self.run_dir)?.filter(|s| s.tracking_uri == self.client.server.uri);
        let state = match earlier {
            Some(mut state) => {
                self.client.call(
                    "POST",
                    "runs/update",
                    Some(json!({ "run_id": state.run_id, "status": "RUNNING" })),
                )?;
                // A resumed run dropped the lines after its checkpoint from metrics.jsonl.
                let lines = count_lines(&self.run_dir.join("metrics.jsonl"));
                state.sent_lines = state.sent_lines.min(lines);
                state
            }
            None => self.create_run(run)?,
        };
        state.write(&self.run_dir)?;
        self.state = Some(state);
        Ok(())
    }

    fn record(&mut self, record: &Record) -> Result<()> {
        self.seen += 1;
        if self.seen <= self.skip {
            return Ok(());
        }
        let (step, timestamp) = (record.step(), (record.time * 1000.0).round() as i64);
        for (key, value) in record.scalars() {
            self.pending
                .push(json!({ "key": key, "value": value, "timestamp": timestamp, "step": step }));
        }
        self.pending_records += 1;
        let eval = record.fields.get("split").and_then(Value::as_str) != Some("train");
        if eval
            || self.pending.len() >= MAX_METRICS_PER_BATCH
            || self.last_flush.elapsed() >= FLUSH_EVERY
        {
            self.flush()?;
        }
        Ok(())
    }

    fn end(&mut self, status: RunStatus) -> Result<()> {
        let flushed = self.flush();
        let state = self.state()?.clone();
        let mut uploads = Ok(());
        for name in ["config.toml", "metrics.jsonl"] {
            let file = self.run_dir.join(name);
            if file.exists() {
                uploads = uploads.and(self.client.upload(&state.artifact_uri, name, &file));
            }
        }
        if self.log_weights {
            // The newest checkpoint's weights (`latest` names its directory).
            let latest = std::fs::read_to_string(self.run_dir.join("latest")).ok();
            let file = latest.map(|l| self.run_dir.join(l.trim()).join("model.safetensors"));
            if let Some(file) = file.filter(|f| f.exists()) {
                let name = "weights/model.safetensors";
                uploads = uploads.and(self.client.upload(&state.artifact_uri, name, &file));
            }
        }
        self.client.call(
            "POST",
            "runs/update",
            Some(json!({
                "run_id": state.run_id,
                "status": status.name(),
                "end_time": (now() * 1000.0) as i64,
            })),
        )?;
        flushed.and(uploads)
    }
}

/// A sweep's parent run: `existing` (a sweep run again) set `RUNNING`, or a new run named `name`
/// whose children are the trials (their `mlflow.parentRunId` tag). Returns its id.
pub fn parent_run(server: Server, name: &str, existing: Option<&str>) -> Result<String> {
    let client = Client::new(server);
    if let Some(id) = existing {
        client.call(
            "POST",
            "runs/update",
            Some(json!({ "run_id": id, "status": "RUNNING" })),
        )?;
        return Ok(id.to_string());
    }
    let experiment_id = client.experiment_id()?;
    let created = client.call(
        "POST",
        "runs/create",
        Some(json!({
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": (now() * 1000.0) as i64,
            "tags": [{ "key": "mlflow.source.name", "value": "kiln sweep" }],
        })),
    )?;
    id_of(&created["run"]["info"]["run_id"])
}

/// Ends a run (a sweep's parent) with `status`, logging `metrics` (`(key, value)`) at step 0.
pub fn end_run(
    server: Server,
    id: &str,
    status: RunStatus,
    metrics: &[(String, f64)],
) -> Result<()> {
    let client = Client::new(server);
    let time = (now() * 1000.0) as i64;
    let metrics: Vec<Value> = metrics
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v, "timestamp": time, "step": 0 }))
        .collect();
    if !metrics.is_empty() {
        client.call(
            "POST",
            "runs/log-batch",
            Some(json!({ "run_id": id, "metrics": metrics })),
        )?;
    }
    client
        .call(
            "POST",
            "runs/update",
            Some(json!({ "run_id": id, "status": status.name(), "end_time": time })),
        )
        .map(drop)
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[cfg(test)]
mod tests {
    use super::client::encode;
    use super::*;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            set.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_uri_must_be_a_server() {
        let e = Server::from_vars(Some("file:///tmp/mlruns"), None, vars(&[])).unwrap_err();
        assert!(
            format!("{e:#}").contains("must start with http:// or https://"),
            "{e:#}"
        );
        let s = Server::from_vars(Some("http://127.0.0.1:5000/"), Some("exp"), vars(&[])).unwrap();
        assert_eq!(
            (s.uri.as_str(), s.experiment.as_str()),
            ("http://127.0.0.1:5000", "exp")
        );
        let e = Server::from_vars(None, None, vars(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("MLFLOW_TRACKING_URI"), "{e:#}");
    }

    #[test]
    fn server_uri_experiment_and_credentials_come_from_mlflows_variables() {
        let s = Server::from_vars(
            None,
            None,
            vars(&[
                ("MLFLOW_TRACKING_URI", "https://mlflow.example.org/"),
                ("MLFLOW_EXPERIMENT_NAME", "vision"),
                ("MLFLOW_TRACKING_USERNAME", "ada"),
                ("MLFLOW_TRACKING_PASSWORD", "s3cret:x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.uri, "https://mlflow.example.org");
        assert_eq!(s.experiment, "vision");
        // base64("ada:s3cret:x")
        assert_eq!(s.auth.as_deref(), Some("Basic YWRhOnMzY3JldDp4"));
        assert_eq!(s.trust, Trust::Public);
        // A token wins over a user name (as in MLflow); the config's experiment over the variable.
        let s = Server::from_vars(
            Some("http://h:1"),
            Some("mine"),
            vars(&[
                ("MLFLOW_TRACKING_TOKEN", "tok"),
                ("MLFLOW_TRACKING_USERNAME", "ada"),
                ("MLFLOW_EXPERIMENT_NAME", "vision"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (s.auth.as_deref(), s.experiment.as_str()),
            (Some("Bearer tok"), "mine")
        );
        let s = Server::from_vars(Some("http://h:1"), None, vars(&[])).unwrap();
        assert_eq!((s.auth, s.experiment.as_str()), (None, "Default"));
    }

    #[test]
    fn tls_settings_come_from_mlflows_variables() {
        let url = Some("https://h:1");
        let trust = |set: &[(&str, &str)]| Server::from_vars(url, None, vars(set)).map(|s| s.trust);
        assert_eq!(
            trust(&[("MLFLOW_TRACKING_INSECURE_TLS", "true")]).unwrap(),
            Trust::Insecure
        );
        assert_eq!(
            trust(&[("MLFLOW_TRACKING_INSECURE_TLS", "false")]).unwrap(),
            Trust::Public
        );
        for (set, needle) in [
            (
                &[("MLFLOW_TRACKING_INSECURE_TLS", "yes please")][..],
                "expected true or false",
            ),
            (
                &[
                    ("MLFLOW_TRACKING_INSECURE_TLS", "true"),
                    ("MLFLOW_TRACKING_SERVER_CERT_PATH", "/ca.pem"),
                ][..],
                "both set",
            ),
            (
                &[("MLFLOW_TRACKING_SERVER_CERT_PATH", "/nonexistent/ca.pem")][..],
                "/nonexistent/ca.pem",
            ),
            (
                &[("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/client.pem")][..],
                "client certificates",
            ),
        ] {
            let e = trust(set).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{set:?}: {e:#}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("my exp/1"), "my%20exp%2F1");
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_it_within_the_connect_timeout() {
        // A port nothing listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let uri = format!("http://127.0.0.1:{port}");
        let server = Server::from_vars(Some(&uri), Some("e"), vars(&[])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut t = Mlflow::new(server, dir.path().to_path_buf());
        let began = Instant::now();
        let e = t.start(&RunInfo::default()).unwrap_err();
        assert!(began.elapsed() < Duration::from_secs(4));
        assert!(
            format!("{e:#}").contains(&format!("127.0.0.1:{port}")),
            "{e:#}"
        );
    }
}
