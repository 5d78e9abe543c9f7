use super::*;
use kiln_models::GeluForm;
use safetensors::SafeTensors;

fn shape(bias: bool, tie_weights: bool) -> GptShape {
    GptShape {
        block_size: 5,
        bias,
        tie_weights,
        ..GptShape::gpt2(7, 2, 2, 4)
    }
}

/// Kiln's tensors of `s`, each filled with distinct values.
fn kiln_weights(s: &GptShape) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let (v, t, e) = (s.vocab_size, s.block_size, s.n_embd);
    let mut names = vec![
        ("wte.weight".to_string(), vec![v, e]),
        ("wpe.weight".to_string(), vec![t, e]),
    ];
    let norm = |names: &mut Vec<(String, Vec<usize>)>, n: &str| {
        names.push((format!("{n}.gamma"), vec![e]));
        if s.bias {
            names.push((format!("{n}.beta"), vec![e]));
        }
    };
    let linear = |names: &mut Vec<(String, Vec<usize>)>, n: &str, d_in, d_out| {
        names.push((format!("{n}.weight"), vec![d_in, d_out]));
        if s.bias {
            names.push((format!("{n}.bias"), vec![d_out]));
        }
    };
    for l in 0..s.n_layer {
        norm(&mut names, &format!("h.{l}.ln_1"));
        linear(&mut names, &format!("h.{l}.attn.c_attn"), e, 3 * e);
        linear(&mut names, &format!("h.{l}.attn.c_proj"), e, e);
        norm(&mut names, &format!("h.{l}.ln_2"));
        linear(&mut names, &format!("h.{l}.mlp.c_fc"), e, s.mlp_hidden);
        linear(&mut names, &format!("h.{l}.mlp.c_proj"), s.mlp_hidden, e);
    }
    norm(&mut names, "ln_f");
    if !s.tie_weights {
        names.push(("lm_head".to_string(), vec![e, v]));
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let values = (0..n).map(|j| i as f32 * 1000.0 + j as f32).collect();
            (name, (shape, values))
        })
        .collect()
}

const VOCAB: [char; 5] = ['\n', ' ', 'a', 'é', '🙂'];

/// The character tokenizer with exactly these characters, by id.
pub(super) fn char_tokenizer(vocab: &[char]) -> Tokenizer {
    let vocab: Vec<String> = vocab.iter().map(char::to_string).collect();
    let json = serde_json::json!({"kind": "char", "vocab": vocab});
    Tokenizer::from_json(&json, Path::new("test vocabulary")).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn writes_gpt2_names_shapes_and_config() {
    for (bias, tie) in [(true, true), (true, false), (false, true), (false, false)] {
        // The tanh GELU with the untied head: each form is seen once with each head.
        let gelu = if tie { GeluForm::Exact } else { GeluForm::Tanh };
        let s = GptShape {
            gelu,
            ..shape(bias, tie)
        };
        let weights = kiln_weights(&s);
        let dir = tempfile::tempdir().unwrap();
        write_gpt2(dir.path(), &s, &weights, &char_tokenizer(&VOCAB)).unwrap();

        let bytes = fs::read(dir.path().join(HF_WEIGHTS_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let got: BTreeMap<String, Vec<usize>> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                assert_eq!(t.dtype(), Dtype::F32, "{n}");
                (n, t.shape().to_vec())
            })
            .collect();
        let mut want = BTreeMap::new();
        want.insert("transformer.wte.weight".to_string(), vec![7, 4]);
        want.insert("transformer.wpe.weight".to_string(), vec![5, 4]);
        for l in 0..2 {
            let p = format!("transformer.h.{l}");
            for (layer, d_in, d_out) in [
                ("attn.c_attn", 4, 12),
                ("attn.c_proj", 4, 4),
                ("mlp.c_fc", 4, 16),
                ("mlp.c_proj", 16, 4),
            ] {
                want.insert(format!("{p}.{layer}.weight"), vec![d_in, d_out]);
                want.insert(format!("{p}.{layer}.bias"), vec![d_out]);
            }
            for ln in ["ln_1", "ln_2"] {
                want.insert(format!("{p}.{ln}.weight"), vec![4]);
                want.insert(format!("{p}.{ln}.bias"), vec![4]);
            }
        }
        want.insert("transformer.ln_f.weight".to_string(), vec![4]);
        want.insert("transformer.ln_f.bias".to_string(), vec![4]);
        if !tie {
            want.insert("lm_head.weight".to_string(), vec![7, 4]);
        }
        assert_eq!(got, want, "bias {bias}, tie {tie}");

        // Values: copied as they are, biases zero without Kiln biases, the head transposed.
        let value = |n: &str| f32s(st.tensor(n).unwrap().data());
        assert_eq!(
            value("transformer.h.1.mlp.c_fc.weight"),
            weights["h.1.mlp.c_fc.weight"].1
        );
        assert_eq!(value("transformer.ln_f.weight"), weights["ln_f.gamma"].1);
        let c_attn_bias = value("transformer.h.0.attn.c_attn.bias");
        let ln_bias = value("transformer.h.0.ln_2.bias");
        if bias {
            assert_eq!(c_attn_bias, weights["h.0.attn.c_attn.bias"].1);
            assert_eq!(ln_bias, weights["h.0.ln_2.beta"].1);
        } else {
            assert_eq!(c_attn_bias, vec![0.0; 12]);
            assert_eq!(ln_bias, vec![0.0; 4]);
        }
        if !tie {
            let kiln = &weights["lm_head"].1; // [E=4, V=7]
            let hf = value("lm_head.weight"); // [V=7, E=4]
            for vi in 0..7 {
                for ei in 0..4 {
                    assert_eq!(hf[vi * 4 + ei], kiln[ei * 7 + vi], "v {vi}, e {ei}");
                }
            }
        }
        assert_eq!(st.names().len(), want.len());

        let config = read_json(&dir.path().join(HF_CONFIG_FILE));
        assert_eq!(config["model_type"], "gpt2");
        assert_eq!(config["architectures"], json!(["GPT2LMHeadModel"]));
        assert_eq!(config["vocab_size"], 7);
        assert_eq!(config["n_positions"], 5);
        assert_eq!(config["n_ctx"], 5);
        assert_eq!(config["n_embd"], 4);
        assert_eq!(config["n_layer"], 2);
        assert_eq!(config["n_head"], 2);
        assert_eq!(config["n_inner"], Value::Null);
        let activation = if tie { "gelu" } else { "gelu_new" };
        assert_eq!(config["activation_function"], activation);
        assert_eq!(config["layer_norm_epsilon"], 1e-5);
        assert_eq!(config["tie_word_embeddings"], tie);
        assert_eq!(config["scale_attn_weights"], true);
        assert_eq!(config["bos_token_id"], Value::Null);
        assert_eq!(config["eos_token_id"], Value::Null);
        for p in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
            assert_eq!(config[p], 0.0, "{p}");
        }
        let generation = read_json(&dir.path().join(HF_GENERATION_CONFIG_FILE));
        assert_eq!(generation["suppress_tokens"], json!([5, 6]));
    }
}

#[test]
fn tokenizer_maps_each_character_to_its_kiln_id() {
    let s = shape(true, true);
    let dir = tempfile::tempdir().unwrap();
    write_gpt2(dir.path(), &s, &kiln_weights(&s), &char_tokenizer(&VOCAB)).unwrap();
    let tok = read_json(&dir.path().join(HF_TOKENIZER_FILE));
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    assert_eq!(vocab.len(), VOCAB.len());
    for (id, c) in VOCAB.iter().enumerate() {
        assert_eq!(vocab[&c.to_string()], id, "{c:?}");
    }
    assert_eq!(tok["model"]["type"], "WordLevel");
    assert!(!vocab.contains_key(tok["model"]["unk_token"].as_str().unwrap()));
    assert_eq!(tok["decoder"]["type"], "Fuse");
    assert_eq!(tok["normalizer"], Value::Null);
    let config = read_json(&dir.path().join(HF_TOKENIZER_CONFIG_FILE));
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["model_max_length"], 5);
    assert_eq!(config["clean_up_tokenization_spaces"], false);
}

#[test]
fn a_missing_misshapen_or_extra_tensor_is_named() {
    let s = shape(true, false);
    let dir = tempfile::tempdir().unwrap();
    let err = |weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>| {
        format!(
            "{:#}",
            write_gpt2(dir.path(), &s, weights, &char_tokenizer(&VOCAB)).unwrap_err()
        )
    };

    let mut missing = kiln_weights(&s);
    missing.remove("h.1.attn.c_proj.bias");
    let e = err(&missing);
    assert!(e.contains("h.1.attn.c_proj.bias"), "{e}");

    let mut no_head = kiln_weights(&s);
    no_head.remove("lm_head");
    let e = err(&no_head);
    assert!(e.contains("lm_head"), "{e}");

    let mut misshapen = kiln_weights(&s);
    misshapen.get_mut("wpe.weight").unwrap().0 = vec![4, 5];
    let e = err(&misshapen);
    assert!(e.contains("wpe.weight") && e.contains("[4, 5]"), "{e}");

    let mut extra = kiln_weights(&s);
    extra.insert("h.2.ln_1.gamma".into(), (vec![4], vec![1.0; 4]));
    let e = err(&extra);
    assert!(
        e.contains("unexpected") && e.contains("h.2.ln_1.gamma"),
        "{e}"
    );

    // Biases of a model declared without them are extra too.
    let e = format!(
        "{:#}",
        write_gpt2(
            dir.path(),
            &shape(false, false),
            &kiln_weights(&s),
            &char_tokenizer(&VOCAB)
        )
        .unwrap_err()
    );
    assert!(
        e.contains("unexpected") && e.contains("h.0.attn.c_attn.bias"),
        "{e}"
    );

    let e = format!(
        "{:#}",
        write_gpt2(
            dir.path(),
            &s,
            &kiln_weights(&s),
            &char_tokenizer(&['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'])
        )
        .unwrap_err()
    );
    assert!(e.contains("8 tokens"), "{e}");
}

#[test]
fn a_model_of_neither_architecture_is_refused_naming_its_keys() {
    use kiln_models::{NormKind, PositionKind};
    let mixed = GptShape {
        position: PositionKind::Rope,
        ..shape(true, true)
    };
    let e = Architecture::of(&mixed).unwrap_err().to_string();
    assert!(
        e.contains("position = Rope") && e.contains("--format kiln"),
        "{e}"
    );
    let grouped = GptShape {
        n_kv_head: 1,
        ..shape(true, true)
    };
    let e = Architecture::of(&grouped).unwrap_err().to_string();
    assert!(e.starts_with("model.n_kv_head = 1 of n_head = 2"), "{e}");
    let llama = GptShape {
        norm: NormKind::RmsNorm,
        ..mixed
    };
    assert!(
        Architecture::of(&llama).is_err(),
        "a LayerNorm-free GELU model"
    );
}

#[test]
fn a_gpt2_mlp_of_another_width_exports_as_n_inner() {
    let s = GptShape {
        mlp_hidden: 6,
        ..shape(true, true)
    };
    let dir = tempfile::tempdir().unwrap();
    write_gpt2(dir.path(), &s, &kiln_weights(&s), &char_tokenizer(&VOCAB)).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join(HF_CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config["n_inner"], 6);
}
