//! `kiln sweep`: a 4-trial sweep of the smoke config gives the ranked table; killed in the middle
//! and run again, it does not repeat finished trials and ends with the same table. Two trials at
//! a time, with MLflow on: an MLflow parent run with the trials as children, and diverging
//! trials recorded as failed and ranked last.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{kiln, repo_root, stderr};
use super::mlflow_server::{free_port, mlflow_bin, Server};

fn sweep_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "base = \"{}\"\nname = \"{name}\"\noutput_dir = \"{}\"\nmetric = \"valid/loss\"\n\n[parameters]\n\"optimizer.lr\" = [1e-3, 3e-3]\n\"model.hidden\" = [[16], [32]]\n",
        repo_root().join("configs/smoke.toml").display(),
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn state(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("sweep.json")).unwrap())
        .unwrap()
}

/// `(trial, value, status)` in rank order.
fn ranking(outcome: &Value) -> Vec<(String, String)> {
    let trials = outcome["state"]["trials"].as_array().unwrap();
    let mut rows: Vec<(String, f64)> = trials
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["value"].as_f64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    rows.into_iter().map(|(n, v)| (n, format!("{v}"))).collect()
}

#[test]
fn an_interrupted_sweep_resumes_to_the_same_ranking() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = kiln(&[
        "sweep",
        sweep_file(tmp.path(), "whole").to_str().unwrap(),
        "--json",
    ]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let whole: Value = serde_json::from_slice(&whole.stdout).unwrap();
    assert!(whole["complete"].as_bool().unwrap());
    let trials = whole["state"]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    assert!(trials.iter().all(|t| t["status"] == "finished"), "{whole}");
    assert_eq!(trials[0]["name"], "t000-hidden=16-lr=0.001");
    let best = ranking(&whole)[0].0.clone();
    assert_eq!(
        whole["best_config"].as_str().unwrap(),
        tmp.path()
            .join("whole")
            .join(&best)
            .join("config.toml")
            .to_str()
            .unwrap()
    );

    // The same sweep, stopped by SIGTERM once its first trial has finished.
    let file = sweep_file(tmp.path(), "cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["sweep", file.to_str().unwrap()])
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while !tmp.path().join("cut/sweep.json").exists()
        || state(tmp.path(), "cut")["trials"][0]["status"] != "finished"
    {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the first trial did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "an interrupted sweep says so"
    );
    let cut = state(tmp.path(), "cut");
    let pending = cut["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] != "finished")
        .count();
    assert!(pending >= 1, "nothing was left to do: {cut}");
    let first_log = tmp.path().join("cut/logs/t000-hidden=16-lr=0.001.log");
    let first_written = std::fs::metadata(&first_log).unwrap().modified().unwrap();

    let again = kiln(&["sweep", file.to_str().unwrap(), "--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        std::fs::metadata(&first_log).unwrap().modified().unwrap(),
        first_written,
        "a finished trial ran again"
    );
    assert_eq!(
        ranking(&again),
        ranking(&whole),
        "the resumed sweep's ranking differs from the uninterrupted one's"
    );
    let table = kiln(&["sweep", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().next().unwrap().starts_with("rank  trial") && text.contains("best: "),
        "{text}"
    );
}

#[test]
fn a_bad_trial_key_is_refused_before_any_trial_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    let text = format!(
        "base = \"{}\"\noutput_dir = \"{}\"\nmetric = \"valid/loss\"\n[parameters]\n\"optimizer.lrr\" = [1e-3]\n",
        repo_root().join("configs/smoke.toml").display(),
        tmp.path().display()
    );
    std::fs::write(&path, text).unwrap();
    let o = kiln(&["sweep", path.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("trial t000-lrr=0.001")
            && e.contains("unknown field `lrr`")
            && e.contains("optimizer"),
        "{e}"
    );
    assert!(
        !tmp.path().join("bad").exists(),
        "nothing is written for a sweep that cannot run"
    );
}

#[test]
fn two_trials_at_a_time_report_to_one_mlflow_parent_and_diverging_ones_rank_last() {
    let Some(bin) = mlflow_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, tmp.path(), free_port());
    // The smoke config reporting to MLflow; lr = 1e30 makes the loss NaN.
    let base = tmp.path().join("base.toml");
    let smoke = std::fs::read_to_string(repo_root().join("configs/smoke.toml")).unwrap();
    std::fs::write(
        &base,
        format!(
            "{smoke}\n[tracking]\nmlflow = \"{}\"\nexperiment = \"sweeps\"\n",
            server.uri
        ),
    )
    .unwrap();
    let file = tmp.path().join("par.toml");
    std::fs::write(
        &file,
        format!(
            "base = \"base.toml\"\noutput_dir = \"{}\"\nmetric = \"valid/loss\"\n[parameters]\n\"optimizer.lr\" = [3e-3, 1e30]\n\"model.hidden\" = [[16], [32]]\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let o = kiln(&["sweep", file.to_str().unwrap(), "--jobs", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let outcome: Value = serde_json::from_slice(&o.stdout).unwrap();
    let trials = outcome["state"]["trials"].as_array().unwrap();
    let status = |t: &Value| t["status"].as_str().unwrap().to_string();
    let ranked: Vec<(String, String)> = outcome["ranked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().into(), status(t)))
        .collect();
    assert_eq!(ranked.len(), 4, "{outcome}");
    for (i, (name, st)) in ranked.iter().enumerate() {
        let diverged = name.ends_with("lr=1e30");
        assert_eq!(
            diverged,
            i >= 2,
            "the diverging trials rank last: {ranked:?}"
        );
        assert_eq!(st, if diverged { "failed" } else { "finished" }, "{name}");
    }

    // Two at a time: trials' training overlapped (the times of their metrics.jsonl lines).
    let span = |name: &str| -> (f64, f64) {
        let text = std::fs::read_to_string(tmp.path().join("par").join(name).join("metrics.jsonl"))
            .unwrap();
        let times: Vec<f64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["time"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        (times[0], *times.last().unwrap())
    };
    let spans: Vec<(f64, f64)> = trials
        .iter()
        .map(|t| span(t["name"].as_str().unwrap()))
        .collect();
    let overlapping = (0..4)
        .flat_map(|i| (i + 1..4).map(move |j| (i, j)))
        .filter(|&(i, j)| spans[i].0 < spans[j].1 && spans[j].0 < spans[i].1)
        .count();
    assert!(overlapping >= 1, "no two trials ran at once: {spans:?}");

    // MLflow: a parent run named after the sweep, FINISHED, with best/valid/loss equal to the
    // best trial's; each trial a child run of it.
    let runs = server.runs_of("sweeps");
    let tag = |r: &Value, key: &str| -> Option<String> {
        r["data"]["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .and_then(|t| t["value"].as_str().map(String::from))
    };
    let search = |pick: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        runs.iter().filter(|r| pick(r)).cloned().collect()
    };
    let parents = search(&|r| r["info"]["run_name"] == "par");
    assert_eq!(parents.len(), 1, "{parents:?}");
    let parent = &parents[0];
    assert_eq!(parent["info"]["status"], "FINISHED");
    let parent_id = parent["info"]["run_id"].as_str().unwrap();
    let best = parent["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "best/valid/loss")
        .unwrap_or_else(|| panic!("no best/valid/loss: {parent}"))["value"]
        .as_f64()
        .unwrap();
    assert_eq!(best, outcome["ranked"][0]["value"].as_f64().unwrap());
    let children = search(&|r| tag(r, "mlflow.parentRunId").as_deref() == Some(parent_id));
    let mut names: Vec<&str> = children
        .iter()
        .map(|r| r["info"]["run_name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<&str> = trials.iter().map(|t| t["name"].as_str().unwrap()).collect();
    want.sort();
    assert_eq!(names, want);
}
