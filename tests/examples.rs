//! The programs in examples/ as their users rely on them: the residual MLP of
//! examples/residual.rs, a model Kiln does not ship, resumes bit for bit through Kiln's loop and
//! trains on two devices as one worker with a twice larger batch does.

mod common;

use std::path::Path;

use common::{assert_same_run, max_weight_diff, repo_root};
use kiln_core::Config;
use kiln_train::{train_on_devices_with, ResumeFrom, RunData, TrainOptions, Trainer};

#[allow(dead_code)] // its main is not called here
#[path = "../examples/residual.rs"]
mod residual;

/// The wine config as the example trains it, 10 epochs, into `out/name`.
fn config(out: &Path, name: &str, sets: &[&str]) -> Config {
    std::env::set_current_dir(repo_root()).unwrap();
    let mut all = vec![
        format!("run.name=\"{name}\""),
        format!("run.output_dir=\"{}\"", out.display()),
        "train.epochs=10".to_string(),
        "train.log_every=5".to_string(),
        "train.eval_every=20".to_string(),
        "checkpoint.every_steps=0".to_string(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    Config::load("examples/residual.toml".as_ref(), &all).unwrap()
}

type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

/// The example's model trained on the example's data through the library's front door.
fn residual_run<B: burn::tensor::backend::AutodiffBackend>(
    config: &Config,
    backend: kiln_core::BackendKind,
    resume: Option<ResumeFrom>,
    until: Option<usize>,
) -> anyhow::Result<kiln_train::TrainSummary> {
    let trainer = Trainer::new(config, backend)
        .resume_from(resume)
        .until_step(until);
    trainer.fit::<B, _, _, _>(RunData::load(config)?, residual::build::<B>)
}

fn cpu_run(
    config: &Config,
    resume: Option<ResumeFrom>,
    until: Option<usize>,
) -> anyhow::Result<kiln_train::TrainSummary> {
    residual_run::<Cpu>(config, kiln_core::BackendKind::Flex, resume, until)
}

#[test]
fn the_example_model_paused_and_resumed_matches_an_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = cpu_run(&config(tmp.path(), "straight", &[]), None, None).unwrap();
    let total = straight.total_steps;
    assert_eq!((straight.status, straight.steps), ("completed", total));
    assert!(straight.test.as_ref().unwrap().metric("accuracy").is_some());

    let resumed_config = config(tmp.path(), "resumed", &[]);
    let paused = cpu_run(&resumed_config, None, Some(total / 2 + 3)).unwrap();
    assert_eq!((paused.status, paused.steps), ("paused", total / 2 + 3));
    let from = Some(ResumeFrom::Latest(paused.run_dir.clone()));
    let done = cpu_run(&resumed_config, from, None).unwrap();
    assert_eq!(
        (done.status, done.resumed_from),
        ("completed", Some(total / 2 + 3))
    );
    assert_same_run(&straight.run_dir, &done.run_dir, total);
}

#[test]
fn the_example_model_on_two_devices_matches_one_worker_with_a_twice_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let one = config(tmp.path(), "one", &["data.batch_size=16"]);
    let two = config(tmp.path(), "two", &["data.batch_size=8"]);
    let options = TrainOptions::default;
    let cpu = || vec![burn::tensor::Device::<Cpu>::default()];
    let kind = kiln_core::BackendKind::Flex;
    let data = |c: &Config| std::sync::Arc::new(RunData::load(c).unwrap());
    let build = residual::build::<Cpu>;
    let a = train_on_devices_with(&one, data(&one), build, cpu(), kind, options()).unwrap();
    let b = train_on_devices_with(
        &two,
        data(&two),
        build,
        [cpu(), cpu()].concat(),
        kind,
        options(),
    )
    .unwrap();
    assert_eq!((a.workers, b.workers), (1, 2));
    assert_eq!(a.total_steps, b.total_steps);
    let weights = |run: &Path| run.join(format!("step-{}/model.safetensors", a.total_steps));
    let diff = max_weight_diff(&weights(&a.run_dir), &weights(&b.run_dir));
    assert!(diff <= 1e-5, "weights differ by {diff}");
    let (ta, tb) = (a.test.unwrap(), b.test.unwrap());
    assert_eq!(ta.samples, tb.samples);
    assert!((ta.loss - tb.loss).abs() <= 1e-4, "{ta:?} vs {tb:?}");
}

/// Kiln's precision helper gives a user's model mixed precision: the example in f16 on wgpu
/// trains like f32 to within f16's rounding, with dynamic loss scaling.
#[cfg(feature = "wgpu")]
#[test]
fn the_example_model_trains_in_f16_on_wgpu() {
    type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;
    let tmp = tempfile::tempdir().unwrap();
    let wgpu = kiln_core::BackendKind::Wgpu;
    // 3 epochs (24 steps): lavapipe (CI's software Vulkan) is slow.
    let short = "train.epochs=3";
    let f32_run = config(tmp.path(), "f32", &[short]);
    let f16_run = config(tmp.path(), "f16", &[short, "train.precision=\"f16\""]);
    let full = residual_run::<Gpu>(&f32_run, wgpu, None, None).unwrap();
    let half = residual_run::<Gpu>(&f16_run, wgpu, None, None).unwrap();
    let losses = |run: &Path| -> Vec<f64> {
        common::events(run, "train")
            .iter()
            .map(|e| e["loss"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (losses(&full.run_dir), losses(&half.run_dir));
    assert_eq!(a.len(), b.len());
    assert_ne!(
        a, b,
        "f16 gave exactly the f32 losses: no half precision happened"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 0.02 + 0.05 * x.abs(),
            "f32 {a:?} vs f16 {b:?}"
        );
    }
    let events = common::events(&half.run_dir, "train");
    assert!(
        events.iter().all(|e| e["loss_scale"].as_f64().is_some()),
        "{events:?}"
    );
}

/// A program's own model is evaluated and exported from the program: the float export loads
/// back to the same numbers, the int8 one (a quarter of the weight bytes, quantized along the
/// model's own axes) to nearly the same accuracy; `kiln predict` names what loads it.
#[test]
fn the_example_model_exports_from_the_program_and_loads_back() {
    use kiln_export::{export_module, load_module, Scheme};
    use kiln_train::{evaluate, weights, Split};
    type Inner = burn::backend::Flex;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), "exported", &[]);
    let done = cpu_run(&config, None, None).unwrap();
    let data = RunData::load(&config).unwrap();
    let dev = Default::default();
    let build = || residual::build::<Inner>(&config, &data, &dev).unwrap();
    let file = done.checkpoint.unwrap().join("model.safetensors");
    let trained = weights::load(build(), &file).unwrap();
    let test = |m: &residual::ResidualMlp<Inner>| {
        evaluate(m, data.eval_batches(Split::Test, &config), &dev).unwrap()
    };
    let float = test(&trained);
    assert_eq!(Some(float.loss), done.test.as_ref().map(|t| t.loss));

    let about = serde_json::json!({"model": "residual", "width": 32});
    let f32_dir = tmp.path().join("f32");
    let manifest = export_module(&trained, Scheme::None, about.clone(), &f32_dir, false).unwrap();
    assert_eq!(manifest.architecture["program"], about);
    let (again, _) = load_module(build(), &f32_dir).unwrap();
    assert_eq!(test(&again).loss, float.loss);

    let int8_dir = tmp.path().join("int8");
    let manifest = export_module(&trained, Scheme::Int8, about, &int8_dir, false).unwrap();
    let kinds: Vec<&str> = manifest.tensors.values().map(|t| t.kind.as_str()).collect();
    assert!(
        kinds.contains(&"int8") && kinds.contains(&"f32"),
        "{kinds:?}"
    );
    let embed = &manifest.tensors["embed.weight"];
    assert_eq!(
        (embed.shape.as_slice(), embed.axis),
        (&[13, 32][..], Some(1))
    );
    let (int8, _) = load_module(build(), &int8_dir).unwrap();
    let (a, b) = (float.metrics["accuracy"], test(&int8).metrics["accuracy"]);
    assert!((a - b).abs() <= 0.06, "float accuracy {a}, int8 {b}");
    let bytes = |d: &Path| {
        std::fs::metadata(d.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(bytes(&int8_dir) * 2 < bytes(&f32_dir));

    let again = export_module(
        &trained,
        Scheme::None,
        serde_json::Value::Null,
        &f32_dir,
        false,
    );
    assert!(format!("{:#}", again.unwrap_err()).contains("already exists"));
    let out = common::kiln(&["predict", int8_dir.to_str().unwrap(), "x.csv"]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(e.contains("kiln_export::load_module"), "{e}");
}

#[allow(dead_code)] // its main is not called here
#[path = "../examples/regression.rs"]
mod regression;

/// The regression example's config, into `out/name`.
fn regression_config(out: &Path, name: &str, sets: &[&str]) -> Config {
    std::env::set_current_dir(repo_root()).unwrap();
    let mut all = vec![
        format!("run.name=\"{name}\""),
        format!("run.output_dir=\"{}\"", out.display()),
        "checkpoint.every_steps=0".to_string(),
    ];
    if !sets.iter().any(|s| s.starts_with("train.max_steps")) {
        all.push("train.epochs=10".to_string());
    }
    all.extend(sets.iter().map(|s| s.to_string()));
    Config::load("examples/regression.toml".as_ref(), &all).unwrap()
}

/// The regression example's run of `config` on the CPU.
fn regression_run(
    config: &Config,
    resume: Option<ResumeFrom>,
    until: Option<usize>,
) -> anyhow::Result<kiln_train::TrainSummary> {
    let trainer = Trainer::new(config, kiln_core::BackendKind::Flex).resume_from(resume);
    let data = regression::data()?;
    trainer
        .until_step(until)
        .fit::<Cpu, _, _, _>(data, regression::build::<Cpu>)
}

/// `(step, loss, mse, r2)` of every `split` event: what a user reads off a regression run.
fn regression_events(run: &Path, split: &str) -> Vec<[serde_json::Value; 4]> {
    common::events(run, split)
        .into_iter()
        .map(|e| {
            [
                e["step"].clone(),
                e["loss"].clone(),
                e["mse"].clone(),
                e["r2"].clone(),
            ]
        })
        .collect()
}

fn assert_same_regression(a: &Path, b: &Path, step: usize) {
    for split in ["train", "valid", "test"] {
        let (ea, eb) = (regression_events(a, split), regression_events(b, split));
        assert!(!ea.is_empty(), "no {split} events in {a:?}");
        assert_eq!(ea, eb, "{split} events differ");
    }
    assert_same_run(a, b, step);
}

#[test]
fn the_regression_example_logs_r2_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = regression_run(&regression_config(tmp.path(), "s", &[]), None, None).unwrap();
    let total = straight.total_steps;
    assert_eq!((straight.status, total), ("completed", 110)); // 342 rows / 32 = 11 batches x 10

    let config = regression_config(tmp.path(), "r", &[]);
    let paused = regression_run(&config, None, Some(47)).unwrap();
    assert_eq!((paused.status, paused.steps), ("paused", 47));
    let from = Some(ResumeFrom::Latest(paused.run_dir.clone()));
    let done = regression_run(&config, from, None).unwrap();
    assert_eq!((done.status, done.resumed_from), ("completed", Some(47)));
    assert_same_regression(&straight.run_dir, &done.run_dir, total);

    // R^2 as a user computes it: 1 - MSE / the variance of the split's (standardized) targets.
    let test = straight.test.unwrap();
    let rows = regression::read_rows("datasets/tabular/diabetes.csv", 342).unwrap();
    let y: Vec<f64> = rows[392..].iter().map(|r| f64::from(r[10])).collect();
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / y.len() as f64;
    let r2 = 1.0 - test.metric("mse").unwrap() / var;
    assert!(
        (test.metric("r2").unwrap() - r2).abs() < 1e-4,
        "{test:?} vs {r2}"
    );
    assert!(r2 > 0.3, "the network learned little: test R^2 {r2}");
    assert_eq!(test.samples, 50);
}

#[test]
fn the_regression_example_on_two_devices_matches_one_worker_with_a_twice_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let one = regression_config(tmp.path(), "one", &["data.batch_size=16"]);
    let two = regression_config(tmp.path(), "two", &["data.batch_size=8"]);
    let cpu = || burn::tensor::Device::<Cpu>::default();
    let (kind, build) = (kiln_core::BackendKind::Flex, regression::build::<Cpu>);
    let data = || std::sync::Arc::new(regression::data().unwrap());
    let a = train_on_devices_with(
        &one,
        data(),
        build,
        vec![cpu()],
        kind,
        TrainOptions::default(),
    );
    let b = train_on_devices_with(
        &two,
        data(),
        build,
        vec![cpu(); 2],
        kind,
        Default::default(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.workers, b.workers, a.total_steps), (1, 2, b.total_steps));
    let weights = |run: &Path| run.join(format!("step-{}/model.safetensors", a.total_steps));
    let diff = max_weight_diff(&weights(&a.run_dir), &weights(&b.run_dir));
    assert!(diff <= 1e-5, "weights differ by {diff}");
    let (ta, tb) = (a.test.unwrap(), b.test.unwrap());
    assert!((ta.metric("r2").unwrap() - tb.metric("r2").unwrap()).abs() <= 1e-4);
}

/// The regression example's rows as a stream source, read in order (its position: the next
/// row), each pass in a new order that depends on the pass only.
struct RowStream {
    rows: std::sync::Arc<Vec<regression::Row>>,
    order: Vec<usize>,
    at: usize,
}

impl kiln_data::Stream for RowStream {
    type Item = regression::Row;
    type Position = usize;
    fn start_pass(&mut self, pass: usize) -> anyhow::Result<()> {
        let n = self.rows.len();
        // A fixed permutation per pass: a stride coprime with the 342 training rows.
        self.order = (0..n).map(|i| (i * 7 + pass * 13) % n).collect();
        self.at = 0;
        Ok(())
    }
    fn next(&mut self) -> anyhow::Result<Option<regression::Row>> {
        let row = self.order.get(self.at).map(|&i| self.rows[i].clone());
        self.at += 1;
        Ok(row)
    }
    fn position(&self) -> usize {
        self.at
    }
    fn seek(&mut self, position: usize) -> anyhow::Result<()> {
        self.at = position;
        Ok(())
    }
}

/// The regression example trained from a stream of its rows (validation and test stay
/// random-access).
fn stream_data() -> kiln_train::SourceData<regression::Batch> {
    use kiln_train::{Source, SourceData};
    let mut rows = regression::read_rows("datasets/tabular/diabetes.csv", 342).unwrap();
    let test = rows.split_off(392);
    let valid = rows.split_off(342);
    let rows = std::sync::Arc::new(rows);
    let open = move || {
        let rows = rows.clone();
        Ok(RowStream {
            rows,
            order: Vec::new(),
            at: 0,
        })
    };
    let indexed = |rows: Vec<regression::Row>| Source::indexed(rows, regression::collate);
    SourceData::new("diabetes stream", Source::stream(open, regression::collate))
        .valid(indexed(valid))
        .test(indexed(test))
}

#[test]
fn a_stream_source_trains_resumes_bit_for_bit_and_shards_across_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let (kind, build) = (kiln_core::BackendKind::Flex, regression::build::<Cpu>);
    let cpu = || burn::tensor::Device::<Cpu>::default();
    let steps = ["train.max_steps=60", "data.batch_size=20"];
    let run = |config: &Config, devices: usize, resume: Option<ResumeFrom>, until| {
        let options = TrainOptions {
            resume,
            until_step: until,
            ..Default::default()
        };
        let data = std::sync::Arc::new(stream_data());
        train_on_devices_with(config, data, build, vec![cpu(); devices], kind, options).unwrap()
    };
    let straight = run(&regression_config(tmp.path(), "s", &steps), 1, None, None);
    assert_eq!((straight.status, straight.steps), ("completed", 60));

    // Paused inside the second pass (18 batches of 20 rows per pass), then resumed.
    let config = regression_config(tmp.path(), "r", &steps);
    let paused = run(&config, 1, None, Some(23));
    let state = std::fs::read_to_string(paused.run_dir.join("step-23/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let stream = &state["data"]["stream"];
    assert_eq!(
        (stream["pass"].as_u64(), stream["batch"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(stream["at"].as_u64(), Some(100), "{state}");
    let done = run(&config, 1, Some(ResumeFrom::Latest(paused.run_dir)), None);
    assert_eq!((done.status, done.resumed_from), ("completed", Some(23)));
    assert_same_regression(&straight.run_dir, &done.run_dir, 60);
    let epochs: Vec<f64> = common::events(&done.run_dir, "train")
        .iter()
        .map(|e| e["epoch"].as_f64().unwrap())
        .collect();
    assert!(
        epochs.contains(&3.0),
        "the stream's passes as epochs: {epochs:?}"
    );

    // Two workers, each half of every batch of 20 rows, train as one worker does.
    let halves = ["train.max_steps=60", "data.batch_size=10"];
    let two = run(
        &regression_config(tmp.path(), "two", &halves),
        2,
        None,
        None,
    );
    let weights = |run: &Path| run.join("step-60/model.safetensors");
    let diff = max_weight_diff(&weights(&straight.run_dir), &weights(&two.run_dir));
    assert!(diff <= 1e-5, "weights differ by {diff}");
}

#[test]
fn a_stream_cannot_count_epochs_and_a_broken_source_stops_the_run_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (kind, build) = (kiln_core::BackendKind::Flex, regression::build::<Cpu>);
    let cpu = || burn::tensor::Device::<Cpu>::default();
    let config = regression_config(tmp.path(), "epochs", &[]);
    let data = std::sync::Arc::new(stream_data());
    let err = train_on_devices_with(&config, data, build, vec![cpu()], kind, Default::default())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("set train.max_steps"),
        "{err:#}"
    );

    /// A source whose row 5 cannot be read.
    struct Broken;
    impl kiln_data::RandomAccess for Broken {
        type Item = regression::Row;
        fn len(&self) -> usize {
            40
        }
        fn get(&self, index: usize) -> anyhow::Result<regression::Row> {
            anyhow::ensure!(index != 5, "row {index}: the disk is on fire");
            Ok(vec![0.5; 11])
        }
    }
    let source = kiln_train::Source::indexed(Broken, regression::collate);
    let data = std::sync::Arc::new(kiln_train::SourceData::new("broken", source));
    let config = regression_config(tmp.path(), "broken", &["data.shuffle=false"]);
    let err = train_on_devices_with(&config, data, build, vec![cpu()], kind, Default::default())
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("row 5: the disk is on fire") && err.contains("batch 0 of epoch 0"),
        "{err}"
    );
}
