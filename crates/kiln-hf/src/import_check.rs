//! Folders transformers wrote (random initialization, `save_pretrained`; also sharded and
//! bf16), read by [`crate::import`] into Kiln's GPT: Kiln's logits equal transformers'.

use std::path::Path;
use std::process::Command;

use burn::backend::Flex;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use kiln_core::config::Precision;
use kiln_models::{Gpt, GptShape, HostInit};
use serde_json::Value;

use crate::import::{read_config, read_weights, to_safetensors};
use crate::transformers_check::python;

type B = Flex;

/// Kiln's `[t, vocab]` logits of `tokens` by the GPT built from the folder `dir`.
fn kiln_logits(dir: &Path, tokens: &[i64]) -> Vec<f32> {
    let hf = read_config(dir).unwrap();
    let shape = GptShape::new(&hf.model, hf.model.vocab_size.unwrap()).unwrap();
    let device = Default::default();
    let mut model = Gpt::<B>::new(shape, 0.0, Precision::F32, &mut HostInit::new(0), &device);
    let tensors = read_weights(dir, &shape).unwrap();
    let mut store = SafetensorsStore::from_bytes(Some(to_safetensors(&tensors).unwrap()));
    let result = model.load_from(&mut store).unwrap();
    assert!(
        result.errors.is_empty() && result.missing.is_empty() && result.unused.is_empty(),
        "{result:?}"
    );
    let input = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(tokens.to_vec(), [1, tokens.len()]),
        &device,
    );
    model.forward(input).into_data().to_vec().unwrap()
}

#[test]
fn kiln_reads_folders_transformers_wrote_with_its_logits() {
    let Some((python, _)) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/make_hf_models.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for (case, tolerance) in [
        ("gpt2", 1e-4),
        ("llama", 1e-4),
        ("llama-sharded", 1e-4),
        ("llama-bf16", 1e-2),
    ] {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let tokens: Vec<i64> = serde_json::from_value(expected["tokens"].clone()).unwrap();
        let theirs: Vec<Vec<f32>> = serde_json::from_value(expected["logits"].clone()).unwrap();
        let ours = kiln_logits(&tmp.path().join(case), &tokens);
        let diff = ours
            .iter()
            .zip(theirs.concat())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{case}: max |logit difference| {diff:.2e}");
        assert!(diff <= tolerance, "{case}: Kiln's logits differ by {diff}");
    }
    if tmp
        .path()
        .join("llama-sharded/model.safetensors.index.json")
        .is_file()
    {
        let shards = std::fs::read_dir(tmp.path().join("llama-sharded"))
            .unwrap()
            .count();
        assert!(shards > 3, "the sharded case has {shards} files");
    } else {
        panic!("transformers wrote no index for the sharded case");
    }
}
