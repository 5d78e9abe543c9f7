//! End-to-end tests of checkpoints and resuming: bit-identical continuation, crashes, signals,
//! damaged checkpoints and a full disk, all through the real `kiln` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_run, copy_dir, events, fails_with, kiln, repo_root, stderr};
use serde_json::Value;

const SMOKE: &str = "configs/smoke.toml";

/// `kiln train` arguments for the smoke config in `out` under `name`, with `--set` overrides.
fn train_args(out: &Path, name: &str, backend: &str, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", SMOKE, "--backend", backend]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let location = [
        format!("run.output_dir=\"{}\"", out.display()),
        format!("run.name={name}"),
    ];
    for s in location
        .iter()
        .map(String::as_str)
        .chain(sets.iter().copied())
    {
        args.push("--set".into());
        args.push(s.into());
    }
    args
}

/// Runs `kiln` and returns its JSON summary, failing the test if it fails.
fn ok(args: &[String]) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("kiln train prints a JSON summary")
}

fn resume_args(target: &Path, backend: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--resume".into(),
        target.display().to_string(),
        "--backend".into(),
        backend.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Dropout, several loader threads, warmup + cosine, and 18 batches per epoch, so that 40 steps
/// cross two epoch boundaries and the stop falls mid-epoch and mid log window.
const EXACT: &[&str] = &[
    "model.dropout=0.2",
    "data.loader_threads=2",
    "data.batch_size=500",
    "train.max_steps=40",
    "train.log_every=3",
    "train.eval_every=10",
    "checkpoint.every_steps=0",
    "schedule.kind=cosine",
    "schedule.warmup_steps=5",
];

fn two_n_equals_n_plus_n(backend: &str, extra: &[&str], stop: usize, via_step_dir: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let sets: Vec<&str> = EXACT.iter().chain(extra).copied().collect();
    let straight = ok(&train_args(tmp.path(), "straight", backend, &sets));
    assert_eq!(straight["steps"], 40);

    let mut first = train_args(tmp.path(), "split", backend, &sets);
    first.extend(["--until-step".to_string(), stop.to_string()]);
    let paused = ok(&first);
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["steps"], stop);
    let run = tmp.path().join("split");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join(format!("step-{stop}/state.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["data"]["epoch"], stop / 18);
    assert_eq!(state["data"]["batch_in_epoch"], stop % 18, "{state}");

    let target = if via_step_dir {
        run.join(format!("step-{stop}"))
    } else {
        run.clone()
    };
    let resumed = ok(&resume_args(&target, backend, &[]));
    assert_eq!(resumed["status"], "completed");
    assert_eq!(resumed["resumed_from"], stop);
    assert_same_run(&tmp.path().join("straight"), &run, 40);
}

#[test]
fn resume_mid_epoch_is_bit_identical_on_flex_adamw() {
    two_n_equals_n_plus_n("flex", &["optimizer.weight_decay=0.01"], 23, false);
}

#[test]
fn resume_mid_epoch_is_bit_identical_on_flex_sgd_nesterov() {
    let sgd = [
        "optimizer.kind=sgd",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.weight_decay=0.001",
    ];
    two_n_equals_n_plus_n("flex", &sgd, 20, true);
}

#[test]
fn resume_mid_epoch_is_bit_identical_on_ndarray() {
    two_n_equals_n_plus_n("ndarray", &[], 23, true);
}

/// Waits until the run has written its first checkpoint.
/// A checkpoint written in the middle of a run (while training goes on) holds the state of its
/// step: the same bytes as the final checkpoint of a run stopped at that step.
#[test]
fn a_mid_run_checkpoint_holds_the_state_of_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sets: Vec<&str> = EXACT.to_vec();
    sets.push("checkpoint.every_steps=10");
    ok(&train_args(tmp.path(), "straight", "flex", &sets));
    let mut stopped = train_args(tmp.path(), "stopped", "flex", EXACT);
    stopped.extend(["--until-step".to_string(), "20".to_string()]);
    ok(&stopped);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let mid = std::fs::read(tmp.path().join("straight/step-20").join(file)).unwrap();
        let last = std::fs::read(tmp.path().join("stopped/step-20").join(file)).unwrap();
        assert!(mid == last, "step-20/{file} differs");
    }
}

fn wait_for_checkpoint(child: &mut Child, run: &Path) {
    let started = Instant::now();
    while !run.join("latest").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo_root())
        .env("KILN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

const LONG: &[&str] = &[
    "train.max_steps=800",
    "train.log_every=10",
    "train.eval_every=100",
    "checkpoint.every_steps=10",
];

/// Long enough that the kill, up to 400 ms after the first checkpoint, comes before the end
/// (the smoke MLP trains at well over 1000 steps/s).
const LONGER: &[&str] = &[
    "train.max_steps=4000",
    "train.log_every=10",
    "train.eval_every=100",
    "checkpoint.every_steps=10",
];

#[test]
fn sigkill_at_a_random_moment_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    ok(&train_args(tmp.path(), "straight", "flex", LONGER));

    let mut child = spawn(&train_args(tmp.path(), "killed", "flex", LONGER));
    let run = tmp.path().join("killed");
    wait_for_checkpoint(&mut child, &run);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 400)));
    child.kill().unwrap(); // SIGKILL: no chance to save anything
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    eprintln!("killed after {}", latest.trim());

    let resumed = ok(&resume_args(&run, "flex", &[]));
    assert_eq!(resumed["status"], "completed");
    assert!(resumed["resumed_from"].as_u64().unwrap() >= 10);
    assert_same_run(&tmp.path().join("straight"), &run, 4000);
}

fn signal(child: &Child, signals: &[&str]) {
    let script: Vec<String> = signals
        .iter()
        .map(|s| format!("kill -{s} {}", child.id()))
        .collect();
    let status = Command::new("sh")
        .args(["-c", &script.join(" && ")])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn(&train_args(tmp.path(), "term", "flex", LONG));
    let run = tmp.path().join("term");
    wait_for_checkpoint(&mut child, &run);
    signal(&child, &["TERM"]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}:\n{err}", out.status);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "interrupted", "{summary}");
    let step = summary["steps"].as_u64().unwrap() as usize;
    assert!(step < 800);
    assert!(
        err.contains("kiln train --resume"),
        "no resume hint:\n{err}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap().trim(),
        format!("step-{step}"),
        "the checkpoint of the step it stopped at is the latest"
    );
    let resumed = ok(&resume_args(
        &run,
        "flex",
        &["--set", "train.max_steps=820"],
    ));
    assert_eq!(resumed["resumed_from"], step);
    assert_eq!(resumed["steps"], 820);
}

#[test]
fn a_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn(&train_args(tmp.path(), "twice", "flex", LONG));
    wait_for_checkpoint(&mut child, &tmp.path().join("twice"));
    signal(&child, &["INT", "TERM"]);
    let status = child.wait().unwrap();
    assert!(
        matches!(status.code(), Some(130) | Some(143)),
        "expected exit 128+signal, got {status:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged checkpoints.

/// A finished run with checkpoints at steps 10, 20 and 30.
fn three_checkpoints(out: &Path) -> PathBuf {
    let sets = [
        "train.max_steps=30",
        "checkpoint.every_steps=10",
        "train.eval_every=10",
    ];
    ok(&train_args(out, "base", "flex", &sets));
    out.join("base")
}

/// Rewrites a file of a checkpoint and records its new sha256 in state.json, so that only the
/// content check (not the checksum) can catch it.
fn replace_consistently(step_dir: &Path, file: &str, bytes: &[u8]) {
    use sha2::Digest;
    std::fs::write(step_dir.join(file), bytes).unwrap();
    let state_path = step_dir.join("state.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let sha: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state["files"][file] = serde_json::json!({"sha256": sha, "bytes": bytes.len()});
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
}

fn transposed_first_layer(model: &[u8]) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(model).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let mut shape = v.shape().to_vec();
            if name == "layers.0.weight" {
                shape.reverse();
            }
            (name, shape, v.data().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn each_kind_of_damage_is_named_and_resume_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let base = three_checkpoints(tmp.path());
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &[&str]); 5] = [
        (
            "truncated",
            |d| {
                let f = d.join("model.safetensors");
                let bytes = std::fs::read(&f).unwrap();
                std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            },
            &["step-30/model.safetensors is truncated"],
        ),
        (
            "bit-flipped",
            |d| {
                let f = d.join("optimizer.safetensors");
                let mut bytes = std::fs::read(&f).unwrap();
                let i = bytes.len() * 2 / 3;
                bytes[i] ^= 0x10;
                std::fs::write(&f, &bytes).unwrap();
            },
            &["step-30/optimizer.safetensors is corrupted", "sha256"],
        ),
        (
            "missing",
            |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
            &["step-30/model.safetensors is missing"],
        ),
        (
            "shape-mismatched",
            |d| {
                let model = std::fs::read(d.join("model.safetensors")).unwrap();
                replace_consistently(d, "model.safetensors", &transposed_first_layer(&model));
            },
            &[
                "step-30/model.safetensors",
                "layers.0.weight has shape [32, 784]",
                "needs [784, 32]",
            ],
        ),
        (
            "config-hash",
            |d| {
                let f = d.join("state.json");
                let mut state: Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                state["config_hash"] = "0123456789abcdef".into();
                std::fs::write(&f, serde_json::to_vec(&state).unwrap()).unwrap();
            },
            &[
                "step-30/state.json",
                "config hash 0123456789ab differs",
                "--force",
            ],
        ),
    ];
    for (what, damage, needles) in cases {
        let run = tmp.path().join(what);
        copy_dir(&base, &run);
        damage(&run.join("step-30"));

        let step30 = run.join("step-30");
        fails_with(
            &[
                "train",
                "--resume",
                step30.to_str().unwrap(),
                "--backend",
                "flex",
            ],
            needles,
        );

        let out = kiln(&[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--backend",
            "flex",
        ]);
        let err = stderr(&out);
        assert!(out.status.success(), "{what}: resume failed:\n{err}");
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["resumed_from"], 20, "{what}: {summary}");
        assert!(err.contains("skipped checkpoint step-30"), "{what}:\n{err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{what}: the skip reason lacks {n:?}:\n{err}"
            );
        }
        assert_same_run(&base, &run, 30);
    }
}

#[test]
fn resume_rejects_maths_overrides_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let run = three_checkpoints(tmp.path());
    let r = run.to_str().unwrap();
    fails_with(
        &["train", "--resume", r, "--set", "optimizer.lr=0.1"],
        &["optimizer.lr", "--force", "train.log_every"],
    );
    fails_with(
        &["train", "--resume", r, "--set", "run.name=elsewhere"],
        &["run.name cannot change"],
    );
    fails_with(
        &[
            "train",
            "--resume",
            tmp.path().join("nope").to_str().unwrap(),
        ],
        &["nope", "does not exist"],
    );
    let more = ok(&resume_args(
        &run,
        "flex",
        &["--set", "train.max_steps=40", "--set", "train.log_every=2"],
    ));
    assert_eq!(
        (more["resumed_from"].as_u64(), more["steps"].as_u64()),
        (Some(30), Some(40))
    );
    let forced = ok(&resume_args(
        &run,
        "flex",
        &[
            "--force",
            "--set",
            "optimizer.lr=0.01",
            "--set",
            "train.max_steps=45",
        ],
    ));
    assert_eq!(forced["resumed_from"], 40);
}

#[test]
fn keep_last_prunes_but_never_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "train.max_steps=80",
        "checkpoint.every_steps=10",
        "train.eval_every=10",
        "checkpoint.keep_last=2",
        "checkpoint.best_metric=\"valid.accuracy\"",
        "optimizer.lr=0.02",
    ];
    ok(&train_args(tmp.path(), "pruned", "flex", &sets));
    let run = tmp.path().join("pruned");
    let valid = events(&run, "valid");
    let (best_step, best_acc) = valid.iter().fold((0, -1.0), |(s, a), e| {
        let acc = e["accuracy"].as_f64().unwrap();
        if acc > a {
            (e["step"].as_u64().unwrap(), acc)
        } else {
            (s, a)
        }
    });
    let best = std::fs::read_to_string(run.join("best")).unwrap();
    assert_eq!(best.trim(), format!("step-{best_step}"));
    let mut dirs: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    dirs.sort();
    let mut want = vec!["step-70".to_string(), "step-80".to_string()];
    if best_step < 70 {
        want.push(format!("step-{best_step}"));
    }
    want.sort();
    assert_eq!(dirs, want);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join(best.trim()).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["best"]["value"], best_acc);
}

// ---------------------------------------------------------------------------------------------
// A full disk.

#[test]
fn a_full_disk_stops_with_a_clear_error_and_keeps_earlier_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small-disk");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // Each checkpoint of the smoke model is about 300 kB: two fit into 700 kB, the third not.
    let sets = ["train.max_steps=40", "checkpoint.every_steps=10"];
    let args = train_args(&mnt, "full", "flex", &sets);
    let script = format!(
        "mount -t tmpfs -o size=700k tmpfs '{mnt}' || exit 90\n\
         '{kiln}' {args} 2> '{out}/stderr' > '{out}/stdout'\n\
         echo $? > '{out}/rc'\n\
         cp -r '{mnt}/full' '{out}/full'",
        mnt = mnt.display(),
        out = out.display(),
        kiln = env!("CARGO_BIN_EXE_kiln"),
        args = args
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    // A private mount namespace (as root, or as a user through a user namespace) holds the tmpfs.
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .status()
        .expect("this test needs `unshare` (util-linux) to mount a small tmpfs");
    assert!(
        status.success(),
        "could not set up the small tmpfs (unshare/mount failed: {status:?})"
    );
    let rc = std::fs::read_to_string(out.join("rc")).unwrap();
    let err = std::fs::read_to_string(out.join("stderr")).unwrap();
    assert_eq!(rc.trim(), "1", "the run should fail:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for needle in [
        "No space left on device",
        "checkpoint step-30 was not written",
        "earlier checkpoints",
        "are intact",
        "kiln train --resume",
    ] {
        assert!(
            lines[0].contains(needle),
            "error lacks {needle:?}: {}",
            lines[0]
        );
    }
    assert!(!err.contains("panicked"), "{err}");

    let run = out.join("full");
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap().trim(),
        "step-20"
    );
    assert!(!run.join("step-30").exists() && !run.join("step-30.tmp").exists());
    // The checkpoints written before the disk filled up are whole: the run continues from them
    // (on a disk with room) to exactly the weights of an uninterrupted run.
    let resumed = ok(&resume_args(&run, "flex", &[]));
    assert_eq!(resumed["resumed_from"], 20);
    ok(&train_args(tmp.path(), "straight", "flex", &sets));
    assert_same_run(&tmp.path().join("straight"), &run, 40);
}
