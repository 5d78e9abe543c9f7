//! Compatibility with what earlier versions of Kiln wrote: the run directories and exports in
//! tests/fixtures/v1 were written by main at d0dcf84 (tests/fixtures/v1/make.sh), before the
//! framework redesign. Today's `kiln` must resume those runs exactly where they paused, so that
//! they finish as if never interrupted, and must predict with those exports what they predicted
//! then.

mod common;

use std::path::PathBuf;

use common::{assert_same_run_logging, copy_dir, kiln, repo_root, stderr};
use serde_json::Value;

fn fixture(relative: &str) -> PathBuf {
    repo_root().join("tests/fixtures/v1").join(relative)
}

fn ok(args: &[&str]) -> Value {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("kiln train prints a JSON summary")
}

/// Resumes a copy of the fixture run `name` (paused at `paused` of `total` steps) to its end, and
/// trains the same config from scratch without a pause: both must log the same numbers and end
/// with byte-identical weights and optimizer state.
fn resumes_exactly(name: &str, paused: usize, total: usize, splits: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("resumed").join(name);
    copy_dir(&fixture(&format!("runs/{name}")), &run);

    let summary = ok(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--backend",
        "flex",
    ]);
    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(summary["resumed_from"], paused, "{summary}");
    assert_eq!(summary["steps"], total, "{summary}");

    let config = run.join("config.toml");
    let straight_root = tmp.path().join("straight");
    let output_dir = format!("run.output_dir=\"{}\"", straight_root.display());
    let straight = ok(&[
        "train",
        config.to_str().unwrap(),
        "--backend",
        "flex",
        "--set",
        &output_dir,
    ]);
    assert_eq!(straight["steps"], total, "{straight}");
    if wrote_the_fixtures() {
        assert_same_run_logging(&straight_root.join(name), &run, total, splits);
    } else {
        assert_close_runs(&straight_root.join(name), &run, total, splits);
    }
}

/// Whether this CPU computes as the one that wrote the fixtures (AVX-512: Kiln's CPU kernels
/// and burn's take other SIMD paths without it, whose sums round differently in the last bits).
fn wrote_the_fixtures() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[allow(unreachable_code)]
    false
}

/// On another CPU the v1 steps before the pause were rounded differently from a straight run
/// here, so the two agree to rounding: every logged loss within 1e-4 (relative), the same
/// events, and the final weights within 1e-4.
fn assert_close_runs(a: &std::path::Path, b: &std::path::Path, step: usize, splits: &[&str]) {
    for split in splits {
        let (ea, eb) = (common::events(a, split), common::events(b, split));
        assert!(!ea.is_empty(), "no {split} events");
        assert_eq!(ea.len(), eb.len(), "{split} events");
        for (x, y) in ea.iter().zip(&eb) {
            assert_eq!(x["step"], y["step"]);
            let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
            assert!(
                (lx - ly).abs() <= 1e-4 * lx.abs().max(1.0),
                "{split}: {x} vs {y}"
            );
        }
    }
    let weights = |run: &std::path::Path| run.join(format!("step-{step}/model.safetensors"));
    let diff = common::max_weight_diff(&weights(a), &weights(b));
    assert!(diff <= 1e-4, "weights differ by {diff}");
}

#[test]
fn a_paused_v1_mlp_run_resumes_exactly() {
    resumes_exactly("wine-mlp", 40, 80, &["train", "valid", "test"]);
}

#[test]
fn a_paused_v1_gpt_run_resumes_exactly() {
    resumes_exactly("shakespeare-char-gpt", 20, 40, &["train", "valid"]);
}

#[test]
fn a_paused_v1_cnn_run_resumes_exactly() {
    resumes_exactly("fashion-mnist-cnn", 10, 20, &["train", "valid", "test"]);
}

/// `kiln predict` on a v1 export, as JSON lines.
fn predict(export: &str, args: &[&str]) -> Vec<Value> {
    let export = fixture(&format!("exports/{export}"));
    let mut all = vec!["predict", export.to_str().unwrap()];
    all.extend(args);
    all.extend(["--backend", "flex"]);
    let out = kiln(&all);
    assert!(
        out.status.success(),
        "kiln {all:?} failed:\n{}",
        stderr(&out)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn recorded(file: &str) -> Vec<Value> {
    std::fs::read_to_string(fixture(&format!("exports/{file}")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Numbers within 1e-5 (relative to the larger magnitude, absolute below 1), everything else
/// (classes, labels, token ids, text, input names) equal.
fn assert_close(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) if !(a.is_i64() && b.is_i64()) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            let tol = 1e-5 * a.abs().max(b.abs()).max(1.0);
            assert!((a - b).abs() <= tol, "{at}: {a} vs {b} recorded");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "{at}: fields differ");
            for (k, x) in a {
                assert_close(x, &b[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

fn predicts_as_recorded(export: &str, args: &[&str], file: &str) {
    let (got, want) = (predict(export, args), recorded(file));
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len(), "{export}: number of predictions");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, &format!("{export} line {}", i + 1));
    }
}

#[test]
fn v1_float32_and_int8_table_exports_predict_what_they_did() {
    let rows = "tests/fixtures/v1/exports/wine-rows.csv";
    predicts_as_recorded("wine-mlp", &[rows, "--logits"], "wine-mlp.predict.jsonl");
    predicts_as_recorded(
        "wine-mlp-int8",
        &[rows, "--logits"],
        "wine-mlp-int8.predict.jsonl",
    );
}

#[test]
fn a_v1_int4_image_export_predicts_what_it_did() {
    predicts_as_recorded(
        "fashion-mnist-cnn-int4",
        &[
            "tests/fixtures/v1/exports/fashion-test-10-idx3-ubyte",
            "--logits",
        ],
        "fashion-mnist-cnn-int4.predict.jsonl",
    );
}

#[test]
fn a_v1_language_model_export_generates_and_scores_what_it_did() {
    predicts_as_recorded(
        "shakespeare-char-gpt",
        &["ROMEO:", "--max-tokens", "40", "--temperature", "0"],
        "shakespeare-char-gpt.predict.jsonl",
    );
    predicts_as_recorded(
        "shakespeare-char-gpt",
        &["ROMEO:", "--logits"],
        "shakespeare-char-gpt.logits.jsonl",
    );
}
