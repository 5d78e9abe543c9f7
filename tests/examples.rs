//! The programs in examples/ as their users rely on them: the residual MLP of
//! examples/residual.rs, a model Kiln does not ship, resumes bit for bit through Kiln's loop and
//! trains on two devices as one worker with a twice larger batch does.

mod common;

use std::path::Path;

use common::{assert_same_run, max_weight_diff, repo_root};
use kiln_core::Config;
use kiln_train::{train_on_devices_with, ResumeFrom, TrainOptions};

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
    Config::load("configs/wine-mlp.toml".as_ref(), &all).unwrap()
}

type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

fn cpu_run(
    config: &Config,
    resume: Option<ResumeFrom>,
    until: Option<usize>,
) -> anyhow::Result<kiln_train::TrainSummary> {
    residual::run::<Cpu>(config, kiln_core::BackendKind::Flex, resume, until)
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
    let a = train_on_devices_with(&one, residual::build::<Cpu>, cpu(), kind, options()).unwrap();
    let b = train_on_devices_with(
        &two,
        residual::build::<Cpu>,
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
    let full = residual::run::<Gpu>(&f32_run, wgpu, None, None).unwrap();
    let half = residual::run::<Gpu>(&f16_run, wgpu, None, None).unwrap();
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
