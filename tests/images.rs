//! Folders of images (`data.format = "image_folder"`): Fashion-MNIST written as class folders of
//! PNG and JPEG files (examples/image_folder.rs) trains the CNN with augmentation, resumes
//! mid-epoch to the bit, exports and predicts JPEG files; bad folders and images are one-line
//! errors naming the file or folder.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{assert_same_run, fails_with, kiln, repo_root, stderr};
use serde_json::Value;

#[allow(dead_code)] // its main is not called here
#[path = "../examples/image_folder.rs"]
mod image_folder;

const CONFIG: &str = "configs/fashion-mnist-folder-cnn.toml";

/// A shared folder of the first 1200 training and 300 test images (written once).
fn folder() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_current_dir(repo_root()).unwrap();
        image_folder::write_fashion_mnist(&dir, Some(1200), Some(300)).unwrap();
        dir
    })
}

/// `kiln train` of `config` on `data` into `out/name`, batches of 64, with overrides.
fn run_args(config: &str, data: &Path, out: &Path, name: &str, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", config, "--backend", "flex"]
        .map(String::from)
        .to_vec();
    let fixed = [
        format!("data.path=\"{}\"", data.display()),
        format!("run.output_dir=\"{}\"", out.display()),
        format!("run.name=\"{name}\""),
        "data.batch_size=64".to_string(),
        "checkpoint.every_steps=0".to_string(),
    ];
    for s in fixed.iter().map(String::as_str).chain(sets.iter().copied()) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// [`run_args`] of the folder CNN config, made small.
fn train_args(data: &Path, out: &Path, name: &str, sets: &[&str]) -> Vec<String> {
    let small = ["model.channels=[8, 16]", "model.hidden=[32]"];
    run_args(CONFIG, data, out, name, &[&small[..], sets].concat())
}

fn ok(args: &[String]) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&args);
    assert!(o.status.success(), "kiln {args:?}:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_folder_of_png_and_jpeg_trains_the_cnn_and_its_export_predicts_a_jpeg() {
    let tmp = tempfile::tempdir().unwrap();
    // 1080 training images of 64: 17 batches per epoch, 4 epochs.
    let summary = ok(&train_args(
        folder(),
        tmp.path(),
        "cnn",
        &["train.epochs=4", "train.eval_every=20"],
    ));
    let test = &summary["test"];
    assert_eq!(test["samples"], 300, "{summary}");
    let accuracy = test["accuracy"].as_f64().unwrap();
    eprintln!("test accuracy after 4 epochs on 1080 images: {accuracy}");
    assert!(accuracy >= 0.6, "{summary}");

    let run = summary["run_dir"].as_str().unwrap();
    let export = tmp.path().join("export");
    let o = kiln(&["export", run, "--out", export.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(export.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["input"]["source_format"], "image_folder");
    assert_eq!(manifest["input"]["image"]["channels"], 1);
    // The classes are the folder names, sorted.
    assert_eq!(manifest["output"]["labels"][0], "ankle-boot");
    assert_eq!(manifest["output"]["labels"][9], "trouser");

    // The test folder's first trouser, a JPEG (odd-numbered) or a PNG, predicted as trousers
    // by most of them.
    let trousers: Vec<PathBuf> = std::fs::read_dir(folder().join("test/trouser"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let jpegs: Vec<&PathBuf> = trousers
        .iter()
        .filter(|p| p.extension().unwrap() == "jpg")
        .collect();
    assert!(jpegs.len() >= 5, "{trousers:?}");
    let mut args = vec!["predict", export.to_str().unwrap()];
    args.extend(jpegs.iter().map(|p| p.to_str().unwrap()));
    let o = kiln(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    let right = labels.iter().filter(|l| *l == "trouser").count();
    assert!(2 * right > labels.len(), "{labels:?}");

    // An image of another size: this export does not resize (the run set no data.image_size).
    let big = tmp.path().join("big.png");
    image::GrayImage::new(32, 30).save(&big).unwrap();
    fails_with(
        &["predict", export.to_str().unwrap(), big.to_str().unwrap()],
        &[
            "big.png",
            "32x30",
            "not 28x28",
            "does not resize",
            "resize it to 28x28 first",
        ],
    );
}

#[test]
fn resume_mid_epoch_with_augmentation_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    // 17 batches per epoch: step 25 is mid-epoch 1; two loader threads.
    let sets = [
        "train.max_steps=40",
        "train.log_every=3",
        "train.eval_every=10",
        "data.loader_threads=2",
        "model.dropout=0.2",
    ];
    let straight = ok(&train_args(folder(), tmp.path(), "straight", &sets));
    assert_eq!(straight["steps"], 40);
    let mut first = train_args(folder(), tmp.path(), "split", &sets);
    first.extend(["--until-step".into(), "25".into()]);
    assert_eq!(ok(&first)["status"], "paused");
    let run = tmp.path().join("split");
    let resumed = ok(&[
        "train".into(),
        "--resume".into(),
        run.display().to_string(),
        "--backend".into(),
        "flex".into(),
    ]);
    assert_eq!(resumed["resumed_from"], 25);
    assert_same_run(&tmp.path().join("straight"), &run, 40);
    // Augmentation is on and changes what is learned: without it the weights differ.
    let plain = ok(&train_args(
        folder(),
        tmp.path(),
        "plain",
        &[&sets[..], &["data.crop_padding=0", "data.flip=false"]].concat(),
    ));
    assert_eq!(plain["steps"], 40);
    let weights = |name: &str| {
        std::fs::read(tmp.path().join(name).join("step-40/model.safetensors")).unwrap()
    };
    assert!(weights("plain") != weights("straight"));
}

/// A copy of a few classes of the shared folder's training images, to damage.
fn small_copy(to: &Path) {
    for class in ["bag", "sandal", "trouser"] {
        let from = folder().join("train").join(class);
        let dest = to.join(class);
        std::fs::create_dir_all(&dest).unwrap();
        for entry in std::fs::read_dir(&from).unwrap().take(30) {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn bad_folders_and_images_are_one_line_errors_or_skipped_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_copy(&data);
    let jpeg = std::fs::read_dir(data.join("bag"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().unwrap() == "jpg")
        .unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() / 2]).unwrap();
    let name = jpeg.file_name().unwrap().to_str().unwrap().to_string();
    let run = |sets: &[&str]| {
        let fixed = ["train.max_steps=2", "run.overwrite=true"];
        train_args(&data, tmp.path(), "bad", &[&fixed[..], sets].concat())
    };
    let check = |sets: &[&str], needles: &[&str]| {
        let args = run(sets);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needles);
    };
    // A truncated JPEG: named, with what to do.
    check(
        &["data.standardize=false"],
        &[
            &name,
            "cannot decode the image",
            "truncated",
            "data.skip_bad_images",
        ],
    );
    // Skipped and counted when asked.
    let o = ok(&run(&["data.skip_bad_images=true"]));
    assert_eq!(o["status"], "completed");
    std::fs::remove_file(&jpeg).unwrap();
    // An empty class folder; a test class the training images do not have.
    std::fs::create_dir(data.join("coat")).unwrap();
    check(
        &[],
        &["coat", "holds no image", "add images or remove the folder"],
    );
    std::fs::remove_dir(data.join("coat")).unwrap();
    let split = tmp.path().join("split");
    small_copy(&split.join("train"));
    small_copy(&split.join("test"));
    std::fs::rename(split.join("test/bag"), split.join("test/backpack")).unwrap();
    let path = format!("data.path=\"{}\"", split.display());
    check(
        &[&path],
        &[
            "backpack",
            "not one of the training classes (bag, sandal, trouser)",
        ],
    );
    // Images of two sizes without data.image_size; with it they train.
    std::fs::remove_dir_all(split.join("test/backpack")).unwrap();
    image::GrayImage::new(20, 20)
        .save(split.join("train/bag/odd.png"))
        .unwrap();
    check(&[&path], &["odd.png", "20x20", "data.image_size"]);
    let o = ok(&run(&[&path, "data.image_size=[28, 28]"]));
    assert_eq!(o["status"], "completed");
}

/// The peak anonymous memory (RssAnon, bytes) of `kiln args` while it runs, sampled every 10 ms.
fn peak_rss_anon(args: &[String]) -> u64 {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo_root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let kib = text
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(kib.unwrap_or(0) * 1024);
        }
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "kiln {args:?} failed");
            return peak;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_folder_larger_than_memory_holds_only_the_batches_in_flight() {
    // 3000 RGB images of 128x128 (hard links to one noisy PNG per class): 590 MB once decoded
    // to float32, which an eager reader would hold; the loader holds a few batches of 16.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut seed = 1u32;
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        let img = image::RgbImage::from_fn(128, 128, |_, _| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let b = (seed >> 24) as u8;
            image::Rgb([b, b.wrapping_mul(3), b.wrapping_mul(7)])
        });
        let first = data.join(class).join("0.png");
        img.save(&first).unwrap();
        for i in 1..1500 {
            std::fs::hard_link(&first, data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let decoded = 3000 * 3 * 128 * 128 * 4;
    let mut args: Vec<String> = ["train", "configs/smoke.toml", "--backend", "flex"]
        .map(String::from)
        .to_vec();
    for s in [
        "data.format=\"image_folder\"".to_string(),
        format!("data.path=\"{}\"", data.display()),
        format!("run.output_dir=\"{}\"", tmp.path().display()),
        "data.batch_size=16".into(),
        "data.prefetch=2".into(),
        "data.eval_batch_size=16".into(),
        "data.test_fraction=0.1".into(),
        "model.hidden=[8]".into(),
        "train.max_steps=30".into(),
    ] {
        args.extend(["--set".to_string(), s]);
    }
    let peak = peak_rss_anon(&args);
    eprintln!(
        "peak RssAnon {} MiB; the folder decoded: {} MiB",
        peak >> 20,
        decoded >> 20
    );
    assert!(peak > 0 && peak < decoded / 2, "peak RssAnon {peak} bytes");
}

#[test]
fn a_resnet_trains_on_the_folder_and_its_onnx_export_matches_kiln() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = ok(&run_args(
        "configs/fashion-mnist-folder-resnet.toml",
        folder(),
        tmp.path(),
        "resnet",
        &[
            "model.stages=[1, 1]",
            "model.widths=[8, 16]",
            "train.epochs=3",
            "schedule.warmup_steps=5",
        ],
    ));
    let accuracy = summary["test"]["accuracy"].as_f64().unwrap();
    eprintln!("ResNet test accuracy after 3 epochs on 1080 images: {accuracy}");
    // 51 steps of a tiny ResNet: it learns (chance is 0.1); the full run is in the notes.
    assert!(accuracy >= 0.3, "{summary}");
    let run = summary["run_dir"].as_str().unwrap();
    let export = |format: &str, quantize: &str| common::export(run, format, quantize, tmp.path());
    let (kiln_out, _) = export("kiln", "none");
    let (_, int8) = export("kiln", "int8");
    let int8_accuracy = int8["metrics"]["accuracy"].as_f64().unwrap();
    assert!((int8_accuracy - accuracy).abs() < 0.03, "{int8}");
    // int4 is calibrated on training images at every weight layer: the stem, the two blocks'
    // convolutions and the second's shortcut, and the classifier.
    let (int4_out, int4) = export("kiln", "int4");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(int4_out.join("manifest.json")).unwrap()).unwrap();
    let calibration = &manifest["quantization"]["calibration"];
    assert_eq!(calibration["layers"], 7, "{calibration}");
    let int4_accuracy = int4["metrics"]["accuracy"].as_f64().unwrap();
    assert!(int4_accuracy > accuracy - 0.1, "{int4}");

    // Kiln's logits for 40 test images, and onnxruntime's on the same pixels.
    let images: Vec<PathBuf> = ["bag", "coat", "sneaker", "trouser"]
        .iter()
        .flat_map(|c| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(folder().join("test").join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.into_iter().take(10)
        })
        .collect();
    let mut args = vec!["predict", kiln_out.to_str().unwrap(), "--logits"];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let o = kiln(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let logits: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["logits"].clone())
        .collect();
    let spec = kiln_data::ImageSpec {
        channels: 1,
        height: 28,
        width: 28,
        resize: false,
    };
    let inputs: Vec<Vec<f32>> = images.iter().map(|p| spec.read(p, "").unwrap()).collect();
    let Some(python) = common::python_with("onnxruntime") else {
        return;
    };
    let (onnx_out, _) = export("onnx", "none");
    let result = common::check_onnx(&python, &onnx_out, &inputs, &logits, tmp.path());
    eprintln!("onnxruntime vs kiln predict: {result}");
    assert_eq!(result["rows"], 40, "{result}");
}
