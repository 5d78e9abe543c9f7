//! End-to-end tests of `kiln export` and `kiln predict`: the Kiln format on every model and
//! scheme, PNG/IDX/CSV inputs, every export loaded outside Kiln (the Kiln format by safetensors
//! and PyTorch, ONNX by onnxruntime, the Hugging Face folder by transformers; Python from
//! tests/python/setup.sh), and the errors on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{copy_dir, fails_with, kiln, repo_root, stderr, train};
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

/// The Python of the export tests, when its packages are there. In CI
/// (`KILN_REQUIRE_PYTHON_TESTS=1`) a missing environment fails the test.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("KILN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/pyenv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import onnxruntime, transformers, safetensors, torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("KILN_REQUIRE_PYTHON_TESTS").is_none(),
        "{} lacks onnxruntime/transformers; run bash tests/python/setup.sh",
        candidate.display()
    );
    eprintln!(
        "SKIPPED: no Python with onnxruntime and transformers at {} (run bash tests/python/setup.sh)",
        candidate.display()
    );
    None
}

fn run_python(python: &Path, args: &[&str]) -> Value {
    let o = Command::new(python)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn onnxruntime_runs_the_onnx_exports_with_kilns_outputs() {
    let Some(python) = python() else { return };
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let (pixels, _) = kiln_data::load_idx_images(&repo_root().join(TEST_IMAGES)).unwrap();
    let rows = 64;
    let inputs: Vec<&[f32]> = pixels.chunks_exact(784).take(rows).collect();
    for (name, run) in [("mlp", &runs.mlp), ("cnn", &runs.cnn)] {
        for scheme in ["none", "int8", "int4"] {
            let kiln_out = dir.path().join(format!("{name}-{scheme}-kiln"));
            let onnx_out = dir.path().join(format!("{name}-{scheme}-onnx"));
            export(run, &kiln_out, &["--quantize", scheme]);
            let summary = export(run, &onnx_out, &["--quantize", scheme, "--format", "onnx"]);
            assert!(summary["files"]["model.onnx"].as_u64().unwrap() > 0);
            let lines = predict(&kiln_out, &[TEST_IMAGES, "--logits"]);
            let logits: Vec<&Value> = lines.iter().take(rows).map(|l| &l["logits"]).collect();
            let cases = dir.path().join(format!("{name}-{scheme}.json"));
            std::fs::write(
                &cases,
                json!({"inputs": inputs, "logits": logits}).to_string(),
            )
            .unwrap();
            let result = run_python(
                &python,
                &[
                    "tests/python/check_onnx.py",
                    s(&onnx_out.join("model.onnx")),
                    s(&cases),
                    "--atol",
                    "1e-4",
                ],
            );
            assert_eq!(result["ok"], true, "{name} {scheme}: {result}");
            assert_eq!(result["argmax_agree"], rows, "{name} {scheme}: {result}");
        }
    }
}

#[test]
fn transformers_loads_the_hugging_face_export_with_kilns_logits_and_generation() {
    let Some(python) = python() else { return };
    let runs = runs();
    for (run, activation) in [(&runs.gpt, "gelu"), (&runs.gpt_tanh, "gelu_new")] {
        let dir = tempfile::tempdir().unwrap();
        let kiln_out = dir.path().join("kiln");
        let hf_out = dir.path().join("hf");
        export(run, &kiln_out, &[]);
        let summary = export(run, &hf_out, &["--format", "hf"]);
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(
                summary["files"][f].as_u64().is_some(),
                "{f} missing: {summary}"
            );
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(hf_out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["activation_function"], activation);
        let prompt = "KING HENRY:\nWhat, ho!";
        let mut expected = predict(&kiln_out, &[prompt, "--logits"]).remove(0);
        let completion = predict(
            &kiln_out,
            &[prompt, "--temperature", "0", "--max-tokens", "12"],
        );
        expected["completion"] = completion[0]["completion"].clone();
        let path = dir.path().join("expected.json");
        std::fs::write(&path, expected.to_string()).unwrap();
        let result = run_python(
            &python,
            &[
                "tests/python/check_hf.py",
                s(&hf_out),
                s(&path),
                "--atol",
                "1e-4",
            ],
        );
        assert_eq!(result["ok"], true, "{activation}: {result}");
        assert_eq!(result["generation_match"], true, "{activation}: {result}");
    }
}

#[test]
fn python_reads_the_kiln_format_from_its_documented_layout() {
    let Some(python) = python() else { return };
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let (pixels, _) = kiln_data::load_idx_images(&repo_root().join(TEST_IMAGES)).unwrap();
    let rows = 64;
    let inputs: Vec<&[f32]> = pixels.chunks_exact(784).take(rows).collect();
    for (name, run) in [("mlp", &runs.mlp), ("cnn", &runs.cnn), ("gpt", &runs.gpt)] {
        for scheme in ["none", "int8", "int4"] {
            let out = dir.path().join(format!("{name}-{scheme}"));
            export(run, &out, &["--quantize", scheme]);
            let expected = if name == "gpt" {
                predict(&out, &["KING HENRY:\nWhat, ho!", "--logits"]).remove(0)
            } else {
                let lines = predict(&out, &[TEST_IMAGES, "--logits"]);
                let logits: Vec<&Value> = lines.iter().take(rows).map(|l| &l["logits"]).collect();
                json!({"inputs": inputs, "logits": logits})
            };
            let path = dir.path().join(format!("{name}-{scheme}.json"));
            std::fs::write(&path, expected.to_string()).unwrap();
            let result = run_python(
                &python,
                &[
                    "tests/python/check_kiln.py",
                    s(&out),
                    s(&path),
                    "--atol",
                    "1e-4",
                ],
            );
            assert_eq!(result["ok"], true, "{name} {scheme}: {result}");
            assert_eq!(result["scheme"], scheme);
        }
    }
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_checkpoints_pairs_exports_and_inputs_are_clear_errors() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");

    // A checkpoint whose weights fail verification; nothing is written.
    let copy = dir.path().join("copy");
    copy_dir(&runs.mlp, &copy);
    let latest = std::fs::read_to_string(copy.join("latest")).unwrap();
    flip_last_byte(&copy.join(latest.trim()).join("model.safetensors"));
    fails_with(
        &["export", s(&copy), "--out", s(&out)],
        &[
            "failed verification",
            "is corrupted",
            "export another checkpoint",
        ],
    );
    assert!(!out.exists());

    // Unsupported model/format pairs list what is supported.
    fails_with(
        &["export", s(&runs.mlp), "--format", "hf", "--out", s(&out)],
        &[
            "--format hf --quantize none is not supported for a mlp model",
            "onnx: mlp, cnn",
        ],
    );
    fails_with(
        &["export", s(&runs.gpt), "--format", "onnx", "--out", s(&out)],
        &["not supported for a gpt model", "hf: gpt with none"],
    );
    fails_with(
        &[
            "export",
            s(&runs.gpt),
            "--format",
            "hf",
            "--quantize",
            "int8",
            "--out",
            s(&out),
        ],
        &["--format hf --quantize int8 is not supported"],
    );

    // An existing export is kept unless --overwrite.
    let good = dir.path().join("good");
    export(&runs.mlp, &good, &["--quantize", "int4"]);
    let before = std::fs::read(good.join("model.safetensors")).unwrap();
    fails_with(
        &["export", s(&runs.mlp), "--out", s(&good)],
        &["already exists", "--overwrite"],
    );
    assert_eq!(
        std::fs::read(good.join("model.safetensors")).unwrap(),
        before
    );

    // --overwrite replaces an earlier export, and only an export; never the run itself.
    let summary = export(&runs.mlp, &good, &["--quantize", "int8", "--overwrite"]);
    assert_eq!(summary["quantize"], "int8");
    let manifest = std::fs::read_to_string(good.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"scheme\": \"int8\""));
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    fails_with(
        &["export", s(&runs.mlp), "--out", s(&precious), "--overwrite"],
        &["is not a Kiln export", "only replaces exports"],
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
    fails_with(
        &["export", s(&runs.mlp), "--out", s(&runs.mlp), "--overwrite"],
        &["would hold the run directory"],
    );
    fails_with(
        &[
            "export",
            s(&runs.mlp),
            "--out",
            s(&out),
            "--quantize",
            "int8",
            "--block-size",
            "32",
        ],
        &["--block-size applies to --quantize int4 only"],
    );

    // Inputs of the wrong shape or with bad values.
    let nan = dir.path().join("nan.csv");
    std::fs::write(&nan, format!("{}nan\n", "0.5,".repeat(783))).unwrap();
    fails_with(
        &["predict", s(&good), s(&nan)],
        &["nan.csv:1: the row holds NaN or infinite values"],
    );
    let small = dir.path().join("small.png");
    first_image_png(&small, false, 10);
    fails_with(
        &["predict", s(&good), s(&small)],
        &["the image is 10x10 pixels, the model takes 28x28"],
    );
    let csv = dir.path().join("short.csv");
    std::fs::write(&csv, "0.1,0.2,0.3\n").unwrap();
    fails_with(
        &["predict", s(&good), s(&csv)],
        &["the row has 3 values, the model takes 784 features"],
    );
    fails_with(&["predict", s(&good), "notes.txt"], &["unknown input type"]);

    // A corrupted export is refused at predict time.
    flip_last_byte(&good.join("model.safetensors"));
    fails_with(
        &["predict", s(&good), TEST_IMAGES],
        &["does not match the manifest", "export it again"],
    );

    // ONNX exports run in onnxruntime, not in kiln predict.
    let onnx = dir.path().join("onnx");
    export(&runs.mlp, &onnx, &["--format", "onnx"]);
    fails_with(&["predict", s(&onnx), TEST_IMAGES], &["is an ONNX export"]);
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
