//! The `[model]` section of Kiln's built-in models: a tagged enum of each model's own config
//! (`model.kind` picks the variant; each struct lives beside its model), read from the run's
//! config with errors that name the kind a misplaced key belongs to.

use anyhow::{bail, Context, Result};
use kiln_core::compat;
use kiln_core::config::{Config, DataFormat, DataSection, ModelSection};
use serde::{Deserialize, Serialize};

use crate::cnn::CnnConfig;
use crate::gpt::{GptConfig, GptShape};
use crate::mlp::MlpConfig;
use crate::resnet::ResNetConfig;
use crate::DataShape;

/// The model of a run of Kiln's own models (`kiln train`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    /// A multi-layer perceptron on features (or flattened images).
    Mlp(MlpConfig),
    /// A convolutional classifier of images.
    Cnn(CnnConfig),
    /// A decoder-only transformer language model (text or token data).
    Gpt(GptConfig),
    /// A residual network of images.
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
}

/// Each kind's name, a description for messages, and its keys.
const KINDS: &[(&str, &str, &[&str])] = &[
    ("mlp", "an MLP", MlpConfig::KEYS),
    ("cnn", "a CNN", CnnConfig::KEYS),
    ("gpt", "a GPT", GptConfig::KEYS),
    ("resnet", "a ResNet", ResNetConfig::KEYS),
];

impl ModelConfig {
    /// The model of `config`, checked against its data: errors name the key and, for a key of
    /// another model kind, that kind.
    pub fn of(config: &Config) -> Result<Self> {
        let mut model = Self::from_section(&config.model)?;
        model.check_data(&config.data)?;
        if let Some(finetune) = &config.finetune {
            let gpt = match &mut model {
                ModelConfig::Gpt(g) if g.init_from.is_some() => g,
                ModelConfig::Gpt(_) => bail!("finetune: LoRA adapts pretrained weights; set model.init_from to a Hugging Face folder (or pass --init-from DIR), or remove [finetune] to train every weight"),
                other => bail!("finetune: LoRA adapts a GPT (model.kind = \"gpt\"), this is model.kind = \"{}\"; remove [finetune]", other.kind()),
            };
            gpt.lora = Some(crate::gpt::LoraSpec::of(finetune)?);
        }
        Ok(model)
    }

    /// Reads `config`'s model and writes it back resolved (every key of its kind, defaults filled
    /// in, the keys that version 1 files carry for other kinds dropped): what `kiln train` does
    /// before the run's config is saved.
    pub fn resolve(config: &mut Config) -> Result<Self> {
        let model = Self::of(config)?;
        config.model = model.section();
        Ok(model)
    }

    /// Reads a `[model]` section on its own.
    pub fn from_section(section: &ModelSection) -> Result<Self> {
        let Some(kind) = section.kind() else {
            bail!("model.kind: missing; Kiln's models are \"mlp\", \"cnn\", \"resnet\" and \"gpt\" (a program builds its own model through the library: see the README)");
        };
        let Some(&(_, what, keys)) = KINDS.iter().find(|(k, _, _)| *k == kind) else {
            bail!("model.kind = \"{kind}\": not one of Kiln's models (\"mlp\", \"cnn\", \"resnet\", \"gpt\"); a program builds its own model through the library (see the README)");
        };
        let mut table = section.0.clone();
        let v1 = is_v1_layout(&table);
        for (key, value) in &section.0 {
            if key == "kind" || keys.contains(&key.as_str()) {
                continue;
            }
            let owners: Vec<&str> = KINDS
                .iter()
                .filter(|(_, _, keys)| keys.contains(&key.as_str()))
                .map(|(_, what, _)| *what)
                .collect();
            if owners.is_empty() {
                bail!(
                    "model.{key}: not a key of {what} (model.kind = \"{kind}\"); its keys are {}",
                    keys.join(", ")
                );
            }
            if v1 && compat::v1_model_default(key).as_ref() == Some(value) {
                // A version 1 config.toml: every kind's keys, unused ones at their defaults.
                table.remove(key);
                continue;
            }
            bail!(
                "model.{key}: a key of {} (model.kind = \"{}\"), not of {what} (model.kind = \"{kind}\"); remove it{}",
                owners.join(" or "),
                kind_of(owners[0]),
                if v1 {
                    " (it had no effect on the model of this version 1 config)"
                } else {
                    ""
                }
            );
        }
        ModelSection(table).parse::<ModelConfig>()?.validated()
    }

    fn validated(self) -> Result<Self> {
        match &self {
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::Cnn(c) => c.validate(),
            ModelConfig::Gpt(c) => c.validate(),
            ModelConfig::ResNet(c) => c.validate(),
        }?;
        Ok(self)
    }

    /// `"mlp"`, `"cnn"`, `"resnet"` or `"gpt"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Cnn(_) => "cnn",
            ModelConfig::Gpt(_) => "gpt",
            ModelConfig::ResNet(_) => "resnet",
        }
    }

    /// The section with every key of the kind.
    pub fn section(&self) -> ModelSection {
        ModelSection(toml::Table::try_from(self).expect("a model config is a TOML table"))
    }

    /// Whether the data of `data` is what this kind trains on.
    pub fn check_data(&self, data: &DataSection) -> Result<()> {
        let Some(format) = data.format else {
            bail!("data.format: missing; Kiln's models train on data Kiln reads (\"idx\", \"csv\", \"image_folder\", \"text\" or \"tokens\"); a program's own data goes through the library (see the README)");
        };
        let language = matches!(format, DataFormat::Text | DataFormat::Tokens);
        match self {
            ModelConfig::Mlp(_) if language => bail!(
                "model.kind: text and token data train a language model: use model.kind = \"gpt\""
            ),
            ModelConfig::Cnn(_) | ModelConfig::ResNet(_)
                if !matches!(format, DataFormat::Idx | DataFormat::ImageFolder) =>
            {
                bail!(
                    "model.kind: \"{}\" needs image data (data.format = \"idx\" or \"image_folder\")",
                    self.kind()
                )
            }
            ModelConfig::Gpt(_) if !language => bail!(
                "model.kind: \"gpt\" needs text or token data (data.format = \"text\" or \"tokens\")"
            ),
            _ => Ok(()),
        }
    }

    /// Parameters of the model of this config for data of `shape`: what [`crate::Model::new`]
    /// would allocate, so that a model too large for memory is refused first.
    pub fn param_count(&self, shape: &DataShape) -> Result<u128> {
        Ok(match (self, shape.samples(), shape) {
            (ModelConfig::Mlp(m), Some((sample_shape, outputs, _)), _) => {
                crate::mlp::head_params(sample_shape.iter().product(), &m.hidden, outputs)
            }
            (ModelConfig::Cnn(c), Some((&[ch, h, w], outputs, _)), _) => {
                c.param_count([ch, h, w], outputs)
            }
            (ModelConfig::ResNet(r), Some((&[ch, _, _], outputs, _)), _) => {
                r.param_count(ch, outputs)
            }
            (ModelConfig::Gpt(g), _, DataShape::Tokens { vocab_size }) => {
                GptShape::new(g, *vocab_size)?.param_count()
            }
            // Model::new refuses the pair with its own error.
            _ => 0,
        })
    }

    /// A classifier's inference steps for exporters (see [`crate::plan`]); `None` for a GPT,
    /// whose exports map its tensors by name instead.
    pub fn plan(&self) -> Option<Vec<crate::Step>> {
        match self {
            ModelConfig::Mlp(m) => Some(m.plan()),
            ModelConfig::Cnn(c) => Some(c.plan()),
            ModelConfig::ResNet(r) => Some(r.plan()),
            ModelConfig::Gpt(_) => None,
        }
    }

    /// The GPT's config, or an error naming `what` needs one.
    pub fn gpt(&self, what: &str) -> Result<&GptConfig> {
        match self {
            ModelConfig::Gpt(g) => Ok(g),
            other => bail!(
                "{what} needs a GPT (model.kind = \"gpt\"), this is model.kind = \"{}\"",
                other.kind()
            ),
        }
    }

    /// Reads the `architecture.model` object of an export manifest: version 1 manifests carry
    /// every kind's keys (dropped here: they had no effect), later ones only the kind's.
    pub fn from_manifest(model: &serde_json::Value, format_version: u32) -> Result<Self> {
        let mut model = model.clone();
        if format_version == 1 {
            if let Some(object) = model.as_object_mut() {
                let kind = object
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default()
                    .to_string();
                object.retain(|k, v| !v.is_null() && !compat::v1_key_of_another_kind(&kind, k));
            }
        }
        let model: ModelConfig =
            serde_json::from_value(model).context("the manifest's architecture.model")?;
        model.validated()
    }
}

fn kind_of(what: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(_, w, _)| *w == what)
        .map(|(k, _, _)| *k)
        .unwrap_or_default()
}

/// Whether `model` carries every defaulted key of version 1's flat section, as every run's
/// resolved config.toml written by version 1 does.
fn is_v1_layout(model: &toml::Table) -> bool {
    KINDS
        .iter()
        .flat_map(|(_, _, keys)| keys.iter())
        .all(|k| model.contains_key(*k) || compat::v1_model_default(k).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count that refuses a model too large for memory is what Model::new allocates.
    #[test]
    fn parameter_counts_are_those_of_the_built_models() {
        use burn::module::Module;
        type B = burn::backend::Flex;
        let cases = [
            (
                r#"kind = "mlp"
hidden = [7, 5]"#,
                DataShape::Samples {
                    sample_shape: vec![6],
                    num_classes: 3,
                },
            ),
            (
                r#"kind = "cnn"
channels = [4, 6]
hidden = [9]
padding = 1
batch_norm = true"#,
                DataShape::Samples {
                    sample_shape: vec![2, 9, 7],
                    num_classes: 4,
                },
            ),
            (
                r#"kind = "cnn"
channels = [3, 5, 2]
pooling = "avg"
pool_every = 2"#,
                DataShape::Samples {
                    sample_shape: vec![1, 12, 12],
                    num_classes: 10,
                },
            ),
            (
                r#"kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 8
block_size = 6"#,
                DataShape::Tokens { vocab_size: 11 },
            ),
            (
                r#"kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 8
block_size = 4
bias = false
tie_weights = false
vocab_size = 16"#,
                DataShape::Tokens { vocab_size: 13 },
            ),
        ];
        for (text, shape) in cases {
            let spec: ModelConfig = toml::from_str(text).unwrap();
            let model = crate::Model::<B>::new(
                &spec,
                &shape,
                kiln_core::config::Precision::F32,
                1,
                &Default::default(),
            )
            .unwrap();
            assert_eq!(
                spec.param_count(&shape).unwrap(),
                model.num_params() as u128,
                "{text}"
            );
        }
    }

    #[test]
    fn a_model_larger_than_memory_is_refused_with_its_size() {
        let spec: ModelConfig = toml::from_str("kind = \"mlp\"\nhidden = [4000000000]").unwrap();
        let shape = DataShape::Samples {
            sample_shape: vec![784],
            num_classes: 10,
        };
        let params = spec.param_count(&shape).unwrap();
        assert_eq!(
            params,
            784 * 4_000_000_000 + 4_000_000_000 + 4_000_000_000 * 10 + 10
        );
        let e = crate::check_fits_in_memory(&spec, params, Some(16 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3,180,000,000,010 parameters"), "{e}");
        assert!(
            e.contains("11.6 TiB as float32") && e.contains("16.0 GiB"),
            "{e}"
        );
        assert!(e.contains("model.hidden"), "{e}");
        crate::check_fits_in_memory(&spec, 1000, Some(16 << 30)).unwrap();
        crate::check_fits_in_memory(&spec, params, None).unwrap();
    }

    fn config(model: &str, data: &str) -> Result<Config> {
        let text = format!(
            "[run]\nname = \"t\"\n[data]\n{data}\nbatch_size = 8\n[model]\n{model}\n[train]\nmax_steps = 1\n"
        );
        Config::from_toml_str(&text, &[], "t.toml")
    }

    fn model(model: &str) -> Result<ModelConfig> {
        ModelConfig::of(&config(model, "format = \"csv\"\npath = \"x.csv\"")?)
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn each_kind_reads_its_own_keys_with_defaults() {
        let ModelConfig::Mlp(m) = model("kind = \"mlp\"\nhidden = [16]").unwrap() else {
            panic!("an MLP")
        };
        assert_eq!(m.hidden, vec![16]);
        assert_eq!(m.activation, crate::mlp::Activation::Relu);
        let gpt = config(
            "kind = \"gpt\"\nn_layer = 2",
            "format = \"text\"\npath = \"x\"",
        );
        let g = ModelConfig::of(&gpt.unwrap()).unwrap();
        assert_eq!(g.gpt("generation").unwrap().n_layer, 2);
        assert_eq!(g.gpt("generation").unwrap().n_embd, 128);
    }

    #[test]
    fn a_key_of_another_kind_is_an_error_naming_that_kind() {
        let e = message(model("kind = \"mlp\"\nn_layer = 4"));
        assert!(
            e.contains("model.n_layer: a key of a GPT (model.kind = \"gpt\"), not of an MLP"),
            "{e}"
        );
        let e = message(model("kind = \"mlp\"\nkernel_size = 5"));
        assert!(e.contains("a key of a CNN (model.kind = \"cnn\")"), "{e}");
        let e = message(model("kind = \"mlp\"\ngelu = \"tanh\""));
        assert!(e.contains("model.gelu: a key of a GPT"), "{e}");
        let e = message(model("kind = \"mlp\"\nwidth = 5"));
        assert!(e.contains("model.width: not a key of an MLP"), "{e}");
        assert!(e.contains("hidden, activation, dropout"), "{e}");
    }

    #[test]
    fn kind_and_data_are_checked() {
        assert!(message(model("hidden = [3]")).contains("model.kind: missing"));
        assert!(message(model("kind = \"vit\"")).contains("not one of Kiln's models"));
        assert!(message(model("kind = \"cnn\"\nchannels = [4]")).contains("needs image data"));
        assert!(message(model("kind = \"resnet\"")).contains("\"resnet\" needs image data"));
        assert!(message(model("kind = \"resnet\"\nstages = [1]")).contains("one width per stage"));
        assert!(message(model("kind = \"gpt\"")).contains("needs text or token data"));
        let text = config("kind = \"mlp\"", "format = \"text\"\npath = \"x\"").unwrap();
        assert!(message(ModelConfig::of(&text)).contains("train a language model"));
        let e = message(model("kind = \"mlp\"\nhidden = [0]"));
        assert!(
            e.contains("model.hidden: layer widths must be at least 1"),
            "{e}"
        );
        let e = message(model("kind = \"mlp\"\nactivation = \"swish\""));
        assert!(e.starts_with("model: ") && e.contains("swish"), "{e}");
    }

    /// The resolved configs of runs written by version 1 (every kind's keys in one section)
    /// still read, resolve to their kind's keys, and keep the hash their checkpoints recorded.
    #[test]
    fn version_1_run_configs_read_resolve_and_keep_their_hash() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kiln-core/tests/fixtures/earlier-runs");
        for (run, keys) in [
            ("fashion-mnist-mlp", 3),
            ("fashion-mnist-cnn", 9),
            ("shakespeare-char-gpt", 7),
        ] {
            let dir = fixtures.join(run);
            let mut config = Config::load(&dir.join("config.toml"), &[]).unwrap();
            let recorded: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("config_hash.json")).unwrap(),
            )
            .unwrap();
            ModelConfig::resolve(&mut config).unwrap();
            assert_eq!(
                config.model.0.len(),
                keys + 1,
                "{run}: {:?}",
                config.model.0
            );
            assert_eq!(
                recorded["config_hash"].as_str(),
                Some(config.maths_hash().as_str()),
                "{run}"
            );
            let again = Config::from_toml_str(&config.to_toml(), &[], "resolved").unwrap();
            assert_eq!(
                ModelConfig::of(&again).unwrap(),
                ModelConfig::of(&config).unwrap()
            );
        }
        let path = fixtures.join("fashion-mnist-mlp/config.toml");
        let odd = Config::load(&path, &["model.n_layer=8".into()]).unwrap();
        let e = message(ModelConfig::of(&odd));
        assert!(
            e.contains("model.n_layer: a key of a GPT") && e.contains("version 1"),
            "{e}"
        );
    }

    #[test]
    fn the_keys_lists_are_the_structs_fields() {
        for (model, keys) in [
            ("kind = \"mlp\"", MlpConfig::KEYS),
            ("kind = \"cnn\"\nchannels = [1]", CnnConfig::KEYS),
            (
                "kind = \"gpt\"\nvocab_size = 9\ngelu = \"tanh\"\nnorm = \"rmsnorm\"\nnorm_epsilon = 1e-6\nposition = \"rope\"\nrope_theta = 1e4\nmlp = \"gelu\"\nmlp_hidden = 64\nn_kv_head = 2\ninit_from = \"x\"",
                GptConfig::KEYS,
            ),
        ] {
            let section = ModelConfig::from_section(&ModelSection(toml::from_str(model).unwrap()))
                .unwrap()
                .section();
            let mut got: Vec<&str> = section.0.keys().map(String::as_str).collect();
            got.retain(|k| *k != "kind");
            let mut want = keys.to_vec();
            got.sort();
            want.sort();
            assert_eq!(got, want);
        }
    }

    /// Each classifier describes its own inference for exporters: the layers in order, by the
    /// names its weights are saved under.
    #[test]
    fn each_classifier_gives_its_inference_plan() {
        use crate::Step;
        let linear = |p: &str| Step::Linear {
            weight: format!("{p}.weight"),
            bias: format!("{p}.bias"),
        };
        let mlp = model("kind = \"mlp\"\nhidden = [4]\nactivation = \"tanh\"").unwrap();
        let tanh = Step::Activation(crate::Activation::Tanh);
        assert_eq!(
            mlp.plan().unwrap(),
            vec![linear("layers.0"), tanh, linear("layers.1")]
        );
        let cnn = ModelConfig::from_section(&ModelSection(
            toml::from_str(
                "kind = \"cnn\"\nchannels = [2, 3]\npool_every = 2\nbatch_norm = true\npadding = 1",
            )
            .unwrap(),
        ))
        .unwrap();
        let conv = |i: usize| Step::Conv2d {
            weight: format!("blocks.{i}.conv.weight"),
            bias: format!("blocks.{i}.conv.bias"),
            padding: 1,
            stride: 1,
        };
        let norm = |i: usize| Step::BatchNorm {
            prefix: format!("blocks.{i}.norm"),
            epsilon: 1e-5,
        };
        let relu = Step::Activation(crate::Activation::Relu);
        assert_eq!(
            cnn.plan().unwrap(),
            vec![
                conv(0),
                norm(0),
                relu.clone(),
                conv(1),
                norm(1),
                relu,
                Step::MaxPool2,
                Step::Flatten,
                linear("head.layers.0"),
            ]
        );
        let gpt = ModelSection(toml::from_str("kind = \"gpt\"").unwrap());
        assert_eq!(ModelConfig::from_section(&gpt).unwrap().plan(), None);
    }

    /// The configs users start from name a model of Kiln's with its own keys only.
    #[test]
    fn every_shipped_config_names_a_model_with_its_own_keys() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&path, &[]).unwrap();
                ModelConfig::of(&config).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 8, "only {seen} configs in {}", dir.display());
    }

    #[test]
    fn version_1_manifests_drop_the_other_kinds_keys() {
        let v1 = serde_json::json!({"kind": "mlp", "hidden": [4], "activation": "relu",
            "dropout": 0.0, "n_layer": 4, "kernel_size": 3, "gelu": null, "vocab_size": null});
        let m = ModelConfig::from_manifest(&v1, 1).unwrap();
        assert_eq!(m.kind(), "mlp");
        assert!(ModelConfig::from_manifest(&v1, 2).is_err());
    }
}
