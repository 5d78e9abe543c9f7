//! Helpers shared by the end-to-end tests: run the real `kiln` binary and read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A tiny character-level GPT on Shakespeare (seconds on any backend).
pub const SMOKE_GPT: &str = "configs/smoke-gpt.toml";

/// `--set` overrides that turn configs/smoke-gpt.toml into Llama's style: RMSNorm, RoPE,
/// SwiGLU, no biases, and two query heads per key/value head.
pub const LLAMA_STYLE: &[&str] = &[
    "model.norm=\"rmsnorm\"",
    "model.position=\"rope\"",
    "model.mlp=\"swiglu\"",
    "model.bias=false",
    "model.n_head=4",
    "model.n_kv_head=2",
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs `kiln` from the repository root (configs name datasets relative to it).
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .output()
        .expect("kiln runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Trains `config` on `backend` into a fresh directory and returns the run directory.
pub fn train(config: &str, backend: &str, out_dir: &Path, extra: &[&str]) -> PathBuf {
    let output_dir = format!("run.output_dir=\"{}\"", out_dir.display());
    let mut args = vec!["train", config, "--backend", backend, "--set", &output_dir];
    for e in extra {
        args.extend(["--set", e]);
    }
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&out)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("train prints a JSON summary");
    PathBuf::from(summary["run_dir"].as_str().unwrap())
}

pub fn events(run_dir: &Path, split: &str) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["split"] == split)
        .collect()
}

pub fn losses(run_dir: &Path) -> Vec<f64> {
    events(run_dir, "train")
        .iter()
        .map(|e| e["loss"].as_f64().unwrap())
        .collect()
}

/// Asserts that `kiln args` fails with exactly one `error:` line containing every `needle`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let out = kiln(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "kiln {args:?} should fail:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "kiln {args:?} panicked:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line error for {args:?}, got:\n{err}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error for {args:?} lacks {n:?}: {}",
            lines[0]
        );
    }
}

/// The tensors of a safetensors file (all f32), sorted by name.
pub fn tensors(file: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest absolute difference between the same-named tensors of two weight files.
pub fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(
        ta.iter().map(|t| &t.0).collect::<Vec<_>>(),
        tb.iter().map(|t| &t.0).collect::<Vec<_>>(),
        "{a:?} and {b:?} hold different tensors"
    );
    ta.iter()
        .zip(&tb)
        .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// What a user compares between two runs: every logged train/valid/test number, and the final
/// weights and optimizer state byte for byte. The train and test events must exist.
pub fn assert_same_run(a: &Path, b: &Path, step: usize) {
    assert_same_run_logging(a, b, step, &["train", "test"]);
}

/// [`assert_same_run`] for runs that must have logged events of the splits `required` (a
/// language model has no test split).
pub fn assert_same_run_logging(a: &Path, b: &Path, step: usize, required: &[&str]) {
    for split in ["train", "valid", "test"] {
        let key = |e: &Value| {
            (
                e["step"].clone(),
                e["loss"].clone(),
                e["accuracy"].clone(),
                e["lr"].clone(),
            )
        };
        let ea: Vec<_> = events(a, split).iter().map(key).collect();
        let eb: Vec<_> = events(b, split).iter().map(key).collect();
        assert!(
            !ea.is_empty() || !required.contains(&split),
            "no {split} events"
        );
        assert_eq!(ea, eb, "{split} events differ between {a:?} and {b:?}");
    }
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let fa = std::fs::read(a.join(format!("step-{step}")).join(file)).unwrap();
        let fb = std::fs::read(b.join(format!("step-{step}")).join(file)).unwrap();
        assert!(
            fa == fb,
            "step-{step}/{file} differs between {a:?} and {b:?}"
        );
    }
}

/// Copies the directory tree `from` to `to` (e.g. a fixture or a run, to change the copy).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The Python of the tests that check Kiln's output with outside tools (target/pyenv from
/// tests/python/setup.sh, or $KILN_PYTHON), when it can import `modules` (`"tensorboard"`). In CI
/// (`KILN_REQUIRE_PYTHON_TESTS=1`) a missing environment fails the test; elsewhere it is skipped.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("KILN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/pyenv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("KILN_REQUIRE_PYTHON_TESTS").is_none(),
        "{} cannot import {modules}; run bash tests/python/setup.sh",
        candidate.display()
    );
    eprintln!(
        "SKIPPED: no Python that imports {modules} at {} (run bash tests/python/setup.sh)",
        candidate.display()
    );
    None
}

/// `kiln export RUN --format FORMAT --quantize QUANTIZE --out DIR/FORMAT-QUANTIZE`, which must
/// succeed: the export's directory and its JSON report.
pub fn export(run: &str, format: &str, quantize: &str, dir: &Path) -> (PathBuf, Value) {
    let out = dir.join(format!("{format}-{quantize}"));
    let args = [
        "export",
        run,
        "--format",
        format,
        "--quantize",
        quantize,
        "--out",
        out.to_str().unwrap(),
    ];
    let o = kiln(&args);
    assert!(o.status.success(), "kiln {args:?}:\n{}", stderr(&o));
    (out, serde_json::from_slice(&o.stdout).unwrap())
}

/// Runs tests/python/check_onnx.py (onnxruntime, atol 1e-4) on the ONNX export in `export` with
/// `inputs` and Kiln's `logits` for them (written to `dir/cases.json`); asserts that it passes
/// and returns its JSON verdict.
pub fn check_onnx(
    python: &Path,
    export: &Path,
    inputs: &impl serde::Serialize,
    logits: &impl serde::Serialize,
    dir: &Path,
) -> Value {
    let cases = dir.join("cases.json");
    let json = serde_json::json!({"inputs": inputs, "logits": logits});
    std::fs::write(&cases, json.to_string()).unwrap();
    let o = Command::new(python)
        .args(["tests/python/check_onnx.py"])
        .arg(export.join("model.onnx"))
        .arg(&cases)
        .args(["--atol", "1e-4"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let result: Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{result} {}", stderr(&o));
    result
}

/// The smoke config with no architecture keys (`init_from` brings them): a fine-tuning config.
pub fn finetune_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join(SMOKE_GPT)).unwrap();
    let start = text.find("[model]").unwrap();
    let end = start + text[start..].find("\n[optimizer]").unwrap();
    let text = format!(
        "{}[model]\nkind = \"gpt\"\n{}",
        &text[..start],
        &text[end..]
    );
    let path = dir.join("finetune.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `kiln export RUN --format hf --out DIR`.
pub fn export_hf(run: &Path, out: &Path) {
    export_as(run, "hf", out);
}

/// `kiln export RUN --format FORMAT --out DIR`, which must succeed.
pub fn export_as(run: &Path, format: &str, out: &Path) {
    let o = kiln(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "flex",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The validation loss of a run's checkpoint by `kiln eval`.
pub fn valid_loss(run: &Path) -> f64 {
    let o = kiln(&[
        "eval",
        run.to_str().unwrap(),
        "--split",
        "valid",
        "--backend",
        "flex",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["loss"].as_f64().unwrap()
}
