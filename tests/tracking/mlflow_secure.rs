//! An MLflow server as teams run it: HTTPS with a certificate of their own CA and MLflow's
//! basic-auth app. Kiln reaches it with MLflow's variables (MLFLOW_TRACKING_SERVER_CERT_PATH or
//! MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_USERNAME/PASSWORD), says what to set when the
//! certificate or the login is missing, and MLflow's own Python client reads the runs back.

use std::process::Command;

use serde_json::Value;

use super::common::{events, repo_root, stderr};
use super::mlflow_server::{free_port, mlflow_bin, mlflow_python, Server, ADMIN};

/// `kiln train` of the smoke config (10 steps) reporting to `uri`, with `vars` set and no other
/// MLflow variable; its stderr. The exit timeout is generous: the basic-auth app checks every
/// request against its own SQLite store, slow on a loaded 2-core machine, and this test is about
/// what arrives, not when (mlflow.rs tests the timeout).
fn train(out: &str, name: &str, uri: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["train", "configs/smoke.toml", "--backend", "flex"])
        .args(["--set", &format!("run.output_dir=\"{out}\"")])
        .args(["--set", &format!("run.name=\"{name}\"")])
        .args(["--set", "train.max_steps=10"])
        .args(["--set", &format!("tracking.mlflow=\"{uri}\"")])
        .args(["--set", "tracking.experiment=\"secure\""])
        .args(["--set", "tracking.exit_timeout_secs=60"])
        .current_dir(repo_root())
        .env("KILN_LOG", "warn");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MLFLOW_")) {
        cmd.env_remove(k);
    }
    cmd.envs(vars.iter().copied());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn https_with_a_private_ca_and_basic_auth() {
    let Some(bin) = mlflow_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_secure(&bin, dir.path(), free_port());
    let ca = server.ca.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let out_dir = dir.path().join("runs");
    let out = out_dir.to_str().unwrap();
    let login = [
        ("MLFLOW_TRACKING_USERNAME", ADMIN.0),
        ("MLFLOW_TRACKING_PASSWORD", ADMIN.1),
    ];

    // The CA is not a public one: training ends as usual, with one line saying what to set.
    let err = train(out, "unknown-ca", &server.uri, &login);
    assert!(
        err.contains("tracking incomplete")
            && err.contains("UnknownIssuer")
            && err.contains("MLFLOW_TRACKING_SERVER_CERT_PATH"),
        "{err}"
    );
    // The certificate is trusted now, but nobody logged in.
    let err = train(
        out,
        "no-login",
        &server.uri,
        &[("MLFLOW_TRACKING_SERVER_CERT_PATH", ca)],
    );
    assert!(
        err.contains("HTTP 401") && err.contains("MLFLOW_TRACKING_USERNAME"),
        "{err}"
    );
    // Both: everything arrives; and with verification off (encrypted, not authenticated).
    let with_ca = [login[0], login[1], ("MLFLOW_TRACKING_SERVER_CERT_PATH", ca)];
    let insecure = [login[0], login[1], ("MLFLOW_TRACKING_INSECURE_TLS", "true")];
    for (name, vars) in [("private-ca", &with_ca), ("insecure", &insecure)] {
        let err = train(out, name, &server.uri, vars);
        assert!(!err.contains("tracking incomplete"), "{name}: {err}");
    }

    // MLflow's client, logged in and trusting the CA, sees the two complete runs only.
    let read = Command::new(mlflow_python(&bin))
        .args([
            "tests/python/check_mlflow.py",
            "runs",
            &server.uri,
            "secure",
        ])
        .envs(with_ca)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", stderr(&read));
    let runs: Vec<Value> = serde_json::from_slice(&read.stdout).unwrap();
    let mut names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["insecure", "private-ca"]);
    for run in &runs {
        let name = run["name"].as_str().unwrap();
        assert_eq!(run["status"], "FINISHED", "{name}");
        assert_eq!(run["params"]["train.max_steps"], "10", "{name}");
        let losses: Vec<(u64, f64)> = events(&out_dir.join(name), "train")
            .iter()
            .map(|e| (e["step"].as_u64().unwrap(), e["loss"].as_f64().unwrap()))
            .collect();
        let mut sent: Vec<(u64, f64)> = run["metrics"]["train/loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        sent.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(sent, losses, "{name}: MLflow against metrics.jsonl");
    }
}
