//! End-to-end tests of data-parallel training on the real `kiln` binary: MPI processes
//! (`kiln launch`, mpirun; builds with the `mpi` feature) and devices of one process
//! (`--devices`, burn-collective), against one worker with a batch as large as all of theirs.
//!
//! Tolerance: workers compute the same sums as one worker in a different order (each worker sums
//! its shard, then the all-reduce adds the shards), so weights agree to float rounding, not bit
//! for bit. After 100 AdamW steps of the smoke MLP the observed difference is around 1e-7; the
//! tests allow 1e-5 absolute on the weights (they are O(0.1)) and 1e-5 relative on the losses.
//! The GPT gets 1e-4 on the weights: AdamW divides each update by the root of the running squared
//! gradient, so where a gradient is near zero a rounding-level difference becomes a visible part
//! of an update of up to lr = 3e-3; after 12 steps the observed difference is 2.2e-5.
//! Dropout is off in these comparisons: each worker draws its own masks, so a run with dropout
//! matches a one-worker run in distribution, not number for number.

mod common;

use std::path::{Path, PathBuf};

use common::{events, fails_with, kiln, max_weight_diff, stderr};
use serde_json::Value;
use tempfile::tempdir;

const SMOKE: &str = "configs/smoke.toml";
const SMOKE_GPT: &str = "configs/smoke-gpt.toml";
const WEIGHT_TOL: f32 = 1e-5;
const GPT_WEIGHT_TOL: f32 = 1e-4;

/// `kiln <prefix> CONFIG --set ...` into `out/name`; returns the arguments.
fn args(prefix: &[&str], config: &str, out: &Path, name: &str, sets: &[String]) -> Vec<String> {
    let mut a: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    a.extend([config.to_string(), "--backend".into(), "flex".into()]);
    let location = [
        format!("run.output_dir=\"{}\"", out.display()),
        format!("run.name={name}"),
    ];
    for s in location.iter().chain(sets) {
        a.push("--set".into());
        a.push(s.clone());
    }
    a
}

/// Runs kiln and returns the summary JSON it printed (exactly one line: rank 0's).
fn run_ok(a: &[String]) -> Value {
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = kiln(&a);
    assert!(out.status.success(), "kiln {a:?} failed:\n{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(
        lines.len(),
        1,
        "one summary expected (rank 0 only):\n{stdout}"
    );
    serde_json::from_str(lines[0]).unwrap()
}

/// The smoke MLP for `steps` steps with `batch` samples per worker. 9000 training samples in
/// batches of 96 leave a last batch of 72 per epoch, so 100 steps cross an epoch boundary and
/// train once on a partial batch, split unevenly when 96 / workers does not divide 72.
fn mlp_sets(batch: usize, steps: usize) -> Vec<String> {
    vec![
        format!("data.batch_size={batch}"),
        format!("train.max_steps={steps}"),
        "train.log_every=10".into(),
        "train.eval_every=50".into(),
        "checkpoint.every_steps=0".into(),
    ]
}

fn weights(run: &Path, step: usize) -> PathBuf {
    run.join(format!("step-{step}/model.safetensors"))
}

/// Train losses and valid/test results of two runs agree within the tolerance.
fn assert_same_metrics(a: &Path, b: &Path) {
    for split in ["train", "valid", "test"] {
        let (ea, eb) = (events(a, split), events(b, split));
        assert_eq!(ea.len(), eb.len(), "{split} events of {a:?} and {b:?}");
        for (x, y) in ea.iter().zip(&eb) {
            assert_eq!(x["step"], y["step"]);
            let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
            assert!(
                (lx - ly).abs() <= 1e-5 * lx.abs().max(1.0),
                "{split} loss at step {}: {lx} vs {ly}",
                x["step"]
            );
        }
    }
}

/// run.json records the world size and, for each rank in order, its host and device.
fn assert_records_workers(run: &Path, n: usize) {
    let info: Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["world_size"], n, "{info}");
    let devices = info["devices"].as_array().expect("run.json devices");
    assert_eq!(devices.len(), n, "{info}");
    for (rank, d) in devices.iter().enumerate() {
        assert_eq!(d["rank"], rank, "{info}");
        assert!(!d["host"].as_str().unwrap().is_empty(), "{info}");
        assert!(!d["device"].as_str().unwrap().is_empty(), "{info}");
    }
}

fn run_dir(summary: &Value) -> PathBuf {
    PathBuf::from(summary["run_dir"].as_str().unwrap())
}

#[test]
fn devices_of_one_process_match_one_worker_with_a_twice_larger_batch() {
    let dir = tempdir().unwrap();
    let out = dir.path();
    let one = run_ok(&args(&["train"], SMOKE, out, "one", &mlp_sets(96, 100)));
    let mut two_args = args(&["train"], SMOKE, out, "two", &mlp_sets(48, 100));
    two_args.extend(["--devices".into(), "cpu,cpu".into()]);
    let two = run_ok(&two_args);
    assert_eq!(two["workers"], 2);
    assert_eq!(two["engine"], "burn-collective");
    assert_eq!(one["workers"], 1);
    assert_records_workers(&run_dir(&two), 2);
    let diff = max_weight_diff(&weights(&run_dir(&one), 100), &weights(&run_dir(&two), 100));
    assert!(diff <= WEIGHT_TOL, "weights differ by {diff}");
    assert_same_metrics(&run_dir(&one), &run_dir(&two));
    // Every test and valid sample is evaluated once, split over the workers.
    assert_eq!(two["test"]["samples"], 10000);
    assert_eq!(two["valid"]["samples"], 1000);
}

#[test]
fn gpt_on_two_devices_matches_one_worker_with_twice_the_windows() {
    let dir = tempdir().unwrap();
    let out = dir.path();
    let sets = |b: usize| {
        vec![
            format!("data.batch_size={b}"),
            "train.max_steps=12".into(),
            "model.dropout=0.0".into(),
            // The same evaluation windows for both (eval_max_batches counts batches).
            "data.eval_batch_size=8".into(),
        ]
    };
    let one = run_ok(&args(&["train"], SMOKE_GPT, out, "one", &sets(8)));
    let mut two_args = args(&["train"], SMOKE_GPT, out, "two", &sets(4));
    two_args.extend(["--devices".into(), "cpu,cpu".into()]);
    let two = run_ok(&two_args);
    let diff = max_weight_diff(&weights(&run_dir(&one), 12), &weights(&run_dir(&two), 12));
    assert!(diff <= GPT_WEIGHT_TOL, "weights differ by {diff}");
    assert_same_metrics(&run_dir(&one), &run_dir(&two));
}

#[test]
fn resuming_on_the_same_devices_is_exact_and_on_other_counts_needs_force() {
    let dir = tempdir().unwrap();
    let out = dir.path();
    let devices = ["--devices".to_string(), "cpu,cpu".to_string()];
    let sets = |steps: usize| {
        let mut s = mlp_sets(48, steps);
        s.push("checkpoint.every_steps=20".into());
        s
    };
    let mut straight = args(&["train"], SMOKE, out, "straight", &sets(60));
    straight.extend(devices.clone());
    let straight = run_dir(&run_ok(&straight));
    let mut paused = args(&["train"], SMOKE, out, "paused", &sets(60));
    paused.extend(devices.clone());
    paused.extend(["--until-step".into(), "20".into()]);
    let paused = run_dir(&run_ok(&paused));
    let resume = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--resume",
            paused.to_str().unwrap(),
            "--backend",
            "flex",
        ];
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // One worker cannot silently continue a two-worker run: the effective batch would change.
    let a = resume(&[]);
    fails_with(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            "2 data-parallel workers",
            "effective batch 96",
            "this run has 1",
            "--force",
        ],
    );
    let resumed = run_ok(&resume(&["--devices", "cpu,cpu"]));
    assert_eq!(resumed["resumed_from"], 20);
    let a = std::fs::read(weights(&straight, 60)).unwrap();
    let b = std::fs::read(weights(&paused, 60)).unwrap();
    assert!(
        a == b,
        "a resumed two-device run differs from a straight one"
    );

    // With --force, one worker continues the two-worker checkpoint of step 20.
    let step20 = paused.join("step-20");
    let forced = run_ok(
        &[
            "train",
            "--resume",
            step20.to_str().unwrap(),
            "--backend",
            "flex",
            "--force",
            "--until-step",
            "30",
        ]
        .map(String::from),
    );
    assert_eq!(forced["workers"], 1);
    assert_eq!(forced["steps"], 30);
    assert_eq!(forced["resumed_from"], 20);
}

#[test]
fn bad_topologies_are_clear_errors() {
    fails_with(
        &[
            "train",
            SMOKE,
            "--backend",
            "flex",
            "--devices",
            "cpu,cuda:0",
        ],
        &["--devices", "'cuda:0'", "flex", "cpu"],
    );
    // srun without an MPI plugin starts tasks that cannot see each other.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", SMOKE, "--backend", "flex"])
        .current_dir(common::repo_root())
        .env("SLURM_STEP_ID", "0")
        .env("SLURM_STEP_NUM_TASKS", "2")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("srun started 2 tasks") && err.contains("--mpi=pmix"),
        "{err}"
    );
}

#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_launches_without_the_mpi_feature_name_the_feature() {
    fails_with(
        &["launch", "--nproc", "2", SMOKE],
        &["without the `mpi` feature", "--features mpi"],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", SMOKE, "--backend", "flex"])
        .current_dir(common::repo_root())
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("2 processes of an MPI job") && err.contains("--features mpi"),
        "{err}"
    );
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn two_and_three_mpi_workers_match_one_worker_with_a_larger_batch() {
        let dir = tempdir().unwrap();
        let out = dir.path();
        let one = run_ok(&args(&["train"], SMOKE, out, "one", &mlp_sets(96, 100)));
        for (n, batch) in [(2, 48), (3, 32)] {
            let name = format!("mpi{n}");
            let nproc = n.to_string();
            let launch = ["launch", "--nproc", nproc.as_str()];
            let many = run_ok(&args(&launch, SMOKE, out, &name, &mlp_sets(batch, 100)));
            assert_eq!(many["workers"], n);
            assert_eq!(many["engine"], "mpi");
            assert_records_workers(&run_dir(&many), n);
            let diff = max_weight_diff(
                &weights(&run_dir(&one), 100),
                &weights(&run_dir(&many), 100),
            );
            assert!(diff <= WEIGHT_TOL, "{n} workers: weights differ by {diff}");
            assert_same_metrics(&run_dir(&one), &run_dir(&many));
            let train = events(&run_dir(&many), "train");
            assert_eq!(train.last().unwrap()["workers"], n);
        }
    }

    #[test]
    fn gpt_on_two_mpi_workers_matches_one_worker_with_twice_the_windows() {
        let dir = tempdir().unwrap();
        let out = dir.path();
        let sets = |b: usize| {
            vec![
                format!("data.batch_size={b}"),
                "train.max_steps=12".into(),
                "model.dropout=0.0".into(),
                // The same evaluation windows for both (eval_max_batches counts batches).
                "data.eval_batch_size=8".into(),
            ]
        };
        let one = run_ok(&args(&["train"], SMOKE_GPT, out, "one", &sets(8)));
        let two = run_ok(&args(
            &["launch", "--nproc", "2"],
            SMOKE_GPT,
            out,
            "two",
            &sets(4),
        ));
        let diff = max_weight_diff(&weights(&run_dir(&one), 12), &weights(&run_dir(&two), 12));
        assert!(diff <= GPT_WEIGHT_TOL, "weights differ by {diff}");
        assert_same_metrics(&run_dir(&one), &run_dir(&two));
    }

    /// Starts a long two-worker run, waits until it trains, then applies `signal` to rank 1.
    fn disturb_rank_1(signal: &str, timeout_secs: u32) -> (std::process::Output, Duration) {
        let dir = tempdir().unwrap();
        let sets = vec![
            "train.max_steps=1000000".to_string(),
            "train.log_every=1000".into(),
            "checkpoint.every_steps=0".into(),
            format!("distributed.timeout_secs={timeout_secs}"),
        ];
        let a = args(
            &["launch", "--nproc", "2"],
            SMOKE,
            dir.path(),
            "victim",
            &sets,
        );
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&a)
            .current_dir(common::repo_root())
            .env("KILN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Rank 1 is the worker whose OMPI_COMM_WORLD_RANK is 1.
        let started = Instant::now();
        let rank1 = loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the workers never started"
            );
            std::thread::sleep(Duration::from_millis(200));
            let metrics = dir.path().join("victim/metrics.jsonl");
            if !metrics.exists() {
                continue;
            }
            if let Some(pid) = worker_with_rank(child.id(), 1) {
                break pid;
            }
        };
        std::thread::sleep(Duration::from_secs(1));
        let status = Command::new("kill")
            .args([signal, &rank1.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let signalled = Instant::now();
        let out = child.wait_with_output().unwrap();
        let took = signalled.elapsed();
        // A stopped worker must not outlive the job.
        let _ = Command::new("kill")
            .args(["-KILL", &rank1.to_string()])
            .stderr(Stdio::null())
            .status();
        (out, took)
    }

    /// The parent of process `pid`, from /proc.
    fn parent(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn descends_from(mut pid: u32, ancestor: u32) -> bool {
        for _ in 0..8 {
            match parent(pid) {
                Some(p) if p == ancestor => return true,
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    }

    /// The pid of the kiln worker process with MPI rank `rank` launched under `launcher` (tests
    /// run concurrently, each with its own job), from /proc.
    fn worker_with_rank(launcher: u32, rank: usize) -> Option<u32> {
        let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_kiln")).ok()?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if !descends_from(pid, launcher) {
                continue;
            }
            if std::fs::read_link(entry.path().join("exe")).ok().as_ref() != Some(&exe) {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
            if environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()) {
                return Some(pid);
            }
        }
        None
    }

    #[test]
    fn killing_a_worker_stops_the_others_with_an_error() {
        let (out, took) = disturb_rank_1("-KILL", 30);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert!(err.contains("rank 1") && err.contains("error:"), "{err}");
    }

    #[test]
    fn a_hung_worker_stops_the_others_within_the_timeout() {
        let (out, took) = disturb_rank_1("-STOP", 5);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(took < Duration::from_secs(25), "took {took:?}");
        assert!(
            err.contains("did not complete within distributed.timeout_secs = 5 s"),
            "{err}"
        );
    }

    #[test]
    fn workers_that_disagree_on_the_config_stop_at_start() {
        let dir = tempdir().unwrap();
        let base = args(&["train"], SMOKE, dir.path(), "disagree", &[]);
        let mut other = base.clone();
        other.extend(["--set".into(), "optimizer.lr=0.1".into()]);
        let exe = env!("CARGO_BIN_EXE_kiln");
        let out = Command::new("mpirun")
            .args(["--oversubscribe", "--bind-to", "none", "-np", "1", exe])
            .args(&base)
            .args([":", "-np", "1", exe])
            .args(&other)
            .current_dir(common::repo_root())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("the workers disagree on the run: rank(s) [1]"),
            "{err}"
        );
    }

    #[test]
    fn a_worker_that_never_joins_stops_the_others_within_the_timeout() {
        let dir = tempdir().unwrap();
        let mut a = args(&["train"], SMOKE, dir.path(), "lonely", &[]);
        a.extend(["--set".into(), "distributed.timeout_secs=3".into()]);
        let started = Instant::now();
        // The second process of the job never calls MPI_Init.
        let out = Command::new("mpirun")
            .args(["--oversubscribe", "-np", "1", env!("CARGO_BIN_EXE_kiln")])
            .args(&a)
            .args([":", "-np", "1", "sleep", "120"])
            .current_dir(common::repo_root())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap();
        let took = started.elapsed();
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(took < Duration::from_secs(60), "took {took:?}");
        assert!(
            err.contains("joining the MPI job (MPI_Init) did not complete within distributed.timeout_secs = 3 s"),
            "{err}"
        );
    }

    #[test]
    fn several_devices_per_mpi_rank_are_refused() {
        let dir = tempdir().unwrap();
        let mut a = args(&["launch", "--nproc", "2"], SMOKE, dir.path(), "x", &[]);
        a.extend(["--devices".into(), "cpu,cpu".into()]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = kiln(&a);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("one device per process"),
            "{}",
            stderr(&out)
        );
    }
}
