//! End-to-end tests of starting a run from a Hugging Face folder (`model.init_from`,
//! `kiln train --init-from`) on the real `kiln` binary: a model Kiln trained, exported with
//! `--format hf` and imported again starts at its own validation loss; damaged folders are
//! one-line errors naming the field or tensor.

mod common;

use std::path::{Path, PathBuf};

use common::{
    events, export_hf, fails_with, finetune_config, kiln, stderr, train, valid_loss, LLAMA_STYLE,
    SMOKE_GPT,
};
use serde_json::Value;
use tempfile::tempdir;

#[test]
fn an_exported_model_imported_again_starts_at_its_own_validation_loss() {
    let dir = tempdir().unwrap();
    for (name, style) in [("gpt2", &[][..]), ("llama", LLAMA_STYLE)] {
        let run = train(SMOKE_GPT, "flex", &dir.path().join(name), style);
        let hf = dir.path().join(format!("{name}-hf"));
        export_hf(&run, &hf);
        // One step at a learning rate of 1e-30 changes no f32 weight: the validation after it is
        // the imported model's.
        let config = finetune_config(dir.path());
        let out_dir = format!(
            "run.output_dir=\"{}\"",
            dir.path().join(format!("{name}-again")).display()
        );
        let o = kiln(&[
            "train",
            config.to_str().unwrap(),
            "--backend",
            "flex",
            "--init-from",
            hf.to_str().unwrap(),
            "--set",
            &out_dir,
            "--set",
            "optimizer.lr=1e-30",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=1",
            "--until-step",
            "1",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let again: Value = serde_json::from_slice(&o.stdout).unwrap();
        let again = PathBuf::from(again["run_dir"].as_str().unwrap());
        let imported = events(&again, "valid")[0]["loss"].as_f64().unwrap();
        let original = valid_loss(&run);
        assert!(
            (imported - original).abs() < 1e-5,
            "{name}: {imported} vs {original}"
        );
        // The run records the folder and the architecture it read, and uses its tokenizer.
        let saved = std::fs::read_to_string(again.join("config.toml")).unwrap();
        assert!(
            saved.contains("init_from = ") && saved.contains("n_layer = 2"),
            "{saved}"
        );
        assert!(
            saved.contains(&format!("{name}-hf/tokenizer.json")),
            "{saved}"
        );
        // It resumes from its own checkpoint, without reading the folder's weights again (the
        // tokenizer, like the text, is data: data.tokenizer names it).
        let weights = hf.join("model.safetensors");
        std::fs::rename(&weights, dir.path().join("moved")).unwrap();
        let o = kiln(&[
            "train",
            "--resume",
            again.to_str().unwrap(),
            "--backend",
            "flex",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(events(&again, "valid").len(), 2);
        std::fs::rename(dir.path().join("moved"), &weights).unwrap();
    }
}

#[test]
fn damaged_folders_are_one_line_errors_naming_the_field_or_tensor() {
    let dir = tempdir().unwrap();
    let run = train(SMOKE_GPT, "flex", &dir.path().join("run"), LLAMA_STYLE);
    let hf = dir.path().join("hf");
    export_hf(&run, &hf);
    let config = finetune_config(dir.path());
    let out_dir = format!("run.output_dir=\"{}\"", dir.path().join("out").display());
    let original = std::fs::read_to_string(hf.join("config.json")).unwrap();
    // `kiln train CONFIG --init-from hf` must fail with a one-line error holding `needles`.
    let refused = |config: &Path, needles: &[&str]| {
        fails_with(
            &[
                "train",
                config.to_str().unwrap(),
                "--backend",
                "flex",
                "--init-from",
                hf.to_str().unwrap(),
                "--set",
                &out_dir,
            ],
            needles,
        )
    };
    let with_config = |edit: &dyn Fn(&mut Value), needles: &[&str]| {
        let mut json: Value = serde_json::from_str(&original).unwrap();
        edit(&mut json);
        std::fs::write(
            hf.join("config.json"),
            serde_json::to_string(&json).unwrap(),
        )
        .unwrap();
        refused(&config, needles);
    };
    with_config(
        &|c| c["model_type"] = "bert".into(),
        &["model_type = \"bert\"", "\"gpt2\" and \"llama\""],
    );
    with_config(
        &|c| c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0}),
        &["rope_scaling", "not supported"],
    );
    with_config(
        &|c| c["hidden_act"] = "gelu".into(),
        &["hidden_act", "silu"],
    );
    with_config(
        &|c| c["intermediate_size"] = 80.into(),
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[96, 32]",
            "[80, 32]",
        ],
    );
    with_config(
        &|c| c["num_hidden_layers"] = 3.into(),
        &["no tensor model.layers.2."],
    );
    with_config(
        &|c| c["num_hidden_layers"] = 1.into(),
        &["unexpected tensor", "model.layers.1."],
    );
    std::fs::write(hf.join("config.json"), &original).unwrap();
    // A config key that disagrees with the folder.
    refused(
        &common::repo_root().join(SMOKE_GPT),
        &["model.n_head = 2", "config.json", "remove it"],
    );
    // A tokenizer.json that is not a tokenizer.
    std::fs::write(hf.join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").unwrap();
    refused(&config, &["tokenizer.json"]);
    // Pickled weights only.
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    std::fs::write(hf.join("pytorch_model.bin"), b"pickle").unwrap();
    std::fs::copy(run.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    refused(&config, &["pytorch_model.bin", "safetensors"]);
}
