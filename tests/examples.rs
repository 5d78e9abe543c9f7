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

#[test]
fn the_example_model_paused_and_resumed_matches_an_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = residual::run(&config(tmp.path(), "straight", &[]), None, None).unwrap();
    let total = straight.total_steps;
    assert_eq!((straight.status, straight.steps), ("completed", total));
    assert!(straight.test.as_ref().unwrap().metric("accuracy").is_some());

    let resumed_config = config(tmp.path(), "resumed", &[]);
    let paused = residual::run(&resumed_config, None, Some(total / 2 + 3)).unwrap();
    assert_eq!((paused.status, paused.steps), ("paused", total / 2 + 3));
    let from = Some(ResumeFrom::Latest(paused.run_dir.clone()));
    let done = residual::run(&resumed_config, from, None).unwrap();
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
    let cpu = || vec![burn::tensor::Device::<residual::Train>::default()];
    let kind = kiln_core::BackendKind::Flex;
    let a = train_on_devices_with(
        &one,
        residual::build::<residual::Train>,
        cpu(),
        kind,
        options(),
    )
    .unwrap();
    let b = train_on_devices_with(
        &two,
        residual::build::<residual::Train>,
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
