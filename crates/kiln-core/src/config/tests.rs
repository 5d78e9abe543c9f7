use std::path::Path;

use super::*;

const BASE: &str = r#"
    [run]
    name = "t"
    [data]
    format = "csv"
    path = "x.csv"
    batch_size = 8
    [model]
    kind = "mlp"
    hidden = [16]
    [train]
    max_steps = 10
"#;

fn load(overrides: &[&str]) -> Result<Config> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_toml_str(BASE, &o, "base.toml")
}

#[test]
fn overriding_the_run_length_replaces_the_other_length_key() {
    let epochs = load(&["train.epochs=3"]).unwrap();
    assert_eq!(
        (epochs.train.epochs, epochs.train.max_steps),
        (Some(3), None)
    );
    let steps = load(&["train.max_steps=7"]).unwrap();
    assert_eq!((steps.train.epochs, steps.train.max_steps), (None, Some(7)));
    let both = load(&["train.epochs=3", "train.max_steps=7"]).unwrap_err();
    assert!(
        format!("{both:#}").contains("set one of them, not both"),
        "{both:#}"
    );
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 8, "only {seen} configs in {}", dir.display());
}

#[test]
fn defaults_fill_in() {
    let c = load(&[]).unwrap();
    assert_eq!(c.run.seed, 42);
    assert_eq!(c.optimizer.kind, OptimizerKind::Adamw);
    assert_eq!(c.data.valid_fraction, 0.1);
}

#[test]
fn overrides_are_type_checked_like_the_file() {
    let c = load(&[
        "optimizer.lr=3e-4",
        "model.hidden=[32, 8]",
        "model.kind=mlp",
    ])
    .unwrap();
    assert_eq!(c.optimizer.lr, 3e-4);
    assert_eq!(
        c.model.0["hidden"],
        toml::Value::try_from(vec![32, 8]).unwrap()
    );
    assert_eq!(c.model.kind(), Some("mlp"));
    let e = load(&["data.batch_size=many"]).unwrap_err().to_string();
    assert!(e.contains("batch_size"), "{e}");
    assert!(e.contains("--set"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let e = load(&["train.max_stepz=5"]).unwrap_err().to_string();
    assert!(e.contains("max_stepz"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn bad_set_syntax() {
    assert!(load(&["optimizer.lr"])
        .unwrap_err()
        .to_string()
        .contains("KEY=VALUE"));
    assert!(load(&["run.name.x=1"])
        .unwrap_err()
        .to_string()
        .contains("not a section"));
    assert!(load(&[".=1"]).is_err());
}

#[test]
fn validation_names_the_key() {
    let e = format!("{:#}", load(&["data.batch_size=0"]).unwrap_err());
    assert!(e.contains("data.batch_size: must be at least 1"), "{e}");
}

#[test]
fn resolved_config_round_trips() {
    let c = load(&["optimizer.kind=sgd", "optimizer.momentum=0.9"]).unwrap();
    let again = Config::from_toml_str(&c.to_toml(), &[], "resolved").unwrap();
    assert_eq!(c, again);
}

/// Runs written by an earlier version of Kiln (before `model.gelu` existed, and before
/// per-model sections): their resolved configs and the hash their checkpoints recorded
/// (tests/fixtures/earlier-runs). Their configs must hash as they did then, or resuming them
/// breaks; and so must the same runs described as configs are written now, a model section
/// with only its kind's keys (kiln-models drops the others).
#[test]
fn configs_of_runs_written_by_earlier_versions_keep_their_hash() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/earlier-runs");
    for run in [
        "fashion-mnist-mlp",
        "fashion-mnist-cnn",
        "shakespeare-char-gpt",
    ] {
        let dir = fixtures.join(run);
        let mut config = Config::load(&dir.join("config.toml"), &[]).unwrap();
        let recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config_hash.json")).unwrap())
                .unwrap();
        let v1 = config.maths_hash();
        assert_eq!(recorded["config_hash"].as_str(), Some(v1.as_str()), "{run}");

        let kind = config.model.kind().unwrap().to_string();
        config
            .model
            .0
            .retain(|k, _| !crate::compat::v1_key_of_another_kind(&kind, k));
        assert!(config.model.0.len() <= 10, "{run}: {:?}", config.model.0);
        assert_eq!(config.maths_hash(), v1, "{run}");
        config
            .model
            .0
            .insert("dropout".into(), toml::Value::Float(0.5));
        assert_ne!(config.maths_hash(), v1, "{run}: dropout");
    }
}

#[test]
fn model_gelu_hashes_like_its_absence_when_exact() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/earlier-runs/shakespeare-char-gpt/config.toml");
    let with = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        Config::load(&path, &o).unwrap()
    };
    let unset = with(&[]);
    let exact = with(&["model.gelu=\"exact\""]);
    let tanh = with(&["model.gelu=\"tanh\""]);
    assert_eq!(unset.maths_hash(), exact.maths_hash());
    assert_ne!(unset.maths_hash(), tanh.maths_hash());
    // The Llama-style keys (issue 19) likewise, at their GPT-2 values.
    for (gpt2, llama) in [
        ("model.norm=\"layernorm\"", "model.norm=\"rmsnorm\""),
        ("model.position=\"learned\"", "model.position=\"rope\""),
        ("model.mlp=\"gelu\"", "model.mlp=\"swiglu\""),
    ] {
        assert_eq!(unset.maths_hash(), with(&[gpt2]).maths_hash(), "{gpt2}");
        assert_ne!(unset.maths_hash(), with(&[llama]).maths_hash(), "{llama}");
    }
}

#[test]
fn a_programs_config_needs_no_data_format_and_no_model_section() {
    let text = "[run]\nname = \"own\"\n[data]\nbatch_size = 4\n[train]\nmax_steps = 3\n";
    let c = Config::from_toml_str(text, &[], "own.toml").unwrap();
    assert_eq!((c.data.format, c.model.kind()), (None, None));
    let e = format!("{:#}", c.data.kiln_format().unwrap_err());
    assert!(
        e.starts_with("data.format: missing") && e.contains("README"),
        "{e}"
    );
    let again = Config::from_toml_str(&c.to_toml(), &[], "resolved").unwrap();
    assert_eq!(c, again);
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Own {
        width: usize,
    }
    let with = Config::from_toml_str(text, &["model.width=7".into()], "own.toml").unwrap();
    assert_eq!(with.model.parse::<Own>().unwrap().width, 7);
    let e = with
        .model
        .parse::<std::collections::HashMap<String, bool>>();
    assert!(format!("{:#}", e.unwrap_err()).starts_with("model: "));
}

#[test]
fn maths_hash_ignores_cadence_and_location_only() {
    let base = load(&[]).unwrap();
    let cadence = load(&["train.log_every=7", "train.eval_every=3", "run.name=other"]).unwrap();
    assert_eq!(base.maths_hash(), cadence.maths_hash());
    let lr = load(&["optimizer.lr=0.5"]).unwrap();
    assert_ne!(base.maths_hash(), lr.maths_hash());
    assert_eq!(
        base.changed_keys(&cadence),
        vec!["run.name", "train.eval_every", "train.log_every"]
    );
    assert_eq!(base.changed_keys(&lr), vec!["optimizer.lr"]);
}

#[test]
fn tracking_keys_are_out_of_the_hash_and_may_change_on_resume() {
    let base = load(&[]).unwrap();
    let tracked = load(&[
        "tracking.tensorboard=true",
        "tracking.mlflow=\"http://127.0.0.1:5000\"",
        "tracking.exit_timeout_secs=3",
    ])
    .unwrap();
    assert_eq!(base.maths_hash(), tracked.maths_hash());
    assert!(
        !base.to_toml().contains("tracking"),
        "the default section is not written"
    );
    let again = Config::from_toml_str(&tracked.to_toml(), &[], "resolved").unwrap();
    assert_eq!(tracked, again);
    assert_eq!(again.tracking.mlflow.place(), Some("http://127.0.0.1:5000"));
    let changed = base.changed_keys(&tracked);
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|k| super::is_resumable_key(k)),
        "{changed:?}"
    );
    let e = format!(
        "{:#}",
        load(&["tracking.exit_timeout_secs=-1"]).unwrap_err()
    );
    assert!(
        e.contains("tracking.exit_timeout_secs: must be at least 0"),
        "{e}"
    );
    let e = format!("{:#}", load(&["tracking.tensorboard=\"\""]).unwrap_err());
    assert!(
        e.contains("tracking.tensorboard: must be true, false or a non-empty place"),
        "{e}"
    );
}

#[test]
fn table_keys_are_checked_and_unset_ones_leave_the_hash_alone() {
    let base = load(&[]).unwrap();
    let set = load(&[
        "data.label=\"species\"",
        "data.missing=\"median\"",
        "data.delimiter=\";\"",
        "data.categorical=[\"island\"]",
    ])
    .unwrap();
    assert_eq!(set.data.missing, Some(MissingValues::Median));
    assert_ne!(set.maths_hash(), base.maths_hash());
    let text = toml::to_string(&base).unwrap();
    for key in [
        "label",
        "missing",
        "delimiter",
        "stratify",
        "test_path",
        "task",
        "loss",
    ] {
        assert!(
            !text.contains(&format!("{key} =")),
            "unset data.{key} is written: {text}"
        );
    }
    let e = format!("{:#}", load(&["data.delimiter=\";;\""]).unwrap_err());
    assert!(
        e.contains("data.delimiter: must be one ASCII character"),
        "{e}"
    );
    let e = format!("{:#}", load(&["data.missing=\"zero\""]).unwrap_err());
    assert!(e.contains("missing") && e.contains("zero"), "{e}");
    let e = format!(
        "{:#}",
        load(&["data.format=\"tokens\"", "data.label=\"y\""]).unwrap_err()
    );
    assert!(e.contains("data.label: applies to tables only"), "{e}");
}

#[test]
fn a_loss_is_chosen_for_regressions_only_which_do_not_stratify() {
    let r = load(&["data.task=\"regression\"", "train.loss=\"huber\""]).unwrap();
    assert!(r.data.is_regression());
    assert_eq!(r.train.loss, Some(super::RegressionLoss::Huber));
    let e = format!("{:#}", load(&["train.loss=\"mae\""]).unwrap_err());
    assert!(
        e.contains("train.loss: chooses a regression's loss") && e.contains("data.task"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        load(&["data.task=\"regression\"", "data.stratify=true"]).unwrap_err()
    );
    assert!(e.contains("data.stratify: stratifies by class"), "{e}");
    let e = format!("{:#}", load(&["data.task=\"ordinal\""]).unwrap_err());
    assert!(e.contains("task") && e.contains("ordinal"), "{e}");
}

#[test]
fn finetune_is_out_of_the_hash_when_absent_and_part_of_it_when_set() {
    let plain = load(&[]).unwrap();
    assert!(plain.finetune.is_none() && !plain.to_toml().contains("finetune"));
    let lora = load(&["finetune.lora_rank=8"]).unwrap();
    let f = lora.finetune.as_ref().unwrap();
    assert_eq!(
        (f.alpha(), f.lora_dropout, f.target_modules.len()),
        (8.0, 0.0, 4)
    );
    assert_ne!(lora.maths_hash(), plain.maths_hash());
    let alpha = load(&["finetune.lora_rank=8", "finetune.lora_alpha=16"]).unwrap();
    assert_ne!(alpha.maths_hash(), lora.maths_hash());
    // The resolved config (what a run saves) reads back to the same section and hash.
    let again = Config::from_toml_str(&lora.to_toml(), &[], "saved.toml").unwrap();
    assert_eq!(again.finetune, lora.finetune);
    assert_eq!(again.maths_hash(), lora.maths_hash());
    for (set, needle) in [
        (
            "finetune.lora_rank=0",
            "finetune.lora_rank: must be at least 1",
        ),
        (
            "finetune.lora_alpha=-1",
            "finetune.lora_alpha: must be a positive number",
        ),
        (
            "finetune.lora_dropout=1.5",
            "finetune.lora_dropout: must be in [0, 1)",
        ),
        (
            "finetune.target_modules=[]",
            "finetune.target_modules: must name at least one",
        ),
        (
            "finetune.target_modules=[\"mlp.c_fc\", \"mlp.c_fc\"]",
            "named twice",
        ),
        (
            "finetune.target_modules=[\"q_proj\"]",
            "\"q_proj\" is not a projection",
        ),
    ] {
        let e = format!("{:#}", load(&["finetune.lora_rank=4", set]).unwrap_err());
        assert!(e.contains(needle), "{set}: {e}");
    }
}
