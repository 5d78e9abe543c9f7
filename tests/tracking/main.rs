//! Experiment tracking as users see it: TensorBoard's own reader (EventAccumulator, from PyPI's
//! `tensorboard`) reads back what `kiln train` wrote with `tracking.tensorboard` on; a real MLflow
//! server (mlflow.rs; over HTTPS with a login, mlflow_secure.rs) gets the run over its REST API; `kiln plot` and `kiln runs` (views.rs) and
//! `kiln sweep` (sweep.rs) compare runs.

#[path = "../common/mod.rs"]
mod common;
mod mlflow;
mod mlflow_secure;
mod mlflow_server;
mod sweep;
mod views;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kiln, python_with, repo_root, stderr, train};
use serde_json::Value;

/// TensorBoard's view of a run, compared with its metrics.jsonl by tests/python/check_tb.py.
fn tensorboard_view(python: &Path, run: &Path, tb: &Path) -> Value {
    let out = Command::new(python)
        .args(["tests/python/check_tb.py"])
        .args([run, tb])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let view: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "check_tb.py: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "TensorBoard disagrees with metrics.jsonl: {:#}",
        view["problems"]
    );
    view
}

#[test]
fn tensorboard_reads_every_scalar_the_config_and_the_hparams() {
    let Some(python) = python_with("tensorboard") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["tracking.tensorboard=true"],
    );
    let view = tensorboard_view(&python, &run, &run.join("tb"));
    let tags: Vec<&str> = view["scalar_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for tag in [
        "train/loss",
        "train/lr",
        "train/accuracy",
        "valid/loss",
        "valid/accuracy",
        "test/accuracy",
        "checkpoint/write_secs",
    ] {
        assert!(tags.contains(&tag), "{tag} not in {tags:?}");
    }
    // smoke.toml: 40 steps logged every 5, evaluated at 20 and 40, then tested: dozens of points.
    assert!(view["points"].as_u64().unwrap() > 50, "{view}");
    assert!(
        view["config"].as_str().unwrap().contains("max_steps = 40"),
        "{view}"
    );
    assert_eq!(view["hparams"]["optimizer.lr"], 3e-3);
    assert_eq!(view["hparams"]["model.hidden"], "[32]");
    assert_eq!(view["hparams"]["run.seed"], 7.0);
    assert!(
        view["hparams"].get("tracking.tensorboard").is_none(),
        "{view}"
    );
    assert_eq!(view["end_status"], 1, "STATUS_SUCCESS");
}

#[test]
fn a_resumed_run_reads_as_one_in_tensorboard() {
    let Some(python) = python_with("tensorboard") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The first attempt runs to step 40, logging every 5 steps; the second resumes from the
    // checkpoint at step 20 logging every 10: its points after step 20 must replace the first
    // attempt's (25, 35 vanish), as metrics.jsonl's do.
    let run = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["tracking.tensorboard=true"],
    );
    let from = run.join("step-20");
    let out = kiln(&[
        "train",
        "--resume",
        from.to_str().unwrap(),
        "--set",
        "train.log_every=10",
    ]);
    assert!(out.status.success(), "resume failed:\n{}", stderr(&out));
    let files = std::fs::read_dir(run.join("tb")).unwrap().count();
    assert_eq!(files, 2, "one event file per attempt");
    let view = tensorboard_view(&python, &run, &run.join("tb"));
    let steps: Vec<u64> = common::events(&run, "train")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        [5, 10, 15, 20, 30, 40],
        "metrics.jsonl after the resume"
    );
    assert_eq!(view["end_status"], 1);
}

#[test]
fn a_tensorboard_directory_holds_each_run_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir: PathBuf = tmp.path().join("tb-logs");
    let set = format!("tracking.tensorboard=\"{}\"", logdir.display());
    let run = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &[&set, "train.max_steps=10"],
    );
    assert!(!run.join("tb").exists());
    let files: Vec<_> = std::fs::read_dir(logdir.join("smoke")).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[test]
fn tracking_keys_may_change_on_resume_and_do_not_change_the_config_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["train.max_steps=20"],
    );
    let plain = std::fs::read_to_string(run.join("step-20/state.json")).unwrap();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        !config.contains("[tracking]"),
        "a config without [tracking] is written as before"
    );
    let out = kiln(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        "train.max_steps=30",
        "--set",
        "tracking.tensorboard=true",
        "--set",
        "tracking.exit_timeout_secs=5",
    ]);
    assert!(
        out.status.success(),
        "resume with tracking on failed:\n{}",
        stderr(&out)
    );
    let hash = |s: &str| serde_json::from_str::<Value>(s).unwrap()["config_hash"].clone();
    let resumed = std::fs::read_to_string(run.join("step-30/state.json")).unwrap();
    assert_eq!(hash(&plain), hash(&resumed));
    assert!(run.join("tb").is_dir());
}
