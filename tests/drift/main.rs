//! End-to-end tests of drift detection: `kiln export` keeps a drift reference (within its
//! stated bound), `kiln drift` finds no drift in a model's own test split (and false alarms in
//! random halves of it stay under the nominal 5%), and finds shifts on the features that were
//! shifted and not on the others: brightness and contrast of Fashion-MNIST images, an offset
//! and a scale of one table column, a category's frequency, reversed words for a language
//! model. `live.rs`: the same in `kiln serve`, with labelled feedback.

#[path = "../common/mod.rs"]
mod common;
mod data;
mod live;
// The server helper of the serve tests (some of its methods are theirs alone).
#[allow(dead_code)]
#[path = "../serve/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{kiln, stderr, train};
use data::{Images, Table};
use serde_json::Value;

/// The default window of `kiln serve`: the size of a shifted sample.
const WINDOW: usize = 1000;
/// Random halves of a test split checked for false alarms.
const HALVES: usize = 20;

/// Exports and test splits made once for all the tests.
pub struct Fixtures {
    dir: tempfile::TempDir,
    /// A CNN trained on Fashion-MNIST.
    pub fashion: PathBuf,
    /// The Fashion-MNIST test images.
    pub fashion_test: Images,
    /// The penguins MLP, trained on `penguins_train` (numeric and categorical columns).
    pub penguins: PathBuf,
    /// Its test rows.
    pub penguins_test: Table,
    /// The diabetes regression.
    pub diabetes: PathBuf,
    /// Its test rows.
    pub diabetes_test: Table,
    /// A small character GPT trained on Shakespeare.
    pub gpt: PathBuf,
}

impl Fixtures {
    /// A fresh path in the fixtures' directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let export = |run: &Path, name: &str| {
            let out = dir.path().join("exports").join(name);
            common::export_as(run, "kiln", &out);
            out
        };
        let run = train(
            "configs/fashion-mnist-cnn.toml",
            "flex",
            dir.path(),
            &[
                "model.channels=[4, 8]",
                "model.hidden=[32]",
                "train.max_steps=200",
            ],
        );
        let fashion = export(&run, "fashion");
        let mut tables = Vec::new();
        for (name, config) in [
            ("penguins", "configs/penguins-mlp.toml"),
            ("diabetes", "configs/diabetes-regression.toml"),
        ] {
            let all =
                Table::read(&common::repo_root().join(format!("datasets/tabular/{name}.csv")));
            let (train_rows, test_rows) = all.split(0.2, 11);
            let train_path = dir.path().join(format!("{name}-train.csv"));
            let test_path = dir.path().join(format!("{name}-test.csv"));
            train_rows.write(&train_path);
            test_rows.write(&test_path);
            let run = train(
                config,
                "flex",
                dir.path(),
                &[
                    &format!("data.path=\"{}\"", train_path.display()),
                    &format!("data.test_path=\"{}\"", test_path.display()),
                    "train.epochs=20",
                ],
            );
            tables.push((export(&run, name), test_rows));
        }
        let (diabetes, diabetes_test) = tables.pop().unwrap();
        let (penguins, penguins_test) = tables.pop().unwrap();
        let run = train(
            common::SMOKE_GPT,
            "flex",
            dir.path(),
            &["train.max_steps=300"],
        );
        let gpt = export(&run, "gpt");
        Fixtures {
            fashion,
            fashion_test: Images::fashion_test(),
            penguins,
            penguins_test,
            diabetes,
            diabetes_test,
            gpt,
            dir,
        }
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `kiln drift --json EXPORT FILES...`.
pub fn drift(export: &Path, files: &[&Path]) -> Value {
    let mut args = vec!["drift", export.to_str().unwrap(), "--json"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = kiln(&args);
    assert!(out.status.success(), "kiln {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("kiln drift --json prints JSON")
}

/// The names of the features a report says drift.
pub fn drifted(report: &Value) -> Vec<String> {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["drifted"] == true)
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// How many of [`HALVES`] random halves of a test split raise data set drift; at most the
/// nominal 5% (one in 20).
fn false_alarms(what: &str, halves: impl Fn(u64) -> Value) -> usize {
    let alarms = (0..HALVES as u64)
        .filter(|&seed| {
            let report = halves(seed);
            report["dataset_drift"] == true || !drifted(&report).is_empty()
        })
        .count();
    eprintln!("{what}: {alarms} of {HALVES} random halves of the test split raised drift");
    assert!(
        alarms as f64 <= 0.05 * HALVES as f64,
        "{what}: {alarms} false alarms in {HALVES} halves"
    );
    alarms
}

#[test]
fn exports_keep_a_drift_reference_within_the_stated_bound() {
    let f = fixtures();
    for export in [&f.fashion, &f.penguins, &f.diabetes, &f.gpt] {
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(export.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["format_version"], 4);
        let drift = &manifest["drift"];
        let bytes = std::fs::metadata(export.join("drift.json")).unwrap().len();
        assert_eq!(drift["bytes"], bytes, "{drift}");
        assert!(bytes <= drift["bound_bytes"].as_u64().unwrap(), "{drift}");
        assert_eq!(drift["bound_bytes"], 4 << 20);
        eprintln!("{}: drift reference of {bytes} bytes", export.display());
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(f.penguins.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["drift"]["features"],
        serde_json::json!([
            "island",
            "bill_length_mm",
            "bill_depth_mm",
            "flipper_length_mm",
            "body_mass_g",
            "sex",
            "year"
        ])
    );
}

#[test]
fn fashion_images_drift_on_brightness_and_contrast_only_when_shifted() {
    let f = fixtures();
    let test = f.path("fashion-test.idx");
    f.fashion_test.write(&test);
    let report = &drift(&f.fashion, &[&test])["report"];
    assert_eq!(report["dataset_drift"], false, "{report}");
    assert!(drifted(report).is_empty(), "{report}");
    false_alarms("Fashion-MNIST CNN", |seed| {
        let half = f.path(&format!("fashion-half-{seed}.idx"));
        f.fashion_test.sample(5000, seed).write(&half);
        drift(&f.fashion, &[&half])["report"].clone()
    });

    // The power at the default window: each brightness shift in 10 random windows.
    let windows: Vec<Images> = (0..10)
        .map(|k| f.fashion_test.sample(WINDOW, 100 + k))
        .collect();
    let mut smallest = None;
    for delta in [2.0, 4.0, 6.0, 8.0, 12.0] {
        let mut detected = 0;
        for (k, window) in windows.iter().enumerate() {
            let path = f.path(&format!("fashion-bright-{delta}-{k}.idx"));
            window
                .map(|img| img.iter().map(|p| p + delta).collect())
                .write(&path);
            let report = drift(&f.fashion, &[&path])["report"].clone();
            let moved = drifted(&report);
            assert!(
                !moved.iter().any(|m| m == "contrast"),
                "brightness +{delta}: {report}"
            );
            detected += usize::from(moved.iter().any(|m| m == "mean_intensity"));
        }
        eprintln!("brightness +{delta} of 255: mean_intensity drifts in {detected} of 10 windows of {WINDOW} images");
        if detected >= 8 && smallest.is_none() {
            smallest = Some(delta);
        }
        if delta == 12.0 {
            assert_eq!(detected, 10);
        }
    }
    eprintln!(
        "smallest brightness shift detected in at least 8 of 10 windows: +{smallest:?} of 255"
    );
    let window = &windows[0];

    let path = f.path("fashion-contrast.idx");
    window
        .map(|img| {
            let mean = img.iter().sum::<f64>() / img.len() as f64;
            img.iter().map(|p| mean + 0.9 * (p - mean)).collect()
        })
        .write(&path);
    let report = &drift(&f.fashion, &[&path])["report"];
    let moved = drifted(report);
    assert!(moved.iter().any(|m| m == "contrast"), "{report}");
    assert!(!moved.iter().any(|m| m == "mean_intensity"), "{report}");
}

#[test]
fn table_columns_drift_alone_when_shifted_and_the_test_split_does_not() {
    let f = fixtures();
    for (name, export, test) in [
        ("penguins", &f.penguins, &f.penguins_test),
        ("diabetes", &f.diabetes, &f.diabetes_test),
    ] {
        let path = f.path(&format!("{name}-test-again.csv"));
        test.write(&path);
        let report = &drift(export, &[&path])["report"];
        assert_eq!(report["dataset_drift"], false, "{name}: {report}");
        assert!(drifted(report).is_empty(), "{name}: {report}");
        false_alarms(name, |seed| {
            let half = f.path(&format!("{name}-half-{seed}.csv"));
            test.half(seed).write(&half);
            drift(export, &[&half])["report"].clone()
        });
    }

    let t = &f.penguins_test;
    let cases: [(&str, &str, Table); 4] = [
        (
            "offset",
            "bill_length_mm",
            t.map_numbers("bill_length_mm", |v| v + 6.0),
        ),
        (
            "scale",
            "body_mass_g",
            t.map_numbers("body_mass_g", |v| v * 1.3),
        ),
        (
            "category frequency",
            "island",
            t.map_cells("island", |c| {
                if c == "Biscoe" {
                    "Dream".into()
                } else {
                    c.into()
                }
            }),
        ),
        (
            "category frequency",
            "sex",
            t.map_cells("sex", |_| "male".into()),
        ),
    ];
    for (what, column, shifted) in cases {
        let path = f.path(&format!("penguins-{column}.csv"));
        shifted.write(&path);
        let report = &drift(&f.penguins, &[&path])["report"];
        assert_eq!(
            drifted(report),
            [column],
            "{what} of {column} must drift {column} alone: {report}"
        );
    }
    let path = f.path("diabetes-bmi.csv");
    f.diabetes_test.map_numbers("bmi", |v| v + 4.0).write(&path);
    let report = &drift(&f.diabetes, &[&path])["report"];
    assert_eq!(drifted(report), ["bmi"], "{report}");
}

#[test]
fn reversed_words_drift_a_language_model_and_its_own_text_does_not() {
    let f = fixtures();
    let text =
        std::fs::read_to_string(common::repo_root().join("datasets/text/shakespeare.txt")).unwrap();
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len() - 40_000..].iter().collect()
    };
    let same = f.path("shakespeare-tail.txt");
    std::fs::write(&same, &tail).unwrap();
    let report = drift(&f.gpt, &[&same])["report"].clone();
    assert_eq!(report["dataset_drift"], false, "{report}");

    let reversed: String = tail
        .split_inclusive(char::is_whitespace)
        .map(|w| {
            let end = w.trim_end();
            end.chars().rev().collect::<String>() + &w[end.len()..]
        })
        .collect();
    let path = f.path("shakespeare-reversed.txt");
    std::fs::write(&path, &reversed).unwrap();
    let report = drift(&f.gpt, &[&path])["report"].clone();
    assert_eq!(report["dataset_drift"], true, "{report}");
    assert_eq!(report["prediction"]["name"], "surprise");
    assert_eq!(report["prediction"]["drifted"], true, "{report}");
    // The same characters: their frequencies do not move, the model's surprise does.
    assert!(drifted(&report).is_empty(), "{report}");
}

#[test]
fn a_folder_of_images_is_compared_image_by_image() {
    let f = fixtures();
    let folder = f.path("fashion-pngs");
    let images = f.fashion_test.sample(300, 7);
    for (k, img) in images.pixels.iter().enumerate() {
        // Nested folders, as an image folder's class directories.
        let dir = folder.join(format!("part-{}", k % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = img.iter().map(|&p| p as u8).collect();
        image::GrayImage::from_raw(images.width as u32, images.height as u32, pixels)
            .unwrap()
            .save(dir.join(format!("{k:04}.png")))
            .unwrap();
    }
    let idx = f.path("fashion-300.idx");
    images.write(&idx);
    let from_folder = drift(&f.fashion, &[&folder]);
    assert_eq!(from_folder["samples"], 300);
    assert_eq!(
        from_folder["report"]["dataset_drift"], false,
        "{from_folder}"
    );
    // The same images as an IDX file: the same statistics.
    let from_idx = drift(&f.fashion, &[&idx]);
    let features = |r: &Value| r["report"]["features"].as_array().unwrap().len();
    assert_eq!((features(&from_folder), features(&from_idx)), (3, 3));
    for (a, b) in (from_folder["report"]["features"].as_array().unwrap().iter())
        .zip(from_idx["report"]["features"].as_array().unwrap())
    {
        assert_eq!(a["statistic"], b["statistic"], "{a} {b}");
    }
    // kiln predict takes the folder as well: one line per image, in name order.
    let out = kiln(&[
        "predict",
        f.fashion.to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    assert!(
        lines[0]["input"]
            .as_str()
            .unwrap()
            .ends_with("part-0/0000.png"),
        "{}",
        lines[0]
    );

    let empty = f.path("no-images");
    std::fs::create_dir_all(&empty).unwrap();
    common::fails_with(
        &[
            "drift",
            f.fashion.to_str().unwrap(),
            empty.to_str().unwrap(),
        ],
        &["no-images", "a folder with no images"],
    );
}

#[test]
fn drift_refuses_bad_input_and_old_exports_with_what_to_do() {
    let f = fixtures();
    common::fails_with(
        &[
            "drift",
            f.fashion.to_str().unwrap(),
            "--alpha",
            "1.5",
            "x.idx",
        ],
        &["--alpha 1.5", "between 0 and 1"],
    );
    let old = common::repo_root().join("tests/fixtures/v1/exports/wine-mlp-int8");
    common::fails_with(
        &["drift", old.to_str().unwrap(), "x.csv"],
        &[
            "before exports kept a drift reference",
            "export the run again",
        ],
    );
    // A damaged reference: bytes changed (checksum), or edited with its checksum updated.
    let damaged = f.path("penguins-damaged");
    common::copy_dir(&f.penguins, &damaged);
    let reference = damaged.join("drift.json");
    let text = std::fs::read_to_string(&reference).unwrap();
    std::fs::write(&reference, text.replacen("Biscoe", "Biscay", 1)).unwrap();
    let test = f.path("penguins-test-for-damage.csv");
    f.penguins_test.write(&test);
    let args = ["drift", damaged.to_str().unwrap(), test.to_str().unwrap()];
    common::fails_with(&args, &["drift.json", "sha256", "export the model again"]);
    let bytes = std::fs::read(&reference).unwrap();
    let manifest_path = damaged.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["drift"]["sha256"] = Value::from(sha256_hex(&bytes));
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    common::fails_with(
        &args,
        &[
            "drift reference is damaged",
            "island",
            "export the model again",
        ],
    );

    let csv = f.path("wrong.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    common::fails_with(
        &["drift", f.penguins.to_str().unwrap(), csv.to_str().unwrap()],
        &["island"],
    );
}
