//! The exports loaded by the tools users serve them with: the Kiln format by safetensors and
//! PyTorch, ONNX by onnxruntime, the Hugging Face folder by transformers.

use super::*;

/// The Python of the export tests, when its packages are there (CI requires it).
fn python() -> Option<PathBuf> {
    python_with("onnxruntime, transformers, safetensors, torch")
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
