//! Bad checkpoints, pairs of options, exports and inputs: each a clear one-line error.

use super::*;

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
        &[
            "small.png: the image is 10x10",
            "not 28x28",
            "resize it to 28x28 first",
        ],
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
