//! End-to-end tests of `kiln export` and `kiln predict`: the Kiln format on every model and
//! scheme, PNG/IDX/CSV inputs, every export loaded outside Kiln (the Kiln format by safetensors
//! and PyTorch, ONNX by onnxruntime, the Hugging Face folder by transformers; Python from
//! tests/python/setup.sh), and the errors on bad input.

#[path = "../common/mod.rs"]
mod common;
mod errors;
mod outside;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{copy_dir, fails_with, kiln, python_with, repo_root, stderr, train};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TEST_IMAGES: &str = "datasets/mnist/t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "datasets/mnist/t10k-labels-idx1-ubyte.gz";

/// Runs trained once for all the tests of this file.
struct Runs {
    _dir: tempfile::TempDir,
    mlp: PathBuf,
    cnn: PathBuf,
    gpt: PathBuf,
    /// A GPT with GPT-2's tanh GELU (`model.gelu = "tanh"`).
    gpt_tanh: PathBuf,
    wine: PathBuf,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mlp = train("configs/smoke.toml", "flex", dir.path(), &[]);
        let cnn = train(
            "configs/smoke.toml",
            "flex",
            dir.path(),
            &[
                "run.name=\"smoke-cnn\"",
                "model.kind=\"cnn\"",
                "model.channels=[4, 8]",
                "model.padding=1",
                "model.hidden=[16]",
                "model.batch_norm=true",
                "model.activation=\"gelu\"",
                "train.max_steps=30",
            ],
        );
        let gpt = train(
            "configs/smoke-gpt.toml",
            "flex",
            dir.path(),
            &["train.max_steps=20"],
        );
        let gpt_tanh = train(
            "configs/smoke-gpt.toml",
            "flex",
            dir.path(),
            &[
                "run.name=\"smoke-gpt-tanh\"",
                "model.gelu=\"tanh\"",
                "train.max_steps=20",
            ],
        );
        let wine = train(
            "configs/wine-mlp.toml",
            "flex",
            dir.path(),
            &["train.max_steps=60"],
        );
        Runs {
            _dir: dir,
            mlp,
            cnn,
            gpt,
            gpt_tanh,
            wine,
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `kiln export RUN ARGS --out OUT`; returns the JSON summary.
fn export(run: &Path, out: &Path, args: &[&str]) -> Value {
    let mut all = vec!["export", s(run), "--out", s(out), "--backend", "flex"];
    all.extend(args);
    let o = kiln(&all);
    assert!(o.status.success(), "kiln {all:?} failed:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("export prints a JSON summary")
}

/// `kiln predict EXPORT ARGS`, its JSON lines.
fn predict(export: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["predict", s(export), "--backend", "flex"];
    all.extend(args);
    let o = kiln(&all);
    assert!(o.status.success(), "kiln {all:?} failed:\n{}", stderr(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn idx_labels(path: &str) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(repo_root().join(path)).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes[8..].to_vec()
}

#[test]
fn kiln_exports_of_every_classifier_and_scheme_predict_what_their_manifest_reports() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let labels = idx_labels(TEST_LABELS);
    for (name, run) in [("mlp", &runs.mlp), ("cnn", &runs.cnn)] {
        let eval = kiln(&["eval", s(run), "--backend", "flex"]);
        assert!(eval.status.success(), "{}", stderr(&eval));
        let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
        for scheme in ["none", "int8", "int4"] {
            let out = dir.path().join(format!("{name}-{scheme}"));
            let summary = export(run, &out, &["--quantize", scheme]);
            // The float model's metrics are `kiln eval`'s; an unquantized export keeps them.
            assert_eq!(summary["float_metrics"]["accuracy"], eval["accuracy"]);
            let acc = summary["metrics"]["accuracy"].as_f64().unwrap();
            if scheme == "none" {
                assert_eq!(summary["metrics"]["loss"], eval["loss"]);
            } else {
                let float = eval["accuracy"].as_f64().unwrap();
                assert!(
                    (acc - float).abs() < 0.05,
                    "{name} {scheme}: {acc} vs {float}"
                );
            }
            // The targets, on the MLP; the tiny CNN's float vectors (biases, batch-norm
            // statistics) weigh more next to its few weights.
            let ratio = summary["size_ratio"].as_f64().unwrap();
            let limit = match (scheme, name) {
                ("none", _) => 1.01,
                ("int8", "mlp") => 0.27,
                ("int8", _) => 0.33,
                (_, "mlp") => 0.16,
                _ => 0.22,
            };
            assert!(ratio <= limit, "{name} {scheme}: size ratio {ratio}");

            let manifest: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                    .unwrap();
            assert_eq!(manifest["quantization"]["scheme"], scheme);
            assert_eq!(manifest["metrics"], summary["metrics"]);
            let checkpoint = PathBuf::from(manifest["source"]["checkpoint"].as_str().unwrap());
            assert_eq!(
                manifest["source"]["sha256"],
                sha256_hex(&repo_root().join(checkpoint).join("model.safetensors"))
            );
            assert_eq!(manifest["input"]["shape"], json!([1, 28, 28]));

            // Predicting the whole test file gives the manifest's accuracy.
            let lines = predict(&out, &[TEST_IMAGES]);
            assert_eq!(lines.len(), labels.len());
            let correct = lines
                .iter()
                .zip(&labels)
                .filter(|(l, &y)| l["class"].as_u64() == Some(u64::from(y)))
                .count();
            assert_eq!(
                correct as f64 / labels.len() as f64,
                acc,
                "{name} {scheme}: predict and the manifest disagree"
            );
            let p: Vec<f64> = serde_json::from_value(lines[0]["probabilities"].clone()).unwrap();
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
            assert_eq!(lines[0]["label"], lines[0]["class"].to_string());
        }
    }
}

/// Writes the first test image as an 8-bit PNG (`rgb`: as an RGB image with equal channels).
fn first_image_png(path: &Path, rgb: bool, size: u32) {
    let (pixels, _) = kiln_data::load_idx_images(&repo_root().join(TEST_IMAGES)).unwrap();
    let gray: Vec<u8> = (0..(size * size) as usize)
        .map(|i| (pixels.get(i).copied().unwrap_or(0.0) * 255.0).round() as u8)
        .collect();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size, size);
    if rgb {
        enc.set_color(png::ColorType::Rgb);
        let data: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    } else {
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header().unwrap().write_image_data(&gray).unwrap();
    }
}

#[test]
fn png_and_csv_inputs_predict_like_the_data_they_hold() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn");
    export(&runs.cnn, &out, &["--quantize", "int8"]);
    let from_idx = &predict(&out, &[TEST_IMAGES])[0];
    for rgb in [false, true] {
        let png = dir.path().join(format!("first-{rgb}.png"));
        first_image_png(&png, rgb, 28);
        let lines = predict(&out, &[s(&png), "--logits"]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["input"], s(&png));
        // The same pixels; a batch of one may round differently from a batch of 256.
        let (a, b) = (&lines[0]["probabilities"], &from_idx["probabilities"]);
        for k in 0..10 {
            let d = a[k].as_f64().unwrap() - b[k].as_f64().unwrap();
            assert!(d.abs() < 1e-6, "class {k}: {a} vs {b}");
        }
        assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 10);
    }

    // CSV rows of the wine features (the data file without its header and label column).
    let out = dir.path().join("wine");
    export(&runs.wine, &out, &["--quantize", "int8"]);
    let text = std::fs::read_to_string(repo_root().join("datasets/tabular/wine_data.csv")).unwrap();
    let rows: Vec<String> = text
        .lines()
        .skip(1)
        .take(5)
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, format!("alcohol,...\n{}\n", rows.join("\n"))).unwrap();
    let lines = predict(&out, &[s(&csv)]);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["input"], format!("{}:2", s(&csv)));
    let names = ["class_0", "class_1", "class_2"];
    assert!(lines
        .iter()
        .all(|l| names.contains(&l["label"].as_str().unwrap())));
    // The first rows are all cultivar 0; a trained model gets them right.
    assert!(lines.iter().filter(|l| l["label"] == "class_0").count() >= 4);

    // The data file itself still has the label column: a clear error.
    fails_with(
        &[
            "predict",
            s(&out),
            s(&repo_root().join("datasets/tabular/wine_data.csv")),
        ],
        &[
            "has 14 values, the model takes 13 features",
            "drop the label column",
        ],
    );
}

#[test]
fn a_gpt_exports_predicts_and_quantizes_within_its_size_targets() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let mut completions = Vec::new();
    for scheme in ["none", "int8", "int4"] {
        let out = dir.path().join(scheme);
        let summary = export(&runs.gpt, &out, &["--quantize", scheme]);
        assert_eq!(summary["metrics"]["split"], "valid");
        let loss = summary["metrics"]["loss"].as_f64().unwrap();
        let float = summary["float_metrics"]["loss"].as_f64().unwrap();
        assert!((loss - float).abs() < 0.1, "{scheme}: {loss} vs {float}");
        let lines = predict(
            &out,
            &["ROMEO:", "--temperature", "0", "--max-tokens", "30"],
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["prompt"], "ROMEO:");
        let completion = lines[0]["completion"].as_str().unwrap().to_string();
        assert_eq!(completion.chars().count(), 30);
        completions.push(completion);
    }
    // The float export continues the prompt exactly as `kiln generate` does from the run.
    let generated = kiln(&[
        "generate",
        s(&runs.gpt),
        "--prompt",
        "ROMEO:",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
        "--backend",
        "flex",
    ]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let text = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(text, format!("ROMEO:{}\n", completions[0]));
}

#[test]
fn an_export_predicts_alike_on_every_cpu_backend_and_wgpu() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp");
    export(&runs.mlp, &out, &["--quantize", "int4"]);
    let probs = |backend: &str| -> Vec<Vec<f64>> {
        let o = kiln(&["predict", s(&out), TEST_IMAGES, "--backend", backend]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .take(500)
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(v["probabilities"].clone()).unwrap()
            })
            .collect()
    };
    let flex = probs("flex");
    for backend in ["ndarray", "wgpu"] {
        let other = probs(backend);
        let worst = flex
            .iter()
            .zip(&other)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{backend}: probabilities differ by {worst}");
    }
}
