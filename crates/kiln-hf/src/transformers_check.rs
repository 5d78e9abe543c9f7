use std::path::PathBuf;
use std::process::Command;

use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Int, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use kiln_core::config::Precision;
use kiln_models::{GeluForm, Gpt, GptShape, HostInit, MlpKind, NormKind, PositionKind};

use super::*;

type B = Flex;

/// Adds normal noise to every parameter, so that biases and LayerNorms (zero and one at
/// initialization) matter and the logits are far from uniform.
struct Perturb(HostInit);

impl ModuleMapper<B> for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let noise = self.0.normal_tensor(tensor.dims(), 0.3, &tensor.device());
        Param::from_mapped_value(id, tensor + noise, mapper)
    }
}

fn kiln_tensors(model: &Gpt<B>) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    model
        .collect(None, None, true)
        .into_iter()
        .map(|s| {
            let data = s.to_data().expect("tensor data");
            let shape = data.shape.to_vec();
            (s.full_path(), (shape, data.to_vec::<f32>().expect("f32")))
        })
        .collect()
}

/// `[t, vocab]` logits of `ids`.
fn logits(model: &Gpt<B>, ids: &[i64]) -> Vec<Vec<f32>> {
    let t = ids.len();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, t]), &Default::default());
    let flat: Vec<f32> = model.forward(input).into_data().to_vec().expect("f32");
    flat.chunks(model.shape.vocab_size)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Kiln's greedy generation (`kiln generate --temperature 0`): the last `block_size` tokens
/// as context, the argmax over the tokenizer's ids only.
fn greedy(model: &Gpt<B>, prompt: &[i64], n: usize, usable: usize) -> Vec<i64> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(model.shape.block_size)..];
        let last = logits(model, window).pop().expect("a position");
        let next = last[..usable]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("a token");
        ids.push(next as i64);
    }
    ids.split_off(prompt.len())
}

/// The export tests' Python (tests/python/setup.sh) and check_hf.py; `None` (the test is
/// skipped) when there is none, unless CI requires it (`KILN_REQUIRE_PYTHON_TESTS`).
pub(crate) fn python() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("KILN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import transformers, torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KILN_REQUIRE_PYTHON_TESTS").is_none(),
            "{} lacks torch/transformers: run bash tests/python/setup.sh",
            python.display()
        );
        eprintln!("SKIPPED: no Python with transformers (run bash tests/python/setup.sh)");
        return None;
    }
    Some((python, root.join("tests/python/check_hf.py")))
}

/// Where the exported folders go: `$KILN_HF_CHECK_DIR` when set (to keep them), else `tmp`.
fn folders(tmp: &tempfile::TempDir) -> PathBuf {
    std::env::var_os("KILN_HF_CHECK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf())
}

/// The character tokenizer's ids of `prompt` over `vocab`.
fn char_ids(prompt: &str, vocab: &[char]) -> Vec<i64> {
    prompt
        .chars()
        .map(|c| vocab.iter().position(|&v| v == c).unwrap() as i64)
        .collect()
}

/// Weights perturbed far from initialization, so that every part (biases, LayerNorms, the
/// GELU form) shows in the logits.
#[test]
fn transformers_gives_kilns_logits_tokens_and_generation() {
    let Some((python, script)) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = folders(&tmp);
    let mut vocab: Vec<char> = "\n !abczßé→中🙂".chars().collect();
    vocab.sort_unstable();
    let prompt = "a b\né→中🙂!ß";
    let ids = char_ids(prompt, &vocab);
    // (name, bias, tie, padded vocab rows, block size, new tokens): the last two cases
    // generate past the context, as Kiln does on a window of the last block_size tokens.
    let (exact, tanh) = (GeluForm::Exact, GeluForm::Tanh);
    let cases = [
        ("tied_bias_padded", true, true, 4, 24, 10, exact),
        ("untied_nobias_padded", false, false, 3, 24, 12, tanh),
        ("untied_bias_cropped", true, false, 0, 12, 10, exact),
        ("tied_nobias_cropped_padded", false, true, 5, 14, 12, tanh),
    ];
    for (i, (name, bias, tie, pad, block, new, gelu)) in cases.into_iter().enumerate() {
        let shape = GptShape {
            block_size: block,
            bias,
            tie_weights: tie,
            gelu,
            ..GptShape::gpt2(vocab.len() + pad, 2, 4, 16)
        };
        let device = Default::default();
        let model = Gpt::<B>::new(
            shape,
            0.0,
            Precision::F32,
            &mut HostInit::new(i as u64),
            &device,
        )
        .map(&mut Perturb(HostInit::new(100 + i as u64)));
        // The other GELU form moves the logits well past check_hf.py's tolerance (1e-4):
        // transformers must apply the one the config names.
        let mut other = model.clone();
        other.shape.gelu = match gelu {
            GeluForm::Exact => GeluForm::Tanh,
            GeluForm::Tanh => GeluForm::Exact,
        };
        let moved = logits(&model, &ids)
            .concat()
            .iter()
            .zip(logits(&other, &ids).concat())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 4e-4,
            "{name}: the GELU forms differ by {moved} only"
        );
        let dir = out.join(name);
        write_gpt2(
            &dir.join("hf"),
            &shape,
            &kiln_tensors(&model),
            &super::tests::char_tokenizer(&vocab),
        )
        .unwrap();
        check(
            &python, &script, &dir, name, &model, &vocab, prompt, &ids, new,
        );
    }
}

/// Writes Kiln's logits and greedy continuation of `ids` by `model` next to the Hugging Face
/// folder `dir/hf` and runs check_hf.py on them.
#[allow(clippy::too_many_arguments)]
fn check(
    python: &Path,
    script: &Path,
    dir: &Path,
    name: &str,
    model: &Gpt<B>,
    vocab: &[char],
    prompt: &str,
    ids: &[i64],
    new: usize,
) {
    let completion: String = greedy(model, ids, new, vocab.len())
        .into_iter()
        .map(|id| vocab[id as usize])
        .collect();
    let expected = json!({
        "prompt": prompt,
        "tokens": ids,
        "logits": logits(model, ids),
        "completion": completion,
    });
    write_json(&dir.join("expected.json"), &expected).unwrap();

    let run = Command::new(python)
        .arg(script)
        .arg(dir.join("hf"))
        .arg(dir.join("expected.json"))
        .args(["--atol", "1e-4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{name}: {}", stdout.trim());
    assert!(
        run.status.success(),
        "{name}: check_hf.py failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Llama-style GPTs (RMSNorm, RoPE, SwiGLU; grouped-query or multi-head attention; with and
/// without biases, tied and untied heads, two RoPE bases) as `LlamaForCausalLM`.
#[test]
fn transformers_llama_gives_kilns_logits_and_generation() {
    let Some((python, script)) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = folders(&tmp);
    let vocab: Vec<char> = "\n !abcdefgh".chars().collect();
    let prompt = "a bad cafe\nhe";
    let ids = char_ids(prompt, &vocab);
    // (name, bias, tie, key/value heads, RoPE base, block size, new tokens): the last case
    // generates past the context.
    let cases = [
        ("llama_gqa_untied", false, false, 2, 10_000.0, 24, 8),
        ("llama_mqa_tied_theta", false, true, 1, 500_000.0, 24, 8),
        ("llama_mha_bias_cropped", true, false, 4, 10_000.0, 16, 8),
    ];
    for (i, (name, bias, tie, kv, theta, block, new)) in cases.into_iter().enumerate() {
        let shape = GptShape {
            block_size: block,
            bias,
            tie_weights: tie,
            norm: NormKind::RmsNorm,
            norm_epsilon: 1e-6,
            position: PositionKind::Rope,
            rope_theta: theta,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: 24,
            n_kv_head: kv,
            ..GptShape::gpt2(vocab.len(), 2, 4, 16)
        };
        let model = Gpt::<B>::new(
            shape,
            0.0,
            Precision::F32,
            &mut HostInit::new(i as u64),
            &Default::default(),
        )
        .map(&mut Perturb(HostInit::new(200 + i as u64)));
        let dir = out.join(name);
        write_llama(
            &dir.join("hf"),
            &shape,
            &kiln_tensors(&model),
            &super::tests::char_tokenizer(&vocab),
        )
        .unwrap();
        check(
            &python, &script, &dir, name, &model, &vocab, prompt, &ids, new,
        );
    }
}
