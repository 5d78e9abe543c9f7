//! End-to-end tests of the Llama-style GPT (RMSNorm, RoPE, SwiGLU, grouped-query attention, no
//! biases) and of generation with the key/value cache, on the real `kiln` binary.

mod common;

use std::path::Path;

use common::{assert_same_run_logging, fails_with, kiln, losses, stderr, train, LLAMA_STYLE};
use tempfile::tempdir;

const SMOKE_GPT: &str = "configs/smoke-gpt.toml";

/// `kiln generate` of a run: the printed text.
fn generate(run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--backend",
        "flex",
    ];
    args.extend(extra);
    let out = kiln(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_llama_style_gpt_trains_resumes_exactly_and_generates() {
    let dir = tempdir().unwrap();
    let straight = train(SMOKE_GPT, "flex", &dir.path().join("a"), LLAMA_STYLE);
    let l = losses(&straight);
    // Characters: the first loss near ln(66) = 4.19, then learning within 30 steps.
    assert!(l[0] > 3.5 && *l.last().unwrap() < l[0] - 0.5, "{l:?}");
    // No position embedding and no biases in the checkpoint; grouped keys and values in c_attn
    // (32 query columns + 2 x 2 heads x 8), and [gate | up] in c_fc (2 x 96).
    let names: Vec<String> = common::tensors(&straight.join("step-30/model.safetensors"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("wpe") || n.ends_with("bias") || n.ends_with("beta")),
        "{names:?}"
    );
    let shapes = safetensors_shapes(&straight.join("step-30/model.safetensors"));
    assert_eq!(shapes["h.0.attn.c_attn.weight"], [32, 64]);
    assert_eq!(shapes["h.0.mlp.c_fc.weight"], [32, 192]);
    assert_eq!(shapes["h.0.mlp.c_proj.weight"], [96, 32]);

    let paused = dir.path().join("b");
    let output_dir = format!("run.output_dir=\"{}\"", paused.display());
    let mut args = vec![
        "train",
        SMOKE_GPT,
        "--backend",
        "flex",
        "--set",
        &output_dir,
    ];
    for s in LLAMA_STYLE {
        args.extend(["--set", s]);
    }
    args.extend(["--until-step", "13"]);
    let out = kiln(&args);
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
    assert_same_run_logging(&straight, &run, 30, &["train", "valid"]);

    let text = generate(&straight, &["--max-tokens", "50", "--seed", "3"]);
    assert!(text.starts_with("ROMEO:"), "{text}");
    assert_eq!(
        text.trim_end_matches('\n').chars().count(),
        "ROMEO:".len() + 50
    );
}

/// The shapes of the tensors of a safetensors file, by name.
fn safetensors_shapes(path: &Path) -> std::collections::BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

#[test]
fn the_cache_generates_the_same_tokens_as_recomputing() {
    let dir = tempdir().unwrap();
    for (name, style) in [("gpt2", &[][..]), ("llama", LLAMA_STYLE)] {
        let run = train(SMOKE_GPT, "flex", &dir.path().join(name), style);
        // 80 tokens after a 6-character prompt outgrow the 32-token context: the cached run
        // also covers starting again from the last window.
        for sampling in [
            &["--temperature", "0"][..],
            &["--temperature", "0.9", "--top-k", "10", "--seed", "5"][..],
        ] {
            let mut args = vec!["--max-tokens", "80"];
            args.extend(sampling);
            let cached = generate(&run, &args);
            args.push("--no-cache");
            let recomputed = generate(&run, &args);
            assert_eq!(cached, recomputed, "{name} {sampling:?}");
        }
    }
}

#[test]
fn bad_llama_keys_are_one_line_errors_naming_the_key() {
    let dir = tempdir().unwrap();
    let out_dir = format!("run.output_dir=\"{}\"", dir.path().display());
    for (set, needles) in [
        (
            "model.n_kv_head=3",
            &["model.n_kv_head = 3", "does not divide", "n_head = 2"][..],
        ),
        (
            "model.rope_theta=500000.0",
            &["model.rope_theta", "position = \"rope\""][..],
        ),
        (
            "model.norm=\"batchnorm\"",
            &["batchnorm", "layernorm", "rmsnorm"][..],
        ),
        ("model.mlp=\"relu\"", &["relu", "swiglu"][..]),
    ] {
        fails_with(
            &[
                "train",
                SMOKE_GPT,
                "--backend",
                "flex",
                "--set",
                &out_dir,
                "--set",
                set,
            ],
            needles,
        );
    }
}
