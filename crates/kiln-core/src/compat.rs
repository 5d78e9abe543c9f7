//! What earlier versions of Kiln wrote, so that their runs and exports keep working.
//!
//! Version 1 had one flat `[model]` section for every model kind: each run's resolved
//! `config.toml` (and each export's manifest) carried every key of every built-in kind, most of
//! them at defaults that the model never read. Since then each model kind has its own section
//! (kiln-models). The table below is the version 1 layout, frozen: its keys in the order they were
//! written, the default each took when unset, and the kinds that read it. The config hash is taken
//! of this layout, so a run written before per-model sections and the same run described by one
//! hash alike (checkpoints keep resuming).

/// One key of the version 1 `[model]` section.
struct V1Key {
    name: &'static str,
    /// The value of an unset key, as TOML; `None` for the optional keys (absent when unset).
    default: Option<&'static str>,
    /// The built-in model kinds that read the key.
    read_by: &'static [&'static str],
}

const fn key(
    name: &'static str,
    default: Option<&'static str>,
    read_by: &'static [&'static str],
) -> V1Key {
    V1Key {
        name,
        default,
        read_by,
    }
}

const MLP_CNN: &[&str] = &["mlp", "cnn"];
const CNN: &[&str] = &["cnn"];
const GPT: &[&str] = &["gpt"];

/// Version 1's `[model]` keys after `kind`, in the order version 1 wrote them.
const V1_MODEL: &[V1Key] = &[
    key("hidden", Some("[]"), MLP_CNN),
    key("activation", Some("\"relu\""), MLP_CNN),
    key("dropout", Some("0.0"), &["mlp", "cnn", "gpt"]),
    key("channels", Some("[]"), CNN),
    key("kernel_size", Some("3"), CNN),
    key("padding", Some("0"), CNN),
    key("pooling", Some("\"max\""), CNN),
    key("pool_every", Some("1"), CNN),
    key("batch_norm", Some("false"), CNN),
    key("n_layer", Some("4"), GPT),
    key("n_head", Some("4"), GPT),
    key("n_embd", Some("128"), GPT),
    key("block_size", Some("64"), GPT),
    key("bias", Some("true"), GPT),
    key("tie_weights", Some("true"), GPT),
    key("vocab_size", None, GPT),
    key("gelu", None, GPT),
];

/// The model kinds of version 1, the only ones whose sections are hashed in its layout.
pub const V1_KINDS: &[&str] = &["mlp", "cnn", "gpt"];

fn parse(toml_value: &str) -> toml::Value {
    let mut t: toml::Table =
        toml::from_str(&format!("v = {toml_value}")).expect("the version 1 defaults are TOML");
    t.remove("v").expect("parsed table has the key")
}

/// The version 1 default of `[model] name`, if version 1 had such a key with a default.
pub fn v1_model_default(name: &str) -> Option<toml::Value> {
    V1_MODEL
        .iter()
        .find(|k| k.name == name)
        .and_then(|k| k.default)
        .map(parse)
}

/// Whether `name` is a version 1 `[model]` key that no model of `kind` read (the keys a version 1
/// file carries for the other kinds).
pub fn v1_key_of_another_kind(kind: &str, name: &str) -> bool {
    V1_MODEL
        .iter()
        .any(|k| k.name == name && !k.read_by.contains(&kind))
}

/// `model` as version 1 wrote it: for a built-in kind, every version 1 key in version 1's order,
/// the unset ones at their defaults, then any other keys as they are. A section of another kind
/// (a program's own model) is returned unchanged.
pub fn model_in_v1_layout(model: &toml::Table) -> toml::Table {
    let kind = model.get("kind").and_then(toml::Value::as_str);
    if !kind.is_some_and(|k| V1_KINDS.contains(&k)) {
        return model.clone();
    }
    let mut out = toml::Table::new();
    out.insert("kind".into(), model["kind"].clone());
    for k in V1_MODEL {
        match (model.get(k.name), k.default) {
            (Some(v), _) => {
                out.insert(k.name.into(), v.clone());
            }
            (None, Some(d)) => {
                out.insert(k.name.into(), parse(d));
            }
            (None, None) => {}
        }
    }
    for (name, value) in model {
        if !out.contains_key(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_of_one_kind_is_filled_in_to_the_v1_layout() {
        let mlp: toml::Table = toml::from_str("hidden = [8]\nkind = \"mlp\"").unwrap();
        let v1 = model_in_v1_layout(&mlp);
        let keys: Vec<&str> = v1.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 16, "{keys:?}");
        assert_eq!(
            v1["hidden"],
            toml::Value::Array(vec![toml::Value::Integer(8)])
        );
        assert_eq!(v1["n_layer"], toml::Value::Integer(4));
        assert!(!v1.contains_key("vocab_size"));
    }

    #[test]
    fn a_programs_own_model_section_is_left_alone() {
        let own: toml::Table = toml::from_str("width = 3").unwrap();
        assert_eq!(model_in_v1_layout(&own), own);
        let named: toml::Table = toml::from_str("kind = \"resnet\"\nwidth = 3").unwrap();
        assert_eq!(model_in_v1_layout(&named), named);
    }

    #[test]
    fn keys_of_other_kinds_are_known() {
        assert!(v1_key_of_another_kind("mlp", "n_layer"));
        assert!(v1_key_of_another_kind("gpt", "hidden"));
        assert!(!v1_key_of_another_kind("cnn", "hidden"));
        assert!(!v1_key_of_another_kind("gpt", "dropout"));
        assert!(!v1_key_of_another_kind("mlp", "width"));
        assert_eq!(
            v1_model_default("pooling"),
            Some(toml::Value::String("max".into()))
        );
        assert_eq!(v1_model_default("gelu"), None);
    }
}
