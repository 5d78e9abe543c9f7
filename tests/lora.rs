//! End-to-end tests of LoRA fine-tuning (`[finetune]`) on the real `kiln` binary: only the
//! adapters train and are checkpointed (naming their base by sha256), a resumed run is the same
//! run byte for byte, `kiln eval` rebuilds base + adapters, and the exports (merged, and PEFT's
//! layout) give the same model in transformers and peft.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    assert_same_run_logging, events, export_as, export_hf, fails_with, finetune_config, kiln,
    python_with, repo_root, stderr, tensors, train, valid_loss, LLAMA_STYLE, SMOKE_GPT,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::tempdir;

/// The fine-tuning config with a `[finetune]` section of rank 4 on every projection.
fn lora_config(dir: &Path) -> PathBuf {
    let path = finetune_config(dir);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[finetune]\nlora_rank = 4\nlora_alpha = 8\n"),
    )
    .unwrap();
    path
}

/// `--set` overrides of a LoRA run from `base`, 8 steps with a checkpoint every 4.
fn lora_sets(base: &Path) -> Vec<String> {
    vec![
        format!("model.init_from=\"{}\"", base.display()),
        "optimizer.lr=3e-3".into(),
        "train.max_steps=8".into(),
        "train.eval_every=4".into(),
        "checkpoint.every_steps=4".into(),
    ]
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha256_of(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn lora_trains_only_adapters_resumes_exactly_and_exports_what_peft_loads() {
    let dir = tempdir().unwrap();
    for (name, style) in [("gpt2", &[][..]), ("llama", LLAMA_STYLE)] {
        let base_run = train(SMOKE_GPT, "flex", &dir.path().join(name), style);
        let base = dir.path().join(format!("{name}-base"));
        export_hf(&base_run, &base);
        let config = lora_config(dir.path());
        let sets = lora_sets(&base);
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let straight = train(
            s(&config),
            "flex",
            &dir.path().join(format!("{name}-a")),
            &sets,
        );

        // The checkpoint holds the 16 adapter matrices (2 blocks x 4 projections x A, B), trained,
        // and names the base by the sha256 of its weights.
        let saved = tensors(&straight.join("step-8/model.safetensors"));
        assert_eq!(
            saved.len(),
            16,
            "{:?}",
            saved.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        assert!(
            saved.iter().all(|(n, _)| n.contains("_lora.lora_")),
            "{saved:?}"
        );
        for (n, v) in saved.iter().filter(|(n, _)| n.ends_with("lora_b")) {
            assert!(
                v.iter().any(|x| x.abs() > 1e-4),
                "{name}: {n} did not train"
            );
        }
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(straight.join("step-8/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            state["base"]["sha256"].as_str().unwrap(),
            sha256_of(&base.join("model.safetensors"))
        );

        // The model in memory at the last validation is the base from the folder plus the saved
        // adapters: `kiln eval`, which rebuilds it so, gives the same loss (so the base did not
        // change while training).
        let trained = events(&straight, "valid").last().unwrap()["loss"]
            .as_f64()
            .unwrap();
        let rebuilt = valid_loss(&straight);
        assert!(
            (trained - rebuilt).abs() < 1e-6,
            "{name}: {trained} vs {rebuilt}"
        );
        assert!(
            trained < valid_loss(&base_run),
            "{name}: the adapters did not help"
        );

        // Stopped at step 4 and resumed: the same run, byte for byte.
        let split_out = dir.path().join(format!("{name}-b"));
        let mut args = vec![
            "train",
            s(&config),
            "--backend",
            "flex",
            "--until-step",
            "4",
        ];
        let out_dir = format!("run.output_dir=\"{}\"", split_out.display());
        for set in sets.iter().copied().chain([out_dir.as_str()]) {
            args.extend(["--set", set]);
        }
        let o = kiln(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let split: Value = serde_json::from_slice(&o.stdout).unwrap();
        let split = PathBuf::from(split["run_dir"].as_str().unwrap());
        let o = kiln(&["train", "--resume", s(&split), "--backend", "flex"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_same_run_logging(&straight, &split, 8, &["train", "valid"]);

        check_exports(dir.path(), name, &straight, &base);

        // A base that changed is refused, by resume (before the run directory changes) and by
        // evaluation.
        let weights = base.join("model.safetensors");
        let original = std::fs::read(&weights).unwrap();
        let mut changed = original.clone();
        *changed.last_mut().unwrap() ^= 1;
        std::fs::write(&weights, &changed).unwrap();
        let metrics = std::fs::read(split.join("metrics.jsonl")).unwrap();
        fails_with(
            &[
                "train",
                "--resume",
                s(&split.join("step-4")),
                "--backend",
                "flex",
            ],
            &["base model", "has changed", "sha256"],
        );
        assert_eq!(std::fs::read(split.join("metrics.jsonl")).unwrap(), metrics);
        fails_with(
            &[
                "eval",
                s(&straight),
                "--split",
                "valid",
                "--backend",
                "flex",
            ],
            &["has changed", "sha256"],
        );
        std::fs::write(&weights, &original).unwrap();
    }
}

/// The merged export (`--format hf`, and Kiln's own for Kiln's logits), the PEFT export, and
/// Kiln's unmerged greedy generation, checked by tests/python/check_peft.py.
fn check_exports(dir: &Path, name: &str, run: &Path, base: &Path) {
    let [merged, peft, kiln_out] =
        ["merged", "peft", "kiln"].map(|f| dir.join(format!("{name}-{f}")));
    export_as(run, "hf", &merged);
    export_as(run, "peft", &peft);
    export_as(run, "kiln", &kiln_out);
    let adapter_config: Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter_config["r"], 4);
    assert_eq!(adapter_config["lora_alpha"], 8);
    let Some(python) = python_with("peft") else {
        return;
    };
    let prompt = "ROMEO:\nWhat";
    let o = kiln(&[
        "predict",
        s(&kiln_out),
        prompt,
        "--logits",
        "--backend",
        "flex",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut expected: Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let o = kiln(&[
        "generate",
        s(run),
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--backend",
        "flex",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // `kiln generate` ends its text with a line break; the model is character-level.
    let text = String::from_utf8(o.stdout).unwrap();
    let completion: String = text
        .strip_prefix(prompt)
        .unwrap()
        .chars()
        .take(12)
        .collect();
    expected["completion"] = completion.into();
    let path = dir.join(format!("{name}-expected.json"));
    std::fs::write(&path, expected.to_string()).unwrap();
    let o = Command::new(&python)
        .args([
            "tests/python/check_peft.py",
            s(base),
            s(&peft),
            s(&merged),
            s(&path),
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(result["ok"], true, "{name}: {result} {}", stderr(&o));
    eprintln!("{name}: {result}");
}

#[test]
fn bad_finetune_settings_are_one_line_errors() {
    let dir = tempdir().unwrap();
    let config = lora_config(dir.path());
    let out_dir = format!("run.output_dir=\"{}\"", dir.path().display());
    let refused = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["train", s(&config), "--backend", "flex", "--set", &out_dir];
        for set in sets {
            args.extend(["--set", set]);
        }
        fails_with(&args, needles);
    };
    refused(&[], &["finetune", "model.init_from"]);
    let base = format!("model.init_from=\"{}\"", dir.path().display());
    refused(
        &[&base, "finetune.target_modules=[\"attn.q_proj\"]"],
        &["finetune.target_modules", "attn.q_proj", "attn.c_attn"],
    );
    refused(
        &[&base, "finetune.lora_rank=0"],
        &["finetune.lora_rank", "at least 1"],
    );
    refused(
        &[&base, "finetune.lora_dropout=1.0"],
        &["finetune.lora_dropout"],
    );
    // --format peft of a run that trained every weight.
    let run = train(
        SMOKE_GPT,
        "flex",
        &dir.path().join("full"),
        &["train.max_steps=2"],
    );
    fails_with(
        &[
            "export",
            s(&run),
            "--format",
            "peft",
            "--out",
            s(&dir.path().join("p")),
        ],
        &["--format peft", "[finetune]", "--format hf"],
    );
}
