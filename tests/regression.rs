//! Regression on a table (`data.task = "regression"`): scikit-learn's diabetes table trains to
//! the test R^2 of a least-squares fit on the same split (numpy computes that one), with RMSE,
//! MAE and R^2 in the target's units in metrics.jsonl and `kiln eval`; its exports predict in
//! the target's units, the ONNX one as Kiln does under onnxruntime.

mod common;

use std::path::{Path, PathBuf};

use common::{events, fails_with, kiln, repo_root, stderr};
use serde_json::Value;

const DIABETES: &str = "configs/diabetes-regression.toml";

/// Writes the diabetes table as a training file (four rows of five) and a test file (every
/// fifth row, 88 patients) into `dir`: a split both Kiln and numpy see.
fn split_files(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(repo_root().join("datasets/tabular/diabetes.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let (mut train, mut test) = (vec![header], vec![header]);
    for (i, line) in lines.enumerate() {
        if i % 5 == 4 { &mut test } else { &mut train }.push(line);
    }
    let (a, b) = (dir.join("train.csv"), dir.join("test.csv"));
    std::fs::write(&a, train.join("\n") + "\n").unwrap();
    std::fs::write(&b, test.join("\n") + "\n").unwrap();
    (a, b)
}

/// Trains the diabetes config on `train` with `test` as its test split; the JSON summary.
fn train(out: &Path, train: &Path, test: &Path, sets: &[&str]) -> Value {
    let sets = [
        format!("run.output_dir=\"{}\"", out.display()),
        format!("data.path=\"{}\"", train.display()),
        format!("data.test_path=\"{}\"", test.display()),
    ]
    .into_iter()
    .chain(sets.iter().map(|s| s.to_string()))
    .collect::<Vec<_>>();
    let mut args = vec!["train", DIABETES, "--backend", "flex"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = kiln(&args);
    assert!(o.status.success(), "kiln {args:?}:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The test R^2 of an ordinary least-squares fit (with intercept) of `progression` on the ten
/// measurements of the training file, by numpy.
fn least_squares_r2(python: &Path, train: &Path, test: &Path) -> f64 {
    let script = "import sys, numpy as np\n\
        def load(p):\n    d = np.loadtxt(p, delimiter=',', skiprows=1)\n    \
        return np.c_[d[:, :-1], np.ones(len(d))], d[:, -1]\n\
        X, y = load(sys.argv[1]); Xt, yt = load(sys.argv[2])\n\
        w = np.linalg.lstsq(X, y, rcond=None)[0]\n\
        print(1 - ((Xt @ w - yt) ** 2).sum() / ((yt - yt.mean()) ** 2).sum())\n";
    let o = std::process::Command::new(python)
        .args(["-c", script])
        .args([train, test])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn diabetes_reaches_the_test_r2_of_least_squares_with_metrics_in_its_units() {
    let Some(python) = common::python_with("numpy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = split_files(tmp.path());
    let summary = train(tmp.path(), &train_csv, &test_csv, &[]);
    let test = &summary["test"];
    let r2 = test["r2"].as_f64().unwrap();
    let reference = least_squares_r2(&python, &train_csv, &test_csv);
    eprintln!("test R^2: Kiln {r2:.4}, least squares {reference:.4}; {test}");
    assert!(
        (r2 - reference).abs() <= 0.05,
        "Kiln's test R^2 {r2} vs least squares {reference}"
    );
    assert_eq!(test["samples"], 88, "{summary}");
    // RMSE and MAE are in the target's units (the progression ranges over 25..346; a model
    // explaining about half its variance errs by about 55 on average, not by a fraction of one).
    let (rmse, mae) = (
        test["rmse"].as_f64().unwrap(),
        test["mae"].as_f64().unwrap(),
    );
    assert!(
        (40.0..80.0).contains(&rmse) && (30.0..70.0).contains(&mae),
        "{test}"
    );
    assert!(mae <= rmse, "{test}");

    let run = PathBuf::from(summary["run_dir"].as_str().unwrap());
    let valid = events(&run, "valid");
    let last = valid.last().expect("validation events");
    for key in ["loss", "rmse", "mae", "r2"] {
        assert!(last[key].is_f64(), "valid event without {key}: {last}");
    }
    // The best checkpoint by valid.r2 (the config's checkpoint.best_metric) is kept.
    let best = valid
        .iter()
        .map(|e| e["r2"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let best_dir = std::fs::read_to_string(run.join("best")).expect("a best pointer");
    assert!(run.join(best_dir.trim()).is_dir(), "no best checkpoint");
    // kiln eval reports the same metrics as the run's own test evaluation.
    let o = kiln(&["eval", run.to_str().unwrap(), "--split", "test"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["rmse", "mae", "r2"] {
        assert!((eval[key].as_f64().unwrap() - test[key].as_f64().unwrap()).abs() < 1e-9);
    }
    // The best checkpoint's validation R^2 is the best of the run's validation events.
    let state: Value = serde_json::from_slice(
        &std::fs::read(run.join(best_dir.trim()).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["best"]["metric"], "valid.r2");
    let best_r2 = state["best"]["value"].as_f64().unwrap();
    assert!((best_r2 - best).abs() < 1e-12, "best {best_r2} vs {best}");
}

#[test]
fn regression_exports_predict_in_the_targets_units_and_onnx_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = split_files(tmp.path());
    let summary = train(tmp.path(), &train_csv, &test_csv, &["train.epochs=20"]);
    let run = summary["run_dir"].as_str().unwrap();
    let export = |format: &str, quantize: &str| common::export(run, format, quantize, tmp.path());
    let (kiln_out, report) = export("kiln", "none");
    // The export measures itself with the run's metrics: R^2 as the run's test evaluation.
    let test_r2 = summary["test"]["r2"].as_f64().unwrap();
    assert!(
        (report["metrics"]["r2"].as_f64().unwrap() - test_r2).abs() < 1e-6,
        "{report}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(kiln_out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["output"]["kind"], "value",
        "{}",
        manifest["output"]
    );
    assert_eq!(manifest["output"]["target"], "progression");
    // int8 weights predict nearly as well.
    let (_, int8) = export("kiln", "int8");
    let int8_r2 = int8["metrics"]["r2"].as_f64().unwrap();
    assert!((int8_r2 - test_r2).abs() < 0.02, "{int8}");

    // kiln predict reads the test rows by column name (the label column is ignored) and prints
    // each patient's predicted progression.
    let o = kiln(&[
        "predict",
        kiln_out.to_str().unwrap(),
        test_csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let predicted: Vec<f64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["progression"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(predicted.len(), 88);
    let truth: Vec<f64> = std::fs::read_to_string(&test_csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    let mean = truth.iter().sum::<f64>() / 88.0;
    let sse: f64 = predicted
        .iter()
        .zip(&truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum();
    let sst: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    assert!(
        (1.0 - sse / sst - test_r2).abs() < 1e-4,
        "R^2 of kiln predict's values {} vs the run's {test_r2}",
        1.0 - sse / sst
    );

    let Some(python) = common::python_with("onnxruntime") else {
        return;
    };
    let (onnx_out, _) = export("onnx", "none");
    let schema: kiln_data::TableSchema =
        serde_json::from_value(manifest["input"]["table"].clone()).unwrap();
    let table = kiln_data::read_table(&test_csv, None).unwrap();
    let rows: Vec<usize> = (0..table.rows.len()).collect();
    let encoded = schema.encode(&table, &rows, false).unwrap();
    let inputs: Vec<&[f32]> = encoded.features.chunks_exact(schema.width()).collect();
    let expected: Vec<[f64; 1]> = predicted.iter().map(|&p| [p]).collect();
    let result = common::check_onnx(&python, &onnx_out, &inputs, &expected, tmp.path());
    assert_eq!(result["outputs"], "prediction", "{result}");
    eprintln!("onnxruntime vs kiln predict: {result}");
}

#[test]
fn regression_mistakes_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("run.output_dir=\"{}\"", tmp.path().display());
    let run = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["train", DIABETES, "--backend", "flex", "--set", &out];
        for s in sets {
            args.extend(["--set", s]);
        }
        fails_with(&args, needles);
    };
    // A label that is not a number.
    let text = std::fs::read_to_string(repo_root().join("datasets/tabular/diabetes.csv")).unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, text.replacen(",151\n", ",high\n", 1)).unwrap();
    let path = format!("data.path=\"{}\"", bad.display());
    run(
        &[&path],
        &[
            "bad.csv",
            "line 2",
            "column `progression`",
            "`high` is not a number",
        ],
    );
    // A loss for a classifier; a stratified regression.
    run(
        &["data.task=\"classification\"", "train.loss=\"huber\""],
        &["train.loss: chooses a regression's loss"],
    );
    run(
        &["data.stratify=true"],
        &["data.stratify: stratifies by class"],
    );
}
