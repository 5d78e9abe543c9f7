//! End-to-end tests of subword tokenizers on the real `kiln` binary: `kiln tokenize --bpe`,
//! training on `data.tokenizer`, generation, token files written with a tokenizer, and the
//! Hugging Face export read by transformers' `AutoTokenizer` and `GPT2LMHeadModel`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fails_with, kiln, losses, python_with, repo_root, stderr, train};
use serde_json::Value;
use tempfile::tempdir;

const SMOKE_GPT: &str = "configs/smoke-gpt.toml";
const SHAKESPEARE: &str = "datasets/text/shakespeare.txt";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `kiln tokenize SHAKESPEARE --bpe VOCAB --out DIR/tokenizer.json`; the tokenizer's path.
fn bpe(dir: &Path, vocab: usize) -> PathBuf {
    let path = dir.join("tokenizer.json");
    let o = kiln(&[
        "tokenize",
        SHAKESPEARE,
        "--bpe",
        &vocab.to_string(),
        "--out",
        s(&path),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["vocab_size"], vocab, "{summary}");
    path
}

/// `kiln OUT ARGS`, which must succeed, and its stdout's JSON lines.
fn json_lines(args: &[&str]) -> Vec<Value> {
    let o = kiln(args);
    assert!(o.status.success(), "kiln {args:?}:\n{}", stderr(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_bpe_trained_on_shakespeare_serves_training_generation_token_files_and_exports() {
    let dir = tempdir().unwrap();
    let tok = bpe(dir.path(), 2000);
    let tokenizer = format!("data.tokenizer=\"{}\"", tok.display());
    let run = train(SMOKE_GPT, "flex", dir.path(), &[&tokenizer]);

    // A 2000-token model starts near ln(2000) = 7.6 and learns in 30 steps.
    let l = losses(&run);
    assert!(l[0] > 6.5, "{l:?}");
    assert!(*l.last().unwrap() < l[0] - 0.5, "{l:?}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(run.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(saved["kind"], "huggingface");

    // Generation decodes subwords: the same seed gives the same text, which goes on from the
    // prompt.
    let generate = |seed: &str| {
        let o = kiln(&[
            "generate",
            s(&run),
            "--prompt",
            "ROMEO:",
            "--max-tokens",
            "40",
            "--seed",
            seed,
            "--backend",
            "flex",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = generate("1");
    assert!(
        text.starts_with("ROMEO:") && text.len() > "ROMEO:".len() + 40,
        "{text}"
    );
    assert_eq!(text, generate("1"));

    // The same text as a token file written with the tokenizer trains to the same losses.
    let bin = dir.path().join("shakespeare-bpe.bin");
    let summary = json_lines(&[
        "tokenize",
        SHAKESPEARE,
        "--tokenizer",
        s(&tok),
        "--out",
        s(&bin),
    ])
    .remove(0);
    assert_eq!(summary["vocab_size"], 2000, "{summary}");
    let from_file = train(
        SMOKE_GPT,
        "flex",
        dir.path(),
        &[
            "data.format=\"tokens\"",
            &format!("data.path=\"{}\"", bin.display()),
            "run.name=\"smoke-gpt-tokens\"",
        ],
    );
    assert_eq!(losses(&from_file), l);

    // Exports: Kiln's format predicts with the tokenizer; the Hugging Face folder's tokenizer
    // encodes real prompts to Kiln's ids, and its model gives Kiln's logits and greedy text.
    let kiln_out = dir.path().join("kiln");
    let hf_out = dir.path().join("hf");
    for (format, out) in [("kiln", &kiln_out), ("hf", &hf_out)] {
        json_lines(&[
            "export",
            s(&run),
            "--format",
            format,
            "--out",
            s(out),
            "--backend",
            "flex",
        ]);
    }
    let Some(python) = python_with("transformers") else {
        return;
    };
    for prompt in [
        "KING HENRY:\nWhat, ho!",
        "  a\tb, émigré’s “q”\n\n",
        "<|endoftext|>ROMEO: O, she doth teach the torches to burn bright!",
    ] {
        let predict = |extra: &[&str]| {
            let mut args = vec!["predict", s(&kiln_out), prompt, "--backend", "flex"];
            args.extend(extra);
            json_lines(&args).remove(0)
        };
        let mut expected = predict(&["--logits"]);
        let completion = predict(&["--temperature", "0", "--max-tokens", "8"]);
        expected["completion"] = completion["completion"].clone();
        expected["completion_tokens"] = completion["tokens"].clone();
        let path = dir.path().join("expected.json");
        std::fs::write(&path, expected.to_string()).unwrap();
        let o = Command::new(&python)
            .args([
                "tests/python/check_hf.py",
                s(&hf_out),
                s(&path),
                "--atol",
                "1e-4",
            ])
            .current_dir(repo_root())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
        assert_eq!(result["ok"], true, "{prompt:?}: {result} {}", stderr(&o));
    }
}

#[test]
fn bad_tokenizer_inputs_are_one_line_errors() {
    let dir = tempdir().unwrap();
    let not_a_tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&not_a_tokenizer, r#"{"model": {"type": "Nonsense"}}"#).unwrap();
    let set = format!("data.tokenizer=\"{}\"", not_a_tokenizer.display());
    let out_dir = format!("run.output_dir=\"{}\"", dir.path().display());
    fails_with(
        &["train", SMOKE_GPT, "--set", &set, "--set", &out_dir],
        &[
            "data.tokenizer",
            s(&not_a_tokenizer),
            "not a Hugging Face tokenizer",
        ],
    );
    let missing = dir.path().join("missing.json");
    let set = format!("data.tokenizer=\"{}\"", missing.display());
    fails_with(
        &["train", SMOKE_GPT, "--set", &set, "--set", &out_dir],
        &["data.tokenizer", "cannot read tokenizer file", s(&missing)],
    );
    fails_with(
        &[
            "train",
            "configs/wine-mlp.toml",
            "--set",
            "data.tokenizer=\"tokenizer.json\"",
        ],
        &["data.tokenizer", "applies to text only"],
    );
    fails_with(
        &[
            "tokenize",
            SHAKESPEARE,
            "--bpe",
            "100",
            "--out",
            s(&dir.path().join("t.json")),
        ],
        &["--bpe 100", "at least 257 tokens"],
    );
    fails_with(
        &[
            "tokenize",
            SHAKESPEARE,
            "--bpe",
            "1000",
            "--out",
            s(&dir.path().join("t.bin")),
        ],
        &["--out", "with --bpe", ".json"],
    );
}
