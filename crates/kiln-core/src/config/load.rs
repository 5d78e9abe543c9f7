//! Loading: file → TOML value → `--set` overrides applied to the value → typed structs
//! (serde, unknown keys rejected) → validation; and the resolved config back to TOML.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::hash::remove_key;
use super::{one_line, Config};

impl Config {
    /// Reads the config of a run being resumed (its `config.toml`) and applies `overrides`.
    pub fn load_for_resume(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the run's config {}", path.display()))?;
        Self::from_toml_str(&text, overrides, &path.display().to_string())
    }

    /// Reads `path`, applies `overrides` (`a.b=value`), deserializes and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, overrides, &path.display().to_string())
    }

    /// Parses a config from TOML text; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, overrides: &[String], origin: &str) -> Result<Config> {
        let mut value: toml::Table = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: invalid TOML: {}", one_line(&e.to_string())))?;
        // The run's length is max_steps or epochs: overriding one replaces the other from the file.
        let overridden = |k: &str| {
            overrides
                .iter()
                .any(|o| o.split_once('=').is_some_and(|(key, _)| key.trim() == k))
        };
        match (overridden("train.max_steps"), overridden("train.epochs")) {
            (true, false) => remove_key(&mut value, "train.epochs"),
            (false, true) => remove_key(&mut value, "train.max_steps"),
            _ => {}
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: Config = Config::deserialize(toml::Value::Table(value)).map_err(|e| {
            let what = if overrides.is_empty() {
                origin.to_string()
            } else {
                format!("{origin} (with --set overrides)")
            };
            anyhow::anyhow!("{what}: {}", one_line(&e.to_string()))
        })?;
        config
            .validate()
            .with_context(|| format!("{origin}: invalid config"))?;
        Ok(config)
    }

    /// The fully resolved config as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes to TOML")
    }
}

/// Applies one `a.b.c=value` override to the raw TOML table. The value is parsed as a TOML value
/// (`3e-4`, `true`, `"text"`, `[64, 64]`); a bare word that is not valid TOML is taken as a string,
/// so `--set model.kind=cnn` works without quotes.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!("--set {item}: expected KEY=VALUE, e.g. --set optimizer.lr=3e-4");
    };
    let key = key.trim();
    let path: Vec<&str> = key.split('.').collect();
    if key.is_empty() || path.iter().any(|p| p.is_empty()) {
        bail!("--set {item}: the key must be a dotted path such as optimizer.lr");
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().expect("path is not empty");
    let mut node = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => bail!(
                "--set {item}: {} is a value, not a section",
                path[..=i].join(".")
            ),
        };
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").expect("parsed table has the key"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
