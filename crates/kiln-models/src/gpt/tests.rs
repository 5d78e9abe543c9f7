use super::*;
use burn::backend::Flex;

/// GPT-2's architecture at toy size.
fn gpt2_shape(tie: bool) -> GptShape {
    GptShape {
        block_size: 6,
        tie_weights: tie,
        ..GptShape::gpt2(11, 2, 2, 8)
    }
}

/// Llama's: RMSNorm, RoPE, SwiGLU, two query heads per key/value head, no biases.
fn llama_shape() -> GptShape {
    GptShape {
        block_size: 6,
        tie_weights: false,
        bias: false,
        norm: NormKind::RmsNorm,
        norm_epsilon: 1e-6,
        position: PositionKind::Rope,
        mlp: MlpKind::SwiGlu,
        mlp_hidden: 12,
        n_kv_head: 2,
        ..GptShape::gpt2(11, 2, 4, 16)
    }
}

fn model(shape: GptShape) -> Gpt<Flex> {
    Gpt::new(
        shape,
        0.0,
        Precision::F32,
        &mut HostInit::new(5),
        &Default::default(),
    )
}

fn ids(ids: &[i64]) -> Tensor<Flex, 2, Int> {
    Tensor::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &Default::default(),
    )
}

fn logits(model: &Gpt<Flex>, tokens: &[i64]) -> Vec<f32> {
    model.forward(ids(tokens)).into_data().to_vec().unwrap()
}

fn both_styles() -> [GptShape; 3] {
    [gpt2_shape(true), gpt2_shape(false), llama_shape()]
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    for shape in both_styles() {
        let model = model(shape);
        let base = [3i64, 1, 4, 1, 5, 9];
        let a = logits(&model, &base);
        for changed in 1..base.len() {
            let mut other = base;
            other[changed] = (other[changed] + 3) % 11;
            let b = logits(&model, &other);
            let v = 11;
            // Positions before `changed` are identical, bit for bit; the changed one differs.
            assert_eq!(a[..changed * v], b[..changed * v], "{shape:?}, {changed}");
            assert_ne!(
                a[changed * v..(changed + 1) * v],
                b[changed * v..(changed + 1) * v]
            );
        }
    }
}

#[test]
fn shorter_sequences_give_the_same_prefix_logits() {
    for shape in both_styles() {
        let model = model(shape);
        let full = logits(&model, &[3, 1, 4, 1, 5, 9]);
        let short = logits(&model, &[3, 1, 4]);
        for (x, y) in short.iter().zip(&full) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}

#[test]
fn rope_makes_attention_depend_on_order() {
    // Without learned positions, only RoPE tells the model where tokens are: swapping two
    // earlier tokens must change the logits of the last position.
    let model = model(llama_shape());
    let a = logits(&model, &[3, 1, 4, 1]);
    let b = logits(&model, &[1, 3, 4, 1]);
    assert_ne!(a[3 * 11..], b[3 * 11..]);
}

#[test]
fn the_cache_gives_the_logits_of_the_whole_sequence() {
    for shape in both_styles() {
        let model = model(shape);
        let tokens = [3i64, 1, 4, 1, 5, 9];
        let full = logits(&model, &tokens);
        let mut cache = model.cache();
        // A prompt of two tokens, then one token at a time.
        let mut cached: Vec<f32> = model
            .forward_cached(ids(&tokens[..2]), &mut cache)
            .into_data()
            .to_vec()
            .unwrap();
        for i in 2..tokens.len() {
            let step = model.forward_cached(ids(&tokens[i..=i]), &mut cache);
            cached.extend(step.into_data().to_vec::<f32>().unwrap());
        }
        assert_eq!(cache.len(), tokens.len());
        // The prompt runs as the uncached model runs it.
        assert_eq!(cached[..2 * 11], logits(&model, &tokens[..2]), "{shape:?}");
        for (x, y) in cached.iter().zip(&full) {
            assert!((x - y).abs() < 1e-5, "{shape:?}: {x} vs {y}");
        }
        cache.clear();
        assert!(cache.is_empty());
    }
}

#[test]
fn parameter_count_matches_the_model() {
    // GPT-2: wte 11x8 + wpe 6x8 + per block (ln 2x2x8, c_attn 8x24+24, c_proj 8x8+8, c_fc
    // 8x32+32, c_proj 32x8+8) + ln_f 16; the tied head adds nothing, the untied one 8x11.
    let per_block = 2 * 16 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8);
    let tied = 11 * 8 + 6 * 8 + 2 * per_block + 16;
    assert_eq!(model(gpt2_shape(true)).num_params(), tied);
    assert_eq!(model(gpt2_shape(false)).num_params(), tied + 8 * 11);
    // Llama: wte 11x16, no wpe; per block two RMSNorms 2x16, c_attn 16x(16 + 2x2x4), c_proj
    // 16x16, c_fc 16x24, c_proj 12x16; final norm 16; head 16x11.
    let per_block = 2 * 16 + 16 * 32 + 16 * 16 + 16 * 24 + 12 * 16;
    let llama = 11 * 16 + 2 * per_block + 16 + 16 * 11;
    assert_eq!(model(llama_shape()).num_params(), llama);
    for shape in both_styles() {
        assert_eq!(shape.param_count(), model(shape).num_params() as u128);
    }
}

#[test]
fn style_keys_are_checked_with_the_key_named() {
    let spec = |extra: &str| -> GptConfig {
        toml::from_str(&format!("n_head = 4\nn_embd = 32\n{extra}")).unwrap()
    };
    for (extra, key) in [
        ("n_kv_head = 3", "model.n_kv_head = 3"),
        ("rope_theta = 500000.0", "model.rope_theta"),
        (
            "position = \"rope\"\nrope_theta = 0.5",
            "model.rope_theta = 0.5",
        ),
        ("mlp = \"swiglu\"\ngelu = \"tanh\"", "model.gelu"),
        ("norm_epsilon = -1.0", "model.norm_epsilon"),
        ("mlp_hidden = 0", "model.mlp_hidden"),
    ] {
        let e = spec(extra).validate().unwrap_err().to_string();
        assert!(e.starts_with(key), "{extra}: {e}");
    }
    let llama = spec("norm = \"rmsnorm\"\nposition = \"rope\"\nmlp = \"swiglu\"\nn_kv_head = 2");
    let shape = GptShape::new(&llama, 50).unwrap();
    assert_eq!(
        (shape.mlp_hidden, shape.n_kv_head, shape.qkv_width()),
        (96, 2, 64)
    );
    let e = toml::from_str::<GptConfig>("norm = \"batchnorm\"").unwrap_err();
    assert!(e.to_string().contains("layernorm"), "{e}");
}

fn all_targets() -> LoraSpec {
    LoraSpec {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![
            LoraTarget::Attn,
            LoraTarget::AttnProj,
            LoraTarget::Fc,
            LoraTarget::MlpProj,
        ],
    }
}

/// Adds noise to the adapters' `B` (zero when fresh), so that they change the logits.
fn perturb_adapters(model: Gpt<Flex>) -> Gpt<Flex> {
    let mut init = HostInit::new(9);
    let mut model = model;
    for block in &mut model.h {
        for lora in [
            &mut block.attn.c_attn_lora,
            &mut block.attn.c_proj_lora,
            &mut block.mlp.c_fc_lora,
            &mut block.mlp.c_proj_lora,
        ]
        .into_iter()
        .flatten()
        {
            let b = lora.lora_b.val();
            let noise = init.normal_tensor(b.dims(), 0.5, &b.device());
            lora.lora_b = Param::from_tensor(b + noise);
        }
    }
    model
}

#[test]
fn a_fresh_adapter_changes_nothing_and_a_merged_one_computes_the_same() {
    for shape in both_styles() {
        let base = model(shape);
        let tokens = [3i64, 1, 4, 1, 5, 9];
        let plain = logits(&base, &tokens);
        let adapted = base
            .clone()
            .with_lora(&all_targets(), &mut HostInit::new(1));
        assert_eq!(logits(&adapted, &tokens), plain, "{shape:?}");
        let trained = perturb_adapters(adapted);
        let with_adapters = logits(&trained, &tokens);
        let moved = with_adapters
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 1e-3,
            "{shape:?}: the adapters moved the logits by {moved} only"
        );
        let merged = trained.merge_lora();
        assert!(merged.h.iter().all(|b| b.attn.c_attn_lora.is_none()));
        for (a, b) in logits(&merged, &tokens).iter().zip(&with_adapters) {
            assert!((a - b).abs() < 1e-5, "{shape:?}: {a} vs {b}");
        }
    }
}

#[test]
fn only_the_adapters_get_gradients() {
    use burn::backend::Autodiff;
    use burn::module::ModuleVisitor;

    type A = Autodiff<Flex>;
    let base: Gpt<A> = Gpt::new(
        llama_shape(),
        0.0,
        Precision::F32,
        &mut HostInit::new(5),
        &Default::default(),
    );
    let spec = LoraSpec {
        targets: vec![LoraTarget::Attn, LoraTarget::MlpProj],
        ..all_targets()
    };
    let model = base.with_lora(&spec, &mut HostInit::new(1));
    let tokens = Tensor::<A, 2, Int>::from_data(
        TensorData::new(vec![3i64, 1, 4, 1], [1, 4]),
        &Default::default(),
    );
    let grads = model.forward(tokens).sum().backward();

    struct Seen<'a> {
        grads: &'a <A as burn::tensor::backend::AutodiffBackend>::Gradients,
        with: Vec<[usize; 2]>,
        without: usize,
    }
    impl ModuleVisitor<A> for Seen<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            match param.val().grad(self.grads) {
                Some(g) => self.with.push([D, g.dims().iter().product()]),
                None => self.without += 1,
            }
        }
    }
    let mut seen = Seen {
        grads: &grads,
        with: Vec::new(),
        without: 0,
    };
    model.visit(&mut seen);
    // Two blocks, two adapters each, two matrices each: c_attn's [16, 2] and [2, 32],
    // mlp.c_proj's [12, 2] and [2, 16]; nothing else.
    let mut got = seen.with.clone();
    got.sort();
    let want = vec![
        [2, 24],
        [2, 24],
        [2, 32],
        [2, 32],
        [2, 32],
        [2, 32],
        [2, 64],
        [2, 64],
    ];
    assert_eq!(got, want);
    // The 15 base tensors: wte, ln_f, lm_head and six per block (no biases).
    assert_eq!(seen.without, 15);
}
