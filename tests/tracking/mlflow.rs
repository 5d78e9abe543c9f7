//! A real MLflow tracking server (PyPI `mlflow==3.17.2`, SQLite backend, on 127.0.0.1, started
//! here) gets Kiln's runs: params, every metric with its steps, tags and artifacts read back over
//! MLflow's REST API; a resumed run continues the same MLflow run; a signal ends it KILLED; a
//! server stopped mid-run or a listener that never answers leaves training as it would be
//! without tracking, within the exit timeout, and `kiln sync` sends the rest, once; a run that
//! fails (its disk full) ends FAILED.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{kiln, repo_root, stderr};
use super::mlflow_server::{free_port, mlflow_bin, Server};

fn api(uri: &str, endpoint: &str) -> Value {
    ureq::get(&format!("{uri}/api/2.0/mlflow/{endpoint}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {endpoint}: {e}"))
        .into_json()
        .unwrap()
}

fn run_id(run: &Path) -> String {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("mlflow.json")).unwrap()).unwrap();
    state["run_id"].as_str().unwrap().to_string()
}

fn status(uri: &str, id: &str) -> String {
    api(uri, &format!("runs/get?run_id={id}"))["run"]["info"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every scalar of metrics.jsonl as `{tag: [(step, value)]}`: `<split or event>/<field>`.
fn scalars(run: &Path) -> std::collections::BTreeMap<String, Vec<(u64, f64)>> {
    let mut out = std::collections::BTreeMap::<String, Vec<(u64, f64)>>::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let rec: Value = serde_json::from_str(line).unwrap();
        let Some(group) = rec["split"].as_str().or(rec["event"].as_str()) else {
            continue;
        };
        for (key, value) in rec.as_object().unwrap() {
            if !["step", "time", "split", "event"].contains(&key.as_str()) && value.is_number() {
                out.entry(format!("{group}/{key}"))
                    .or_default()
                    .push((rec["step"].as_u64().unwrap(), value.as_f64().unwrap()));
            }
        }
    }
    out
}

/// MLflow holds every scalar of metrics.jsonl, each point once, and nothing else.
fn assert_metrics_match(uri: &str, id: &str, run: &Path) {
    let want = scalars(run);
    let run_data = &api(uri, &format!("runs/get?run_id={id}"))["run"]["data"];
    let keys: Vec<&str> = run_data["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys.len(),
        want.len(),
        "MLflow metrics {keys:?}, metrics.jsonl {:?}",
        want.keys()
    );
    for (tag, points) in &want {
        let history = api(
            uri,
            &format!("metrics/get-history?run_id={id}&metric_key={tag}&max_results=10000"),
        );
        let mut got: Vec<(u64, f64)> = history["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
            .collect();
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(&got, points, "{tag}: MLflow against metrics.jsonl");
    }
}

fn train_args<'a>(out: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "configs/smoke.toml",
        "--backend",
        "flex",
        "--set",
        out,
        "--set",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("run.name=\"{name}\""));
    for e in extra {
        args.extend(["--set".to_string(), e.to_string()]);
    }
    args
}

fn spawn_kiln(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let began = Instant::now();
    while !cond() {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "waited 120 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn model(run: &Path, step: usize) -> Vec<u8> {
    std::fs::read(run.join(format!("step-{step}/model.safetensors"))).unwrap()
}

#[test]
fn a_real_mlflow_server_gets_every_run_and_what_it_missed() {
    let Some(bin) = mlflow_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(&bin, tmp.path(), port);
    let uri = server.uri.clone();
    let out = format!("run.output_dir=\"{}\"", tmp.path().join("runs").display());
    let to_mlflow = format!("tracking.mlflow=\"{uri}\"");
    let tracked = [to_mlflow.as_str(), "tracking.experiment=\"kiln-e2e\""];

    // A whole run: params, every metric, tags, artifacts (the weights too), FINISHED.
    let o = kiln(
        &train_args(
            &out,
            "whole",
            &[tracked[0], tracked[1], "tracking.log_weights=true"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = tmp.path().join("runs/whole");
    let id = run_id(&whole);
    let got = api(&uri, &format!("runs/get?run_id={id}"))["run"].clone();
    assert_eq!(got["info"]["status"], "FINISHED");
    assert_eq!(got["info"]["run_name"], "whole");
    let experiment = api(&uri, "experiments/get-by-name?experiment_name=kiln-e2e");
    assert_eq!(
        got["info"]["experiment_id"],
        experiment["experiment"]["experiment_id"]
    );
    let pairs = |what: &str| -> Vec<(String, String)> {
        got["data"][what]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["key"].as_str().unwrap().into(),
                    p["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let params = pairs("params");
    for (k, v) in [
        ("optimizer.lr", "0.003"),
        ("model.hidden", "[32]"),
        ("train.max_steps", "40"),
        ("run.seed", "7"),
    ] {
        assert!(
            params.contains(&(k.into(), v.into())),
            "param {k}={v} not in {params:?}"
        );
    }
    assert!(
        !params.iter().any(|(k, _)| k.starts_with("tracking.")),
        "{params:?}"
    );
    let tags = pairs("tags");
    for (k, v) in [
        ("backend", "flex"),
        ("workers", "1"),
        ("kiln.version", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(
            tags.contains(&(k.into(), v.into())),
            "tag {k}={v} not in {tags:?}"
        );
    }
    assert_metrics_match(&uri, &id, &whole);
    let files = api(&uri, &format!("artifacts/list?run_id={id}"))["files"].clone();
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"config.toml")
            && names.contains(&"metrics.jsonl")
            && names.contains(&"weights"),
        "{names:?}"
    );
    let weights =
        api(&uri, &format!("artifacts/list?run_id={id}&path=weights"))["files"][0].clone();
    assert_eq!(weights["path"], "weights/model.safetensors");
    let size = std::fs::metadata(whole.join("step-40/model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(weights["file_size"].as_u64(), Some(size), "{weights}");

    // Paused at step 20 (KILLED), then resumed: the same MLflow run, RUNNING again, FINISHED.
    let mut args = train_args(&out, "resumed", &tracked);
    args.extend(["--until-step".into(), "20".into()]);
    let o = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let resumed = tmp.path().join("runs/resumed");
    let id = run_id(&resumed);
    assert_eq!(status(&uri, &id), "KILLED");
    let o = kiln(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        run_id(&resumed),
        id,
        "the resumed run continues the same MLflow run"
    );
    assert_eq!(status(&uri, &id), "FINISHED");
    assert_metrics_match(&uri, &id, &resumed);

    // SIGTERM: the run stops after a checkpoint, and MLflow has it KILLED.
    let mut child = spawn_kiln(&train_args(
        &out,
        "signalled",
        &[tracked[0], tracked[1], "train.max_steps=100000"],
    ));
    let signalled = tmp.path().join("runs/signalled");
    wait_for("the first checkpoint", || {
        signalled.join("step-20").exists()
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "an interrupted run exits 0"
    );
    assert_eq!(status(&uri, &run_id(&signalled)), "KILLED");

    // The same 200 steps without tracking: the weights every tracked run below must reach.
    let long = ["train.max_steps=200", "checkpoint.every_steps=100"];
    let began = Instant::now();
    let o = kiln(
        &train_args(&out, "reference", &long)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let reference_secs = began.elapsed().as_secs_f64();
    let reference = model(&tmp.path().join("runs/reference"), 200);

    // The server stops mid-run: training goes on to the same weights, within the exit timeout.
    let timeout = "tracking.exit_timeout_secs=3";
    let began = Instant::now();
    let child = spawn_kiln(&train_args(
        &out,
        "stopped",
        &[tracked[0], tracked[1], long[0], long[1], timeout],
    ));
    let stopped = tmp.path().join("runs/stopped");
    wait_for("the first points in MLflow", || {
        std::fs::read_to_string(stopped.join("mlflow.json"))
            .is_ok_and(|s| !s.contains("\"sent_lines\": 0"))
    });
    server.stop();
    let o = child.wait_with_output().unwrap();
    let secs = began.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        model(&stopped, 200) == reference,
        "tracking changed the weights"
    );
    assert!(
        secs < reference_secs + 3.0 + 15.0,
        "{secs:.1} s against {reference_secs:.1} s untracked"
    );
    assert!(
        log.contains("tracking incomplete") && log.contains("kiln sync"),
        "{log}"
    );

    // Back up, `kiln sync` sends the rest; again, it sends nothing and MLflow is unchanged.
    let server = Server::start(&bin, tmp.path(), port);
    let sync = |run: &Path| -> Value {
        let o = kiln(&["sync", run.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = sync(&stopped);
    assert!(
        first["mlflow"]["sent_lines"].as_u64().unwrap() > 0,
        "{first}"
    );
    let id = run_id(&stopped);
    assert_eq!(first["mlflow"]["run_id"], id.as_str());
    assert_eq!(status(&uri, &id), "FINISHED");
    assert_metrics_match(&uri, &id, &stopped);
    let again = sync(&stopped);
    assert_eq!(again["mlflow"]["sent_lines"], 0, "{again}");
    assert_metrics_match(&uri, &id, &stopped);

    // A listener that accepts and never answers: the same weights, within the exit timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_uri = format!(
        "tracking.mlflow=\"http://{}\"",
        silent.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    let began = Instant::now();
    let o = kiln(
        &train_args(&out, "silent", &[&silent_uri, long[0], long[1], timeout])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let secs = began.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        model(&tmp.path().join("runs/silent"), 200) == reference,
        "tracking changed the weights"
    );
    assert!(
        secs < reference_secs + 3.0 + 15.0,
        "{secs:.1} s against {reference_secs:.1} s untracked"
    );
    assert!(
        stderr(&o).contains("mlflow: did not finish within the exit timeout"),
        "{}",
        stderr(&o)
    );

    // A run that fails (its disk fills up at the first checkpoint) ends FAILED in MLflow, with
    // what it logged before.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let args = train_args(
        &format!("run.output_dir=\"{}\"", full.display()),
        "full-disk",
        &tracked,
    );
    if let Some(o) = on_a_full_disk(&full, &args) {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("No space left on device"),
            "{}",
            stderr(&o)
        );
        let runs = server.runs_of("kiln-e2e");
        let info = &runs
            .iter()
            .find(|r| r["info"]["run_name"] == "full-disk")
            .unwrap_or_else(|| panic!("no run 'full-disk': {runs:?}"))["info"];
        assert_eq!(info["status"], "FAILED", "{info}");
        let id = info["run_id"].as_str().unwrap();
        let history = api(
            &uri,
            &format!("metrics/get-history?run_id={id}&metric_key=train/loss"),
        );
        let steps: Vec<u64> = history["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        // What it logged before the failure: the step-20 checkpoint (300 KB) cannot fit, and the
        // background saver's error stops the run at its next step or checkpoint, so up to 40.
        assert!(
            steps.first() == Some(&5) && steps.last() <= Some(&40),
            "{steps:?}"
        );
    }
    drop(server);
}

/// `kiln ARGS` in a private mount namespace where `dir` is a 150 KiB tmpfs: a disk that fills up
/// at the smoke run's first checkpoint. `None` where this test may not do that (it needs root and
/// util-linux's unshare, as CI has).
fn on_a_full_disk(dir: &Path, args: &[String]) -> Option<std::process::Output> {
    let may = Command::new("unshare")
        .args(["--mount", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !may {
        eprintln!("SKIPPED: the full-disk run (needs root and unshare)");
        return None;
    }
    let script = format!(
        "mount -t tmpfs -o size=150k tmpfs {} && exec \"$0\" \"$@\"",
        dir.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .output()
        .unwrap();
    Some(out)
}
