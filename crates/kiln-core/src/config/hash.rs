//! What a config computes: its hash over the keys that decide a run's numbers, and the keys in
//! which two configs differ (what resuming checks).

use sha2::{Digest, Sha256};

use super::Config;

impl Config {
    /// A sha256 of everything in the config that decides the numbers a run computes: the config
    /// without the keys of [`RESUMABLE_KEYS`], `[tracking]` and where the run is written. A built-in
    /// model's section is hashed in version 1's layout (see [`crate::compat`]), so runs written
    /// before per-model sections keep their hash.
    pub fn maths_hash(&self) -> String {
        let mut table = self.table();
        if let Some(toml::Value::Table(model)) = table.get_mut("model") {
            *model = crate::compat::model_in_v1_layout(model);
        }
        for key in RESUMABLE_KEYS.iter().chain(&[
            "run.name",
            "run.output_dir",
            "run.overwrite",
            "tracking",
        ]) {
            remove_key(&mut table, key);
        }
        // A key added later, set to the value that its absence means, computes what configs
        // without it compute: it hashes as they do.
        for (key, default) in IMPLICIT_DEFAULTS {
            if lookup(&table, key).and_then(toml::Value::as_str) == Some(default) {
                remove_key(&mut table, key);
            }
        }
        let text = toml::to_string(&table).expect("a TOML table serializes");
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The dotted keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let mut a = Vec::new();
        let mut b = Vec::new();
        flatten("", &self.table(), &mut a);
        flatten("", &other.table(), &mut b);
        let mut keys: Vec<String> = a
            .iter()
            .chain(&b)
            .map(|(k, _)| k.clone())
            .filter(|k| {
                a.iter().find(|(x, _)| x == k).map(|(_, v)| v)
                    != b.iter().find(|(x, _)| x == k).map(|(_, v)| v)
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a Config always serializes to a TOML table")
    }
}

/// Keys that a resumed run may change without changing what it computes: logging, evaluation
/// and checkpoint cadence, loader parallelism, and where the run stops.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.log_every",
    "train.eval_every",
    "train.max_steps",
    "train.epochs",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "checkpoint.best_metric",
    "checkpoint.best_mode",
    "data.loader_threads",
    "data.prefetch",
    "data.eval_batch_size",
    "distributed.timeout_secs",
    "distributed.engine",
];

/// Whether a resumed run may change `key` (a dotted key) without changing what it computes:
/// one of [`RESUMABLE_KEYS`], or any key of `[tracking]`.
pub fn is_resumable_key(key: &str) -> bool {
    RESUMABLE_KEYS.contains(&key) || key.starts_with("tracking.")
}

/// Keys added after configs were first hashed, with the value their absence stands for.
const IMPLICIT_DEFAULTS: &[(&str, &str)] = &[
    ("model.gelu", "exact"),
    ("model.norm", "layernorm"),
    ("model.position", "learned"),
    ("model.mlp", "gelu"),
];

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

pub(super) fn remove_key(table: &mut toml::Table, dotted: &str) {
    let (parents, last) = match dotted.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, dotted),
    };
    let mut node = table;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match node.get_mut(part) {
            Some(toml::Value::Table(t)) => node = t,
            _ => return,
        }
    }
    node.remove(last);
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => out.push((key, v.clone())),
        }
    }
}
