//! End-to-end tests of language modelling: text and token data, GPT training, generation,
//! gradient accumulation and the bad inputs of this path, on the real `kiln` binary.

mod common;

use std::path::Path;

use common::{events, fails_with, kiln, losses, stderr, tensors, train};
use tempfile::tempdir;

const SMOKE_GPT: &str = "configs/smoke-gpt.toml";

#[test]
fn gpt_trains_on_text_and_generates_from_its_run() {
    let dir = tempdir().unwrap();
    let run = train(SMOKE_GPT, "flex", dir.path(), &[]);
    let train_losses = losses(&run);
    assert_eq!(train_losses.len(), 6);
    // A character model starts near ln(66) = 4.19 and must learn something in 30 steps.
    assert!(train_losses[0] > 3.5, "{train_losses:?}");
    assert!(
        *train_losses.last().unwrap() < train_losses[0] - 0.5,
        "{train_losses:?}"
    );
    let first = &events(&run, "train")[0];
    assert!(first["tokens_per_sec"].as_f64().unwrap() > 0.0, "{first}");
    let valid = events(&run, "valid");
    assert_eq!(valid.len(), 2);
    // 4 batches of 8 windows of 32 positions.
    assert_eq!(valid[1]["samples"], 4 * 8 * 32);
    assert!(run.join("tokenizer.json").is_file());

    let run_s = run.to_str().unwrap();
    let generate = |seed: &str| {
        let out = kiln(&[
            "generate",
            run_s,
            "--prompt",
            "ROMEO:",
            "--max-tokens",
            "120",
            "--seed",
            seed,
            "--backend",
            "flex",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let a = generate("1");
    assert!(a.starts_with("ROMEO:"), "{a}");
    assert_eq!(
        a.trim_end_matches('\n').chars().count(),
        "ROMEO:".len() + 120
    );
    assert_eq!(a, generate("1"), "same seed, same text");
    assert_ne!(a, generate("2"), "another seed, another text");

    // eval of the validation split agrees with the run's last validation event.
    let out = kiln(&["eval", run_s, "--split", "valid", "--backend", "flex"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logged = valid[1]["loss"].as_f64().unwrap();
    assert!(
        (r["loss"].as_f64().unwrap() - logged).abs() < 1e-5,
        "{r} vs {logged}"
    );
    fails_with(
        &["eval", run_s, "--split", "test", "--backend", "flex"],
        &["no test split", "--split valid"],
    );
}

#[test]
fn a_token_file_trains_exactly_like_the_text_it_came_from() {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("shakespeare.bin");
    let out = kiln(&[
        "tokenize",
        "datasets/text/shakespeare.txt",
        "--out",
        bin.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["tokens"], 1_008_759);
    assert_eq!(summary["vocab_size"], 66);
    assert_eq!(std::fs::metadata(&bin).unwrap().len(), 2 * 1_008_759);

    let text_run = train(
        SMOKE_GPT,
        "flex",
        &dir.path().join("a"),
        &["train.max_steps=10"],
    );
    let path = format!("data.path=\"{}\"", bin.display());
    let token_run = train(
        SMOKE_GPT,
        "flex",
        &dir.path().join("b"),
        &["train.max_steps=10", "data.format=\"tokens\"", &path],
    );
    assert_eq!(losses(&text_run), losses(&token_run));
    // The sidecar's vocabulary travels into the run, so the token-file run can generate too.
    assert_eq!(
        std::fs::read_to_string(text_run.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(token_run.join("tokenizer.json")).unwrap()
    );
}

#[test]
fn gradient_accumulation_equals_a_larger_batch() {
    // The loader's epoch order depends on the seed only, so micro-batches 2k and 2k+1 of 100
    // samples are exactly batch k of 200: the two runs see the same samples in every step.
    let dir = tempdir().unwrap();
    let common = ["train.grad_clip_norm=1e9", "train.max_steps=20"];
    let big = train(
        "configs/smoke.toml",
        "flex",
        &dir.path().join("big"),
        &[common[0], common[1], "data.batch_size=200"],
    );
    let accumulated = train(
        "configs/smoke.toml",
        "flex",
        &dir.path().join("acc"),
        &[
            common[0],
            common[1],
            "data.batch_size=100",
            "train.grad_accum_steps=2",
        ],
    );
    let (a, b) = (losses(&big), losses(&accumulated));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "losses {a:?} vs {b:?}");
    }
    // Summation order differs (two halves vs one sum), so the weights agree to float rounding,
    // amplified a little by 20 AdamW steps; 1e-4 is far below the size of one update (lr 3e-3).
    let wa = tensors(&big.join("step-20/model.safetensors"));
    let wb = tensors(&accumulated.join("step-20/model.safetensors"));
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{name}: max difference {worst}");
    }
}

#[test]
fn a_gpt_run_resumes_exactly() {
    let dir = tempdir().unwrap();
    let straight = train(SMOKE_GPT, "flex", &dir.path().join("a"), &[]);
    let paused = dir.path().join("b");
    let output_dir = format!("run.output_dir=\"{}\"", paused.display());
    let out = kiln(&[
        "train",
        SMOKE_GPT,
        "--backend",
        "flex",
        "--set",
        &output_dir,
        "--until-step",
        "13",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = paused.join("smoke-gpt");
    let out = kiln(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--backend",
        "flex",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(losses(&straight), losses(&run));
    assert_eq!(
        std::fs::read(straight.join("step-30/model.safetensors")).unwrap(),
        std::fs::read(run.join("step-30/model.safetensors")).unwrap()
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn smoke_gpt_with(data_path: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", SMOKE_GPT, "--backend", "flex", "--set"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("data.path=\"{data_path}\""));
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    args
}

fn fails(args: &[String], needles: &[&str]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&args, needles);
}

#[test]
fn bad_text_and_token_inputs_are_clear_errors() {
    let dir = tempdir().unwrap();
    let empty = write(dir.path(), "empty.txt", b"");
    fails(&smoke_gpt_with(&empty, &[]), &["empty.txt", "empty"]);
    let latin1 = write(dir.path(), "latin1.txt", b"caf\xe9 au lait\n");
    fails(
        &smoke_gpt_with(&latin1, &[]),
        &["latin1.txt", "UTF-8", "byte offset 3"],
    );
    let short = write(dir.path(), "short.txt", b"To be, or not to be.\n");
    fails(&smoke_gpt_with(&short, &[]), &["short.txt", "block_size"]);
    fails(
        &smoke_gpt_with(
            "datasets/text/shakespeare.txt",
            &["model.n_embd=30", "model.n_head=4"],
        ),
        &["model.n_embd = 30", "not divisible", "model.n_head = 4"],
    );
    fails(
        &smoke_gpt_with(
            "datasets/text/shakespeare.txt",
            &["train.precision=\"bf16\""],
        ),
        &["train.precision", "bf16", "flex", "f32"],
    );

    // A token file holding an id beyond the vocabulary its sidecar declares.
    let bin = dir.path().join("t.bin");
    let ids: Vec<u8> = (0..200u16)
        .flat_map(|i| (i % 10).to_le_bytes())
        .chain(12u16.to_le_bytes())
        .collect();
    std::fs::write(&bin, ids).unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        r#"{"format":"kiln-tokens","dtype":"u16","tokens":201,"vocab_size":10}"#,
    )
    .unwrap();
    let mut args = smoke_gpt_with(bin.to_str().unwrap(), &["data.format=\"tokens\""]);
    args.extend(["--set".into(), "model.block_size=8".into()]);
    fails(
        &args,
        &[
            "t.bin",
            "token id 12",
            "position 200",
            "beyond the vocabulary",
        ],
    );
}

#[test]
fn gpt_trains_alike_on_wgpu_and_flex_and_in_f16_on_wgpu() {
    // No dropout: each backend draws its own random masks. Same initial weights (drawn on the
    // host) and the same windows, so the losses differ only by float rounding of the kernels.
    let dir = tempdir().unwrap();
    let extra = ["model.dropout=0.0", "train.max_steps=10"];
    let flex = losses(&train(SMOKE_GPT, "flex", &dir.path().join("flex"), &extra));
    let wgpu = losses(&train(SMOKE_GPT, "wgpu", &dir.path().join("wgpu"), &extra));
    assert_eq!(flex.len(), wgpu.len());
    for (a, b) in flex.iter().zip(&wgpu) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "flex {flex:?} vs wgpu {wgpu:?}"
        );
    }

    // Mixed precision: the matrix products in f16 (f32 weights). It must train like f32 to
    // within f16's rounding (11-bit mantissa, ~5e-4 relative per product, accumulated over
    // 10 steps: 2% allowed), and must actually differ from the f32 run.
    let mut half_extra = extra.to_vec();
    half_extra.push("train.precision=\"f16\"");
    let half_run = train(SMOKE_GPT, "wgpu", &dir.path().join("f16"), &half_extra);
    let half = losses(&half_run);
    // f16 runs with dynamic loss scaling; its state is logged with every train event.
    for e in events(&half_run, "train") {
        assert!(e["loss_scale"].as_f64().unwrap() >= 1.0, "{e}");
        assert!(e["skipped_steps"].as_u64().is_some(), "{e}");
    }
    assert_ne!(
        half, wgpu,
        "f16 gave exactly the f32 losses: no half precision happened"
    );
    for (a, b) in wgpu.iter().zip(&half) {
        assert!(
            (a - b).abs() <= 2e-2 * a.abs(),
            "f32 {wgpu:?} vs f16 {half:?}"
        );
    }
}

#[test]
fn generate_refuses_a_classifier_run_and_bad_sampling_settings() {
    let dir = tempdir().unwrap();
    let mlp = train(
        "configs/smoke.toml",
        "flex",
        dir.path(),
        &["train.max_steps=1"],
    );
    let mlp = mlp.to_str().unwrap();
    fails_with(
        &["generate", mlp, "--backend", "flex"],
        &["tokenizer.json", "generation needs the tokenizer"],
    );
    let gpt = train(SMOKE_GPT, "flex", dir.path(), &["train.max_steps=1"]);
    let gpt = gpt.to_str().unwrap();
    fails_with(
        &["generate", gpt, "--temperature=-1", "--backend", "flex"],
        &["--temperature -1", ">= 0"],
    );
    fails_with(
        &["generate", gpt, "--top-k", "0", "--backend", "flex"],
        &["--top-k 0", "at least 1"],
    );
    fails_with(
        &["generate", gpt, "--prompt", "naïve €", "--backend", "flex"],
        &["--prompt", "'ï'"],
    );
}
